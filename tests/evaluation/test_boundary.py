import math

import pytest
import torch

from segnet import NUM_CLASSES
from segnet.evaluation.boundary import boundaries, class_boundary_f1, disk, panel_boundary_f1
from tests.helpers import digit_panels

NAN = math.nan


def square(top: int, left: int, side: int, size: int = 64, label: int = 1) -> torch.Tensor:
    """A (size, size) int64 map of background with one square of `label`."""
    labels = torch.zeros(size, size, dtype=torch.int64)
    labels[top : top + side, left : left + side] = label
    return labels


def scores(target: torch.Tensor, prediction: torch.Tensor, classes: int = 3, **tolerance) -> list:
    return class_boundary_f1(target[None], prediction[None], classes, **tolerance)[0].tolist()


def test_boundaries_are_the_pixels_with_a_4_neighbour_of_another_class_and_not_the_border():
    labels = torch.zeros(1, 5, 6, dtype=torch.int64)
    labels[0, 1:3, 1:3] = 1
    labels[0, :, 5] = 2  # a column on the border: its right side is no boundary
    expected = [
        [0, 1, 1, 0, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
        [0, 1, 1, 0, 1, 1],
        [0, 0, 0, 0, 1, 1],
    ]
    assert boundaries(labels)[0].int().tolist() == expected
    assert not boundaries(torch.full((2, 4, 4), 3)).any()


def test_the_disk_holds_the_offsets_within_its_radius():
    assert disk(0.68).tolist() == [[True]]  # 0.75% of a 64x64 panel's diagonal: exact matches only
    # Radius 2.5: a 5x5 square less its corners (2^2 + 2^2 = 8 > 6.25); (2, 1) is in (5 <= 6.25).
    within = disk(2.5)
    assert within.shape == (5, 5) and within.sum() == 21
    assert not within[0, 0] and within[0, 1] and within[2, 2]


def test_a_prediction_equal_to_the_truth_scores_1_on_every_panel():
    _, labels = digit_panels(12, seed=3)  # uint8, as the stage's labels; the predictions are int64
    assert labels.unique().numel() > 3  # digits, not just background
    assert panel_boundary_f1(labels, labels.long(), NUM_CLASSES).tolist() == [1.0] * 12


# 400x400: d = 0.0075 * 400 * sqrt(2) = 4.24 px, offsets with dy^2 + dx^2 <= 18. A 20-pixel square of class 1.
# Shifted right by 3, every boundary pixel of either square (its outer ring, and the background's ring just
# outside it) is at most 3 px from one of the other: BF 1 on both classes.
# Shifted right by 6 (truth columns 100-119, prediction 106-125), class 1's rings of 76 pixels each:
#   predicted top and bottom rows, columns 106-123 (18 each) are within 4 of the true ring, 124 and 125 not;
#   predicted left column (x 106), rows 101-104 and 115-118 (8) are within 4 of the true top or bottom row;
#   predicted right column (x 125) is 6 from everything: P = (2 * 18 + 8) / 76 = 11/19; R likewise (mirror).
# Background's rings of 80 pixels each (the 4 sides just outside the square):
#   predicted top and bottom rows, columns 106-124 (19 each): 124 is sqrt(1 + 16) = 4.12 from the true right
#   side's (100, 120); 125 is 5.1 from it;
#   predicted left side (x 105), rows 100-103 and 116-119 (8), within 4 of the true top or bottom row;
#   predicted right side (x 126) is 6 from everything: P = (2 * 19 + 8) / 80 = 23/40; R likewise.
@pytest.mark.parametrize("shift, expected", [(3, [1.0, 1.0]), (6, [23 / 40, 11 / 19])])
def test_a_shift_within_the_tolerance_keeps_bf_1_and_one_beyond_it_gives_the_hand_computed_score(shift, expected):
    truth, prediction = square(100, 100, 20, size=400), square(100, 100 + shift, 20, size=400)
    assert scores(truth, prediction, 2) == pytest.approx(expected)
    assert panel_boundary_f1(truth[None], prediction[None], 2).item() == pytest.approx(sum(expected) / 2)


def test_a_class_in_neither_map_is_skipped_one_in_a_single_map_scores_0():
    # The same square, called 1 by the truth and 2 by the prediction: background's rings match exactly (1);
    # class 1 has boundary pixels in the truth only, class 2 in the prediction only (0 each); the other 8
    # classes are in neither map and do not count: the panel's BF is 1/3, not 3/11.
    truth, prediction = square(10, 20, 8), square(10, 20, 8, label=2)
    assert scores(truth, prediction, NUM_CLASSES)[:3] == [1.0, 0.0, 0.0]
    assert all(math.isnan(score) for score in scores(truth, prediction, NUM_CLASSES)[3:])
    assert panel_boundary_f1(truth[None], prediction[None], NUM_CLASSES).item() == pytest.approx(1 / 3)


def test_a_class_without_boundaries_in_both_maps_scores_1_with_boundaries_in_one_only_0():
    background = torch.zeros(64, 64, dtype=torch.int64)
    both_empty = scores(background, background)
    assert both_empty[0] == 1.0 and math.isnan(both_empty[1]) and math.isnan(both_empty[2])
    # A false blob on an empty panel: background has boundary pixels in the prediction only, class 1 is in the
    # prediction only.
    assert scores(background, square(5, 5, 3))[:2] == [0.0, 0.0]


def test_a_batch_averages_over_the_classes_of_each_panel_then_over_the_panels():
    # Panel 1: a 4x4 square of class 1 predicted 1 px to the right; d = 0.68 px, so only exact matches count.
    #   class 1: 12 boundary pixels each, shared: rows 10 and 13, columns 21-23 -> P = R = 6/12, F1 1/2
    #   background: 16 each (the sides just outside), shared: rows 9 and 14, columns 21-23 -> F1 6/16
    #   panel: (1/2 + 3/8) / 2 = 7/16
    # Panel 2: two squares, classes 2 and 3, predicted exactly: 1 on each of its three classes.
    truth = torch.stack([square(10, 20, 4), square(30, 30, 5, label=2) + square(5, 5, 6, label=3)])
    prediction = torch.stack([square(10, 21, 4), truth[1]])
    per_class = class_boundary_f1(truth, prediction, 4)
    assert per_class[0, :2].tolist() == [6 / 16, 6 / 12] and per_class[0, 2:].isnan().all()
    assert per_class[1, 0] == 1 and per_class[1, 1].isnan() and per_class[1, 2:].tolist() == [1.0, 1.0]
    panels = panel_boundary_f1(truth, prediction, 4)
    assert panels.dtype == torch.float64 and panels.tolist() == [7 / 16, 1.0]
    # Per panel first: (7/16 + 1) / 2 = 23/32; pooling the five (panel, class) scores would give 31/40.
    assert panels.mean().item() == 23 / 32


def reference(truth: list, prediction: list, classes: int, radius: float) -> list:
    """The definition, pixel by pixel in plain Python: one image's F1 per class (NaN for a class in neither)."""
    height, width = len(truth), len(truth[0])

    def edge(labels: list, label: int) -> list:
        return [
            (y, x)
            for y in range(height)
            for x in range(width)
            if labels[y][x] == label
            and any(
                0 <= y + dy < height and 0 <= x + dx < width and labels[y + dy][x + dx] != label
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))
            )
        ]

    def share_near(points: list, others: list) -> float:
        near = [any((y - v) ** 2 + (x - u) ** 2 <= radius**2 for v, u in others) for y, x in points]
        return sum(near) / len(points)

    f1 = []
    for label in range(classes):
        if not any(label in row for row in truth + prediction):
            f1.append(NAN)
            continue
        true_edge, predicted_edge = edge(truth, label), edge(prediction, label)
        if not true_edge or not predicted_edge:
            f1.append(float(not true_edge and not predicted_edge))
            continue
        precision, recall = share_near(predicted_edge, true_edge), share_near(true_edge, predicted_edge)
        f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return f1


@pytest.mark.parametrize("tolerance", [0.0075, 0.1, 0.2])
def test_random_maps_of_any_size_score_as_the_pixel_by_pixel_definition(tolerance):
    generator = torch.Generator().manual_seed(0)
    truth = torch.randint(0, 4, (3, 13, 9), generator=generator)
    prediction = torch.randint(0, 4, (3, 13, 9), generator=generator)
    truth[1], prediction[1] = 0, 0  # a panel of squares, so contours are longer than a pixel
    truth[1, 2:7, 1:5], prediction[1, 3:8, 2:6] = 2, 2
    radius = tolerance * math.hypot(13, 9)
    expected = [reference(truth[i].tolist(), prediction[i].tolist(), 5, radius) for i in range(3)]
    found = class_boundary_f1(truth, prediction, 5, tolerance)
    assert torch.allclose(found, torch.tensor(expected, dtype=torch.float64), equal_nan=True)
