import numpy as np
import pytest
import torch

from segnet.augment import overlay_panels
from segnet.callbacks import Callback
from segnet.data import split_indices, to_input
from segnet.model import SegNet, SegNetConfig
from segnet.train import TrainConfig, class_weights, select_amp_dtype, set_seed, train
from tests.helpers import random_panels


def test_overlay_paints_the_partners_digits_with_the_generators_overwrite_rule():
    images = torch.zeros(2, 4, 4, 3, dtype=torch.uint8)
    labels = torch.zeros(2, 4, 4, dtype=torch.uint8)
    images[0, 0, 0], labels[0, 0, 0] = 50, 3  # panel 0: one digit pixel at (0, 0)
    images[1, 0, 0], labels[1, 0, 0] = 90, 7  # panel 1: digit pixels at (0, 0) and (1, 1)
    images[1, 1, 1], labels[1, 1, 1] = 80, 7
    # Find a seed whose permutation swaps the two panels, so each gets the other as partner.
    for seed in range(100):
        generator = torch.Generator().manual_seed(seed)
        new_images, new_labels = overlay_panels(images, labels, 1.0, generator)
        if new_labels[0, 1, 1] == 7:
            break
    assert new_labels[0].tolist()[0][0] == 7 and new_images[0, 0, 0, 0] == 90  # partner ink overwrites
    assert new_labels[0, 1, 1] == 7 and new_images[0, 1, 1, 0] == 80
    assert new_labels[1, 0, 0] == 3 and new_labels[1, 1, 1] == 7  # no partner ink at (1, 1): kept
    assert labels[0, 0, 0] == 3  # inputs untouched


def test_overlay_with_probability_zero_changes_nothing():
    images = torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8)
    labels = torch.randint(0, 11, (4, 8, 8), dtype=torch.uint8)
    same_images, same_labels = overlay_panels(images, labels, 0.0, torch.Generator())
    assert torch.equal(same_images, images) and torch.equal(same_labels, labels)


def test_median_frequency_weights_by_hand():
    # frequencies 0.7, 0.2, 0.1 (and one absent class): median 0.2 -> weights 0.2/0.7, 1, 2, 0
    weights = class_weights(torch.tensor([70, 20, 10, 0]))
    assert weights.tolist() == pytest.approx([0.2 / 0.7, 1.0, 2.0, 0.0])


def test_validation_split_is_seeded_and_disjoint():
    train_index, val_index = split_indices(100, 0.1, seed=3)
    assert len(val_index) == 10 and len(train_index) == 90
    assert not set(train_index.tolist()) & set(val_index.tolist())
    assert torch.equal(val_index, split_indices(100, 0.1, seed=3)[1])
    assert not torch.equal(val_index, split_indices(100, 0.1, seed=4)[1])


def test_to_input_scales_bytes_and_uses_channels_last():
    images = torch.full((2, 16, 16, 3), 255, dtype=torch.uint8)
    batch = to_input(images, torch.device("cpu"))
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32 and batch.max() == 1.0
    assert batch.is_contiguous(memory_format=torch.channels_last)


def test_precision_choice():
    cpu = torch.device("cpu")
    assert select_amp_dtype("float32", cpu) is None
    assert select_amp_dtype("bfloat16", cpu) == torch.bfloat16
    assert select_amp_dtype("auto", cpu) in (None, torch.bfloat16)


@pytest.mark.parametrize("bad", [dict(epochs=0), dict(lr=-1.0), dict(schedule="step"), dict(val_fraction=1.0)])
def test_nonsense_train_settings_raise(bad):
    with pytest.raises(ValueError, match="invalid train settings"):
        TrainConfig(**bad)


class Recorder(Callback):
    def __init__(self):
        self.records, self.steps = [], 0

    def on_step_end(self, step, loss):
        self.steps = step

    def on_epoch_end(self, record):
        self.records.append(record)


def test_training_learns_and_returns_the_best_epochs_weights():
    rng = np.random.default_rng(0)
    images, labels = random_panels(48, rng)
    images = torch.from_numpy(np.rint(images * 255).astype(np.uint8))
    labels = torch.from_numpy(labels)
    set_seed(0)
    model = SegNet(SegNetConfig(encoder_channels=(8, 8, 8, 8), decoder_channels=(8, 8, 8, 8)))
    config = TrainConfig(epochs=4, batch_size=8, lr=0.01, precision="float32", overlay_probability=0.5)
    recorder = Recorder()
    result = train(model, images[:40], labels[:40], images[40:], labels[40:], 11, config, seed=0,
                   callbacks=[recorder])
    assert recorder.steps == 4 * (40 // 8)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4] == [r["epoch"] for r in recorder.records]
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    best = max(result.history, key=lambda r: r["val_miou"])
    assert result.best_epoch == best["epoch"] and result.best_val_miou == best["val_miou"]
    assert set(result.best_state) == set(model.state_dict())
