import numpy as np
import pytest
import torch

from segnet.prediction import segment
from segnet.prediction.windows import BATCH, STRIDE, stitched_scores, window_starts
from tests.prediction.conftest import panel_bytes


@pytest.mark.parametrize(
    ("length", "starts"),
    [(1, [0]), (30, [0]), (64, [0]), (65, [0, 1]), (96, [0, 32]), (128, [0, 32, 64]), (150, [0, 32, 64, 86])],
)
def test_windows_start_every_stride_and_the_last_ends_at_the_edge(length, starts):
    assert window_starts(length, 64) == starts


def test_windows_cover_every_pixel_and_none_hangs_over_the_edge():
    for length in range(1, 400):
        starts = window_starts(length, 64)
        covered = np.zeros(max(length, 64), dtype=int)
        for start in starts:
            covered[start : start + 64] += 1
        assert (covered >= 1).all() and len(covered) == max(length, 64), length
        assert starts[0] == 0 and all(0 < step <= STRIDE for step in np.diff(starts)), length


def probabilities(network, window: torch.Tensor) -> torch.Tensor:
    """The model's own class probabilities for one grey 64x64 window: (classes, 64, 64)."""
    with torch.inference_mode():
        return network(window.expand(1, 3, 64, 64).contiguous())[0].softmax(dim=0)


def grey(pixels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pixels).float().div(255.0)


def test_a_64x64_picture_is_one_window_scored_and_labelled_exactly_as_the_model_does(network, segmenter):
    panel = panel_bytes(1, seed=3)[0]
    own = probabilities(network, grey(panel))
    assert torch.equal(stitched_scores(segmenter, grey(panel), 64), own)
    mask = segment(segmenter, grey(panel).numpy()).mask
    assert mask.dtype == np.uint8 and np.array_equal(mask, own.argmax(dim=0).numpy())
    assert len(np.unique(mask)) > 3  # the tiny model's classes vary, so the equality says something


@pytest.mark.parametrize(("height", "width"), [(97, 150), (250, 260)])
def test_a_larger_picture_averages_the_probabilities_of_every_window_over_it(network, segmenter, height, width):
    rng = np.random.default_rng(height)
    picture = np.zeros((height, width), dtype=np.uint8)
    for panel in panel_bytes(6, seed=4):  # panels pasted at random places, overlapping
        y, x = rng.integers(0, height - 63), rng.integers(0, width - 63)
        picture[y : y + 64, x : x + 64] = np.maximum(picture[y : y + 64, x : x + 64], panel)
    image = grey(picture)
    # The windows, by hand: every 32 pixels from 0, and one flush with each far edge.
    rows = [*range(0, height - 64 + 1, 32), height - 64]
    columns = [*range(0, width - 64 + 1, 32), width - 64]
    total = torch.zeros(11, height, width, dtype=torch.float64)
    count = torch.zeros(height, width, dtype=torch.float64)
    for y in dict.fromkeys(rows):
        for x in dict.fromkeys(columns):
            total[:, y : y + 64, x : x + 64] += probabilities(network, image[y : y + 64, x : x + 64]).double()
            count[y : y + 64, x : x + 64] += 1
    assert count.min() >= 1 and (len(rows) * len(columns) > BATCH) == (height == 250)  # one case spans batches
    expected = total / count
    scores = stitched_scores(segmenter, image, 64)
    assert scores.shape == (11, height, width) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.double(), expected, rtol=0, atol=1e-6)
    assert np.array_equal(segment(segmenter, image.numpy()).mask, expected.argmax(dim=0).numpy())


@pytest.mark.parametrize(("height", "width"), [(30, 40), (20, 100), (100, 7)])
def test_a_side_shorter_than_a_window_is_padded_with_background(network, segmenter, height, width):
    picture = np.concatenate(panel_bytes(2, seed=5))[:height, : min(width, 64)]
    image = torch.zeros(height, width)
    image[:, : picture.shape[1]] = grey(np.ascontiguousarray(picture))
    padded = torch.zeros(max(height, 64), max(width, 64))
    padded[:height, :width] = image
    scores = stitched_scores(segmenter, image, 64)
    assert scores.shape == (11, height, width)
    # Padded with 0: as if the picture lay in the corner of a black one a window wide.
    assert torch.equal(scores, stitched_scores(segmenter, padded, 64)[:, :height, :width])
    if height <= 64 and width <= 64:
        assert torch.equal(scores, probabilities(network, padded)[:, :height, :width])
