"""The training loop and what it needs: settings, optimizer and schedule, checkpoints, several processes."""

from segnet.training.callbacks import Callback, EpochLog, ProgressBar
from segnet.training.checkpoint import Checkpointer, load_checkpoint
from segnet.training.config import RuntimeConfig, TrainConfig
from segnet.training.loop import TrainingInterrupted, TrainResult, set_seed, train

__all__ = [
    "Callback",
    "Checkpointer",
    "EpochLog",
    "ProgressBar",
    "RuntimeConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "load_checkpoint",
    "set_seed",
    "train",
]
