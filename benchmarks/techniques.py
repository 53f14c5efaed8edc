"""Benchmark: what each speed-relevant setting in params.yaml buys, measured in one run.

Trains one short epoch per variant on the same small built-in dataset, changing one setting from the
defaults at a time, each in a fresh process, and prints images/s after a warm-up. Accuracy effects of
settings are measured by full runs (`dvc exp run -S ...`); this table is their speed side.
On a GPU (--device cuda) each variant trains GPU_EPOCHS epochs, since a GPU step takes milliseconds, and the
settings that only act on the CPU are left out. --only measures the defaults against the named settings'
variants alone, for a GPU lent for minutes.
Writes benchmarks/results/techniques.md and .json.
Usage: make bench  (or python -m benchmarks.techniques [--files N] [--device cuda] [--only SETTING,...])
"""

import argparse
import tempfile
from collections.abc import Callable
from functools import partial
from pathlib import Path

from benchmarks.common import (
    GPU_EPOCHS,
    interleaved_rounds,
    load_settings,
    prepare,
    read_arguments,
    report,
    small_archive,
)
from benchmarks.measure import in_fresh_process

# Fewer rounds than the throughput benchmark's: thirteen variants, each in a fresh process.
ROUNDS = 3
# (setting, value) pairs, each compared against the defaults.
VARIANTS: list[tuple[str, object]] = [
    ("precision", "float32"),
    ("channels_last", False),
    ("batch_size", 16),
    ("batch_size", 64),
    ("threads", 1),
    ("overlay_partners", 0),
    ("deform_pixels", 0.0),
    ("cpu_kernels", False),
    ("winograd", False),
    ("winograd_min_channels", 32),
    ("winograd_min_channels", 128),
    ("keep_freed_memory", False),
]
CPU_ONLY = ("threads", "cpu_kernels", "winograd", "winograd_min_channels", "keep_freed_memory")


def chosen_variants(on_gpu: bool, only: list[str] | None = None) -> list[tuple[str, object]]:
    """VARIANTS for the device: all of them, or those of the settings in `only`.

    Raises ValueError naming any setting in `only` that has no variant on the device.
    """
    available = [(name, value) for name, value in VARIANTS if not (on_gpu and name in CPU_ONLY)]
    names = sorted({name for name, _ in available})
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"no {'cuda' if on_gpu else 'cpu'} variant of {unknown}; known: {names}")
    return [(name, value) for name, value in available if only is None or name in only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the variants train")
    parser.add_argument("--only", type=lambda text: text.split(","), help="settings to vary, comma-separated")
    arguments = read_arguments(__doc__.splitlines()[0], default_files=24, parser=parser)
    on_gpu = arguments.device == "cuda"
    common = {"device": "cuda", "epochs": GPU_EPOCHS} if on_gpu else {}
    try:
        variants = chosen_variants(on_gpu, arguments.only)
    except ValueError as error:
        parser.error(f"--only: {error}")
    defaults = load_settings(**common)

    with tempfile.TemporaryDirectory(prefix="segnet-techniques-") as name:
        folder = Path(name)
        prepare(small_archive(folder, arguments.files, 1), folder / "prepared")
        measures: dict[str, Callable[[], float]] = {"defaults": partial(in_fresh_process, "ours", folder, **common)}
        for setting, value in variants:
            measures[f"{setting}: {value}"] = partial(in_fresh_process, "ours", folder, **common, **{setting: value})
        rounds = interleaved_rounds(measures, rounds=ROUNDS)
    speeds = {name: max(values) for name, values in rounds.items()}

    baseline = speeds["defaults"]
    shown = sorted({setting for setting, _ in variants})
    lines = [
        f"Device: {arguments.device}. Defaults: " + ", ".join(f"{name}={defaults[name]}" for name in shown),
        f"images/s: best of {ROUNDS} interleaved rounds, one epoch of {arguments.files} files of 32 panels",
        "",
        "| setting changed | images/s | vs defaults |",
        "|---|---:|---:|",
        *[f"| {name} | {speed:.1f} | {speed / baseline:.2f}x |" for name, speed in speeds.items()],
    ]
    report(
        "techniques",
        lines,
        {
            "device": arguments.device,
            "files": arguments.files,
            "rounds": ROUNDS,
            "images_per_second": speeds,
            "rounds_measured": rounds,
        },
    )


if __name__ == "__main__":
    main()
