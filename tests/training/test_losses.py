import math

import pytest
import torch

from segnet.training.losses import soft_iou_loss
from segnet.evaluation.metrics import confusion_matrix, mean_iou


def test_soft_iou_by_hand():
    # One panel of two pixels, two classes: probabilities (0.8, 0.2) where the label is 0, (0.3, 0.7) where it is 1.
    probabilities = torch.tensor([[0.8, 0.3], [0.2, 0.7]]).view(1, 2, 1, 2)
    targets = torch.tensor([[[0, 1]]])
    # Class 0: intersection 0.8, union (0.8 + 0.3) + 1 - 0.8 = 1.3; class 1: 0.7 and (0.2 + 0.7) + 1 - 0.7 = 1.2.
    expected = 1 - (0.8 / 1.3 + 0.7 / 1.2) / 2
    assert soft_iou_loss(probabilities.log(), targets, smoothing=0.0).item() == pytest.approx(expected)
    smoothed = 1 - ((0.8 + 1) / (1.3 + 1) + (0.7 + 1) / (1.2 + 1)) / 2
    assert soft_iou_loss(probabilities.log(), targets).item() == pytest.approx(smoothed)


def test_confident_logits_give_one_minus_the_metrics_mean_iou():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 11, (4, 16, 16), generator=generator)
    predicted = torch.where(torch.rand(4, 16, 16, generator=generator) < 0.7, targets,
                            torch.randint(0, 11, (4, 16, 16), generator=generator))
    logits = 100 * torch.nn.functional.one_hot(predicted, 11).permute(0, 3, 1, 2).float()
    metric = mean_iou(confusion_matrix(targets, predicted, 11))
    assert soft_iou_loss(logits, targets, smoothing=0.0).item() == pytest.approx(1 - metric, abs=1e-6)
    assert soft_iou_loss(100 * torch.nn.functional.one_hot(targets, 11).permute(0, 3, 1, 2).float(),
                         targets).item() == pytest.approx(0.0, abs=1e-6)


def test_a_class_absent_from_labels_and_prediction_counts_as_right_and_gradients_favour_the_label():
    targets = torch.zeros(1, 4, 4, dtype=torch.long)
    targets[0, :2] = 1
    logits = torch.zeros(1, 3, 4, 4)
    logits[:, 2] = -1e4  # class 2: in neither
    logits.requires_grad_(True)
    loss = soft_iou_loss(logits, targets)
    assert math.isfinite(loss.item())
    loss.backward()
    # Raising a pixel's score for its own class lowers the loss; for the other class, raises it.
    assert (logits.grad[0, 0][targets[0] == 0] < 0).all() and (logits.grad[0, 1][targets[0] == 1] < 0).all()
    assert (logits.grad[0, 1][targets[0] == 0] > 0).all() and (logits.grad[0, 0][targets[0] == 1] > 0).all()
