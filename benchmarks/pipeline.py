"""Benchmark: the default pipeline from scratch, as a new user runs it, timed stage by stage (about 10 minutes here).

Clones the repository's HEAD into benchmarks/results/clone (no data, no tracking store; replaced on every
run and kept afterwards for inspection), runs each DVC stage in order with the default params.yaml and
writes benchmarks/results/pipeline.md and .json: seconds per stage (process start included), the total, the
time to accuracy and the test metrics.
Usage: python -m benchmarks.pipeline
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import REPO, RESULTS, report

STAGES = ("generate", "prepare", "train", "evaluate")


def main() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    clone = RESULTS / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    seconds = {}
    for stage in STAGES:
        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "--single-item", stage], cwd=clone, env=env, check=True)
        seconds[stage] = time.perf_counter() - start
    evaluation = json.loads((clone / "metrics" / "evaluate.json").read_text())
    training = json.loads((clone / "metrics" / "train.json").read_text())

    lines = [
        "| stage | seconds |",
        "|---|---:|",
        *[f"| {stage} | {seconds[stage]:.0f} |" for stage in STAGES],
        f"| **total (`dvc repro`)** | **{sum(seconds.values()):.0f}** |",
        "",
        f"Time to accuracy: test miou {evaluation['miou']:.4f} after {training['train_seconds']:.0f} s "
        f"({training['train_seconds'] / 60:.1f} min) of training, validation included: {training['epochs']} epochs, "
        f"{training['train_images_per_second']:.0f} images/s, best validation mIoU {training['best_val_miou']:.4f} "
        f"at epoch {training['best_epoch']}.",
        "",
        "| test metric | value |",
        "|---|---:|",
        *[
            f"| {name} | {evaluation[name]:.4f} |"
            for name in ("miou", "miou_digits", "pixel_accuracy", "mean_class_accuracy")
        ],
        *[f"| IoU {name} | {value:.4f} |" for name, value in evaluation["per_class_iou"].items()],
    ]
    report("pipeline", lines, {"stage_seconds": seconds, "train": training, "evaluate": evaluation})


if __name__ == "__main__":
    main()
