"""What a stage computes on: the device, and the precision autocast uses there (its cores: segnet.cores)."""

import torch


def select_device(name: str, local_rank: int | None = None) -> torch.device:
    """`auto` picks CUDA when available, else the CPU. `local_rank` gives each process on a machine its own GPU.
    Errors start with "device: ", for segnet.params.build to name the setting."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and name.startswith("cuda:"):
        raise ValueError(
            f"device: '{name}' would put every process on one GPU; use cuda or auto, which "
            "give each process the GPU of its LOCAL_RANK"
        )
    if name == "cuda" and local_rank is not None:
        name = f"cuda:{local_rank}"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device: '{name}' is not a device (use auto, cpu, cuda or cuda:N)") from error
    # torch names more devices (mps, xpu, meta...) than this project supports: they would fail later, in the
    # model's transfer or in autocast, with a traceback.
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: '{name}' is not a device this project runs on (use auto, cpu, cuda or cuda:N)")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ValueError(f"device: '{name}' requested but that CUDA device is not available")
    return device


def select_amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None means plain float32.

    `auto` uses bfloat16 where the hardware computes it natively (CUDA with bf16, CPUs with AVX-512
    BF16 or AMX), float32 elsewhere. Master weights always stay float32.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda":
        # float16 would need loss scaling; GPUs without bfloat16 train in float32 instead.
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if torch.backends.mkldnn.is_available() and _cpu_has_native_bf16() else None


def use_exact_float32() -> None:
    """Makes float32 on CUDA IEEE float32 for this process: PyTorch lets cuDNN run float32 convolutions in TF32
    (a 10-bit mantissa) on Ampere and newer GPUs by default, so a "float32" result would depend on the GPU."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def _cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
