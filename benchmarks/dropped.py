"""The measurements behind four speed ideas that README, Performance, lists as dropped.

1. Training steps of our loop with the defaults, against the same steps with (a) the loss replaced by the
   cheapest differentiable stand-in (one product with a fixed tensor: a ceiling on what a fused
   cross-entropy kernel could save), (b) the model's parameters in contiguous instead of channels-last
   memory format and (c) the 3x3 convolutions' weight gradients from the kernel of part 3 (where the CPU
   has avx512_bf16). The step is written out here, as segnet.train.train runs it, since train() has no way to
   swap its loss. Variants are interleaved, each round keeps each variant's best step.
2. Each convolution's weight gradient at its training size, for the whole batch against the batch in two and
   four chunks whose gradients are added.
3. Each 3x3 convolution's weight gradient alone, by a hand-written AVX-512 bfloat16 kernel
   (benchmarks/weight_grad.cpp) against oneDNN's, with the pass that packs both operands in image pairs for it,
   a plain copy of both operands (the least any separate packing pass costs) and the matmul peak, all in the
   same run. Needs a CPU with avx512_bf16; the kernel is built on each run (under a minute).
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
from torch.utils import cpp_extension

from benchmarks.common import best_seconds_per_call, interleaved_rounds, one_epoch, read_settings, small_archive
from benchmarks.profile import REPEATS, TRIALS, convolution_backward, convolution_parts, convolution_shapes, timed_cell
from benchmarks.throughput import matmul_peak
from segnet.allocator import keep_freed_memory
from segnet.augment import augment
from segnet.data import load_split, to_input
from segnet.model import ConvBatchNormReLU, SegNet, use_cpu_kernels, use_winograd
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


def weight_grad_kernel():
    """benchmarks/weight_grad.cpp, built for this CPU, or None where the CPU has no avx512_bf16."""
    if "avx512_bf16" not in Path("/proc/cpuinfo").read_text().split():
        return None
    with tempfile.TemporaryDirectory(prefix="segnet-weight-grad-") as build:
        return cpp_extension.load(name="segnet_weight_grad_benchmark", build_directory=build,
                                  sources=[str(Path(__file__).with_name("weight_grad.cpp"))],
                                  extra_cflags=["-O3", "-march=native", "-fopenmp"])


class _KernelWeightGrad(torch.autograd.Function):
    """A 3x3 convolution (stride 1, padding 1) in bfloat16, as autocast runs it, with the kernel's weight gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, kernel):
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        weight = weight.to(torch.bfloat16)
        with torch.autocast("cpu", enabled=False):
            output = F.conv2d(x, weight, None, 1, 1)
        ctx.save_for_backward(x, weight)
        ctx.kernel = kernel
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        grad_input = torch.ops.aten.convolution_backward(
            grad_output, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [True, False, False])[0]
        return grad_input, ctx.kernel.weight_grad(x, grad_output), None


class KernelWeightGradConv(torch.nn.Module):
    """Stands in for a 3x3 nn.Conv2d in training steps, with the same weight."""

    def __init__(self, conv: torch.nn.Conv2d, kernel):
        super().__init__()
        self.weight, self.kernel = conv.weight, kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _KernelWeightGrad.apply(x, self.weight, self.kernel)


def use_weight_grad_kernel(model: SegNet, kernel) -> None:
    """Replaces each 3x3 convolution the kernel takes (output channels divisible by 32, input channels by 8)."""
    for module in model.modules():
        if isinstance(module, ConvBatchNormReLU):
            conv = module[0]
            if conv.kernel_size == (3, 3) and conv.out_channels % 32 == 0 and conv.in_channels % 8 == 0:
                module[0] = KernelWeightGradConv(conv, kernel)


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


def step_variants(model_config, config, images, labels, rounds: int, kernel) -> None:
    keep_freed_memory()
    set_seed(0)
    base = SegNet(model_config)
    variants = {}
    in_bfloat16 = select_amp_dtype(config.precision, torch.device("cpu")) == torch.bfloat16
    for name, memory_format, loss_of in (("defaults", torch.channels_last, cross_entropy),
                                         ("loss stand-in", torch.channels_last, StandInLoss()),
                                         ("contiguous parameters", torch.contiguous_format, cross_entropy),
                                         ("weight-gradient kernel", torch.channels_last, cross_entropy)):
        if name == "weight-gradient kernel" and (kernel is None or not in_bfloat16):
            continue  # the kernel computes in bfloat16
        model = copy.deepcopy(base).to(memory_format=memory_format).train()
        kernels = use_cpu_kernels(model, config.cpu_kernels)
        use_winograd(model, config.winograd_min_channels if kernels and config.winograd else None)  # as training
        if name == "weight-gradient kernel":
            use_weight_grad_kernel(model, kernel)
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


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return ((value.float() - exact).abs().max() / exact.abs().max()).item()


