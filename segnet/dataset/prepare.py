"""Converting a multi-digit MNIST archive into arrays that training reads without parsing .mat again.

Output folder layout (all NumPy .npy, loadable with allow_pickle=False and memory-mappable):
    train_images.npy  (N, H, W, 3) uint8 (k/255 pixels, lossless) or float32 (any other pixels)
    train_labels.npy  (N, H, W) uint8, 0-10
    test_images.npy, test_labels.npy  likewise
    dataset.json      the summary returned by prepare_dataset

The archive is streamed: files are parsed in parallel threads and appended to the arrays on disk in
archive order, so memory use stays the same whatever the number of files (the course generator's full
release has 500,000 panels). The folder is built beside its final place and swapped in whole, dataset.json
written last: a failed or interrupted run leaves the previous folder (or none) in place, never a partial one.
"""

import collections
import itertools
import logging
import threading
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segnet import NUM_CLASSES
from segnet.dataset.archive import ArchiveLimits, index_archive, open_archive, read_member
from segnet.dataset.matfile import read_panels
from segnet.errors import DatasetError
from segnet.files import NpyWriter, check_replaceable, sha256_file, staged_directory, write_json

log = logging.getLogger(__name__)

# Every file the output folder holds: the four arrays and, written last, the summary.
OUTPUT_NAMES = frozenset({"train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy", "dataset.json"})

# Rows converted at a time when a split turns out to need float32 after uint8 rows were written.
_CONVERT_ROWS = 4096


def prepare_dataset(archive_path: Path, output_dir: Path, *, limits: ArchiveLimits, workers: int = 1) -> dict:
    """Reads every .mat file of the archive, validates it and writes the split arrays.

    Args:
        archive_path: The zip (read only; never modified).
        output_dir: Folder for the .npy files; replaced as a whole, and only once everything is read.
        limits: How far the archive and each file in it may inflate.
        workers: Threads that parse .mat files. The output does not depend on it.

    Returns:
        A summary: archive fingerprint, file and image counts, pixel storage and class histograms.

    Raises:
        DatasetError: Anything wrong with the archive or its files, naming the file.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    archive_path = Path(archive_path)
    if archive_path.resolve().is_relative_to(Path(output_dir).resolve()):
        raise ValueError(
            f"{archive_path}: the archive is at or below the output folder {output_dir}, which prepare "
            "replaces as a whole; name another output folder"
        )
    check_replaceable(output_dir, OUTPUT_NAMES)  # now, before the archive is hashed and indexed
    fingerprint = sha256_file(archive_path) if archive_path.is_file() else None
    with open_archive(archive_path) as archive:
        index = index_archive(archive, str(archive_path), limits=limits)
    for name in index.ignored:
        log.warning("%s:%s: not a batch*.mat or testset*.mat file; ignored", archive_path, name)

    summary: dict[str, object] = {"archive": str(archive_path), "archive_sha256": fingerprint}
    with staged_directory(output_dir, OUTPUT_NAMES) as staging:
        splits: dict[str, _SplitWriter] = {}
        with _ParallelReader(archive_path, limits, workers) as read_files:
            for split, members in (("train", index.train), ("test", index.test)):
                writer = _SplitWriter(staging, split, str(archive_path))
                try:
                    for name, (images, exact, masks) in zip(members, read_files(members), strict=True):
                        writer.append(name, images, exact, masks)
                except BaseException:
                    writer.discard()
                    raise
                writer.close()
                splits[split] = writer
        if splits["train"].shape != splits["test"].shape:
            # Every file of a split has its split's size (_SplitWriter checks), so the first ones stand for all.
            raise DatasetError(
                f"{archive_path}:{index.test[0]}: test panels are {splits['test'].shape}, but training panels "
                f"({index.train[0]} and the rest) are {splits['train'].shape}; both must have one size"
            )
        summary["height"], summary["width"] = (int(side) for side in splits["train"].shape)
        for split, writer in splits.items():
            summary[f"{split}_files"] = len(index.train if split == "train" else index.test)
            summary[f"{split}_images"] = writer.rows
            summary[f"{split}_pixel_dtype"] = str(writer.pixel_dtype)
            summary[f"{split}_class_pixels"] = [int(count) for count in writer.histogram]
        # Last: load_split takes a folder without dataset.json for an unfinished one.
        write_json(staging / "dataset.json", summary)
    return summary


class _SplitWriter:
    """Appends one split's panels, file by file, to its .npy files, checking that all files agree in shape.

    Pixels are stored as uint8 while every file holds exact k/255 values (the course release does: uint8
    holds them exactly in a quarter of the space). The first file that does not turns the whole split to
    float32: the rows written so far are converted on disk, block by block.
    """

    def __init__(self, folder: Path, split: str, source: str):
        self.folder, self.split, self.source = folder, split, source
        # Opened by the split's first file, whose panels set the split's (H, W).
        self._images: NpyWriter | None = None
        self._labels: NpyWriter | None = None
        self._shape: tuple[int, int] | None = None
        self.histogram = np.zeros(NUM_CLASSES, dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the split's panels."""
        return self._opened()[2]

    @property
    def rows(self) -> int:
        return self._opened()[1].rows

    @property
    def pixel_dtype(self) -> np.dtype:
        return self._opened()[0].dtype

    def append(self, name: str, images: np.ndarray, exact: bool, masks: np.ndarray) -> None:
        if not exact and (self._images is None or self._images.dtype == np.uint8):
            log.warning(
                "%s:%s: pixels are not all multiples of 1/255; storing the %s split as float32",
                self.source,
                name,
                self.split,
            )
        if self._shape is None:
            self._shape = (images.shape[1], images.shape[2])
            self._images = NpyWriter(self._path("images"), np.uint8 if exact else np.float32, images.shape[1:])
            self._labels = NpyWriter(self._path("labels"), np.uint8, masks.shape[1:])
        elif images.shape[1:3] != self._shape:
            raise DatasetError(f"{self.source}:{name}: panels are {images.shape[1:3]}, earlier files had {self._shape}")
        if self._opened()[0].dtype == np.uint8 and not exact:
            self._convert_to_float()
        image_writer, label_writer, _ = self._opened()
        image_writer.append(images if exact == (image_writer.dtype == np.uint8) else to_unit_float(images))
        label_writer.append(masks)
        self.histogram += np.bincount(masks.reshape(-1), minlength=NUM_CLASSES)

    def close(self) -> None:
        image_writer, label_writer, _ = self._opened()
        image_writer.close()
        label_writer.close()

    def discard(self) -> None:
        for writer in (self._images, self._labels):
            if writer is not None:
                writer.discard()

    def _opened(self) -> tuple[NpyWriter, NpyWriter, tuple[int, int]]:
        """The images' and labels' writers and the panels' (H, W), once the first file has opened them."""
        if self._images is None or self._labels is None or self._shape is None:
            raise RuntimeError(f"the {self.split} split has no file yet")
        return self._images, self._labels, self._shape

    def _path(self, kind: str) -> Path:
        return self.folder / f"{self.split}_{kind}.npy"

    def _convert_to_float(self) -> None:
        written = self._path("images").with_suffix(".uint8.npy")
        self._opened()[0].close()
        self._path("images").rename(written)
        quantized = np.load(written, mmap_mode="r")
        self._images = NpyWriter(self._path("images"), np.float32, quantized.shape[1:])
        for start in range(0, len(quantized), _CONVERT_ROWS):
            self._images.append(to_unit_float(quantized[start : start + _CONVERT_ROWS]))
        del quantized
        written.unlink()


