"""Segmenting new pictures with a trained model: reading images and course .mat files as grey pictures (inputs,
images), turning dark ink on light paper the model's way round (polarity), covering any size with overlapping
windows (windows), the model from a folder or MLflow (models), and the mask, overlay and summary written for each
(outputs, overlay). `python -m segnet.predict` runs it."""

from segnet.prediction.inputs import Picture, Unreadable, read_inputs
from segnet.prediction.models import Segmenter, load_segmenter
from segnet.prediction.outputs import check_outputs, mask_png, output_paths, summary_line
from segnet.prediction.overlay import overlay_png
from segnet.prediction.segment import Segmentation, segment

__all__ = [
    "Picture",
    "Segmentation",
    "Segmenter",
    "Unreadable",
    "check_outputs",
    "load_segmenter",
    "mask_png",
    "output_paths",
    "overlay_png",
    "read_inputs",
    "segment",
    "summary_line",
]
