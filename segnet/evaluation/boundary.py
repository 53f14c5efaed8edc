"""The boundary F1 score (BF) of the SegNet paper (Badrinarayanan et al. 2017, after Csurka et al. 2013).

It scores how well the predicted class contours follow the true ones, which mIoU barely sees. Per image and
per class present (in the truth or the prediction; a class absent from both is skipped):

- the class's boundary pixels in a label map: its pixels with a 4-neighbour of another class (the image
  border is not a boundary);
- precision P: the share of predicted boundary pixels within a distance d of a true boundary pixel; recall
  R: the share of true boundary pixels within d of a predicted one; F1 = 2PR / (P + R), 0 when P + R = 0;
- d is 0.75% of the image diagonal, Euclidean: on 64x64 panels 0.68 px, so only exact matches count;
- a class present but without boundary pixels in either map (a panel all background in both) scores 1; one
  with boundary pixels in one map only scores 0.

An image's BF is the mean over its classes; a set's BF is the mean over its images. "Within d" is a
dilation by a disk of radius d (the pixel offsets (dy, dx) with dy^2 + dx^2 <= d^2), done as a convolution
over the whole batch at once.
"""

import math

import torch
import torch.nn.functional as F

TOLERANCE = 0.0075
"""The distance d as a share of the image diagonal."""


def boundaries(labels: torch.Tensor) -> torch.Tensor:
    """Where a pixel has a 4-neighbour of another class: bool (B, H, W) from integer labels (B, H, W)."""
    edge = torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    rows = labels[:, 1:, :] != labels[:, :-1, :]
    columns = labels[:, :, 1:] != labels[:, :, :-1]
    edge[:, 1:, :] |= rows
    edge[:, :-1, :] |= rows
    edge[:, :, 1:] |= columns
    edge[:, :, :-1] |= columns
    return edge


def disk(radius: float) -> torch.Tensor:
    """The offsets within `radius` of the centre: bool (2r + 1, 2r + 1) with r = floor(radius)."""
    reach = math.floor(radius)
    offsets = torch.arange(-reach, reach + 1) ** 2
    return offsets[:, None] + offsets[None, :] <= radius**2


def dilate(masks: torch.Tensor, radius: float) -> torch.Tensor:
    """The pixels within `radius` (Euclidean) of a set pixel of `masks`: bool, the shape of `masks` (..., H, W)."""
    kernel = disk(radius)
    if kernel.numel() == 1:
        return masks
    reach = kernel.shape[0] // 2
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    # Sums of 0s and 1s, exact in float32: a pixel is reached when any set pixel lies under the disk.
    reached = F.conv2d(flat, kernel.float()[None, None].to(masks.device), padding=reach)
    return (reached > 0).reshape(masks.shape)


def class_boundary_f1(
    target: torch.Tensor, prediction: torch.Tensor, num_classes: int, tolerance: float = TOLERANCE
) -> torch.Tensor:
    """Each image's boundary F1 per class: float64 (B, classes), NaN where the class is in neither map.

    Args:
        target: True labels, integer (B, H, W).
        prediction: Predicted labels, integer (B, H, W), on the same device.
        num_classes: The classes scored, 0 to num_classes - 1.
        tolerance: The distance d as a share of the image diagonal.
    """
    radius = tolerance * math.hypot(*target.shape[-2:])
    classes = torch.arange(num_classes, device=target.device)[None, :, None, None]
    true_class, predicted_class = target[:, None] == classes, prediction[:, None] == classes  # (B, C, H, W)
    true_edge = true_class & boundaries(target)[:, None]
    predicted_edge = predicted_class & boundaries(prediction)[:, None]
    true_count, predicted_count = true_edge.sum((2, 3)).double(), predicted_edge.sum((2, 3)).double()
    precision = (predicted_edge & dilate(true_edge, radius)).sum((2, 3)) / predicted_count.clamp(min=1)
    recall = (true_edge & dilate(predicted_edge, radius)).sum((2, 3)) / true_count.clamp(min=1)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    f1 = torch.where((true_count == 0) & (predicted_count == 0), 1.0, f1)
    present = true_class.flatten(2).any(2) | predicted_class.flatten(2).any(2)
    return torch.where(present, f1, torch.nan)


def panel_boundary_f1(
    target: torch.Tensor, prediction: torch.Tensor, num_classes: int, tolerance: float = TOLERANCE
) -> torch.Tensor:
    """Each image's boundary F1, the mean over the classes present in it: float64 (B,). The mean of these
    over a set's batches is the set's BF. Arguments as in class_boundary_f1."""
    return class_boundary_f1(target, prediction, num_classes, tolerance).nanmean(1)
