import numpy as np
import pytest
import torch

from segnet.evaluation.bootstrap import BootstrapConfig, panel_confusions, percentile_interval
from segnet.evaluation.metrics import confusion_matrix, mean_iou, pixel_accuracy
from segnet.params import build
from tests.helpers import PARAMS, settings


def test_panel_confusions_count_each_panel_alone_and_add_up_to_the_whole_set():
    target = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [0, 0]]])
    prediction = torch.tensor([[[0, 1], [0, 1]], [[2, 0], [0, 0]]])
    panels = panel_confusions(target, prediction, 3)
    assert panels.dtype == torch.int64
    assert panels.tolist() == [[[1, 0, 0], [1, 2, 0], [0, 0, 0]], [[2, 0, 0], [0, 0, 0], [1, 0, 1]]]
    assert torch.equal(panels.sum(0), confusion_matrix(target, prediction, 3))


def test_identical_panels_give_an_interval_of_no_width():
    panel = torch.tensor([[5, 1], [2, 8]])
    low, high = percentile_interval(
        panel.expand(40, 2, 2), mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=200)
    )
    assert low == high == pytest.approx(mean_iou(panel))


def test_the_interval_of_two_panels_reaches_from_the_worse_drawn_twice_to_the_better_drawn_twice():
    # Two panels: a resample holds both (half the resamples), or one of them twice (a quarter each). The 2.5%
    # and 97.5% percentiles therefore fall on the two extremes, the pixel accuracy of each panel alone.
    right, wrong = torch.tensor([[9, 0], [0, 1]]), torch.tensor([[3, 3], [3, 1]])
    low, high = percentile_interval(
        torch.stack([right, wrong]), pixel_accuracy, settings(BootstrapConfig, "evaluate.bootstrap", resamples=1000)
    )
    assert (low, high) == (pytest.approx(4 / 10), pytest.approx(1.0))


def test_the_counts_trick_agrees_with_resampling_panel_indices_directly():
    # Resampling by how often each panel is drawn must give the distribution of drawing the panels themselves.
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, (300, 8, 8))
    guess = np.where(rng.random((300, 8, 8)) < 0.7, truth, rng.integers(0, 4, (300, 8, 8)))
    panels = panel_confusions(torch.from_numpy(truth), torch.from_numpy(guess), 4)
    scores = [mean_iou(panels[rng.integers(0, 300, 300)].sum(0)) for _ in range(2000)]
    expected = np.percentile(scores, [2.5, 97.5])
    low, high = percentile_interval(panels, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=2000))
    width = expected[1] - expected[0]
    assert abs(low - expected[0]) < 0.1 * width and abs(high - expected[1]) < 0.1 * width


def test_the_interval_is_seeded_and_narrows_with_a_lower_confidence():
    rng = np.random.default_rng(1)
    panels = panel_confusions(
        torch.from_numpy(rng.integers(0, 3, (50, 4, 4))), torch.from_numpy(rng.integers(0, 3, (50, 4, 4))), 3
    )
    first = percentile_interval(
        panels, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=250, seed=3)
    )
    assert (
        percentile_interval(panels, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=250, seed=3))
        == first
    )
    assert (
        percentile_interval(panels, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=250, seed=4))
        != first
    )
    narrower = percentile_interval(
        panels, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap", resamples=250, seed=3, confidence=0.5)
    )
    assert first[0] < narrower[0] < narrower[1] < first[1]


def test_paired_resamples_cancel_what_two_models_share_on_each_panel():
    rng = np.random.default_rng(2)
    truth = torch.from_numpy(rng.integers(0, 3, (100, 6, 6)))
    noisy = torch.from_numpy(np.where(rng.random((100, 6, 6)) < 0.6, truth.numpy(), rng.integers(0, 3, (100, 6, 6))))
    # B is A with one more pixel right on every panel: better on every resample, by about the same amount.
    better = noisy.clone()
    for panel in range(100):
        wrong = (better[panel] != truth[panel]).nonzero()
        better[panel][tuple(wrong[0])] = truth[panel][tuple(wrong[0])]
    a, b = panel_confusions(truth, noisy, 3), panel_confusions(truth, better, 3)
    difference = mean_iou(b.sum(0)) - mean_iou(a.sum(0))

    def gain(pair):
        return mean_iou(pair[1]) - mean_iou(pair[0])

    low, high = percentile_interval(torch.stack([a, b], dim=1), gain, settings(BootstrapConfig, "evaluate.bootstrap"))
    assert 0 < low < difference < high
    # Each model's own interval is far wider: it holds the spread of the panels' difficulty, which pairing cancels.
    a_low, a_high = percentile_interval(a, mean_iou, settings(BootstrapConfig, "evaluate.bootstrap"))
    assert high - low < 0.2 * (a_high - a_low)
    same = percentile_interval(torch.stack([a, a], dim=1), gain, settings(BootstrapConfig, "evaluate.bootstrap"))
    assert same == (0.0, 0.0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"resamples": -1}, "evaluate.bootstrap.resamples: must be an integer >= 0, got -1"),
        ({"resamples": 10.5}, "evaluate.bootstrap.resamples: must be an integer, got 10.5"),
        ({"confidence": 1}, "evaluate.bootstrap.confidence: must lie strictly between 0 and 1, got 1"),
        ({"confidence": 0.0}, "evaluate.bootstrap.confidence: must lie strictly between 0 and 1, got 0.0"),
        ({"seed": -2}, "evaluate.bootstrap.seed: must be an integer >= 0, got -2"),
        ({"samples": 5}, r"evaluate.bootstrap: unknown key\(s\) \['samples'\]"),
    ],
)
def test_bad_interval_settings_are_refused_by_name(values, message):
    with pytest.raises(ValueError, match=message):
        build(BootstrapConfig, "evaluate.bootstrap", {**PARAMS["evaluate"]["bootstrap"], **values})
