"""Training losses beyond PyTorch's cross-entropy."""

import torch
from torch.nn import functional as F


def soft_iou_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """1 - the mean over classes of a differentiable IoU of the batch (Rahman & Wang 2016; Berman et al. 2018).

    The reported metric is the mean of per-class IoUs over all pixels, so a thin class (the digit 1) weighs as
    much as the background. Cross-entropy counts pixels instead; this term puts the metric's weighting into the
    loss. Softmax probabilities stand in for the hard prediction: intersection sum(p * y), union
    sum(p + y - p * y), both summed over the batch's pixels. `smoothing` (in pixels) keeps a class absent from
    both the labels and the prediction at IoU 1 instead of 0/0.

    Args:
        logits: (N, C, H, W) scores.
        targets: (N, H, W) class indices in [0, C).
    """
    probabilities = logits.float().softmax(dim=1)
    one_hot = F.one_hot(targets, logits.shape[1]).permute(0, 3, 1, 2).to(probabilities.dtype)
    dims = (0, 2, 3)
    intersection = (probabilities * one_hot).sum(dims)
    union = probabilities.sum(dims) + one_hot.sum(dims) - intersection
    return 1 - ((intersection + smoothing) / (union + smoothing)).mean()
