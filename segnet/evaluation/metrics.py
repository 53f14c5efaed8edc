"""Segmentation metrics as pure functions of an accumulated confusion matrix.

`confusion[t, p]` counts pixels of true class t predicted as class p. A class that never occurs and is
never predicted has no IoU (NaN) and is left out of the means, as in the course's definition.
"""

import math

import torch

from segnet import CLASS_NAMES


def confusion_matrix(target: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (true, predicted) pairs over all pixels; returns int64 (classes, classes)."""
    pairs = target.reshape(-1).long() * num_classes + prediction.reshape(-1).long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU per class: TP / (TP + FP + FN); NaN where the class is absent from truth and prediction."""
    confusion = confusion.double()
    true_positive = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - true_positive
    return torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall per class: TP / (TP + FN); NaN where the class is absent from the truth."""
    confusion = confusion.double()
    support = confusion.sum(1)
    return torch.where(support > 0, confusion.diagonal() / support.clamp(min=1), torch.nan)


def mean_iou(confusion: torch.Tensor, classes: slice = slice(None)) -> float:
    """Mean IoU over the classes selected (all by default), ignoring NaN."""
    return float(per_class_iou(confusion)[classes].nanmean())


def pixel_accuracy(confusion: torch.Tensor) -> float:
    """Share of all pixels labelled correctly."""
    return float(confusion.diagonal().sum().double() / confusion.sum().clamp(min=1))


def summarize(confusion: torch.Tensor) -> dict:
    """All reported metrics: miou (11 classes), miou_digits (the 10 digit classes), pixel and class accuracy,
    and per-class IoU keyed by class name (absent classes are reported as null)."""
    ious = per_class_iou(confusion)
    return {
        "miou": mean_iou(confusion),
        "miou_digits": mean_iou(confusion, slice(1, None)),
        "pixel_accuracy": pixel_accuracy(confusion),
        "mean_class_accuracy": float(per_class_accuracy(confusion).nanmean()),
        "per_class_iou": {
            name: (None if math.isnan(iou) else iou) for name, iou in zip(CLASS_NAMES, ious.tolist(), strict=True)
        },
    }
