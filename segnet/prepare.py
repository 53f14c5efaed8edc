"""Converting a multi-digit MNIST archive into arrays that training reads without parsing .mat again.

Output folder layout (all NumPy .npy, loadable with allow_pickle=False and memory-mappable):
    train_images.npy  (N, H, W, 3) uint8 (k/255 pixels, lossless) or float32 (any other pixels)
    train_labels.npy  (N, H, W) uint8, 0-10
    test_images.npy, test_labels.npy  likewise
    dataset.json      the summary returned by prepare_dataset

The folder is built beside its final place and swapped in whole, dataset.json written last: a
failed or interrupted run leaves the previous folder (or none) in place, never a partial one.
"""

import logging
from pathlib import Path

import numpy as np

from segnet.archive import ArchiveLimits, index_archive, open_archive, read_member, sha256_file
from segnet.errors import DatasetError
from segnet.files import save_npy, staged_directory, write_json
from segnet.matfile import NUM_CLASSES, read_panels

log = logging.getLogger(__name__)


def prepare_dataset(archive_path: Path, output_dir: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> dict:
    """Reads every .mat file of the archive, validates it and writes the split arrays.

    Args:
        archive_path: The zip (read only; never modified).
        output_dir: Folder for the .npy files; replaced as a whole, and only once everything is read.
        limits: How far the archive and each file in it may inflate.

    Returns:
        A summary: archive fingerprint, file and image counts, pixel storage and class histograms.

    Raises:
        DatasetError: Anything wrong with the archive or its files, naming the file.
    """
    archive_path = Path(archive_path)
    fingerprint = sha256_file(archive_path) if archive_path.is_file() else None
    with open_archive(archive_path) as archive:
        index = index_archive(archive, str(archive_path), limits=limits)
        for name in index.ignored:
            log.warning("%s:%s: not a batch*.mat or testset*.mat file; ignored", archive_path, name)
        splits = {
            "train": _read_split(archive, index.train, str(archive_path), limits=limits),
            "test": _read_split(archive, index.test, str(archive_path), limits=limits),
        }

    shapes = {split: images.shape[1:3] for split, (images, _) in splits.items()}
    if shapes["train"] != shapes["test"]:
        raise DatasetError(
            f"{archive_path}: training panels are {shapes['train']} but test panels are {shapes['test']}"
        )

    summary = {
        "archive": str(archive_path),
        "archive_sha256": fingerprint,
        "height": int(shapes["train"][0]),
        "width": int(shapes["train"][1]),
    }
    for split, (images, labels) in splits.items():
        histogram = np.bincount(labels.reshape(-1), minlength=NUM_CLASSES)
        summary[f"{split}_files"] = len(index.train if split == "train" else index.test)
        summary[f"{split}_images"] = int(images.shape[0])
        summary[f"{split}_pixel_dtype"] = str(images.dtype)
        summary[f"{split}_class_pixels"] = [int(count) for count in histogram]
    with staged_directory(output_dir) as staging:
        for split, (images, labels) in splits.items():
            save_npy(staging / f"{split}_images.npy", images)
            save_npy(staging / f"{split}_labels.npy", labels)
        # Last: load_split takes a folder without dataset.json for an unfinished one.
        write_json(staging / "dataset.json", summary)
    return summary


def _read_split(archive, members: list[str], source: str, *, limits: ArchiveLimits) -> tuple[np.ndarray, np.ndarray]:
    """Reads members in order; returns (images, labels) with images uint8 when that is lossless."""
    quantized, exact_float, labels, shape = [], [], [], None
    for name in members:
        where = f"{source}:{name}"
        data = read_member(archive, name, source, limits=limits)
        images, masks = read_panels(data, where, max_bytes=limits.max_member_bytes)
        if shape is None:
            shape = images.shape[1:]
        elif images.shape[1:] != shape:
            raise DatasetError(f"{where}: panels are {images.shape[1:3]}, earlier files had {shape[:2]}")
        as_bytes = np.rint(images * 255).astype(np.uint8)
        # The course release stores k/255 in float32: uint8 holds it exactly and takes a quarter of the space.
        if np.array_equal(to_unit_float(as_bytes), images):
            quantized.append(as_bytes)
            exact_float.append(None)
        else:
            quantized.append(None)
            exact_float.append(images)
        labels.append(masks)
    if all(q is not None for q in quantized):
        images = np.concatenate(quantized)
    else:
        log.warning("%s: pixels are not all multiples of 1/255; storing float32", source)
        images = np.concatenate([f if f is not None else to_unit_float(q) for q, f in zip(quantized, exact_float)])
    return images, np.concatenate(labels)


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 0-255 -> float32 in [0, 1], computed exactly as k / 255 in float32."""
    return pixels.astype(np.float32) / np.float32(255)
