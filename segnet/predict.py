"""Segment pictures with a trained model: `python -m segnet.predict --model MODEL INPUT... --out DIR [--overwrite]`.

MODEL is an MLflow model URI (`models:/NAME@champion`, `runs:/RUN_ID/model`) or a model folder such as data/model.
Each INPUT is a PNG or JPEG file, a folder of them, or a course .mat file (one picture per panel). For each picture
it writes DIR/NAME.mask.png (class indices 0-10 as 8-bit grey, the picture's size) and DIR/NAME.overlay.png, and
prints one line: its size and the digits found. Unreadable inputs get one line each and the others still run; the
exit status is then 1. Nothing is written if an output exists already (unless --overwrite) or two pictures would
share a name. docs/predict.md says how pictures of other sizes and dark ink on light paper are handled.
"""

import argparse
import logging
from pathlib import Path

from segnet.cli import run_stage
from segnet.files import write_bytes
from segnet.prediction import (
    Picture,
    Unreadable,
    check_outputs,
    load_segmenter,
    mask_png,
    output_paths,
    overlay_png,
    read_inputs,
    segment,
    summary_line,
)

log = logging.getLogger("segnet.predict")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="models:/NAME@ALIAS, runs:/RUN_ID/model, or a model folder")
    parser.add_argument("inputs", metavar="INPUT", type=Path, nargs="+", help="PNG or JPEG files, folders, .mat files")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="the folder the outputs go to")
    parser.add_argument("--overwrite", action="store_true", help="replace outputs that exist already")
    arguments = parser.parse_args()
    found = read_inputs(arguments.inputs)
    pictures = [item for item in found if isinstance(item, Picture)]
    check_outputs(arguments.out, pictures, arguments.overwrite)  # before the model: a refusal costs nothing
    segmenter = load_segmenter(arguments.model) if pictures else None
    for item in found:
        if isinstance(item, Unreadable):
            log.error("%s", item.problem)
            continue
        if segmenter is None:  # loaded whenever a picture was read: never here
            continue
        segmentation = segment(segmenter, item.grey)
        mask_path, overlay_path = output_paths(arguments.out, item.name)
        write_bytes(mask_path, mask_png(segmentation.mask))
        write_bytes(overlay_path, overlay_png(item.grey, segmentation.mask, item.name))
        print(summary_line(item, segmentation), flush=True)
    failed = len(found) - len(pictures)
    if failed:
        raise ValueError(
            f"{failed} file(s) or folder(s) could not be read, {len(pictures)} picture(s) were segmented "
            "(the lines above say why)"
        )


if __name__ == "__main__":
    run_stage(main)
