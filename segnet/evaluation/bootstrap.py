"""How far a test score could move with another draw of test panels: a bootstrap over panels.

The test set is a sample of panels, so its mIoU is an estimate. Resampling the panels with replacement and
scoring each resample from the panels' own confusion matrices gives the spread of that estimate (Efron's
percentile bootstrap). One run's interval bounds that run's score. Two runs scored on the same panels are
compared by resampling both together (a paired bootstrap, `python -m segnet.compare`): a panel hard for one
model is hard for the other, so their difference is known far more precisely than their two intervals suggest.
The panels are resampled, not the digit images they are built from: the interval is that of new panels made
from the same test digits.
"""

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from segnet.params import build


@dataclass
class BootstrapConfig:
    """The evaluate stage's interval settings (params.yaml `evaluate.bootstrap`).

    Attributes:
        resamples: Resamples of the test panels (0: no interval).
        confidence: Share of the resampled scores the interval holds, e.g. 0.95.
        seed: Seeds the resampling, so that the same predictions give the same interval.
    """

    resamples: int
    confidence: float
    seed: int

    def __post_init__(self):
        if self.resamples < 0:
            raise ValueError(f"resamples: must be an integer >= 0, got {self.resamples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence: must lie strictly between 0 and 1, got {self.confidence}")
        if self.seed < 0:
            raise ValueError(f"seed: must be an integer >= 0, got {self.seed}")


def read_bootstrap(evaluate: dict) -> BootstrapConfig:
    """params.yaml's `evaluate.bootstrap`, from the `evaluate` section.

    Raises:
        ValueError: It is not a mapping, or holds unknown keys or bad values, naming the key.
    """
    return build(BootstrapConfig, "evaluate.bootstrap", evaluate.get("bootstrap"))


def panel_confusions(target: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One confusion matrix per panel: (N, H, W) labels and predictions -> int64 (N, classes, classes).

    Summed over the panels, they are the confusion matrix of the whole set.
    """
    cells = num_classes * num_classes
    panel = torch.arange(len(target)).view(-1, 1) * cells
    pairs = panel + target.reshape(len(target), -1).long() * num_classes + prediction.reshape(len(target), -1).long()
    return torch.bincount(pairs.reshape(-1), minlength=len(target) * cells).view(-1, num_classes, num_classes)


def percentile_interval(
    confusions: torch.Tensor, score: Callable[[torch.Tensor], float], config: BootstrapConfig
) -> tuple[float, float]:
    """The central `config.confidence` share of `score` over resamples of the panels.

    Args:
        confusions: Per-panel confusion matrices (N, classes, classes) from panel_confusions; or, to compare
            models on the same panels, their matrices stacked per panel (N, models, classes, classes), so that
            every resample draws the same panels for each model (a paired bootstrap).
        score: A metric of one resample's summed matrices, e.g. segnet.evaluation.metrics.mean_iou, or for a
            stack of two models `lambda pair: mean_iou(pair[1]) - mean_iou(pair[0])`. (A class absent from a
            resample's labels counts for a model only if it predicts it, so the two means may then be over
            different classes; on the built-in test set every class occurs in every resample.)
        config: Resamples, confidence and seed.

    Returns:
        (low, high) percentiles of the resampled scores.
    """
    if config.resamples < 1:
        raise ValueError("percentile_interval needs at least one resample")
    panels = len(confusions)
    generator = torch.Generator().manual_seed(config.seed)
    flat = confusions.reshape(panels, -1).double()  # counts up to 2^53 stay exact in float64
    scores: list[float] = []
    # A resample is how often each panel is drawn; those counts times the panels' matrices sum to its matrices.
    # 100 resamples at a time: a (100, panels) table of counts, whatever the number of resamples.
    for start in range(0, config.resamples, 100):
        chunk = min(100, config.resamples - start)
        draws = torch.randint(panels, (chunk, panels), generator=generator) + torch.arange(chunk).view(-1, 1) * panels
        counts = torch.bincount(draws.reshape(-1), minlength=chunk * panels).view(chunk, panels).double()
        resampled = (counts @ flat).round().long().view(chunk, *confusions.shape[1:])
        scores.extend(score(matrices) for matrices in resampled)
    tail = (1 - config.confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)
