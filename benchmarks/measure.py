"""One training-speed measurement, run in a fresh process by the throughput and techniques benchmarks.

A fresh process per measurement means none inherits another's state: the memory allocator's settings
(keep_freed_memory changes them process-wide), torch's thread count and oneDNN's kernel caches.
Usage (by the benchmarks): python -m benchmarks.measure reference|ours DATA [JSON changes to params.yaml's settings]
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import scipy.io
import torch
from torch.nn import functional as F

from benchmarks.common import REPO, load_settings, train_model
from segnet.data.loading import load_split
from segnet.devices import select_device
from segnet.model.network import SegNet, SegNetConfig
from segnet.training.callbacks import Callback
from segnet.training.loop import set_seed

WARMUP_STEPS = 3


def in_fresh_process(kind: str, data: Path, **changes: object) -> float:
    """Images/s of one measurement (`reference` or `ours`) on `data`, run in a new Python process."""
    command = [sys.executable, "-m", "benchmarks.measure", kind, str(data), json.dumps(changes)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.splitlines()[-1])["images_per_second"]


def reference_images_per_second(mat_files: list[Path], model_config: SegNetConfig, steps: int) -> float:
    """The course's loop: parse one .mat per step, the file is the batch, float32 eager, Adam 1e-3."""
    set_seed(0)
    model = SegNet(model_config).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images_seen, start = 0, time.perf_counter()
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
    """Reads the clock at the end of the warm-up and of the last step.

    Only there: waiting for the GPU at every step would stop the host from preparing the next batch while
    the GPU computes this one, which the training loop otherwise overlaps.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.times: dict[int, float] = {}
        self.total_steps = 0

    def on_train_start(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.total_steps = total_steps

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        if step in (WARMUP_STEPS, self.total_steps):
            synchronize(self.device)
            self.times[step] = time.perf_counter()


def our_images_per_second(prepared: Path, changes: dict) -> float:
    """Our training loop's images/s after the warm-up steps, with params.yaml's settings and `changes`."""
    settings = load_settings(**changes)
    images, labels = load_split(prepared, "train")
    clock = StepClock(select_device(settings["device"]))
    train_model(settings, images, labels, torch.arange(len(images)), torch.arange(8), callbacks=[clock])
    steps = clock.total_steps - WARMUP_STEPS
    return steps * settings["batch_size"] / (clock.times[clock.total_steps] - clock.times[WARMUP_STEPS])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    kind, data = sys.argv[1], Path(sys.argv[2])
    changes = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if kind == "reference":
        mat_files = sorted((data / "extracted").rglob("batch*.mat"))
        speed = reference_images_per_second(mat_files, load_settings().model, steps=len(mat_files))
    elif kind == "ours":
        speed = our_images_per_second(data / "prepared", changes)
    else:
        raise SystemExit(f"unknown measurement {kind!r}: use reference or ours")
    print(json.dumps({"images_per_second": speed}))


if __name__ == "__main__":
    main()
