"""Benchmark: training, evaluation and prepare throughput, all measured in one run on one machine.

Compares, on the same data and the same default SegNet:
  - a reference training loop written like the course's script (per step, scipy.io.loadmat of one .mat
    file, batch = that file, float32 eager PyTorch, Adam 1e-3) against our training loop (segnet.training.loop
    with params.yaml's train settings), in training images/s;
  - our training's achieved FLOP rate (training FLOPs per image counted by torch.utils.flop_counter)
    against the measured matmul peak of the precision it computes in: counting the model's FLOPs (an effective
    rate, since Winograd's layers multiply less) and those our loop performs;
  - evaluation images/s, and `prepare` files/s against a plain sequential loadmat loop.
Usage: make bench  (or python -m benchmarks.throughput [--files N])
"""

import io
import os
import statistics
import tempfile
import time
import zipfile
from pathlib import Path

import scipy.io
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    GPU_EPOCHS, ROUNDS, best_seconds_per_call, interleaved_rounds, one_epoch, read_settings, small_archive,
)
from benchmarks.measure import in_fresh_process, synchronize
from segnet.data.loading import load_split
from segnet.evaluation.inference import accumulate_confusion
from segnet.model import SegNet, SegNetConfig
from segnet.speed import use_cpu_kernels, use_winograd
from segnet.dataset.prepare import prepare_dataset
from segnet.cores import available_cores
from segnet.devices import select_amp_dtype, use_exact_float32


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """FLOP/s of a square matmul in `dtype` on the CPU, after a warm-up: the best of `trials` timings.

    The best, not the mean: on a shared machine a neighbour's load only ever slows a trial down, and a
    peak taken from a slowed trial once put our training above 100% of it.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / best_seconds_per_call(lambda: a @ b, repeats, trials)


def training_flops_per_image(model_config: SegNetConfig, batch: int = 32, winograd_min_channels: int | None = None,
                             amp_dtype: torch.dtype | None = None) -> float:
    """The model's training FLOPs per image (forward + backward), as its direct convolutions compute them.

    With `winograd_min_channels`, those our loop performs instead: the layers segnet.speed.winograd computes count
    as the matrix products it runs (its transforms only add), in `amp_dtype` autocast as training runs.
    """
    model = SegNet(model_config).to(memory_format=torch.channels_last)
    if winograd_min_channels is not None:
        use_cpu_kernels(model)
        use_winograd(model, winograd_min_channels)
    images = torch.rand(batch, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, model_config.num_classes, (batch, 64, 64))
    with FlopCounterMode(display=False) as counter:
        with torch.autocast("cpu", amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(images)
        F.cross_entropy(logits.float(), labels).backward()
    return counter.get_total_flops() / batch


def evaluation_images_per_second(prepared: Path, model_config: SegNetConfig, batch_size: int,
                                 device: torch.device) -> float:
    """The evaluate stage's loop: float32 whatever training used, so reported metrics never depend on it."""
    use_exact_float32()  # as the stage does: on a GPU, float32 convolutions would otherwise run in TF32
    images, labels = load_split(prepared, "test")
    model = SegNet(model_config).to(device=device, memory_format=torch.channels_last)
    classes = model_config.num_classes
    accumulate_confusion(model, images[:batch_size], labels[:batch_size], classes, batch_size, device)
    synchronize(device)
    start = time.perf_counter()
    accumulate_confusion(model, images, labels, classes, batch_size, device)
    synchronize(device)
    return len(images) / (time.perf_counter() - start)


def prepare_files_per_second(archive: Path, output_dir: Path, workers: int) -> float:
    """Files per second of the prepare stage's code on `archive`, with its parsing threads."""
    start = time.perf_counter()
    summary = prepare_dataset(archive, output_dir, workers=workers)
    return (summary["train_files"] + summary["test_files"]) / (time.perf_counter() - start)


def plain_loadmat_files_per_second(archive: Path) -> float:
    """Files per second of a plain sequential loop that only reads each .mat file with scipy."""
    start = time.perf_counter()
    with zipfile.ZipFile(archive) as opened:
        names = opened.namelist()
        for name in names:
            scipy.io.loadmat(io.BytesIO(opened.read(name)))
    return len(names) / (time.perf_counter() - start)


