"""Scoring a model: inference over a split, confusion-matrix metrics, boundary F1, bootstrap intervals and the
pictures."""

from segnet.evaluation.bootstrap import BootstrapConfig, panel_confusions, percentile_interval
from segnet.evaluation.boundary import boundaries, class_boundary_f1, panel_boundary_f1
from segnet.evaluation.inference import accumulate_confusion, autocast, predict_batches
from segnet.evaluation.metrics import confusion_matrix, mean_iou, summarize
from segnet.evaluation.plots import class_legend, confusion_png, mark_errors, miou_time_png, predictions_png

__all__ = [
    "BootstrapConfig",
    "accumulate_confusion",
    "autocast",
    "boundaries",
    "class_boundary_f1",
    "class_legend",
    "confusion_matrix",
    "confusion_png",
    "mark_errors",
    "mean_iou",
    "miou_time_png",
    "panel_boundary_f1",
    "panel_confusions",
    "predictions_png",
    "percentile_interval",
    "predict_batches",
    "summarize",
]
