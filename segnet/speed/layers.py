"""Applying the speed code to a built SegNet for training on the CPU, by swapping modules.

The swapped model has the same parameters, buffers and state_dict keys, and computes the same function:
in training mode through our kernels (segnet.speed.cpu_kernels, segnet.speed.winograd), in evaluation mode
through PyTorch's layers, as the plain model does.
"""

import torch
from torch import nn

from segnet.model.network import ConvBatchNormReLU
from segnet.speed import cpu_kernels, winograd


class KernelConvBatchNormReLU(ConvBatchNormReLU):
    """conv-bn-relu whose training forward fuses batch norm and ReLU into one kernel, and convolves by Winograd's
    F(2x2, 3x3) where `winograd` is set."""

    winograd = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv, norm, relu = self
        # takes() again: a module put in the conv's place after use_winograd runs as itself.
        if self.winograd and self.training and winograd.takes(conv) and winograd.applies(x):
            x = winograd.conv3x3(x, conv.weight)
        else:
            x = conv(x)
        if self.training and cpu_kernels.can_fuse(norm, x):
            return cpu_kernels.batch_norm_relu(x, norm)
        return relu(norm(x))


class WindowMaxPool2d(nn.MaxPool2d):
    """2x2 max pooling that, in training, returns each maximum's position within its window (uint8) instead of
    int64 indices into the plane: one byte per value, and no zero-filling when unpooling."""

    def __init__(self):
        super().__init__(2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training and cpu_kernels.applies(x):
            return cpu_kernels.max_pool(x)
        return super().forward(x)


class WindowMaxUnpool2d(nn.MaxUnpool2d):
    """2x2 max unpooling that takes WindowMaxPool2d's window positions as well as PyTorch's indices."""

    def __init__(self):
        super().__init__(2, stride=2)

    def forward(self, x: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if indices.dtype == torch.uint8 and output_size is None:
            return cpu_kernels.max_unpool(x, indices)
        return super().forward(x, indices, output_size)


def _is_window_pool(module: nn.Module) -> bool:
    return (
        type(module) is nn.MaxPool2d
        and module.return_indices
        and module.kernel_size in (2, (2, 2))
        and module.stride in (2, (2, 2))
        and module.padding in (0, (0, 0))
        and module.dilation in (1, (1, 1))
        and not module.ceil_mode
    )


def _is_window_unpool(module: nn.Module) -> bool:
    return (
        type(module) is nn.MaxUnpool2d
        and module.kernel_size == (2, 2)
        and module.stride == (2, 2)
        and module.padding == (0, 0)
    )


def use_cpu_kernels(model: nn.Module) -> bool:
    """Swaps `model`'s conv-bn-relu blocks, 2x2 max pooling and unpooling for the kernel versions above, for
    training on the CPU. Returns whether it did: not for a model without such layers, nor where the kernels
    do not build (segnet.speed.cpu_kernels.extension warns why)."""
    blocks = [module for module in model.modules() if type(module) is ConvBatchNormReLU]
    if not blocks or cpu_kernels.extension() is None:
        return False
    for block in blocks:
        # The class alone changes: the block keeps its very parameters and buffers (and so the optimizer's
        # references, their memory format, and the random draws that built them).
        block.__class__ = KernelConvBatchNormReLU
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if _is_window_pool(child):
                setattr(parent, name, WindowMaxPool2d().train(child.training))
            elif _is_window_unpool(child):
                setattr(parent, name, WindowMaxUnpool2d().train(child.training))
    return True


def use_winograd(model: nn.Module, min_channels: int) -> list[str]:
    """Convolves by Winograd's F(2x2, 3x3) in the kernel blocks (use_cpu_kernels) whose 3x3 convolution has at
    least `min_channels` input and output channels: the same function with fewer multiplications, which pays
    where the channels are wide enough for its matrix products to run near the matmul peak. Returns the names
    of the blocks that use it."""
    names = []
    for name, block in model.named_modules():
        if isinstance(block, KernelConvBatchNormReLU):
            conv = block[0]
            block.winograd = winograd.takes(conv) and min(conv.in_channels, conv.out_channels) >= min_channels
            if block.winograd:
                names.append(name)
    return names
