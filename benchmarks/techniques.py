"""Benchmark: what each speed setting in params.yaml's train section buys, measured in one run.

Trains one short epoch per variant on the same small built-in dataset, changing one setting from the
defaults at a time, and prints images/s (after a warm-up) and the first step's seconds (where
torch.compile spends its compile time). Accuracy effects of settings are measured by full runs
(README, Performance); this table is their speed side.
On a GPU (--device cuda) each variant trains GPU_EPOCHS epochs, since a GPU step takes milliseconds, and the
settings that only act on the CPU are left out. --only measures the defaults against the named settings'
variants alone, for a GPU lent for minutes.
Usage: make bench  (or python -m benchmarks.techniques [--files N] [--device cuda] [--only SETTING,...])
"""

import argparse
import tempfile
from functools import partial
from pathlib import Path

from benchmarks.common import GPU_EPOCHS, best_of_rounds, one_epoch, read_settings, small_archive
from benchmarks.measure import in_fresh_process
from segnet.dataset.prepare import prepare_dataset

# Fewer rounds than the throughput benchmark's: seventeen variants, each in a fresh process.
ROUNDS = 3
# (setting, value) pairs compared against the defaults; None is the default run itself.
VARIANTS = [
    None,
    ("precision", "float32"),
    ("channels_last", False),
    ("batch_size", 16),
    ("batch_size", 64),
    ("threads", 1),
    ("overlay_partners", 0),
    ("deform_pixels", 0.0),
    ("deform_affine", 0.1),
    ("ema_decay", 0.998),
    ("soft_iou_weight", 1.0),
    ("compile", True),
    ("cpu_kernels", False),
    ("winograd", False),
    ("winograd_min_channels", 32),
    ("winograd_min_channels", 128),
    ("keep_freed_memory", False),
]
CPU_ONLY = ("threads", "cpu_kernels", "winograd", "winograd_min_channels", "keep_freed_memory")


def chosen_variants(on_gpu: bool, only: list[str] | None = None) -> list:
    """VARIANTS for the device, the defaults first: all of them, or those of the settings in `only`.

    Raises ValueError naming any setting in `only` that has no variant on the device.
    """
    available = [variant for variant in VARIANTS[1:] if not (on_gpu and variant[0] in CPU_ONLY)]
    names = sorted({name for name, _ in available})
    unknown = sorted(set(only or []) - set(names))
    if unknown:
        raise ValueError(f"no {'cuda' if on_gpu else 'cpu'} variant of {unknown}; known: {names}")
    return [None] + [variant for variant in available if only is None or variant[0] in only]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the variants train")
    parser.add_argument("--only", type=lambda text: text.split(","), help="settings to vary, comma-separated")
    params, model_config, arguments = read_settings(parser.description, default_files=40, parser=parser)
    on_gpu = arguments.device == "cuda"
    common = {"device": "cuda", "epochs": GPU_EPOCHS} if on_gpu else {}
    try:
        variants = chosen_variants(on_gpu, arguments.only)
    except ValueError as error:
        parser.error(f"--only: {error}")
    defaults = vars(one_epoch(params, **common))
    first_steps = {}

    def measure(name: str, changes: dict) -> float:
        # A fresh process per run (benchmarks/measure.py): some settings change process-wide state.
        result = in_fresh_process("ours", Path(folder), **common, **changes)
        first_steps.setdefault(name, result["first_step_s"])  # the first round's: later rounds may reuse compiled code
        return result["images_per_second"]

    with tempfile.TemporaryDirectory(prefix="segnet-techniques-") as folder:
        prepare_dataset(small_archive(folder, arguments.files, 1), Path(folder) / "prepared")
        measures = {}
        for variant in variants:
            name = f"{variant[0]}: {variant[1]}" if variant else "defaults"
            measures[name] = partial(measure, name, dict([variant]) if variant else {})
        speeds = best_of_rounds(measures, rounds=ROUNDS)
    rows = [(name, speed, first_steps[name]) for name, speed in speeds.items()]

    baseline = rows[0][1]
    shown = ("precision", "channels_last", "batch_size", "threads", "overlay_partners", "deform_pixels", "deform_grid",
             "deform_affine", "ema_decay", "soft_iou_weight", "compile", "cpu_kernels", "winograd",
             "winograd_min_channels", "keep_freed_memory")
    print(f"Device: {arguments.device}. Defaults: " + ", ".join(f"{key}={defaults[key]}" for key in shown))
    print(f"images/s: best of {ROUNDS} interleaved rounds; first step: the first round's")
    print("| train setting changed | images/s | vs defaults | first step, s |")
    print("|---|---:|---:|---:|")
    for name, speed, first_step in rows:
        print(f"| {name} | {speed:.1f} | {speed / baseline:.2f}x | {first_step:.1f} |")


if __name__ == "__main__":
    main()
