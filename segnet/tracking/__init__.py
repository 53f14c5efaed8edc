"""MLflow: one run per stage execution, the logged model, the shared tracking server and run comparison."""

from segnet.tracking.runs import EVALUATE_STAGE, TRAIN_STAGE, find_run, log_metrics, stage_run

__all__ = ["EVALUATE_STAGE", "TRAIN_STAGE", "find_run", "log_metrics", "stage_run"]
