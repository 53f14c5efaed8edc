"""What the throughput, techniques and profile benchmarks share: their settings, a small built-in dataset and
how they time a call."""

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from segnet.dataset.generate import SplitSpec, build_archive
from segnet.model.network import SegNetConfig
from segnet.params import load_params
from segnet.training.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]
# Speed measurements are repeated in interleaved rounds and the best kept: on a shared machine other load
# only ever slows a measurement down, and interleaving spreads a slow spell over every variant alike.
ROUNDS = 5
# A GPU step takes milliseconds: GPU speed measurements train this many epochs, so that the timed stretch
# lasts seconds.
GPU_EPOCHS = 5
# Training files of 32 panels a benchmark needs at least: ours holds some back for validation, and both loops
# time only the steps after their warm-up.
MIN_FILES = 8


def best_seconds_per_call(run: Callable[[], object], repeats: int, trials: int) -> float:
    """Seconds per call of `run` after three warm-up calls: the best of `trials` timings of `repeats` calls.

    The best, not the mean: on a shared machine a neighbour's load only ever slows a trial down.
    """
    for _ in range(3):
        run()
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def interleaved_rounds(measures: dict[str, Callable[[], float]], rounds: int = ROUNDS) -> dict[str, list[float]]:
    """Runs every measure once per round, in the same order each round; returns each one's values in round order.

    Each value goes to stderr as it comes, so a run stopped by a time limit still leaves what it measured.
    """
    values = {name: [] for name in measures}
    for round_number in range(1, rounds + 1):
        for name, measure in measures.items():
            value = measure()
            print(f"round {round_number}/{rounds}: {name} {value:.4g}", file=sys.stderr, flush=True)
            values[name].append(value)
    return values


def best_of_rounds(measures: dict[str, Callable[[], float]], rounds: int = ROUNDS) -> dict[str, float]:
    """interleaved_rounds, keeping each measure's highest value."""
    return {name: max(values) for name, values in interleaved_rounds(measures, rounds).items()}


def read_settings(description: str, default_files: int,
                  parser: argparse.ArgumentParser | None = None) -> tuple[dict, SegNetConfig, argparse.Namespace]:
    """params.yaml, its model config, and the command line: --files (training .mat files of 32 panels) and
    whatever else `parser` defines."""
    parser = parser or argparse.ArgumentParser(description=description)
    parser.add_argument("--files", type=int, default=default_files, help="training .mat files of 32 panels to build")
    params = load_params(REPO / "params.yaml")
    arguments = parser.parse_args()
    if arguments.files < MIN_FILES:
        # A training measurement times the steps after its warm-up (benchmarks/measure.py): one file, one step.
        parser.error(f"--files must be at least {MIN_FILES}, got {arguments.files}")
    return params, SegNetConfig(**params["model"]), arguments


def one_epoch(params: dict, **changes) -> TrainConfig:
    """params.yaml's train settings for one epoch, on the CPU unless `changes` say otherwise."""
    return TrainConfig(**{**params["train"], "epochs": 1, "device": "cpu", **changes})


def small_archive(folder: Path, train_files: int, test_files: int) -> Path:
    """A seeded built-in archive of 32-panel files (training 0-4 digits, test 0-9) in `folder`."""
    archive = Path(folder) / "archive.zip"
    build_archive(archive, seed=0, train=SplitSpec(train_files, 32, 0, 4), test=SplitSpec(test_files, 32, 0, 9),
                  test_digit_fraction=0.2)
    return archive
