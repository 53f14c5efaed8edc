"""What the benchmarks share: params.yaml's settings and the one call into the training loop, a small built-in
dataset, how they time a call, and where their figures go (benchmarks/results/NAME.md and NAME.json)."""

import argparse
import copy
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segnet import NUM_CLASSES
from segnet.data import AugmentConfig
from segnet.dataset import ArchiveLimits, SplitSpec, build_archive
from segnet.dataset.prepare import prepare_dataset
from segnet.model import SegNet, SegNetConfig
from segnet.params import build, load_params
from segnet.training import RuntimeConfig, TrainConfig, TrainResult, set_seed, train

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
# Speed measurements are repeated in interleaved rounds and the best kept: on a shared machine other load
# only ever slows a measurement down, and interleaving spreads a slow spell over every variant alike.
ROUNDS = 5
# A GPU step takes milliseconds: GPU speed measurements train this many epochs, so that the timed stretch lasts seconds.
GPU_EPOCHS = 5
# Training files of 32 panels a benchmark needs at least: ours holds some back for validation, and both loops
# time only the steps after their warm-up.
MIN_FILES = 8
# The params.yaml sections whose settings a benchmark may change, each by its name alone.
TRAINING_SECTIONS = ("train", "augment", "runtime")
# The built-in panels are RGB.
IN_CHANNELS = 3


@dataclass(frozen=True)
class Settings:
    """params.yaml as a benchmark runs it: one epoch on the CPU unless changed, and the benchmark's changes."""

    params: dict

    def __getitem__(self, name: str) -> Any:
        """The training setting `name`, from whichever section holds it."""
        return self.params[section_of(self.params, name)][name]

    @property
    def model(self) -> SegNetConfig:
        return build(SegNetConfig, "model", self.params["model"], num_classes=NUM_CLASSES, in_channels=IN_CHANNELS)

    def training(self) -> dict:
        """The training loop's config objects, each checked as the train stage checks it: train()'s keywords."""
        return {
            "config": build(TrainConfig, "train", self.params["train"]),
            "augmentation": build(AugmentConfig, "augment", self.params["augment"]),
            "runtime": build(RuntimeConfig, "runtime", self.params["runtime"]),
        }


def section_of(params: dict, name: str) -> str:
    """The training section of `params` that holds the setting `name`; ValueError if none does."""
    for section in TRAINING_SECTIONS:
        if name in params[section]:
            return section
    known = sorted(key for section in TRAINING_SECTIONS for key in params[section])
    raise ValueError(f"params.yaml has no training setting {name!r}; known: {known}")


def load_settings(**changes: object) -> Settings:
    """params.yaml's settings for one epoch on the CPU, with `changes` (setting name -> value) applied."""
    params = copy.deepcopy(load_params(REPO / "params.yaml"))
    for name, value in {"epochs": 1, "device": "cpu", **changes}.items():
        params[section_of(params, name)][name] = value
    return Settings(params)


def train_model(
    settings: Settings,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    val_index: torch.Tensor,
    **keywords,
) -> TrainResult:
    """A SegNet seeded with 0, trained by the training stage's loop with `settings`; `keywords` go to train()."""
    configs = settings.training()
    set_seed(0)
    return train(
        SegNet(settings.model),
        images,
        labels,
        train_index,
        val_index,
        num_classes=NUM_CLASSES,
        seed=0,
        **configs,
        **keywords,
    )


def read_arguments(
    description: str | None, default_files: int, parser: argparse.ArgumentParser | None = None
) -> argparse.Namespace:
    """The command line: --files (training .mat files of 32 panels) and whatever else `parser` defines."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--files", type=int, default=default_files, help="training .mat files of 32 panels to build")
    arguments = parser.parse_args()
    if arguments.files < MIN_FILES:
        # A training measurement times the steps after its warm-up (benchmarks/measure.py): one file, one step.
        parser.error(f"--files must be at least {MIN_FILES}, got {arguments.files}")
    return arguments


def small_archive(folder: Path, train_files: int, test_files: int) -> Path:
    """A seeded built-in archive of 32-panel files (training 0-4 digits, test 0-9) in `folder`."""
    archive = Path(folder) / "archive.zip"
    build_archive(
        archive,
        seed=0,
        train=SplitSpec(train_files, 32, 0, 4),
        test=SplitSpec(test_files, 32, 0, 9),
        test_digit_fraction=0.2,
    )
    return archive


def prepare(archive: Path, output_dir: Path, workers: int = 1) -> dict:
    """The prepare stage's code on `archive`, with params.yaml's archive limits; returns its summary."""
    data = load_params(REPO / "params.yaml")["data"]
    limits = build(
        ArchiveLimits, "data", {name: value for name, value in data.items() if name not in ("archive", "workers")}
    )
    return prepare_dataset(archive, output_dir, limits=limits, workers=workers)


def best_seconds_per_call(run: Callable[[], object], repeats: int, trials: int) -> float:
    """Seconds per call of `run` after three warm-up calls: the best of `trials` timings of `repeats` calls."""
    for _ in range(3):
        run()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def interleaved_rounds(measures: Mapping[str, Callable[[], float]], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Runs every measure once per round, in the same order each round; returns each one's values in round order.

    Each value goes to stderr as it comes, so a run stopped by a time limit still leaves what it measured.
    """
    values: dict[str, list[float]] = {name: [] for name in measures}
    for round_number in range(1, rounds + 1):
        for name, measure in measures.items():
            value = measure()
            print(f"round {round_number}/{rounds}: {name} {value:.4g}", file=sys.stderr, flush=True)
            values[name].append(value)
    return values


def machine() -> dict:
    """The CPU's model name, its cores, the GPU torch sees (None without one), and the torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def report(name: str, lines: list[str], figures: dict) -> None:
    """Prints `lines` (a Markdown report) and writes them to benchmarks/results/NAME.md, and `figures` with the
    machine to NAME.json."""
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
