"""One picture through the model: the ink turned the model's way round, scored window by window, each pixel given
its most probable class."""

from dataclasses import dataclass

import numpy as np
import torch

from segnet.prediction.models import Segmenter
from segnet.prediction.polarity import light_on_dark
from segnet.prediction.windows import stitched_scores


@dataclass(frozen=True)
class Segmentation:
    """A picture's classes: `mask` uint8 (H, W), 0 background and 1-10 the digits (segnet.CLASS_NAMES); `inverted`
    says whether the picture was dark ink on light and was inverted first."""

    mask: np.ndarray
    inverted: bool


def segment(segmenter: Segmenter, grey: np.ndarray) -> Segmentation:
    """The classes of the grey picture `grey` (H, W) float32 in [0, 1], of any size."""
    pixels, inverted = light_on_dark(grey)
    scores = stitched_scores(segmenter, torch.from_numpy(np.ascontiguousarray(pixels)), segmenter.window)
    return Segmentation(scores.argmax(dim=0).to(torch.uint8).numpy(), inverted)
