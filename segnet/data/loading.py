"""Loading prepared arrays and turning them into model batches."""

import json
import warnings
from pathlib import Path

import numpy as np
import torch

from segnet.errors import DatasetError


def load_split(folder: Path, split: str, mmap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Loads one split written by prepare_dataset.

    Args:
        folder: The prepared data folder.
        split: "train" or "test".
        mmap: Memory-map the files instead of reading them into memory.

    Returns:
        images: (N, H, W, 3) uint8 (k/255 pixels) or float32; labels: (N, H, W) uint8.

    Raises:
        DatasetError: The folder is not a complete prepared dataset (prepare writes dataset.json last,
            so a folder without it is unfinished) or its arrays disagree with dataset.json.
    """
    summary_path = Path(folder) / "dataset.json"
    if not summary_path.is_file():
        raise DatasetError(
            f"{folder}: no dataset.json, so not a complete prepared dataset; rerun the prepare stage "
            "(dvc repro prepare)"
        )
    try:
        expected = json.loads(summary_path.read_text())[f"{split}_images"]
    except (ValueError, KeyError, TypeError) as error:
        raise DatasetError(f"{summary_path}: unreadable ({error!r}); rerun the prepare stage") from error
    arrays = []
    for kind in ("images", "labels"):
        path = Path(folder) / f"{split}_{kind}.npy"
        if not path.is_file():
            raise DatasetError(f"{path}: missing; run the prepare stage first (dvc repro prepare)")
        try:
            arrays.append(np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False))
        except (ValueError, OSError, EOFError) as error:  # truncated, overwritten or not a .npy file at all
            raise DatasetError(f"{path}: unreadable ({error}); rerun the prepare stage (dvc repro prepare)") from error
    images, labels = arrays
    if images.ndim != 4 or labels.ndim != 3 or images.shape[:3] != labels.shape:
        raise DatasetError(f"{folder}: {split} images {images.shape} and labels {labels.shape} disagree")
    if images.shape[0] != expected:
        raise DatasetError(
            f"{folder}: dataset.json counts {expected} {split} panels but {split}_images.npy holds {images.shape[0]}; "
            "rerun the prepare stage (dvc repro prepare)"
        )
    # from_numpy shares memory. Memory-mapped arrays are read-only, which torch warns about; nothing here
    # writes to them (batches are gathered copies), so the warning is only noise.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.asarray(images)), torch.from_numpy(np.asarray(labels))


def split_indices(count: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of range(count) into training and validation indices (each sorted)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    val_count = int(round(count * val_fraction))
    if val_fraction > 0 and val_count == 0:
        val_count = 1
    return order[val_count:].sort().values, order[:val_count].sort().values


def to_float_input(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 or float pixels -> contiguous float32 (N, 3, H, W) in [0, 1] on the CPU: the input that
    the logged MLflow model documents, as users of the served model hold their pixels."""
    images = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    return images.permute(0, 3, 1, 2).contiguous()


def to_input(images: torch.Tensor, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """(N, H, W, 3) pixels -> the model's input (N, 3, H, W) on the device: uint8 stays uint8 (the model
    looks each byte's value up, see SegNet.forward; a quarter of float32's bytes to move), others become float32.

    The permute leaves each pixel's channels together in memory: PyTorch's channels-last memory format, which
    CPU and GPU convolutions run faster on, where `images` is contiguous (the augmentation's panels are a view of
    4-byte pixel words; the model's byte lookup turns those into channels-last input). `channels_last=False`
    makes it plain contiguous NCHW.
    """
    images = images.to(device, non_blocking=True)
    if images.dtype != torch.uint8:
        images = images.float()
    images = images.permute(0, 3, 1, 2)
    return images if channels_last else images.contiguous()
