"""The README's results table, written from the committed metrics files: `python -m segnet.report`.

The table sits between the lines `<!-- results:start -->` and `<!-- results:end -->` of README.md and is
made from metrics/evaluate.json, metrics/train.json and metrics/prepare.json, which `dvc repro` writes and
git keeps. `--check` changes nothing and exits with 1, naming the first line that differs, when the README
no longer says what the metrics files do (tests/test_docs.py runs the same check).
"""

import argparse
import json
import sys
from pathlib import Path

from segnet import CLASS_NAMES
from segnet.cli import run_stage
from segnet.files import write_bytes

START = "<!-- results:start -->"
END = "<!-- results:end -->"
ROOT = Path(__file__).resolve().parent.parent


def results_table(metrics: Path) -> str:
    """The results table (Markdown, one newline-terminated line per row) from a folder of metrics files.

    Args:
        metrics: A folder holding evaluate.json, train.json and prepare.json as the pipeline writes them.

    Returns:
        The text that goes between the README's two markers. Reads the files, writes nothing.

    Raises:
        ValueError: A file is missing, is not JSON, or lacks a key the table shows; the message names both.
    """
    files = {name: metrics / f"{name}.json" for name in ("evaluate", "train", "prepare")}
    contents = {name: _read_json(path) for name, path in files.items()}

    def number(name: str, key: str) -> float:
        return _number(contents[name], files[name], key)

    per_class = contents["evaluate"].get("per_class_iou")
    if not isinstance(per_class, dict) or set(per_class) != set(CLASS_NAMES):
        raise ValueError(f"{files['evaluate']} per_class_iou: must map each of {list(CLASS_NAMES)} to a number")
    weakest = min(CLASS_NAMES, key=lambda name: _number(per_class, files["evaluate"], name))
    score = {
        key: f"{number('evaluate', key):.4f}"
        for key in (
            "miou",
            "miou_ci_low",
            "miou_ci_high",
            "miou_digits",
            "pixel_accuracy",
            "mean_class_accuracy",
            "boundary_f1",
        )
    }
    rows = [
        (
            "test mIoU, 11 classes (95% interval)",
            f"**{score['miou']}** [{score['miou_ci_low']}, {score['miou_ci_high']}]",
        ),
        ("test mIoU, the 10 digit classes", score["miou_digits"]),
        ("test global accuracy (G)", score["pixel_accuracy"]),
        ("test class average accuracy (C)", score["mean_class_accuracy"]),
        ("test boundary F1 (BF)", score["boundary_f1"]),
        ("lowest class IoU", f"{per_class[weakest]:.4f} ({'' if weakest == 'background' else 'digit '}{weakest})"),
        (
            "best validation mIoU",
            (
                f"{number('train', 'best_val_miou'):.4f} (epoch {number('train', 'best_epoch'):.0f} of "
                f"{number('train', 'epochs'):.0f})"
            ),
        ),
        (
            "training, validation included",
            f"{number('train', 'train_seconds'):,.0f} s, {number('train', 'train_images_per_second'):,.0f} images/s",
        ),
        (
            "panels: training / test",
            (
                f"{number('prepare', 'train_images'):,.0f} / {number('prepare', 'test_images'):,.0f} "
                f"({number('prepare', 'height'):.0f}x{number('prepare', 'width'):.0f})"
            ),
        ),
    ]
    lines = ["| metric | value |", "|---|---:|", *(f"| {name} | {value} |" for name, value in rows)]
    return "".join(line + "\n" for line in lines)


def read_table(readme: str, name: str = "README.md") -> str:
    """The text between the two markers of `readme` (its contents; `name` is for the error message)."""
    start, end = _marker_span(readme, name)
    return readme[start:end]


def replace_table(readme: str, table: str, name: str = "README.md") -> str:
    """`readme` with the text between its two markers replaced by `table`."""
    start, end = _marker_span(readme, name)
    return readme[:start] + table + readme[end:]


def difference(found: str, expected: str) -> str | None:
    """None when the two tables are equal, else a line saying where they first differ."""
    if found == expected:
        return None
    found_lines, expected_lines = found.splitlines(), expected.splitlines()
    for number, (seen, wanted) in enumerate(zip(found_lines, expected_lines, strict=False), start=1):
        if seen != wanted:
            return f"table line {number} reads {seen!r}, the metrics give {wanted!r}"
    if len(found_lines) != len(expected_lines):
        return f"the table has {len(found_lines)} lines, the metrics give {len(expected_lines)}"
    return "the table's line endings or blank lines differ"


def _marker_span(readme: str, name: str) -> tuple[int, int]:
    """Where the table starts (after the start marker's line) and ends (where the end marker's line starts)."""
    lines = readme.splitlines(keepends=True)
    starts = [index for index, line in enumerate(lines) if line.strip() == START]
    ends = [index for index, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise ValueError(
            f"{name}: needs one line {START} followed by one line {END} around the results table; "
            f"found {len(starts)} and {len(ends)}"
        )
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    return offsets[starts[0] + 1], offsets[ends[0]]


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not found (the pipeline writes it: dvc repro)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path}: must hold a JSON object, got {type(value).__name__}")
    return value


def _number(data: dict, path: Path, key: str) -> float:
    if key not in data:
        raise ValueError(f"{path}: no key {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{path} {key}: must be a number, got {value!r}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit with 1 when the README's table differs from the metrics",
    )
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="the file holding the table")
    parser.add_argument("--metrics", type=Path, default=ROOT / "metrics", help="the folder of metrics files")
    args = parser.parse_args(argv)
    readme, metrics = _shown(args.readme), _shown(args.metrics)
    if not args.readme.is_file():
        raise ValueError(f"{readme}: not found")
    text = args.readme.read_text()
    table = results_table(args.metrics)
    if args.check:
        problem = difference(read_table(text, readme), table)
        if problem:
            print(
                f"{readme}: the results table differs from {metrics}/: {problem}; rewrite it with `make readme`",
                file=sys.stderr,
            )
            sys.exit(1)
        print(f"{readme}: the results table matches {metrics}/")
        return
    updated = replace_table(text, table, readme)
    if updated == text:
        print(f"{readme}: the results table already matches {metrics}/")
        return
    write_bytes(args.readme, updated.encode())
    print(f"{readme}: results table rewritten from {metrics}/")


def _shown(path: Path) -> str:
    """`path` as a message shows it: relative to the working directory where it lies inside it."""
    absolute = path.resolve()
    return str(absolute.relative_to(Path.cwd())) if absolute.is_relative_to(Path.cwd()) else str(path)


if __name__ == "__main__":
    run_stage(main)
