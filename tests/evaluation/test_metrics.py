import math

import pytest
import torch

from segnet.evaluation.metrics import (
    confusion_matrix,
    mean_iou,
    per_class_accuracy,
    per_class_iou,
    pixel_accuracy,
    summarize,
)


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    target = torch.tensor([0, 0, 1, 2, 2, 2])
    prediction = torch.tensor([0, 1, 1, 2, 2, 0])
    assert confusion_matrix(target, prediction, 3).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


# Hand-computed: for the matrix [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
#   class 0: TP 1, FP 1 (col sum 2 - 1), FN 1 (row sum 2 - 1) -> IoU 1/3
#   class 1: TP 1, FP 1, FN 0 -> 1/2;  class 2: TP 2, FP 0, FN 1 -> 2/3
HAND = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 0, 2]])


@pytest.mark.parametrize(
    "function, expected",
    [
        (per_class_iou, [1 / 3, 1 / 2, 2 / 3]),
        (per_class_accuracy, [1 / 2, 1.0, 2 / 3]),
    ],
)
def test_per_class_values_by_hand(function, expected):
    assert function(HAND).tolist() == pytest.approx(expected)


def test_means_and_pixel_accuracy_by_hand():
    assert mean_iou(HAND) == pytest.approx((1 / 3 + 1 / 2 + 2 / 3) / 3)
    assert mean_iou(HAND, slice(1, None)) == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert pixel_accuracy(HAND) == pytest.approx(4 / 6)


def test_absent_class_is_left_out_of_the_mean():
    confusion = torch.tensor([[3, 0, 0], [0, 0, 0], [1, 0, 1]])  # class 1 never occurs nor is predicted
    iou = per_class_iou(confusion)
    assert math.isnan(iou[1])
    assert mean_iou(confusion) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_summarize_reports_the_named_keys_for_eleven_classes():
    confusion = torch.eye(11, dtype=torch.int64) * 10
    confusion[3, 5] = 10  # half of class 3 predicted as 5
    metrics = summarize(confusion)
    assert set(metrics) == {"miou", "miou_digits", "pixel_accuracy", "mean_class_accuracy", "per_class_iou"}
    assert metrics["per_class_iou"]["3"] == pytest.approx(0.5)
    assert metrics["per_class_iou"]["5"] == pytest.approx(0.5)
    assert metrics["per_class_iou"]["background"] == 1.0
    assert metrics["miou"] == pytest.approx((9 + 0.5 + 0.5) / 11)
    assert metrics["miou_digits"] == pytest.approx((8 + 0.5 + 0.5) / 10)
    assert metrics["pixel_accuracy"] == pytest.approx(110 / 120)
    assert metrics["mean_class_accuracy"] == pytest.approx((10 + 0.5) / 11)
    assert list(metrics["per_class_iou"]) == ["background"] + [str(d) for d in range(1, 10)] + ["0"]
