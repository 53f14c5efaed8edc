"""The training loop and what it needs: settings, optimizer and schedule, checkpoints, several processes."""

from segnet.training.loop import TrainConfig, TrainingInterrupted, TrainResult, set_seed, train

__all__ = ["TrainConfig", "TrainResult", "TrainingInterrupted", "set_seed", "train"]
