"""Training in several processes with DistributedDataParallel: `torchrun`, or `runtime.processes` on one machine.

Every process holds a replica of the model and trains on its share of each global batch; gradients are
averaged across processes after every backward pass, so the replicas stay identical. The global batch is
`train.batch_size` whatever the number of processes, and batch-norm statistics span the whole global
batch, so a run in N processes computes what a run in one process computes, up to floating-point
summation order. (Not with `train.class_weighting: median_frequency`: each process's weighted mean divides by
its own slice's total weight.)
"""

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from segnet.cores import available_cores

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class World:
    """Where this process stands among the training processes (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The process that alone logs to MLflow and writes checkpoints and outputs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.size > 1


SINGLE_PROCESS = World()


def launched() -> bool:
    """Whether torchrun or run_in_processes started this process, as one of a job of any size (one included)."""
    return "WORLD_SIZE" in os.environ


def launched_world() -> World:
    """The World that torchrun or run_in_processes describes in this process's environment (RANK, WORLD_SIZE,
    LOCAL_RANK)."""
    if not launched():
        return SINGLE_PROCESS
    return World(
        rank=int(os.environ["RANK"]), size=int(os.environ["WORLD_SIZE"]), local_rank=int(os.environ["LOCAL_RANK"])
    )


def start(world: World, backend: str, device: torch.device) -> None:
    """Joins the job's process group (its address from the environment); `auto` picks nccl for CUDA, else gloo."""
    if backend not in BACKENDS:
        raise ValueError(f"distributed_backend: '{backend}' is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and device.type != "cuda":
        raise ValueError("distributed_backend: nccl needs CUDA devices; use gloo on the CPU")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=world.rank, world_size=world.size)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch(processes: int, module: str, arguments: list[str]) -> int | None:
    """Where `processes` > 1 and no launcher started this process: runs the job (run_in_processes) and returns
    its exit status. None where this process is to train itself."""
    if processes == 1 or launched():
        return None
    return run_in_processes(processes, module, arguments)


def run_in_processes(processes: int, module: str, arguments: list[str]) -> int:
    """Runs `python -m module *arguments` in `processes` processes on this machine, with the environment torchrun
    gives its processes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), and waits for them all.

    Not torchrun itself: stopped by a signal, torchrun ends with a traceback of its own and exit status 1, and a
    terminal's Ctrl-C reached it twice, directly and passed on from here (measured, torch 2.13).

    Each process gets its share of the cores as threads and its own session, so that signals reach it from here
    alone, once: SIGINT and SIGTERM are passed on (the processes stop at the next step, rank 0 saving a
    checkpoint; a second signal stops them at once). When a process fails, the others are stopped, since they
    would wait for it in their next collective until gloo's timeout; and they all die with this process.

    Returns:
        0 when every process succeeded; 130 when a signal stopped them (as Ctrl-C stops one process); else the
        exit status of the first process that failed, also when it failed while stopping on a signal.
    """
    threads = max(1, available_cores() // processes)
    with socket.socket() as probe:  # a free port for rank 0's rendezvous store
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    job = {
        "OMP_NUM_THREADS": str(threads),
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "WORLD_SIZE": str(processes),
        "LOCAL_WORLD_SIZE": str(processes),
    }
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", module, *arguments],
            start_new_session=True,
            env={**job, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            preexec_fn=_die_with_parent,
        )
        for rank in range(processes)
    ]
    signalled = []
    # When the job's processes get SIGKILL: a while after the first of them failed or a second signal came.
    kill_at = None

    def forward(signum, frame) -> None:
        nonlocal kill_at
        signalled.append(signum)
        _signal_running(workers, signum)
        if len(signalled) > 1 and kill_at is None:  # a process blocked in C++ never sees the signal
            kill_at = time.monotonic() + _FAILED_JOB_GRACE_S

    previous = {signum: signal.signal(signum, forward) for signum in (signal.SIGINT, signal.SIGTERM)}
    failed = None
    try:
        while None in [worker.poll() for worker in workers]:  # a list: every worker polled, none skipped
            if failed is None:
                # Also after a signal: the others would wait for a failed process in their next collective (a
                # stop at a checkpoint has one) until gloo's timeout, half an hour. A process that stopped as
                # asked has not failed: rank 0 may still be ending its MLflow run after the others have gone.
                failed = _first_failure([worker.returncode for worker in workers], bool(signalled))
                if failed is not None:
                    if not signalled:  # SIGTERM lets a process outside the loop end its MLflow run
                        _signal_running(workers, signal.SIGTERM)
                    if kill_at is None:
                        kill_at = time.monotonic() + _FAILED_JOB_GRACE_S
            if kill_at is not None and time.monotonic() > kill_at:
                _signal_running(workers, signal.SIGKILL)  # blocked in a collective, they never see a signal
            time.sleep(0.1)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _signal_running(workers, signal.SIGKILL)  # only if this ended by an exception of its own
    if failed is None:
        failed = _first_failure([worker.returncode for worker in workers], bool(signalled)) or 0
    if signalled and (failed == 0 or _stopped_by_signal(failed)):
        return 130  # stopped as asked; a process that failed otherwise meanwhile reports its own status
    return failed if failed >= 0 else 128 - failed  # killed by signal N: 128 + N, as a shell reports it


