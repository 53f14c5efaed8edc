"""What `python -m segnet.predict` reads: each INPUT (an image, a folder of them, or a course .mat file) as the
named grey pictures it holds, or the one problem that stops it being read. One bad input never stops the others."""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segnet.dataset.matfile import read_panels
from segnet.prediction.images import luminance, read_image

# What predict writes; in a folder these are its own earlier outputs, not inputs.
OUTPUT_SUFFIXES = (".mask.png", ".overlay.png")
# The most one .mat file may inflate to: predict's own guard against a zip-bomb-like file, which the course's files
# of 500 panels (33-41 MB) pass with room. predict runs outside a project too, so it does not read params.yaml.
MAX_MAT_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class Picture:
    """One image to segment.

    Attributes:
        name: Its outputs' names start with this: the file's stem, or STEM-000 for a .mat file's panels.
        source: Where it came from, for the summary line: the path, and a .mat file's panel number.
        grey: float32 (H, W) in [0, 1], as read (before any inversion).
    """

    name: str
    source: str
    grey: np.ndarray


@dataclass(frozen=True)
class Unreadable:
    """An input that gave no picture, and why, in a line that names it."""

    problem: str


def read_inputs(paths: Sequence[Path]) -> list[Picture | Unreadable]:
    """Every picture the INPUT `paths` hold, in their order (a folder's files sorted by name), with an
    Unreadable in place of each file or folder that could not be read."""
    found: list[Picture | Unreadable] = []
    for path in paths:
        try:
            files = folder_files(path) if path.is_dir() else [path]
        except OSError as error:  # a folder it may not list
            found.append(Unreadable(f"{path}: cannot be read ({error.strerror or error})"))
            continue
        if not files:
            found.append(Unreadable(f"{path}: an empty folder (no files to read)"))
        for file in files:
            found.extend(read_file(file))
    return found


def folder_files(folder: Path) -> list[Path]:
    """The files directly in `folder`, sorted by name; sub-folders, hidden files and predict's own outputs left out."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".") and not path.name.endswith(OUTPUT_SUFFIXES)
    )


def read_file(path: Path) -> list[Picture | Unreadable]:
    """The pictures in one file: one for an image, one per panel for a .mat file; or why there are none."""
    try:
        if not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        if not path.is_file():
            raise ValueError(f"{path}: not a file")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: an empty file (0 bytes)")
        if path.suffix.lower() == ".mat":
            return list(read_mat(path))
        return [Picture(path.stem, str(path), read_image(path))]
    except ValueError as error:  # segnet.errors.DatasetError among them
        return [Unreadable(str(error))]
    except OSError as error:  # no permission to read it, say
        return [Unreadable(f"{path}: cannot be read ({error.strerror or error})")]


def read_mat(path: Path) -> list[Picture]:
    """The panels of a course .mat file (imgMat (H, W, 3, N); its truth, semanticMaskMat, is not used), named
    STEM-000, STEM-001, ...

    Raises:
        ValueError: Naming `path`: not a MATLAB file, or not in the course's layout.
    """
    images, _ = read_panels(path.read_bytes(), str(path), max_bytes=MAX_MAT_BYTES)
    digits = max(3, len(str(len(images) - 1)))
    names = [f"{path.stem}-{index:0{digits}d}" for index in range(len(images))]
    return [
        Picture(name, f"{path} panel {index} ({name})", luminance(image))
        for index, (name, image) in enumerate(zip(names, images, strict=True))
    ]
