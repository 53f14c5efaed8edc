"""Benchmark: the default pipeline from scratch, as a new user runs it, timed stage by stage (about 10 minutes here).

Clones the repository's HEAD into benchmarks/results/clone (no data, no tracking store; replaced on every
run and kept afterwards for inspection), sets the params given with --set in its params.yaml, runs each DVC
stage in order and writes benchmarks/results/NAME.md and .json: seconds per stage (process start included),
the total, the time to accuracy and the test metrics, with the machine (its GPU, if training used one), the
torch version and the date.
Usage: python -m benchmarks.pipeline [--name NAME] [--set KEY=VALUE ...]
  e.g. on a GPU machine: python -m benchmarks.pipeline --name gpu --set runtime.device=cuda
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ruamel.yaml import YAML

from benchmarks.common import REPO, RESULTS, report

STAGES = ("generate", "prepare", "train", "evaluate")


def set_params(params_file: Path, settings: list[str]) -> dict[str, object]:
    """Writes each KEY=VALUE (a dotted key params.yaml has; the value read as YAML, as `dvc exp run -S` reads
    it) into `params_file`, keeping its comments; returns the settings made."""
    yaml = YAML()  # round trip: the file keeps its comments and order
    params = yaml.load(params_file)
    made: dict[str, object] = {}
    for setting in settings:
        key, separator, text = setting.partition("=")
        *sections, name = key.split(".")
        table = params
        for section in sections:
            table = table.get(section) if isinstance(table, dict) else None
        if not separator or not isinstance(table, dict) or name not in table:
            raise SystemExit(f"--set {setting}: not KEY=VALUE with a key params.yaml has")
        table[name] = made[key] = YAML(typ="safe", pure=True).load(text)
    yaml.dump(params, params_file)
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="pipeline", help="the results' name: benchmarks/results/NAME.md, .json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a param (repeatable)")
    arguments = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    clone = RESULTS / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    changed = set_params(clone / "params.yaml", arguments.set)
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
            for name in ("miou", "miou_digits", "pixel_accuracy", "mean_class_accuracy", "boundary_f1")
        ],
        *[f"| IoU {name} | {value:.4f} |" for name, value in evaluation["per_class_iou"].items()],
    ]
    if changed:
        lines[:0] = ["Params set: " + ", ".join(f"`{key}={value}`" for key, value in changed.items()), ""]
    summary = {
        "date": datetime.date.today().isoformat(),
        "params_set": changed,
        "training_images_per_second": training["train_images_per_second"],  # the whole run, validation included
        "test_miou": evaluation["miou"],
    }
    figures = {"stage_seconds": seconds, "train": training, "evaluate": evaluation}
    report(arguments.name, lines, summary | figures)


if __name__ == "__main__":
    main()