class _ParallelReader:
    """Parses files in `workers` threads, at most 2 per thread in flight, and yields them in archive order.

    As a context it gives read_files(members): an iterator of (images, exact, masks), one per member, in order.

    Threads, not processes: the work is inflating (zlib) and NumPy array passes over large arrays, which run
    without holding Python's global lock, so threads use the cores without start-up cost, pickling of
    results, or worker processes that could outlive a killed stage. The in-flight bound keeps memory
    flat: a parsed file waits only for the files before it, never for the whole archive.
    """

    def __init__(self, archive_path: Path, limits: ArchiveLimits, workers: int):
        self.archive_path, self.limits = archive_path, limits
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="prepare")
        self.in_flight = 2 * workers
        self.local = threading.local()
        self.archives: list[zipfile.ZipFile] = []

    def __enter__(self):
        return self._read_files

    def __exit__(self, *exc_info):
        self.pool.shutdown(cancel_futures=True)
        for archive in self.archives:
            archive.close()

    def _read_files(self, members: list[str]) -> Iterator[tuple[np.ndarray, bool, np.ndarray]]:
        pending: collections.deque[Future[tuple[np.ndarray, bool, np.ndarray]]] = collections.deque()
        names = iter(members)
        for name in itertools.islice(names, self.in_flight):
            pending.append(self.pool.submit(self._read_file, name))
        while pending:
            result = pending.popleft().result()
            for name in itertools.islice(names, 1):
                pending.append(self.pool.submit(self._read_file, name))
            yield result

    def _read_file(self, name: str) -> tuple[np.ndarray, bool, np.ndarray]:
        """Reads and validates one member; returns its images (uint8 when exact k/255, else float32), exact, masks."""
        # One ZipFile per thread: each keeps its own file position.
        if not hasattr(self.local, "archive"):
            self.local.archive = zipfile.ZipFile(self.archive_path)
            self.archives.append(self.local.archive)
        source = str(self.archive_path)
        data = read_member(self.local.archive, name, source, limits=self.limits)
        images, masks = read_panels(data, f"{source}:{name}", max_bytes=self.limits.max_member_bytes)
        as_bytes = np.rint(images * 255).astype(np.uint8)
        # The course release stores k/255 in float32: uint8 holds it exactly and takes a quarter of the space.
        if np.array_equal(to_unit_float(as_bytes), images):
            return as_bytes, True, masks
        return images, False, masks


def to_unit_float(pixels: np.ndarray) -> np.ndarray:
    """uint8 0-255 -> float32 in [0, 1], computed exactly as k / 255 in float32."""
    return pixels.astype(np.float32) / np.float32(255)
