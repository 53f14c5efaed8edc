"""Benchmark: training, evaluation and prepare throughput, all measured in one run on one machine.

Compares, on the same data and the same default SegNet:
  - a reference training loop written like the course's script (per step, scipy.io.loadmat of one .mat
    file, batch = that file, float32 eager PyTorch, Adam 1e-3) against our training loop (segnet.train
    with params.yaml's train settings), in training images/s;
  - our training's achieved FLOP rate (training FLOPs per image counted by torch.utils.flop_counter)
    against the measured matmul peak of the precision it computes in;
  - evaluation images/s, and `prepare` files/s against a plain sequential loadmat loop.
Usage: make bench  (or python -m benchmarks.throughput [--files N])
"""

import io
import os
import tempfile
import time
import zipfile
from pathlib import Path

import scipy.io
import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import ROUNDS, best_of_rounds, one_epoch, read_settings, small_archive
from segnet.callbacks import Callback
from segnet.data import load_split
from segnet.inference import accumulate_confusion
from segnet.model import SegNet, SegNetConfig
from segnet.prepare import prepare_dataset
from segnet.train import TrainConfig, select_amp_dtype, select_device, set_seed, train

WARMUP_STEPS = 3


def matmul_peak(dtype: torch.dtype, size: int = 2048, repeats: int = 10, trials: int = 5) -> float:
    """FLOP/s of a square matmul in `dtype` on the CPU, after a warm-up: the best of `trials` timings.

    The best, not the mean: on a shared machine a neighbour's load only ever slows a trial down, and a
    peak taken from a slowed trial once put our training above 100% of it.
    """
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start))
    return best


def training_flops_per_image(model_config: SegNetConfig, batch: int = 32) -> float:
    model = SegNet(model_config)
    images, labels = torch.rand(batch, 3, 64, 64), torch.randint(0, 11, (batch, 64, 64))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / batch


def reference_images_per_second(mat_files: list[Path], model_config: SegNetConfig, steps: int) -> float:
    """The course's loop: parse one .mat per step, the file is the batch, float32 eager, Adam 1e-3."""
    set_seed(0)
    model = SegNet(model_config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images_seen, start = 0, None
    for step in range(steps + WARMUP_STEPS):
        if step == WARMUP_STEPS:
            start, images_seen = time.perf_counter(), 0
        contents = scipy.io.loadmat(mat_files[step % len(mat_files)])
        images = torch.from_numpy(contents["imgMat"]).permute(3, 2, 0, 1).float()
        labels = torch.from_numpy(contents["semanticMaskMat"]).permute(2, 0, 1).long()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        images_seen += len(images)
    return images_seen / (time.perf_counter() - start)


class StepClock(Callback):
    """Times training steps after the warm-up, excluding validation."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times = []
        self.start = None

    def on_train_start(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        _synchronize(self.device)
        self.times.append(time.perf_counter())


def our_images_per_second(
    prepared: Path, model_config: SegNetConfig, train_config: TrainConfig
) -> tuple[float, float]:
    """Our training loop's images/s after the warm-up steps, and the seconds its first step took."""
    images, labels = load_split(prepared, "train")
    clock = StepClock(select_device(train_config.device))
    set_seed(0)
    train(SegNet(model_config), images, labels, torch.arange(len(images)), torch.arange(8), 11, train_config, seed=0,
          callbacks=[clock])
    steps = len(clock.times) - WARMUP_STEPS
    speed = steps * train_config.batch_size / (clock.times[-1] - clock.times[WARMUP_STEPS - 1])
    return speed, clock.times[0] - clock.start


def evaluation_images_per_second(prepared: Path, model_config: SegNetConfig, batch_size: int,
                                 device: torch.device) -> float:
    """The evaluate stage's loop: float32 whatever training used, so reported metrics never depend on it."""
    images, labels = load_split(prepared, "test")
    model = SegNet(model_config).to(device=device, memory_format=torch.channels_last)
    accumulate_confusion(model, images[:batch_size], labels[:batch_size], 11, batch_size, device)
    _synchronize(device)
    start = time.perf_counter()
    accumulate_confusion(model, images, labels, 11, batch_size, device)
    _synchronize(device)
    return len(images) / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    params, model_config, files = read_settings(__doc__.splitlines()[0], default_files=20)
    # The CPU comparison always runs on the CPU; a GPU, when present, is measured separately below.
    cpu_config = one_epoch(params)
    cpu = torch.device("cpu")
    amp_dtype = select_amp_dtype(cpu_config.precision, cpu)
    evaluate_batch = params["evaluate"]["batch_size"]

    with tempfile.TemporaryDirectory(prefix="segnet-throughput-") as folder:
        folder = Path(folder)
        archive = small_archive(folder, files, files)
        extracted = folder / "extracted"
        with zipfile.ZipFile(archive) as opened:
            opened.extractall(extracted)  # our own archive, built above
        mat_files = sorted(extracted.rglob("batch*.mat"))

        start = time.perf_counter()
        prepare_dataset(archive, folder / "prepared")
        prepare_files_per_second = 2 * files / (time.perf_counter() - start)
        start = time.perf_counter()
        with zipfile.ZipFile(archive) as opened:
            for name in opened.namelist():
                scipy.io.loadmat(io.BytesIO(opened.read(name)))
        plain_files_per_second = 2 * files / (time.perf_counter() - start)

        speeds = best_of_rounds({
            "reference": lambda: reference_images_per_second(mat_files, model_config, steps=len(mat_files)),
            "ours": lambda: our_images_per_second(folder / "prepared", model_config, cpu_config)[0],
        })
        reference, ours = speeds["reference"], speeds["ours"]
        evaluation = evaluation_images_per_second(folder / "prepared", model_config, evaluate_batch, cpu)
        gpu_rows = []
        if torch.cuda.is_available():
            gpu = torch.device("cuda")
            gpu_config = one_epoch(params, device="cuda")
            gpu_amp = select_amp_dtype(gpu_config.precision, gpu)
            gpu_precision = str(gpu_amp).replace("torch.", "") if gpu_amp else "float32"
            gpu_rows = [
                f"| GPU ({torch.cuda.get_device_name(gpu)}): our training ({gpu_precision}), images/s | "
                f"{our_images_per_second(folder / 'prepared', model_config, gpu_config)[0]:.1f} |",
                f"| GPU: evaluation (float32), images/s | "
                f"{evaluation_images_per_second(folder / 'prepared', model_config, evaluate_batch, gpu):.1f} |",
            ]

    flops = training_flops_per_image(model_config)
    peak_fp32 = matmul_peak(torch.float32)
    peak_bf16 = matmul_peak(torch.bfloat16)
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
    print(f"| training GFLOP per image (forward + backward) | {flops / 1e9:.3f} |")
    print(f"| our achieved GFLOP/s | {achieved / 1e9:.1f} |")
    print(f"| measured matmul peak float32 / bfloat16, GFLOP/s | {peak_fp32 / 1e9:.1f} / {peak_bf16 / 1e9:.1f} |")
    print(f"| achieved share of the {precision} matmul peak | {achieved / peak:.0%} |")
    print(f"| evaluation (float32), images/s | {evaluation:.1f} |")
    print(f"| prepare, files/s (ours / plain loadmat loop) | {prepare_files_per_second:.1f} / "
          f"{plain_files_per_second:.1f} |")
    for row in gpu_rows:
        print(row)


if __name__ == "__main__":
    main()
