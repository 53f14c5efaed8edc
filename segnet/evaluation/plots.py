"""Pictures for the evaluation: a confusion matrix and a grid of sample predictions (PNG bytes)."""

import io

import matplotlib

matplotlib.use("Agg")  # no display on training machines

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from segnet import CLASS_NAMES

# Background black, then one distinct colour per class, fixed so pictures compare across runs.
LABEL_COLOURS = ListedColormap(["#000000"] + [plt.get_cmap("tab10")(i) for i in range(10)])


def class_legend(figure, **placement) -> None:
    """A legend of the class colours on `figure`: one swatch per class, labelled with its name; `placement`
    goes to Figure.legend (loc, ncols, bbox_to_anchor...)."""
    swatches = [
        Patch(facecolor=LABEL_COLOURS(index), edgecolor="grey", label=name) for index, name in enumerate(CLASS_NAMES)
    ]
    figure.legend(handles=swatches, title="class", **placement)


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    # A fixed Software entry and no timestamp, so the same figure gives the same bytes.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(figure)
    return buffer.getvalue()


def confusion_png(confusion: torch.Tensor) -> bytes:
    """Row-normalised confusion matrix (each true class sums to 1), with the counts' shares printed."""
    counts = confusion.double().numpy()
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    figure, axes = plt.subplots(figsize=(7.5, 6.5))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    names = CLASS_NAMES[: len(shares)]
    axes.set_xticks(range(len(names)), names, rotation=45)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    for (row, column), share in np.ndenumerate(shares):
        if share >= 0.005:
            colour = "white" if share > 0.5 else "black"
            axes.text(column, row, f"{share:.2f}", ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, label="share of the true class's pixels")
    axes.set_title("Test confusion matrix (row-normalised)")
    figure.tight_layout()
    return _png(figure)


ERROR_COLOUR = (1.0, 0.0, 0.0)
"""The colour of a wrongly predicted pixel in the predictions picture."""


def mark_errors(pixels: np.ndarray, truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The image at half brightness with the wrongly predicted pixels in ERROR_COLOUR.

    Args:
        pixels: The image, float (H, W, 3) in [0, 1].
        truth: True labels (H, W).
        prediction: Predicted labels (H, W).

    Returns:
        float (H, W, 3). Dimmed, no pixel of the image is as bright a red as the mark, so the marks are exactly
        the pixels where prediction != truth.
    """
    marked = pixels * 0.5
    marked[truth != prediction] = ERROR_COLOUR
    return marked


def predictions_png(images: torch.Tensor, labels: torch.Tensor, predictions: torch.Tensor) -> bytes:
    """One row per sample: the image, the true labels, the predicted labels and the image with the wrong pixels
    marked, titled with their count and share; a legend of the class colours below."""
    rows, legend_inches = len(images), 0.9
    figure, axes = plt.subplots(rows, 4, figsize=(8, 2 * rows + legend_inches), squeeze=False, layout="constrained")
    for row in range(rows):
        pixels = images[row].float().numpy()
        if images.dtype == torch.uint8:
            pixels = pixels / 255.0
        truth, prediction = labels[row].numpy(), predictions[row].numpy()
        wrong = int((truth != prediction).sum())
        titles = ("image", "truth", "prediction", f"{wrong} px wrong ({wrong / truth.size:.1%})")
        if row == 0:
            titles = (*titles[:3], f"wrong pixels in red\n{titles[3]}")
        panels = (pixels, truth, prediction, mark_errors(pixels, truth, prediction))
        for column, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            axis = axes[row, column]
            if column in (0, 3):
                axis.imshow(panel, interpolation="nearest")
            else:
                axis.imshow(panel, cmap=LABEL_COLOURS, vmin=0, vmax=len(CLASS_NAMES) - 1, interpolation="nearest")
            axis.set_axis_off()
            if row == 0 or column == 3:
                axis.set_title(title, fontsize=9)
    class_legend(figure, loc="outside lower center", ncols=6, fontsize=8, title_fontsize=8)
    return _png(figure)


def miou_time_png(history: list[dict]) -> bytes:
    """Validation mIoU against wall-clock training time, one point per epoch (the time-to-accuracy curve)."""
    figure, axes = plt.subplots(figsize=(6, 4))
    minutes = [record["elapsed_s"] / 60 for record in history]
    axes.plot(minutes, [record["val_miou"] for record in history], marker="o")
    axes.set_xlabel("training time (minutes, validation included)")
    axes.set_ylabel("validation mIoU")
    axes.set_ylim(max(0.0, min(record["val_miou"] for record in history[len(history) // 2 :]) - 0.05), 1.0)
    axes.grid(True, alpha=0.3)
    axes.set_title("Validation mIoU against training time")
    figure.tight_layout()
    return _png(figure)
