"""Which way round an image's ink is. The model learned light digits on a background of exactly 0, as MNIST has
them; a scan or a drawing of dark ink on light paper is turned the model's way round first."""

import numpy as np


def is_dark_on_light(grey: np.ndarray) -> bool:
    """Whether `grey` (H, W) float in [0, 1] shows dark ink on a light background: its median pixel is above 0.5.

    Digits cover a minority of an image's pixels, so the median pixel is background: black on MNIST's panels,
    white on paper.
    """
    return bool(np.median(grey) > 0.5)


def light_on_dark(grey: np.ndarray) -> tuple[np.ndarray, bool]:
    """`grey` (H, W) float32 in [0, 1] as the model takes it, light ink on dark, and whether it was inverted."""
    if is_dark_on_light(grey):
        # White paper (1.0) becomes exactly 0, the background the model knows.
        return np.float32(1.0) - grey, True
    return grey, False