def hand_written_weight_gradients(model_config, batch_size: int, image_size: tuple[int, int], kernel) -> None:
    print(f"\n3x3 weight gradients alone, bfloat16 channels-last, batch {batch_size}: ms (GFLOP/s); largest error "
          "against float32, relative to the largest value")
    if kernel is None:
        print("skipped: this CPU has no avx512_bf16")
        return
    # "oneDNN, with input": the weight gradient's share of one call that computes both gradients, as training calls
    # it (that call's time less the input gradient's alone).
    print(f"{'layer':<20} {'channels':>11} {'oneDNN':>14} {'oneDNN, with input':>19} {'kernel':>14} {'packing':>8} "
          f"{'copying':>8} {'error ours / oneDNN':>20}")
    totals = {"oneDNN": 0.0, "input grad": 0.0, "both": 0.0, "kernel": 0.0, "packing": 0.0, "copying": 0.0}
    model = SegNet(model_config)
    for name, conv, x, weight, grad in convolution_shapes(model, batch_size, image_size, torch.bfloat16):
        if conv.kernel_size != (3, 3) or conv.out_channels % 32 or conv.in_channels % 8:
            continue
        flops = 2 * grad.numel() * weight[0].numel()
        packed_input, packed_grad = kernel.pack_input(x), kernel.pack_grad(grad)
        _, input_grad, weight_grad = convolution_parts(conv, x, weight, grad)
        calls = {"oneDNN": weight_grad, "input grad": input_grad,
                 "both": lambda: convolution_backward(conv, x, weight, grad, [True, True, False]),  # as training does
                 "kernel": lambda: kernel.weight_grad_of_packed(packed_input, packed_grad),
                 "packing": lambda: (kernel.pack_input(x), kernel.pack_grad(grad)),
                 "copying": lambda: (x.clone(), grad.clone())}
        seconds = {part: best_seconds_per_call(call, REPEATS, TRIALS) for part, call in calls.items()}
        for part in totals:
            totals[part] += seconds[part]
        exact = convolution_backward(conv, x.float(), weight.float(), grad.float(), [False, True, False])[1]
        ours, theirs = relative_error(calls["kernel"](), exact), relative_error(calls["oneDNN"]()[1], exact)
        if not ours < 1e-4:  # float sums of bfloat16 products: far closer to float32 than oneDNN's bfloat16 result
            raise SystemExit(f"{name}: the kernel's weight gradient is off by {ours:.1e} of the largest value")
        errors = f"{ours:.1e} / {theirs:.1e}"
        with_input = seconds["both"] - seconds["input grad"]
        print(f"{name:<20} {f'{conv.in_channels} -> {conv.out_channels}':>11} "
              f"{timed_cell(seconds['oneDNN'], flops):>14} {timed_cell(with_input, flops):>19} "
              f"{timed_cell(seconds['kernel'], flops):>14} {seconds['packing'] * 1e3:>8.2f} "
              f"{seconds['copying'] * 1e3:>8.2f} {errors:>20}")
    with_input = totals["both"] - totals["input grad"]
    print(f"{'all':<32} {totals['oneDNN'] * 1e3:>14.2f} {with_input * 1e3:>19.2f} {totals['kernel'] * 1e3:>14.2f} "
          f"{totals['packing'] * 1e3:>8.2f} {totals['copying'] * 1e3:>8.2f}")
    print(f"matmul peak of bfloat16: {matmul_peak(torch.bfloat16) / 1e9:.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds of the step variants")
    params, model_config, arguments = read_settings(__doc__.splitlines()[0], default_files=8, parser=parser)
    config = one_epoch(params)
    with tempfile.TemporaryDirectory(prefix="segnet-dropped-") as folder:
        prepared = Path(folder) / "prepared"
        prepare_dataset(small_archive(folder, arguments.files, 1), prepared)
        images, labels = load_split(prepared, "train")
    kernel = weight_grad_kernel()
    step_variants(model_config, config, images, labels, arguments.rounds, kernel)
    dtype = select_amp_dtype(config.precision, torch.device("cpu")) or torch.float32
    chunked_weight_gradients(model_config, config.batch_size, tuple(images.shape[1:3]), dtype)
    hand_written_weight_gradients(model_config, config.batch_size, tuple(images.shape[1:3]), kernel)


if __name__ == "__main__":
    main()
