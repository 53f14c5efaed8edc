"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3) (Lavin and Gray, 2016), for training on the CPU.

A direct 3x3 convolution multiplies 36 times per 2x2 block of outputs and pair of channels; F(2x2, 3x3)
multiplies 16 times, after transforms that only add and subtract. Each 2x2 output tile reads the 4x4 input
block around it; the input block d, the filter g and the output tile y are related by

    y = A^T [(G g G^T) * (B^T d B)] A     (summed over input channels; * is elementwise)

so the sum over channels becomes 16 independent matrix products, (tiles x in) @ (in x out), which PyTorch runs
at the CPU's matmul rate. The transforms are C++ kernels (segnet/speed/cpu_kernels.cpp); the gradients follow the
same algebra backwards. The function computed is the convolution's, rounded differently: in bfloat16 the
transformed values are rounded where a direct convolution rounds its inputs, so its error against a float64
reference is about twice the direct one's (tests/test_winograd.py). It pays where the channels are wide enough
for the products to run near the matmul peak, which on our CPU means the deeper layers (README, Performance).
"""

from typing import TypeGuard

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from segnet.speed import cpu_kernels


def takes(conv: nn.Module) -> TypeGuard[nn.Conv2d]:
    """Whether F(2x2, 3x3) computes `conv`: a 3x3 convolution with stride 1, padding 1, no dilation, one group
    and no bias."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.bias is None
        and conv.padding_mode == "zeros"
    )


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels take the input `x`: channels-last bfloat16 or float32 on the CPU, even height and width."""
    return cpu_kernels.applies(x) and x.shape[2] % 2 == 0 and x.shape[3] % 2 == 0


class _Conv3x3(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        kernels = cpu_kernels.extension()
        n, _, h, w = x.shape
        # Our own dtypes throughout: under autocast the matrix products below would otherwise be cast again.
        with torch.autocast("cpu", enabled=False):
            filters = kernels.winograd_filters(weight.float(), x.dtype)  # (16, in, out)
            tiles = kernels.winograd_tiles(x)
            output = kernels.winograd_untile(torch.bmm(tiles, filters), n, h, w)
        # The tiles, not x, for the weight's gradient: four times x's size, but computed once. In the layers this
        # runs on by default (8x8 and 16x16) they are at most 8 MiB per layer for a batch of 32.
        ctx.save_for_backward(tiles, filters, weight)
        ctx.size = (n, h, w)
        return output

    @staticmethod
    @once_differentiable  # the kernels have no gradients of their own: a second derivative raises, not misleads
    def backward(ctx, grad_output: torch.Tensor):
        kernels = cpu_kernels.extension()
        tiles, filters, weight = ctx.saved_tensors
        n, h, w = ctx.size
        grad_products = kernels.winograd_grad_tiles(
            grad_output.to(filters.dtype).contiguous(memory_format=torch.channels_last)
        )
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = kernels.winograd_untile_grad(torch.bmm(grad_products, filters.transpose(1, 2)), n, h, w)
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_filters = torch.bmm(tiles.transpose(1, 2), grad_products)  # (16, in, out)
            # In the weight's own memory format, which the optimizer expects, and in float32.
            grad_weight = torch.empty_like(weight, dtype=torch.float32)
            kernels.winograd_filter_grad(grad_filters, grad_weight)
            grad_weight = grad_weight.to(weight.dtype)
        return grad_x, grad_weight


def conv3x3(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The 3x3 convolution of `x` with `weight` (stride 1, padding 1, no bias) by F(2x2, 3x3).

    `x` must be one that applies() takes. It computes in x's dtype, or in autocast's where autocast is on, as a
    direct convolution would. The filters are transformed from `weight` (float32 master weights under autocast)
    in float32 and rounded once, where autocast would round the weights before a direct convolution.
    """
    if torch.is_autocast_enabled("cpu"):
        x = x.to(torch.get_autocast_dtype("cpu"))
    return _Conv3x3.apply(x, weight)
