"""What predict writes for each picture (DIR/NAME.mask.png, DIR/NAME.overlay.png) and prints (one summary line),
and the checks that run before anything is written: no two pictures share a name, nothing existing is replaced
unasked."""

import io
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from segnet import CLASS_NAMES, NUM_CLASSES
from segnet.prediction.inputs import OUTPUT_SUFFIXES, Picture
from segnet.prediction.segment import Segmentation


def output_paths(folder: Path, name: str) -> tuple[Path, ...]:
    """The files predict writes for the picture `name`: its mask and its overlay."""
    return tuple(folder / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES)


def check_outputs(folder: Path, pictures: Sequence[Picture], overwrite: bool) -> None:
    """Refuses, before anything is written, outputs that two pictures would share, an output folder that is a
    file, and (unless `overwrite`) outputs that exist already.

    Raises:
        ValueError: One line naming the pictures or the files.
    """
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"{folder}: a file, where the output folder goes; name a folder with --out")
    sources = defaultdict(list)
    for picture in pictures:
        sources[picture.name].append(picture.source)
    shared = {name: found for name, found in sources.items() if len(found) > 1}
    if shared:
        name, found = next(iter(shared.items()))
        raise ValueError(
            f"{' and '.join(found)} would write the same outputs ({folder / name}.mask.png, .overlay.png)"
            + (f" ({len(shared) - 1} more names are shared)" if len(shared) > 1 else "")
            + "; rename them, or predict them in separate runs with different --out folders"
        )
    existing = [path for picture in pictures for path in output_paths(folder, picture.name) if os.path.lexists(path)]
    folders = [path for path in existing if path.is_dir()]
    if folders:  # a file cannot be renamed over a folder
        raise ValueError(f"{folders[0]}: a folder, where an output file goes; move it, or name another --out folder")
    if existing and not overwrite:
        shown = ", ".join(map(str, existing[:3])) + (f" and {len(existing) - 3} more" if len(existing) > 3 else "")
        verb = "exists" if len(existing) == 1 else "exist"
        raise ValueError(f"{shown}: {verb} already; nothing was written (--overwrite replaces them)")


def mask_png(mask: np.ndarray) -> bytes:
    """`mask` uint8 (H, W) class indices as an 8-bit grey PNG of the same size (pixel value = class index)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# Fewer pixels of a class than this are stray pixels at a digit's edge, not a digit: the thinnest MNIST digit,
# a 1, covers about 60 pixels, and the default model's stray labels on test panels cover 1-15.
MIN_DIGIT_PIXELS = 20


def summary_line(picture: Picture, segmentation: Segmentation) -> str:
    """`SOURCE: WxH[, inverted]: found 3 (412 px), 7 (388 px)[; stray pixels: 4 (2 px)]`, or `...: no digits`;
    digits in their order, those under MIN_DIGIT_PIXELS as stray pixels."""
    height, width = segmentation.mask.shape
    counts = np.bincount(segmentation.mask.ravel(), minlength=NUM_CLASSES)
    digits = sorted((CLASS_NAMES[index], int(counts[index])) for index in range(1, NUM_CLASSES) if counts[index])
    found = [f"{name} ({count} px)" for name, count in digits if count >= MIN_DIGIT_PIXELS]
    stray = [f"{name} ({count} px)" for name, count in digits if count < MIN_DIGIT_PIXELS]
    text = "found " + ", ".join(found) if found else "no digits"
    if stray:
        text += "; stray pixels: " + ", ".join(stray)
    inverted = ", inverted (dark ink on light)" if segmentation.inverted else ""
    return f"{picture.source}: {width}x{height}{inverted}: {text}"
