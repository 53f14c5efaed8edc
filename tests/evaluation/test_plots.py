import io

import numpy as np
from PIL import Image

from segnet.evaluation.plots import ERROR_COLOUR, LABEL_COLOURS, mark_errors, predictions_png
from tests.helpers import digit_panels


def test_the_marked_pixels_are_exactly_the_wrong_ones_and_the_rest_is_the_dimmed_image():
    images, labels = digit_panels(3, seed=5)
    pixels = images[0].float().numpy() / 255
    truth = labels[0].numpy()
    prediction = truth.astype(np.int64)
    prediction[10:14, 30:40] = (prediction[10:14, 30:40] + 1) % 11  # another class on a 4x10 block
    wrong = prediction != truth
    assert wrong.sum() == 40 and pixels[~wrong].max() > 0.5  # a digit outside the block

    marked = mark_errors(pixels, truth, prediction)
    assert marked.shape == (64, 64, 3)
    assert np.array_equal((marked == ERROR_COLOUR).all(-1), wrong)
    assert np.array_equal(marked[~wrong], pixels[~wrong] * 0.5)
    assert not (mark_errors(pixels, truth, truth) == ERROR_COLOUR).all(-1).any()


def test_the_predictions_picture_is_a_png_grown_by_the_legend_and_the_same_bytes_twice():
    images, labels = digit_panels(3, seed=5)
    predictions = labels.long()
    predictions[:, 20:30, 20:30] = 4
    picture = predictions_png(images, labels, predictions)
    assert picture == predictions_png(images, labels, predictions)
    drawn = np.asarray(Image.open(io.BytesIO(picture)).convert("RGB"))
    # 4 panels of 2 inches a row at 100 dpi, 3 rows, and 0.9 inch for the legend.
    assert drawn.shape == (3 * 200 + 90, 800, 3)
    legend = drawn[-90:].reshape(-1, 3)
    for index in range(len(LABEL_COLOURS.colors)):
        swatch = np.round(np.array(LABEL_COLOURS(index)[:3]) * 255)
        assert (legend == swatch).all(1).any(), f"no swatch of class {index}'s colour in the legend"
    assert ((drawn[:-90] == (255, 0, 0)).all(-1)).any()  # the marks
