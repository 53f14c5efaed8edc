"""The measurements behind three speed ideas that README, Performance, lists as dropped.

1. Training steps of our loop with the defaults, against the same steps with (a) the loss replaced by the
   cheapest differentiable stand-in (one product with a fixed tensor: a ceiling on what a fused
   cross-entropy kernel could save) and (b) the model's parameters in contiguous instead of channels-last
   memory format. The step is written out here, as segnet.train.train runs it, since train() has no way to
   swap its loss. Variants are interleaved, each round keeps each variant's best step.
2. Each convolution's weight gradient at its training size, for the whole batch against the batch in two and
   four chunks whose gradients are added.
Usage: python -m benchmarks.dropped [--files N] [--rounds R]
"""

import argparse
import copy
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from benchmarks.common import best_seconds_per_call, interleaved_rounds, one_epoch, read_settings, small_archive
from benchmarks.profile import REPEATS, TRIALS, convolution_parts, convolution_shapes, timed_cell
from segnet.allocator import keep_freed_memory
from segnet.augment import augment
from segnet.data import load_split, to_input
from segnet.model import SegNet, use_cpu_kernels
from segnet.prepare import prepare_dataset
from segnet.devices import select_amp_dtype
from segnet.train import make_optimizer, set_seed

STEPS_PER_ROUND = 25
CHUNKS = (1, 2, 4)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), targets)


class StandInLoss:
    """One read of the logits and a gradient that is a fixed tensor: the least any loss can cost."""

    def __init__(self):
        self.fixed = None

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.fixed is None:
            self.fixed = torch.randn_like(logits) * 1e-4
        return (logits * self.fixed).sum()


def best_step_seconds(model, optimizer, loss_of, images, labels, config, generator) -> float:
    """The best of STEPS_PER_ROUND training steps (after three) of `model`, as segnet.train.train takes them."""
    device = torch.device("cpu")
    amp_dtype = select_amp_dtype(config.precision, device)
    best = float("inf")
    for step in range(STEPS_PER_ROUND + 3):
        batch = torch.randint(0, len(images), (config.batch_size,), generator=generator)
        batch_images, batch_labels = augment(
            images[batch], labels[batch], generator, config.deform_pixels, config.deform_grid,
            config.deform_affine, config.overlay_partners, config.overlay_probability,
        )
        start = time.perf_counter()
        inputs = to_input(batch_images, device, config.channels_last)
        with torch.autocast("cpu", dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(inputs)
        loss = loss_of(logits, batch_labels.long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 3:
            best = min(best, time.perf_counter() - start)
    return best


def step_variants(model_config, config, images, labels, rounds: int) -> None:
    keep_freed_memory()
    set_seed(0)
    base = SegNet(model_config)
    variants = {}
    for name, memory_format, loss_of in (("defaults", torch.channels_last, cross_entropy),
                                         ("loss stand-in", torch.channels_last, StandInLoss()),
                                         ("contiguous parameters", torch.contiguous_format, cross_entropy)):
        model = copy.deepcopy(base).to(memory_format=memory_format).train()
        use_cpu_kernels(model, config.cpu_kernels)
        variants[name] = partial(best_step_seconds, model, make_optimizer(model, config), loss_of, images, labels,
                                 config, torch.Generator().manual_seed(0))
    print(f"\nbest training step per round, ms ({STEPS_PER_ROUND} steps of {config.batch_size} per round)")
    for name, values in interleaved_rounds(variants, rounds).items():
        milliseconds = [value * 1e3 for value in values]
        print(f"{name:<24} " + " ".join(f"{value:6.1f}" for value in milliseconds)
              + f"   best {min(milliseconds):.1f}")


def chunked_weight_gradient(conv, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, chunks: int):
    """The weight gradient of `conv`, computed over `chunks` slices of the batch and added."""
    weight_gradient_of = lambda xs, gs: convolution_parts(conv, xs, weight, gs)[2]()[1]  # noqa: E731
    return sum(weight_gradient_of(xs, gs) for xs, gs in zip(x.chunk(chunks), grad.chunk(chunks)))


def chunked_weight_gradients(model_config, batch_size: int, image_size: tuple[int, int], dtype) -> None:
    print(f"\nweight gradients, {str(dtype).replace('torch.', '')} channels-last, batch {batch_size} in k chunks: "
          "ms (GFLOP/s)")
    print(f"{'layer':<28} {'channels':>11} " + " ".join(f"{f'k = {k}':>15}" for k in CHUNKS))
    model = SegNet(model_config)
    for name, conv, x, weight, grad in convolution_shapes(model, batch_size, image_size, dtype):
        flops = 2 * grad.numel() * weight[0].numel()
        calls = [partial(chunked_weight_gradient, conv, x, weight, grad, k) for k in CHUNKS]
        cells = [timed_cell(best_seconds_per_call(call, REPEATS, TRIALS), flops) for call in calls]
        print(f"{name:<28} {f'{conv.in_channels} -> {conv.out_channels}':>11} "
              + " ".join(f"{cell:>15}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the step variants")
    params, model_config, arguments = read_settings(__doc__.splitlines()[0], default_files=8, parser=parser)
    config = one_epoch(params)
    with tempfile.TemporaryDirectory(prefix="segnet-dropped-") as folder:
        prepared = Path(folder) / "prepared"
        prepare_dataset(small_archive(folder, arguments.files, 1), prepared)
        images, labels = load_split(prepared, "train")
    step_variants(model_config, config, images, labels, arguments.rounds)
    dtype = select_amp_dtype(config.precision, torch.device("cpu")) or torch.float32
    chunked_weight_gradients(model_config, config.batch_size, tuple(images.shape[1:3]), dtype)


if __name__ == "__main__":
    main()
