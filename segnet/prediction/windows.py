"""Segmenting an image of any size with a model that sees fixed square windows: overlapping windows cover the
image exactly, and each pixel's class scores are the mean of the softmax of every window that holds it."""

from collections.abc import Callable

import torch

# Half a window: every pixel away from the edges is seen by several windows, so a digit cut by one window's edge
# lies whole inside another.
STRIDE = 32
# Windows per forward pass: bounds the memory of a large image's activations.
BATCH = 32


def window_starts(length: int, size: int, stride: int = STRIDE) -> list[int]:
    """The offsets along one side of `length` pixels at which windows of `size` start: every `stride` from 0, and
    the last one flush with the far edge, so that no window hangs over it. One window where `length` <= `size`."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] != length - size:
        starts.append(length - size)
    return starts


def stitched_scores(
    logits: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, size: int, stride: int = STRIDE
) -> torch.Tensor:
    """Class probabilities of every pixel of `image`, averaged over the windows that hold it.

    Args:
        logits: The model: windows (N, size, size) float32 -> class logits (N, classes, size, size).
        image: Pixels (H, W) float32, light ink on a dark background of 0.
        size: The window side the model takes.
        stride: Pixels between the starts of neighbouring windows.

    Returns:
        float32 (classes, H, W): the mean softmax of the windows that cover each pixel. A side shorter than `size`
        is padded with background (0) at its end, which the result leaves out.
    """
    height, width = image.shape
    padded = torch.zeros(max(height, size), max(width, size), dtype=torch.float32)
    padded[:height, :width] = image
    corners = [(y, x) for y in window_starts(height, size, stride) for x in window_starts(width, size, stride)]
    total = torch.zeros(0)  # (classes, H, W), sized by the first batch's scores
    covered = torch.zeros(padded.shape, dtype=torch.float32)
    for first in range(0, len(corners), BATCH):
        batch = corners[first : first + BATCH]
        windows = torch.stack([padded[y : y + size, x : x + size] for y, x in batch])
        probabilities = logits(windows).float().softmax(dim=1)  # (N, classes, size, size)
        if first == 0:
            total = torch.zeros((probabilities.shape[1], *padded.shape), dtype=torch.float32)
        for (y, x), window in zip(batch, probabilities, strict=True):
            total[:, y : y + size, x : x + size] += window
            covered[y : y + size, x : x + size] += 1
    return (total / covered)[:, :height, :width]