def _first_failure(statuses: list[int | None], signalled: bool) -> int | None:
    """The first exit status that is a failure: not 0 nor running, and after a signal, not the stop it asked for."""
    ended = [status for status in statuses if status not in (None, 0)]
    if not signalled:
        return next(iter(ended), None)
    return next((status for status in ended if not _stopped_by_signal(status)), None)


# Seconds a failed job's other processes get to end on SIGTERM before SIGKILL.
_FAILED_JOB_GRACE_S = 10.0


def _stopped_by_signal(status: int) -> bool:
    """Whether an exit status is that of a process stopped by SIGINT or SIGTERM: 130 from a stage (run_stage),
    or the signal itself (before Python's handlers were set up), or SIGKILL from here after a second signal."""
    return status == 130 or status in (-signal.SIGINT, -signal.SIGTERM, -signal.SIGKILL)


def _signal_running(workers: list[subprocess.Popen], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signum)


def _die_with_parent() -> None:
    """In a new process before it runs Python: SIGKILL it when its parent dies (Linux), so that a launcher killed
    outright (SIGKILL, out of memory) leaves no process training on in a session no terminal reaches."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def from_main(value):
    """Rank 0's `value`, on every process (a no-op in a single process); `value` must be picklable."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Waits until every process gets here (a no-op in a single process)."""
    if dist.is_initialized():
        dist.barrier()


def sum_across(tensor: torch.Tensor) -> torch.Tensor:
    """Sums `tensor` over all processes, in place (a no-op in a single process)."""
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def any_across(flag: bool, device: torch.device) -> bool:
    """True on every process when `flag` is True on any: processes must stop at the same step."""
    if not dist.is_initialized():
        return flag
    return bool(sum_across(torch.tensor([int(flag)], device=device)).item())


class _SumAcross(torch.autograd.Function):
    """All-reduce (sum) whose backward pass is an all-reduce of the gradient: d(sum_r x_r)/dx_r = 1."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        return sum_across(tensor.clone())

    @staticmethod
    def backward(ctx, gradient: torch.Tensor) -> torch.Tensor:
        return sum_across(gradient.clone())


class CrossProcessBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics cover the global batch, on any backend.

    nn.SyncBatchNorm does the same on CUDA only. Statistics are computed in two passes (the mean, then the
    mean squared deviation), in float32, as BatchNorm2d does; the running variance is the unbiased one.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        x = x.float()
        channels = (1, -1, 1, 1)
        count = x.numel() // x.shape[1] * dist.get_world_size()
        mean = _SumAcross.apply(x.sum(dim=(0, 2, 3))) / count
        centred = x - mean.view(channels)
        variance = _SumAcross.apply(centred.square().sum(dim=(0, 2, 3))) / count
        # Plain batch norm modules become these (synchronize_batch_norm): with running statistics and a momentum.
        assert self.running_mean is not None and self.running_var is not None and self.momentum is not None
        assert self.num_batches_tracked is not None
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(variance * count / (count - 1), self.momentum)
            self.num_batches_tracked += 1
        scale = self.weight * torch.rsqrt(variance + self.eps)
        return centred * scale.view(channels) + self.bias.view(channels)


def synchronize_batch_norm(model: nn.Module, device: torch.device) -> nn.Module:
    """Replaces every BatchNorm2d of `model` by one whose statistics span all processes; keeps the weights.

    The state-dict keys stay the same, so the weights load into the plain model again.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            if child.momentum is None or not child.affine or not child.track_running_stats:
                raise ValueError(f"{name}: only affine batch norm with running statistics and a momentum is supported")
            replacement = CrossProcessBatchNorm(child.num_features, child.eps, child.momentum)
            replacement.load_state_dict(child.state_dict())
            setattr(model, name, replacement.to(child.weight.device))
        else:
            synchronize_batch_norm(child, device)
    return model
