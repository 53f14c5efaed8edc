"""Profile: where one training step of our loop spends its time (torch.profiler), grouped by operator.

Trains one short epoch of the default settings on a small built-in dataset under torch.profiler and
prints the operators by self CPU time, then the share spent in convolutions (forward and backward),
their achieved GFLOP/s, and the rest (batch norm, ReLU, pooling, unpooling, loss, optimizer,
augmentation). Then it times each convolution of the model alone, at the size it runs at in training, in
its three parts: forward, the gradient of its input and the gradient of its weights, in GFLOP/s, and each
3x3 one whole by PyTorch's direct convolution and by Winograd's F(2x2, 3x3) (segnet/speed/winograd.py).
Last, the model's input from a batch of uint8 panels, by float arithmetic against the model's byte lookup.
Usage: make profile  (or python -m benchmarks.profile [--files N])
"""

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    best_seconds_per_call,
    load_settings,
    prepare,
    read_arguments,
    small_archive,
    train_model,
)
from benchmarks.throughput import matmul_peak, training_flops_per_image
from segnet.data.loading import load_split
from segnet.devices import select_amp_dtype
from segnet.model.network import SegNet, SegNetConfig, transform_input
from segnet.speed import cpu_kernels, winograd

CONVOLUTION_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward")  # direct: their self time
# Those segnet.speed.winograd computes: the whole time of its autograd function's forward and backward, its matrix
# products included (counting aten::bmm itself would also count the augmentation's small products).
WINOGRAD_EVENTS = ("_Conv3x3", "_Conv3x3Backward")
# Repeats per timing of one convolution part, and timings per part (the best is kept).
REPEATS, TRIALS = 10, 5


def timed_cell(seconds: float, flops: float) -> str:
    """One table cell: milliseconds (GFLOP/s)."""
    return f"{seconds * 1e3:.2f} ({flops / seconds / 1e9:.0f})"


def convolution_backward(
    conv: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, mask: list[bool]
) -> tuple:
    """(input gradient, weight gradient, bias gradient) of `conv` with `weight` on input `x`, for output gradient
    `grad`: those `mask` asks for, None for the others (the bias is left out)."""
    return torch.ops.aten.convolution_backward(
        grad,
        x,
        weight,
        None,
        list(conv.stride),
        list(conv.padding),
        list(conv.dilation),
        False,
        [0, 0],
        conv.groups,
        mask,
    )


def convolution_parts(
    conv: torch.nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor
) -> list[Callable[[], object]]:
    """The three parts of `conv` on input `x` with `weight` (its bias left out), each a call to time: the forward
    pass, the gradient of the input alone and the gradient of the weight alone, for output gradient `grad`."""
    return [
        lambda: torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups),
        lambda: convolution_backward(conv, x, weight, grad, [True, False, False]),
        lambda: convolution_backward(conv, x, weight, grad, [False, True, False]),
    ]


