"""Benchmark: training, evaluation and prepare throughput, all measured in one run on one machine.

Compares, on the same data and the same default SegNet:
  - a reference training loop written like the course's script (per step, scipy.io.loadmat of one .mat
    file, batch = that file, float32 eager PyTorch, Adam 1e-3) against our training loop (segnet.training.loop
    with params.yaml's settings), in training images/s;
  - our training's achieved FLOP rate (training FLOPs per image counted by torch.utils.flop_counter)
    against the measured matmul peak of the precision it computes in: counting the model's FLOPs (an effective
    rate, since Winograd's layers multiply less) and those our loop performs;
  - evaluation images/s, and `prepare` files/s against a plain sequential loadmat loop.
With a GPU present it adds our training and evaluation images/s there.
Writes benchmarks/results/throughput.md and .json.
Usage: make bench  (or python -m benchmarks.throughput [--files N])
"""

import io
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
    GPU_EPOCHS,
    ROUNDS,
    best_seconds_per_call,
    interleaved_rounds,
    load_settings,
    prepare,
    read_arguments,
    report,
    small_archive,
)
from benchmarks.measure import in_fresh_process, synchronize
from segnet.cores import available_cores
from segnet.data.loading import load_split
from segnet.devices import select_amp_dtype, use_exact_float32
from segnet.evaluation.inference import accumulate_confusion
from segnet.model import SegNet, SegNetConfig
from segnet.speed import use_cpu_kernels, use_winograd


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """FLOP/s of a square matmul in `dtype` on the CPU, after a warm-up: the best of `trials` timings.

    The best, not the mean: on a shared machine a neighbour's load only ever slows a trial down, and a
    peak taken from a slowed trial once put our training above 100% of it.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / best_seconds_per_call(lambda: a @ b, repeats, trials)


def training_flops_per_image(
    model_config: SegNetConfig,
    batch: int = 32,
    winograd_min_channels: int | None = None,
    amp_dtype: torch.dtype | None = None,
) -> float:
    """The model's training FLOPs per image (forward + backward), as its direct convolutions compute them.

    With `winograd_min_channels`, those our loop performs instead: the layers segnet.speed.winograd computes count
    as the matrix products it runs (its transforms only add), in `amp_dtype` autocast as training runs.
    """
    # torch's type stubs leave out the memory_format that Module.to takes.
    model = SegNet(model_config).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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


def evaluation_images_per_second(
    prepared: Path, model_config: SegNetConfig, batch_size: int, device: torch.device
) -> float:
    """The evaluate stage's loop: float32 whatever training used, so reported metrics never depend on it."""
    use_exact_float32()  # as the stage does: on a GPU, float32 convolutions would otherwise run in TF32
    images, labels = load_split(prepared, "test")
    model = SegNet(model_config).to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
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
    summary = prepare(archive, output_dir, workers=workers)
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
    arguments = read_arguments(__doc__.splitlines()[0], default_files=20)
    settings = load_settings()  # the CPU comparison always runs on the CPU; a GPU is measured separately below
    model_config = settings.model
    amp_dtype = select_amp_dtype(str(settings["precision"]), torch.device("cpu"))
    evaluate_batch = settings.params["evaluate"]["batch_size"]
    workers = settings.params["data"]["workers"] or available_cores()  # as the prepare stage resolves it

    with tempfile.TemporaryDirectory(prefix="segnet-throughput-") as name:
        folder = Path(name)
        archive = small_archive(folder, arguments.files, arguments.files)
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(folder / "extracted")  # the reference loop reads .mat files

        # Each training measurement runs in a fresh process (benchmarks/measure.py). The matmul peaks and
        # prepare join the same rounds, so that a slow spell cannot lower one alone.
        rounds = interleaved_rounds(
            {
                "prepare": lambda: prepare_files_per_second(archive, folder / "prepared", workers),
                "plain_loadmat": lambda: plain_loadmat_files_per_second(archive),
                "reference": lambda: in_fresh_process("reference", folder),
                "ours": lambda: in_fresh_process("ours", folder),
                "peak_fp32": lambda: matmul_peak(torch.float32),
                "peak_bf16": lambda: matmul_peak(torch.bfloat16),
            }
        )
        best = {name: max(values) for name, values in rounds.items()}
        # Within a round the two loops run back to back: the spread of these ratios is how far the ratio moves.
        round_ratios = sorted(mine / theirs for mine, theirs in zip(rounds["ours"], rounds["reference"], strict=True))
        cpu = torch.device("cpu")
        evaluation = evaluation_images_per_second(folder / "prepared", model_config, evaluate_batch, cpu)
        gpu = {}
        if torch.cuda.is_available():
            cuda = torch.device("cuda")
            gpu_amp = select_amp_dtype(str(load_settings(device="cuda")["precision"]), cuda)
            gpu = {
                "name": torch.cuda.get_device_name(cuda),
                "precision": str(gpu_amp).replace("torch.", "") if gpu_amp else "float32",
                "training_images_per_second": in_fresh_process("ours", folder, device="cuda", epochs=GPU_EPOCHS),
                "evaluation_images_per_second": evaluation_images_per_second(
                    folder / "prepared", model_config, evaluate_batch, cuda
                ),
            }

    # Winograd's layers multiply less than the model's FLOPs count: the share of the peak by those FLOPs is an
    # effective rate, and the FLOPs our loop really performs give the second figure.
    winograd = settings["winograd_min_channels"] if settings["winograd"] and settings["cpu_kernels"] else None
    flops = training_flops_per_image(model_config)
    performed = training_flops_per_image(model_config, winograd_min_channels=winograd, amp_dtype=amp_dtype)
    precision = "bfloat16" if amp_dtype == torch.bfloat16 else "float32"
    peak = best["peak_bf16"] if amp_dtype == torch.bfloat16 else best["peak_fp32"]
    ours, reference = best["ours"], best["reference"]
    figures = {
        "files": arguments.files,
        "rounds": ROUNDS,
        "precision": precision,
        "prepare_threads": workers,
        "best": best,
        "rounds_measured": rounds,
        "ratio": ours / reference,
        "round_ratios": {
            "lowest": round_ratios[0],
            "median": statistics.median(round_ratios),
            "highest": round_ratios[-1],
        },
        "gflop_per_image": {"model": flops / 1e9, "performed": performed / 1e9},
        "peak_share": {"model": flops * ours / peak, "performed": performed * ours / peak},
        "evaluation_images_per_second": evaluation,
        "gpu": gpu,
    }
    lines = [
        f"Training speeds: best of {ROUNDS} interleaved rounds, {arguments.files} files of 32 panels",
        "",
        "| measure | value |",
        "|---|---:|",
        f"| reference (course-style, float32) training, images/s | {reference:.1f} |",
        f"| our training ({precision} autocast, channels-last), images/s | {ours:.1f} |",
        f"| ratio ours / reference | {ours / reference:.2f}x |",
        f"| ratio within each round: lowest / median / highest | {round_ratios[0]:.2f}x / "
        f"{statistics.median(round_ratios):.2f}x / {round_ratios[-1]:.2f}x |",
        f"| training GFLOP per image, forward + backward: the model's / those our loop performs | "
        f"{flops / 1e9:.3f} / {performed / 1e9:.3f} |",
        f"| measured matmul peak float32 / bfloat16, GFLOP/s | {best['peak_fp32'] / 1e9:.1f} / "
        f"{best['peak_bf16'] / 1e9:.1f} |",
        f"| achieved share of the {precision} matmul peak: the model's FLOPs / performed | {flops * ours / peak:.0%} / "
        f"{performed * ours / peak:.0%} |",
        f"| evaluation (float32), images/s | {evaluation:.1f} |",
        f"| prepare ({workers} threads, as the stage), files/s (ours / plain loadmat loop) | {best['prepare']:.1f} / "
        f"{best['plain_loadmat']:.1f} |",
    ]
    if gpu:
        lines += [
            f"| GPU ({gpu['name']}): our training ({gpu['precision']}), images/s | "
            f"{gpu['training_images_per_second']:.1f} |",
            f"| GPU: evaluation (float32), images/s | {gpu['evaluation_images_per_second']:.1f} |",
        ]
    report("throughput", lines, figures)


if __name__ == "__main__":
    main()
