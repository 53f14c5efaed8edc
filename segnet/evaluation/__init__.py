"""Scoring a model: inference over a split, confusion-matrix metrics, bootstrap intervals and the pictures."""

from segnet.evaluation.bootstrap import BootstrapConfig, panel_confusions, percentile_interval
from segnet.evaluation.inference import accumulate_confusion, autocast, predict_batches
from segnet.evaluation.metrics import confusion_matrix, mean_iou, summarize

__all__ = [
    "BootstrapConfig", "accumulate_confusion", "autocast", "confusion_matrix", "mean_iou", "panel_confusions",
    "percentile_interval", "predict_batches", "summarize",
]
