"""How far a test score could move with another draw of test panels: a bootstrap over panels.

The test set is a sample of panels, so its mIoU is an estimate. Resampling the panels with replacement and
scoring each resample from the panels' own confusion matrices gives the spread of that estimate (Efron's
percentile bootstrap). One run's interval bounds that run's score. Two runs scored on the same panels are
compared by resampling both together (a paired bootstrap, `python -m segnet.compare`): a panel hard for one
model is hard for the other, so their difference is known far more precisely than their two intervals suggest.
Settings, each trained with several seeds, are compared by resampling the seeds as well as the panels
(seed_and_panel_resamples, `python -m segnet.compare --by KEY`).
The panels are resampled, not the digit images they are built from: the interval is that of new panels made
from the same test digits.
"""

from collections.abc import Callable, Sequence
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


def seed_and_panel_resamples(
    confusions: torch.Tensor, groups: Sequence[Sequence[int]], config: BootstrapConfig
) -> torch.Tensor:
    """Each group's mean test mIoU over resamples of both its runs (seeds) and the test panels.

    A group of runs trained with one setting and several seeds estimates that setting's score twice over: its
    seeds are a sample of the seeds it could have had, and the panels a sample of the panels. Every resample
    draws each group's runs with replacement (independently per group) and one set of panels with replacement
    for all runs, since all runs scored the same panels: a group's score is the mean over its drawn runs of
    mean_iou of the run's matrices summed over the drawn panels. Differences between groups are then paired
    over the panels and not over the seeds, as the settings were trained apart.

    Args:
        confusions: Every run's per-panel confusion matrices on the same panels (runs, N, classes, classes).
        groups: Each group's runs, as indices into `confusions` (at least one each).
        config: Resamples and seed; the interval's confidence is the caller's to apply.

    Returns:
        float64 (resamples, groups): the groups' scores in each resample.
    """
    if config.resamples < 1:
        raise ValueError("seed_and_panel_resamples needs at least one resample")
    runs, panels, classes = confusions.shape[0], confusions.shape[1], confusions.shape[-1]
    members = [torch.as_tensor(group, dtype=torch.long) for group in groups]
    generator = torch.Generator().manual_seed(config.seed)
    # (N, runs * classes^2): one product with a resample's panel counts gives every run's summed matrices.
    flat = confusions.transpose(0, 1).reshape(panels, -1).double()  # counts up to 2^53 stay exact in float64
    scores = []
    for start in range(0, config.resamples, 100):
        chunk = min(100, config.resamples - start)
        draws = torch.randint(panels, (chunk, panels), generator=generator) + torch.arange(chunk).view(-1, 1) * panels
        counts = torch.bincount(draws.reshape(-1), minlength=chunk * panels).view(chunk, panels).double()
        summed = (counts @ flat).view(chunk, runs, classes, classes)
        true_positive = summed.diagonal(dim1=-2, dim2=-1)
        union = summed.sum(-2) + summed.sum(-1) - true_positive
        # mean_iou of each (resample, run), as segnet.evaluation.metrics computes it: absent classes left out.
        miou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan).nanmean(-1)  # (chunk, runs)
        drawn = [group[torch.randint(len(group), (chunk, len(group)), generator=generator)] for group in members]
        scores.append(torch.stack([miou.gather(1, runs_drawn).mean(1) for runs_drawn in drawn], dim=1))
    return torch.cat(scores)
