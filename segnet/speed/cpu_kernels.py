"""C++ kernels for SegNet training on the CPU (segnet/speed/cpu_kernels.cpp): memory-bound layers, and Winograd
transforms.

On our 2-core CPU the convolutions run near the machine's bfloat16 matmul peak, and most of the rest of
a training step went to memory-bound layers that PyTorch runs slower than the memory traffic they need:
batch norm + ReLU (about 19 ms of a step, where copying the same tensors takes under 1 ms), and max
pooling and unpooling (about 20 ms: int64 indices as large as the activations, zero-filling before
scattering, contiguous copies). The kernels compute the same functions:

- batch_norm_relu: relu(batch_norm(x)) with batch statistics, forward and backward in two passes each.
- max_pool / max_unpool: 2x2 max pooling that records each maximum's position in its window (one byte),
  and the unpooling that puts values back there. Ties and NaN pick the same element as PyTorch's
  max_pool2d, so unpooling places every value where nn.MaxUnpool2d would.
- winograd_*: the transforms of Winograd's F(2x2, 3x3) convolution, which segnet/speed/winograd.py uses.

They are compiled with the system's C++ compiler on first use (about 40 s, then cached by torch under
~/.cache/torch_extensions) and used only in training, on channels-last bfloat16 or float32 CPU tensors;
segnet.model.network decides where. Evaluation and the exported model use PyTorch's own layers.
"""

import fcntl
import hashlib
import logging
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TypeGuard

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_suffix(".cpp")


def _build_signature() -> str:
    """Identifies what a build is for. The CPU's instruction sets: the build targets them (-march=native), so
    a cached build copied to another CPU must not be reused. And the Python environment and torch version:
    torch's build file names this environment's include paths, so two environments (two clones' venvs) sharing
    one build folder each found the other's build stale and rebuilt it, about 35 s, every time they took turns."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = platform.processor()
    identity = "\n".join([flags, sys.prefix, torch.__version__])
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


_NAME = f"segnet_cpu_kernels_{_build_signature()}"


def build_directory() -> Path:
    """Where torch builds and caches the kernels (~/.cache/torch_extensions/..., or $TORCH_EXTENSIONS_DIR)."""
    from torch.utils import cpp_extension

    return Path(cpp_extension._get_build_directory(_NAME, verbose=False))


@contextmanager
def build_turn(folder: Path) -> Iterator[None]:
    """Holds this process's turn to build or load the kernels in build `folder`, clearing a stale build lock.

    While torch builds or checks an extension it keeps a `lock` file in the build folder, and any other
    process waits, silently and without end, until the file is gone. A build killed before it deletes the
    file (SIGKILL, `dvc queue kill`, the OOM killer, a power cut) leaves it behind, and every training on
    this machine would then hang at its start. Our turn is an flock, which the kernel releases when its
    holder dies: while we hold it no other process of ours is in torch's build, so a `lock` found then is
    stale.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "segnet-turn.flock", "w") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)  # released when the file closes, or its process dies
        stale = folder / "lock"
        if stale.exists():
            log.warning("removing %s, left by a build of the CPU kernels that was killed", stale)
            stale.unlink(missing_ok=True)
        yield