def convolution_shapes(model: SegNet, batch_size: int, image_size: tuple[int, int], dtype: torch.dtype):
    """Yields (name, conv, input, weight, output gradient) for every convolution of `model`, channels-last in
    `dtype` at the size it runs at for a batch of `image_size` (height, width) images, with random values."""
    shapes = {}  # conv -> (input shape, output shape) in the model's own forward pass

    def record_shapes(conv, args, output):
        shapes[conv] = (args[0].shape, output.shape)

    hooks = [conv.register_forward_hook(record_shapes) for conv in model.modules() if isinstance(conv, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.rand(batch_size, model.config.in_channels, *image_size))
    for hook in hooks:
        hook.remove()
    for name, conv in model.named_modules():
        if conv in shapes:
            shape, output_shape = shapes[conv]
            x = torch.randn(shape).to(dtype).contiguous(memory_format=torch.channels_last)
            weight = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
            grad = torch.randn(output_shape).to(dtype).contiguous(memory_format=torch.channels_last)
            yield name, conv, x, weight, grad


def convolution_table(model: SegNet, batch_size: int, image_size: tuple[int, int], dtype: torch.dtype) -> None:
    """Times every convolution of `model` alone, channels-last in `dtype` at the size it runs at for a batch of
    `image_size` (height, width) images, split into forward, input gradient and weight gradient."""
    print(f"\nconvolutions alone, {str(dtype).replace('torch.', '')} channels-last, batch {batch_size}: ms (GFLOP/s)")
    print(f"{'layer':<28} {'size':>5} {'channels':>11} {'forward':>15} {'input grad':>15} {'weight grad':>15}")
    totals = [0.0, 0.0, 0.0]  # seconds per part
    total_flops = [0.0, 0.0, 0.0]
    convolutions = convolution_shapes(model, batch_size, image_size, dtype)
    for number, (name, conv, x, weight, grad) in enumerate(convolutions):
        flops = 2 * grad.numel() * weight[0].numel()  # multiply-adds of the forward; each gradient has as many
        cells = []
        for index, part in enumerate(convolution_parts(conv, x, weight, grad)):
            # The model's input needs no gradient, so its first convolution never computes one for its input.
            if index == 1 and number == 0:
                cells.append("-")
                continue
            seconds = best_seconds_per_call(part, REPEATS, TRIALS)
            totals[index] += seconds
            total_flops[index] += flops
            cells.append(timed_cell(seconds, flops))
        print(
            f"{name:<28} {x.shape[-1]:>5} {f'{conv.in_channels} -> {conv.out_channels}':>11} "
            + " ".join(f"{cell:>15}" for cell in cells)
        )
    cells = [timed_cell(seconds, flops) for seconds, flops in zip(totals, total_flops, strict=True)]
    print(f"{'all':<46} " + " ".join(f"{cell:>15}" for cell in cells))


def winograd_table(model: SegNet, batch_size: int, image_size: tuple[int, int], dtype: torch.dtype) -> None:
    """Times each 3x3 convolution of `model` that segnet.speed.winograd takes, at the size it runs at in training:
    forward and both gradients together, by PyTorch's direct convolution (under autocast, as training runs it)
    and by F(2x2, 3x3), from the same float32 weights."""
    print(
        f"\n3x3 convolutions alone, forward + both gradients, {str(dtype).replace('torch.', '')} channels-last, "
        f"batch {batch_size}: ms"
    )
    print(f"{'layer':<28} {'size':>5} {'channels':>11} {'direct':>8} {'Winograd':>9} {'ratio':>6}")
    for number, (name, conv, x, _, grad) in enumerate(convolution_shapes(model, batch_size, image_size, dtype)):
        if not winograd.takes(conv) or number == 0:
            continue  # the first layer's input needs no gradient in training; its 3 channels are far too few anyway
        x.requires_grad_()
        weight = conv.weight.detach().float().contiguous(memory_format=torch.channels_last).requires_grad_()

        def direct(x=x, weight=weight, grad=grad):
            with torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
                output = torch.nn.functional.conv2d(x, weight, padding=1)
            output.backward(grad)

        def by_winograd(x=x, weight=weight, grad=grad):
            winograd.conv3x3(x, weight).backward(grad)

        milliseconds = [best_seconds_per_call(call, REPEATS, TRIALS) * 1e3 for call in (direct, by_winograd)]
        print(
            f"{name:<28} {x.shape[-1]:>5} {f'{conv.in_channels} -> {conv.out_channels}':>11} "
            f"{milliseconds[0]:>8.2f} {milliseconds[1]:>9.2f} {milliseconds[1] / milliseconds[0]:>5.2f}x"
        )


def input_timing(model_config: SegNetConfig, images: torch.Tensor, batch_size: int) -> None:
    """Times the first conv's input from a batch of uint8 panels: scaled to [0, 1] and transformed in float
    arithmetic (the path float pixels take), against the model's lookup of each byte."""
    if images.dtype != torch.uint8:
        print("\nthe first conv's input: not timed, the prepared panels are not stored as bytes")
        return
    model = SegNet(model_config)
    panels = images[:batch_size].permute(0, 3, 1, 2)  # channels-last (N, 3, H, W), as segnet.data.to_input gives

    def by_arithmetic():
        return transform_input(panels.float().div_(255.0), model_config.input_transform)

    def by_lookup():
        return model.look_up_bytes(panels)

    assert torch.equal(by_arithmetic(), by_lookup())
    milliseconds = [best_seconds_per_call(call, REPEATS, TRIALS) * 1e3 for call in (by_arithmetic, by_lookup)]
    print(
        f"\nthe first conv's input from {len(panels)} uint8 panels ({model_config.input_transform}): "
        f"{milliseconds[0]:.2f} ms by float arithmetic, {milliseconds[1]:.2f} ms by the model's byte lookup "
        "(the same values)"
    )


def main() -> None:
    arguments = read_arguments(__doc__.splitlines()[0], default_files=8)
    settings = load_settings()
    model_config, batch_size = settings.model, settings["batch_size"]
    with tempfile.TemporaryDirectory(prefix="segnet-profile-") as folder:
        prepared = Path(folder) / "prepared"
        prepare(small_archive(Path(folder), arguments.files, 1), prepared)
        images, labels = load_split(prepared, "train")
    train_index, val_index = torch.arange(len(images)), torch.arange(2)
    # A first epoch outside the profiler warms up oneDNN's kernel choices.
    train_model(settings, images, labels, train_index, val_index)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        train_model(settings, images, labels, train_index, val_index)
    steps = len(images) // batch_size
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=15))
    total = sum(event.self_cpu_time_total for event in events) / 1e6
    convolution = (
        sum(event.self_cpu_time_total for event in events if event.key in CONVOLUTION_OPS)
        + sum(event.cpu_time_total for event in events if event.key in WINOGRAD_EVENTS)
    ) / 1e6
    flops = training_flops_per_image(model_config) * batch_size * steps
    print(f"steps: {steps} of {batch_size} images; profiled CPU time {total / steps * 1e3:.1f} ms per step")
    print(
        f"convolutions (forward + backward, Winograd's included): {convolution / total:.0%} of the time, "
        f"{flops / convolution / 1e9:.0f} GFLOP/s of the model's FLOPs while they run"
    )
    print(f"everything else: {(total - convolution) / steps * 1e3:.1f} ms per step")
    dtype = select_amp_dtype(str(settings["precision"]), torch.device("cpu")) or torch.float32
    image_size = (images.shape[1], images.shape[2])
    convolution_table(SegNet(model_config), batch_size, image_size, dtype)
    print(f"matmul peak of {str(dtype).replace('torch.', '')}: {matmul_peak(dtype) / 1e9:.0f} GFLOP/s")
    if cpu_kernels.extension() is not None:
        winograd_table(SegNet(model_config), batch_size, image_size, dtype)
    input_timing(model_config, images, batch_size)


if __name__ == "__main__":
    main()
