"""Profile: where one training step of our loop spends its time (torch.profiler), grouped by operator.

Trains one short epoch of the default settings on a small built-in dataset under torch.profiler and
prints the operators by self CPU time, then the share spent in convolutions (forward and backward),
their achieved GFLOP/s, and the rest (batch norm, ReLU, pooling, unpooling, loss, optimizer,
augmentation). This is the evidence behind the speed discussion in README, Performance.
Usage: python -m benchmarks.profile [--files N]
"""

import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import one_epoch, read_settings, small_archive
from benchmarks.throughput import training_flops_per_image
from segnet.data import load_split
from segnet.model import SegNet
from segnet.prepare import prepare_dataset
from segnet.train import set_seed, train

CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")


def main() -> None:
    params, model_config, arguments = read_settings(__doc__.splitlines()[0], default_files=8)
    files = arguments.files
    config = one_epoch(params)
    with tempfile.TemporaryDirectory(prefix="segnet-profile-") as folder:
        prepared = Path(folder) / "prepared"
        prepare_dataset(small_archive(folder, files, 1), prepared)
        images, labels = load_split(prepared, "train")
    set_seed(0)
    # A first epoch outside the profiler warms up oneDNN's kernel choices.
    train(SegNet(model_config), images, labels, torch.arange(len(images)), torch.arange(2), 11, config, seed=0)
    set_seed(0)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        train(SegNet(model_config), images, labels, torch.arange(len(images)), torch.arange(2), 11, config, seed=0)
    steps = len(images) // config.batch_size
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    convolution = sum(event.self_cpu_time_total for event in events if event.key in CONVOLUTION_OPS) / 1e6
    flops = training_flops_per_image(model_config) * config.batch_size * steps
    print(f"steps: {steps} of {config.batch_size} images; profiled CPU time {total / steps * 1e3:.1f} ms per step")
    print(f"convolutions (forward + backward): {convolution / total:.0%} of the time, "
          f"{flops / convolution / 1e9:.0f} GFLOP/s while they run")
    print(f"everything else: {(total - convolution) / steps * 1e3:.1f} ms per step")


if __name__ == "__main__":
    main()
