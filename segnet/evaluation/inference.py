"""Running a model over a dataset: predictions and the accumulated confusion matrix."""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from segnet.data.loading import to_input
from segnet.devices import select_device
from segnet.evaluation.metrics import confusion_matrix


@dataclass
class EvaluateConfig:
    """The evaluate stage's settings (params.yaml `evaluate`).

    Attributes:
        batch_size: Test panels per forward pass.
        samples: Test panels drawn in the predictions picture.
        device: auto (cuda if available, else cpu) | cpu | cuda | cuda:N. Its own setting, not the training
            device: a model trained on a GPU can be scored on a machine without one.
    """

    batch_size: int
    samples: int
    device: str

    def __post_init__(self):
        for name in ("batch_size", "samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be an integer >= 1, got {getattr(self, name)!r}")
        select_device(self.device)  # a name torch and this machine take


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed-precision context for `dtype` (None: plain float32)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@torch.inference_mode()
def predict_batches(
    model: nn.Module,
    images: torch.Tensor,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    index: torch.Tensor | None = None,
) -> Iterator[tuple[slice | torch.Tensor, torch.Tensor]]:
    """Yields (the batch's panels: a slice, or indices when `index` picks the panels, predicted classes
    (B, H, W) int64 on the CPU), batch by batch. `model` gets the pixels as segnet.data.loading.to_input gives them."""
    model.eval()
    for start in range(0, len(images) if index is None else len(index), batch_size):
        window = slice(start, start + batch_size) if index is None else index[start : start + batch_size]
        with autocast(device, amp_dtype):
            logits = model(to_input(images[window], device, channels_last))
        yield window, logits.argmax(1).cpu()


def accumulate_confusion(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch_size: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = True,
    index: torch.Tensor | None = None,
) -> torch.Tensor:
    """One confusion matrix (classes, classes) over every pixel of every image (of those `index` picks)."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for window, prediction in predict_batches(model, images, batch_size, device, amp_dtype, channels_last, index):
        confusion += confusion_matrix(labels[window], prediction, num_classes)
    return confusion
