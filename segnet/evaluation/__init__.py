"""Scoring a model: inference over a split, confusion-matrix metrics, bootstrap intervals and the pictures."""

from segnet.evaluation.bootstrap import BootstrapConfig, panel_confusions, percentile_interval
from segnet.evaluation.inference import accumulate_confusion, autocast, predict_batches
from segnet.evaluation.metrics import confusion_matrix, mean_iou, summarize
from segnet.evaluation.plots import confusion_png, miou_time_png, predictions_png

__all__ = [
    "BootstrapConfig",
    "accumulate_confusion",
    "autocast",
    "confusion_matrix",
    "confusion_png",
    "mean_iou",
    "miou_time_png",
    "panel_confusions",
    "predictions_png",
    "percentile_interval",
    "predict_batches",
    "summarize",
]