@cache
def extension():
    """The compiled kernels, or None (with a warning) where they cannot be built, e.g. without a C++ compiler."""
    from torch.utils import cpp_extension

    # torch runs `ninja` from PATH. The environment's own (requirements.txt) comes first, also where it is not
    # activated: with two ninjas (a system one too), processes that found different ones rebuilt the shared
    # build each time they took turns.
    beside_python = Path(sys.executable).parent
    if (beside_python / "ninja").is_file() and shutil.which("ninja") != str(beside_python / "ninja"):
        os.environ["PATH"] = f"{beside_python}{os.pathsep}{os.environ.get('PATH', '')}"
    try:
        folder = build_directory()
        with build_turn(folder):
            # From the source text, not the file: torch writes it into its build folder, so every copy of the
            # project (each test's, each `dvc exp run --temp` one) shares one build instead of rebuilding it
            # because the path in the build file changed.
            return cpp_extension.load_inline(
                name=_NAME,
                cpp_sources=[SOURCE.read_text()],
                # -fopenmp makes at::parallel_for use torch's OpenMP threads; without it the kernels run on one.
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                build_directory=str(folder),
            )
    except Exception as error:  # noqa: BLE001 - any build failure means: run PyTorch's layers instead
        message = str(error).strip().splitlines()
        log.warning(
            "could not build the CPU kernels (%s); training uses PyTorch's layers",
            message[-1] if message else type(error).__name__,
        )
        return None


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels take `x`: a 4-d channels-last bfloat16 or float32 CPU tensor."""
    return (
        x.device.type == "cpu"
        and x.dtype in (torch.bfloat16, torch.float32)
        and x.dim() == 4
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def can_fuse(norm: torch.nn.Module, x: torch.Tensor) -> TypeGuard[torch.nn.BatchNorm2d]:
    """Whether batch_norm_relu computes relu(norm(x)): a plain BatchNorm2d (not the synchronised ones of
    distributed training) with affine weights and running statistics, and an input the kernels take."""
    return (
        type(norm) is torch.nn.BatchNorm2d
        and norm.affine
        and norm.track_running_stats
        and norm.momentum is not None
        and applies(x)
    )


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


class _BatchNormReLU(torch.autograd.Function):
    """relu(batch_norm(x)) with batch statistics; returns the output, the batch mean and the biased variance."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float):
        output, mean, var, invstd = extension().batch_norm_relu(x, weight, bias, eps)
        ctx.save_for_backward(x, output, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return output, mean, var

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor, _grad_mean, _grad_var):
        x, output, weight, mean, invstd = ctx.saved_tensors
        grad_input, grad_weight, grad_bias = extension().batch_norm_relu_backward(
            _channels_last(grad_output), x, output, weight, mean, invstd
        )
        return grad_input, grad_weight, grad_bias, None


def batch_norm_relu(x: torch.Tensor, norm: torch.nn.BatchNorm2d) -> torch.Tensor:
    """relu(norm(x)) in training mode, updating norm's running statistics as nn.BatchNorm2d does."""
    batches, running_mean, running_var, momentum = (
        norm.num_batches_tracked,
        norm.running_mean,
        norm.running_var,
        norm.momentum,
    )
    if batches is None or running_mean is None or running_var is None or momentum is None:
        raise ValueError("batch_norm_relu needs a BatchNorm2d with running statistics and a momentum (can_fuse)")
    output, mean, var = _BatchNormReLU.apply(x, norm.weight, norm.bias, norm.eps)
    with torch.no_grad():
        count = x.numel() // x.shape[1]
        batches.add_(1)
        running_mean.lerp_(mean, momentum)
        # Running variance is the unbiased estimate, as in PyTorch.
        running_var.lerp_(var * (count / (count - 1)), momentum)
    return output


class _MaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor):
        values, where = extension().max_window(x)
        ctx.save_for_backward(where)
        ctx.mark_non_differentiable(where)
        return values, where

    @staticmethod
    def backward(ctx, grad_values: torch.Tensor, _grad_where):
        (where,) = ctx.saved_tensors
        return extension().scatter_window(_channels_last(grad_values), where)


class _MaxUnpool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values: torch.Tensor, where: torch.Tensor):
        ctx.save_for_backward(where)
        return extension().scatter_window(_channels_last(values), where)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (where,) = ctx.saved_tensors
        return extension().gather_window(_channels_last(grad_output), where), None


def max_pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """2x2 max pooling, stride 2: (values, where), `where` (uint8) the position of each maximum in its window."""
    return _MaxPool.apply(x)


def max_unpool(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """The inverse placement of max_pool: each value at its recorded window position, zeros elsewhere."""
    return _MaxUnpool.apply(values, where)
