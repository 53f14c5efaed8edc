"""A picture with its predicted classes coloured over it, in the colours of the evaluation's pictures, with a
legend of them (PNG bytes, the same for the same input)."""

import io

import numpy as np
from matplotlib.figure import Figure

from segnet import CLASS_NAMES
from segnet.evaluation.plots import LABEL_COLOURS, class_legend

# The picture's longer side, in inches at 100 dpi: small pictures are enlarged (pixel by pixel), large ones reduced.
PICTURE_INCHES = 4.0
LEGEND_INCHES = 1.5
# Tall enough for the legend's 11 rows beside a wide, flat picture.
MIN_HEIGHT_INCHES = 3.4
# Enough colour to tell the classes apart, little enough to see the strokes under it.
OPACITY = 0.6


def overlay_png(grey: np.ndarray, mask: np.ndarray, title: str) -> bytes:
    """`grey` (H, W) float in [0, 1] in grey, `mask` (H, W) class indices coloured over it (background clear),
    the class legend beside them, `title` above."""
    height, width = mask.shape
    scale = PICTURE_INCHES / max(height, width)
    picture_width, picture_height = width * scale, height * scale
    figure_width, figure_height = picture_width + LEGEND_INCHES, max(picture_height, MIN_HEIGHT_INCHES) + 0.5
    figure = Figure(figsize=(figure_width, figure_height))
    # In figure fractions: the picture at the left, centred vertically, under a line for the title.
    bottom = (figure_height - 0.5 - picture_height) / 2 / figure_height
    axes = figure.add_axes((0.0, bottom, picture_width / figure_width, picture_height / figure_height))
    axes.imshow(grey, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes.imshow(
        np.ma.masked_equal(mask, 0),
        cmap=LABEL_COLOURS,
        vmin=0,
        vmax=len(CLASS_NAMES) - 1,
        alpha=OPACITY,
        interpolation="nearest",
    )
    axes.set_axis_off()
    axes.set_title(title, fontsize=9)
    class_legend(figure, loc="center right", fontsize=8)
    buffer = io.BytesIO()
    # No Software entry or timestamp: the same picture gives the same bytes.
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    return buffer.getvalue()
