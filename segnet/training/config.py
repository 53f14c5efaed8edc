"""The training stage's settings: what it learns (params.yaml `train`) apart from how it runs (`runtime`).

The values, defaults included, live in params.yaml only; these classes name the fields and check their rules,
raising ValueError("key: problem") (segnet.params.build adds the file and section).
"""

from dataclasses import dataclass

from segnet.cores import available_cores
from segnet.devices import select_device
from segnet.params import check_rules, one_of
from segnet.training.distributed import BACKENDS

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
CLASS_WEIGHTINGS = ("none", "median_frequency")
PRECISIONS = ("auto", "float32", "bfloat16")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation (params.yaml `train`): what changes the trained weights."""

    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    schedule: str
    warmup_fraction: float
    val_fraction: float
    class_weighting: str

    def __post_init__(self):
        check_rules(
            self,
            {
                "epochs": (self.epochs >= 1, "an integer >= 1"),
                "batch_size": (self.batch_size >= 2, "an integer >= 2 (batch norm needs two values per channel)"),
                "optimizer": (self.optimizer in OPTIMIZERS, one_of(OPTIMIZERS)),
                "lr": (self.lr > 0, "a number > 0"),
                "momentum": (0 <= self.momentum < 1, "a number in [0, 1)"),
                "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
                "schedule": (self.schedule in SCHEDULES, one_of(SCHEDULES)),
                "warmup_fraction": (0 < self.warmup_fraction < 1, "a number in (0, 1)"),
                "val_fraction": (0 < self.val_fraction < 1, "a number in (0, 1)"),
                "class_weighting": (self.class_weighting in CLASS_WEIGHTINGS, one_of(CLASS_WEIGHTINGS)),
            },
        )


@dataclass(frozen=True)
class RuntimeConfig:
    """How training runs (params.yaml `runtime`): device, precision, CPU speed-ups, processes, checkpoints."""

    device: str
    precision: str
    channels_last: bool
    cpu_kernels: bool
    winograd: bool
    winograd_min_channels: int
    keep_freed_memory: bool
    threads: int
    processes: int
    distributed_backend: str
    checkpoint_steps: int
    val_batch_size: int

    def __post_init__(self):
        check_rules(
            self,
            {
                "precision": (self.precision in PRECISIONS, one_of(PRECISIONS)),
                "winograd_min_channels": (self.winograd_min_channels >= 1, "an integer >= 1"),
                "threads": (self.threads >= 0, "an integer >= 0 (0: one per core)"),
                "processes": (self.processes >= 1, "an integer >= 1"),
                "distributed_backend": (self.distributed_backend in BACKENDS, one_of(BACKENDS)),
                "checkpoint_steps": (self.checkpoint_steps >= 0, "an integer >= 0"),
                "val_batch_size": (self.val_batch_size >= 1, "an integer >= 1"),
            },
        )
        select_device(self.device)  # a name torch and this machine take
        # More threads than cores wait on each other at every step: a tiny model on a 2-core machine trained
        # 4.4x slower at 4 threads and 19x slower at 16, and 100,000 failed to start with an unrelated traceback.
        cores = available_cores()
        if self.threads > cores:
            raise ValueError(
                f"threads: {self.threads} is more than the {cores} cores this process may use; 0 uses "
                "one thread per core"
            )