def main() -> None:
    params, model_config, arguments = read_settings(__doc__.splitlines()[0], default_files=20)
    files = arguments.files
    # The CPU comparison always runs on the CPU; a GPU, when present, is measured separately below.
    cpu_config = one_epoch(params)
    cpu = torch.device("cpu")
    amp_dtype = select_amp_dtype(cpu_config.precision, cpu)
    evaluate_batch = params["evaluate"]["batch_size"]
    workers = params["data"]["workers"] or available_cores()  # as the prepare stage resolves it

    with tempfile.TemporaryDirectory(prefix="segnet-throughput-") as folder:
        folder = Path(folder)
        archive = small_archive(folder, files, files)
        extracted = folder / "extracted"
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(extracted)  # our own archive, built above: the reference loop reads its .mat files

        # Each measurement runs in a fresh process (benchmarks/measure.py): the reference gets the default
        # memory allocator, ours the settings of params.yaml, and neither inherits the other's state.
        # The matmul peaks and prepare join the same rounds, so that a slow spell cannot lower one alone.
        rounds = interleaved_rounds({
            "prepare": lambda: prepare_files_per_second(archive, folder / "prepared", workers),
            "plain_loadmat": lambda: plain_loadmat_files_per_second(archive),
            "reference": lambda: in_fresh_process("reference", folder)["images_per_second"],
            "ours": lambda: in_fresh_process("ours", folder)["images_per_second"],
            "peak_fp32": lambda: matmul_peak(torch.float32),
            "peak_bf16": lambda: matmul_peak(torch.bfloat16),
        })
        reference, ours, peak_fp32, peak_bf16, prepare, plain_loadmat = (
            max(rounds[name]) for name in ("reference", "ours", "peak_fp32", "peak_bf16", "prepare", "plain_loadmat"))
        # Within a round the two loops run back to back: the spread of these ratios is how far the ratio moves.
        round_ratios = sorted(mine / theirs for mine, theirs in zip(rounds["ours"], rounds["reference"]))
        evaluation = evaluation_images_per_second(folder / "prepared", model_config, evaluate_batch, cpu)
        gpu_rows = []
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gpu_amp = select_amp_dtype(one_epoch(params, device="cuda").precision, gpu)
            gpu_precision = str(gpu_amp).replace("torch.", "") if gpu_amp else "float32"
            gpu_training = in_fresh_process("ours", folder, device="cuda", epochs=GPU_EPOCHS)["images_per_second"]
            gpu_rows = [
                f"| GPU ({torch.cuda.get_device_name(gpu)}): our training ({gpu_precision}), images/s | "
                f"{gpu_training:.1f} |",
                f"| GPU: evaluation (float32), images/s | "
                f"{evaluation_images_per_second(folder / 'prepared', model_config, evaluate_batch, gpu):.1f} |",
            ]

    flops = training_flops_per_image(model_config)
    # Winograd's layers multiply less than the model's FLOPs count: the share of the peak by those FLOPs is an
    # effective rate, and the FLOPs our loop really performs give the second figure.
    winograd = cpu_config.winograd_min_channels if cpu_config.winograd and cpu_config.cpu_kernels else None
    performed = training_flops_per_image(model_config, winograd_min_channels=winograd, amp_dtype=amp_dtype)
    precision = "bfloat16" if amp_dtype == torch.bfloat16 else "float32"
    peak = peak_bf16 if amp_dtype == torch.bfloat16 else peak_fp32
    achieved = flops * ours
    print(f"CPU threads: {torch.get_num_threads()}, cores: {os.cpu_count()}, torch {torch.__version__}; "
          f"training speeds: best of {ROUNDS} interleaved rounds")
    print("| measure | value |")
    print("|---|---:|")
    print(f"| reference (course-style, float32) training, images/s | {reference:.1f} |")
    print(f"| our training ({precision} autocast, channels-last), images/s | {ours:.1f} |")
    print(f"| ratio ours / reference | {ours / reference:.2f}x |")
    print(f"| ratio within each round: lowest / median / highest | {round_ratios[0]:.2f}x / "
          f"{statistics.median(round_ratios):.2f}x / {round_ratios[-1]:.2f}x |")
    print(f"| training GFLOP per image, forward + backward: the model's / those our loop performs | "
          f"{flops / 1e9:.3f} / {performed / 1e9:.3f} |")
    print(f"| our achieved GFLOP/s: the model's / performed | {achieved / 1e9:.1f} / {performed * ours / 1e9:.1f} |")
    print(f"| measured matmul peak float32 / bfloat16, GFLOP/s | {peak_fp32 / 1e9:.1f} / {peak_bf16 / 1e9:.1f} |")
    print(f"| achieved share of the {precision} matmul peak: the model's FLOPs / performed | {achieved / peak:.0%} / "
          f"{performed * ours / peak:.0%} |")
    print(f"| evaluation (float32), images/s | {evaluation:.1f} |")
    print(f"| prepare ({workers} threads, as the stage), files/s (ours / plain loadmat loop) | {prepare:.1f} / "
          f"{plain_loadmat:.1f} |")
    for row in gpu_rows:
        print(row)


if __name__ == "__main__":
    main()
