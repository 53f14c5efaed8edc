"""The training-time augmentation (segnet/data/augment.py): it keeps the generator's rules and is seeded."""

import numpy as np
import torch

from segnet.data.augment import deform_panels, occupied_cells, overlay_panels
from segnet.dataset.generate import compose_panel
from tests.helpers import digit_panels


def _panel(cells_and_labels):
    ink = np.full((len(cells_and_labels), 28, 28), 200, np.uint8)
    cells = np.array([cell for cell, _ in cells_and_labels])
    labels = np.array([label for _, label in cells_and_labels], np.uint8)
    image, mask = compose_panel(ink, labels, cells)
    return torch.from_numpy(image)[..., None], torch.from_numpy(mask)


def test_occupied_cells_finds_every_digit_even_when_neighbours_overlap_it():
    _, mask = _panel([(0, 3), (1, 5), (4, 7), (8, 2)])
    assert occupied_cells(mask[None])[0].nonzero().flatten().tolist() == [0, 1, 4, 8]


def test_overlay_places_a_partner_in_free_cells_with_the_generators_overwrite_rule():
    first_image, first_mask = _panel([(0, 3)])
    second_image, second_mask = _panel([(1, 7)])
    images, labels = torch.stack([first_image, second_image]), torch.stack([first_mask, second_mask])
    new_images, new_labels = overlay_panels(images, labels, 1.0, torch.Generator().manual_seed(0))
    # Each panel got the other's digit, painted later: it overwrites where the two windows overlap.
    expected_first = compose_panel(np.full((2, 28, 28), 200, np.uint8), np.array([3, 7]), np.array([0, 1]))[1]
    expected_second = compose_panel(np.full((2, 28, 28), 200, np.uint8), np.array([7, 3]), np.array([1, 0]))[1]
    assert torch.equal(new_labels[0], torch.from_numpy(expected_first))
    assert torch.equal(new_labels[1], torch.from_numpy(expected_second))
    assert torch.equal(new_images[..., 0] > 0, new_labels > 0)
    assert torch.equal(labels[0], first_mask)  # inputs untouched


def test_overlay_never_puts_two_digits_in_one_cell():
    rng = np.random.default_rng(0)
    panels = [_panel([(int(c), 1 + i % 10) for i, c in enumerate(rng.choice(9, 2, replace=False))]) for _ in range(64)]
    images, labels = torch.stack([p[0] for p in panels]), torch.stack([p[1] for p in panels])
    _, new_labels = overlay_panels(images, labels, 1.0, torch.Generator().manual_seed(1))
    before, after = occupied_cells(labels).sum(1), occupied_cells(new_labels).sum(1)
    assert (after > before).float().mean() > 0.5  # most panels found a partner
    assert set(after.tolist()) <= {2, 4}  # 2 digits + a partner's 2, never a shared cell


def test_overlay_with_probability_zero_changes_nothing():
    images = torch.randint(0, 255, (4, 8, 8, 3), dtype=torch.uint8)
    labels = torch.randint(0, 11, (4, 8, 8), dtype=torch.uint8)
    same_images, same_labels = overlay_panels(images, labels, 0.0, torch.Generator())
    assert torch.equal(same_images, images) and torch.equal(same_labels, labels)


def test_deformation_bends_panels_but_keeps_the_ink_rule_and_the_digits():
    images, labels = digit_panels(16, 0)
    new_images, new_labels = deform_panels(images, labels, 2.0, 5, torch.Generator().manual_seed(0))
    assert new_images.shape == images.shape and new_images.dtype == images.dtype
    assert new_labels.shape == labels.shape and new_labels.dtype == labels.dtype
    assert torch.equal(new_images.amax(-1) > 0, new_labels > 0)  # a pixel is a digit exactly where it has ink
    assert 0.005 < (new_labels != labels).float().mean() < 0.2  # moved, but only a little
    for before, after in zip(labels, new_labels):  # nothing invented: only classes the panel had
        assert set(after.unique().tolist()) <= set(before.unique().tolist())
    assert torch.equal(labels, digit_panels(16, 0)[1])  # inputs untouched


def test_deformation_is_seeded_and_zero_pixels_is_the_identity():
    images, labels = digit_panels(4, 1)
    first = deform_panels(images, labels, 1.5, 4, torch.Generator().manual_seed(7))
    again = deform_panels(images, labels, 1.5, 4, torch.Generator().manual_seed(7))
    other = deform_panels(images, labels, 1.5, 4, torch.Generator().manual_seed(8))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[1], other[1])
    same_images, same_labels = deform_panels(images, labels, 0.0, 4, torch.Generator())
    assert torch.equal(same_images, images) and torch.equal(same_labels, labels)


