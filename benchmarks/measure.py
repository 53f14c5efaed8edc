"""One training-speed measurement, run in a fresh process by the throughput and techniques benchmarks.

A fresh process per measurement means none inherits another's state: the memory allocator's settings
(train.keep_freed_memory changes them process-wide), torch's thread count, oneDNN's kernel caches, and
what torch.compile has already compiled.
Usage (by the benchmarks): python -m benchmarks.measure reference|ours DATA [JSON changes to params.yaml's train]
"""

import json
import subprocess
import sys
import time
from pathlib import Path

import scipy.io
import torch
from torch.nn import functional as F

from benchmarks.common import REPO, one_epoch
from segnet.training.callbacks import Callback
from segnet.data.loading import load_split
from segnet.model.network import SegNet, SegNetConfig
from segnet.params import load_params
from segnet.devices import select_device
from segnet.training.loop import TrainConfig, set_seed, train

WARMUP_STEPS = 3


def in_fresh_process(kind: str, data: Path, **changes) -> dict:
    """Runs one measurement (`reference` or `ours`) on `data` in a new Python process; returns its result."""
    command = [sys.executable, "-m", "benchmarks.measure", kind, str(data), json.dumps(changes)]
    finished = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{finished.stderr[-3000:]}")
    return json.loads(finished.stdout.splitlines()[-1])


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
    """Reads the clock at the end of the first step, of the warm-up and of the last step.

    Only there: waiting for the GPU at every step would stop the host from preparing the next batch while
    the GPU computes this one, which the training loop otherwise overlaps.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.times = {}
        self.start = None
        self.total_steps = None

    def on_train_start(self, total_steps: int, steps_per_epoch: int, start_step: int) -> None:
        self.total_steps = total_steps
        self.start = time.perf_counter()

    def on_step_end(self, step: int, loss: torch.Tensor) -> None:
        if step in (1, WARMUP_STEPS, self.total_steps):
            synchronize(self.device)
            self.times[step] = time.perf_counter()


def our_images_per_second(prepared: Path, model_config: SegNetConfig, train_config: TrainConfig) -> tuple[float, float]:
    """Our training loop's images/s after the warm-up steps, and the seconds its first step took."""
    images, labels = load_split(prepared, "train")
    clock = StepClock(select_device(train_config.device))
    set_seed(0)
    train(SegNet(model_config), images, labels, torch.arange(len(images)), torch.arange(8), model_config.num_classes,
          train_config, seed=0, callbacks=[clock])
    steps = clock.total_steps - WARMUP_STEPS
    speed = steps * train_config.batch_size / (clock.times[clock.total_steps] - clock.times[WARMUP_STEPS])
    return speed, clock.times[1] - clock.start


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    kind, data = sys.argv[1], Path(sys.argv[2])
    changes = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    params = load_params(REPO / "params.yaml")
    model_config = SegNetConfig(**params["model"])
    if kind == "reference":
        mat_files = sorted((data / "extracted").rglob("batch*.mat"))
        result = {"images_per_second": reference_images_per_second(mat_files, model_config, steps=len(mat_files))}
    elif kind == "ours":
        speed, first_step = our_images_per_second(data / "prepared", model_config, one_epoch(params, **changes))
        result = {"images_per_second": speed, "first_step_s": first_step}
    else:
        raise SystemExit(f"unknown measurement {kind!r}: use reference or ours")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
