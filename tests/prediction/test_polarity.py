import numpy as np

from segnet.prediction import Picture, read_inputs, segment
from segnet.prediction.polarity import is_dark_on_light, light_on_dark
from tests.prediction.conftest import panel_bytes, write_image


def test_an_image_is_inverted_when_its_median_pixel_is_above_one_half():
    pixels = np.zeros(100, dtype=np.float32)
    pixels[:49] = 1.0  # light ink on 51% black: the median is black
    assert not is_dark_on_light(pixels)
    assert not is_dark_on_light(np.full(100, 0.5, dtype=np.float32))
    pixels[:51] = 1.0  # dark ink on 51% white paper
    assert is_dark_on_light(pixels)
    inverted, was = light_on_dark(pixels)
    assert was and np.array_equal(inverted, 1 - pixels) and inverted.dtype == np.float32
    same, was = light_on_dark(1 - pixels)
    assert not was and np.array_equal(same, 1 - pixels)


def test_dark_ink_on_white_paper_is_segmented_as_the_same_digits_light_on_black(tmp_path, segmenter):
    panel = panel_bytes(1, seed=8)[0]
    light, dark = read_inputs(
        [write_image(tmp_path / "light.png", panel), write_image(tmp_path / "dark.png", 255 - panel)]
    )
    assert isinstance(light, Picture) and isinstance(dark, Picture)
    on_black, on_paper = segment(segmenter, light.grey), segment(segmenter, dark.grey)
    assert not on_black.inverted and on_paper.inverted
    # Paper (255) becomes exactly the background the model knows (0); ink differs from the original by rounding.
    assert np.array_equal(on_paper.mask, on_black.mask) and len(np.unique(on_black.mask)) > 3
