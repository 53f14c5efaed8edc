"""Training-time augmentation that follows how the panels are built."""

import torch

from segnet.generate import CELL_OFFSETS, DIGIT_SIZE

# Rows (and columns) that only one grid cell's 28x28 window covers: ink there can only belong to the
# digit in that cell, so it tells which cells of a panel hold a digit.
_UNIQUE_BANDS = [
    slice(offset if i == 0 else CELL_OFFSETS[i - 1] + DIGIT_SIZE,
          CELL_OFFSETS[i + 1] if i + 1 < len(CELL_OFFSETS) else offset + DIGIT_SIZE)
    for i, offset in enumerate(CELL_OFFSETS)
]


def occupied_cells(labels: torch.Tensor) -> torch.Tensor:
    """(B, H, W) labels -> (B, 9) bool: which grid cells hold a digit (row-major)."""
    ink = labels > 0
    cells = [ink[:, rows, columns].flatten(1).any(1) for rows in _UNIQUE_BANDS for columns in _UNIQUE_BANDS]
    return torch.stack(cells, 1)


def overlay_panels(
    images: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator, attempts: int = 4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paints another panel's digits over a share of the panels in a batch, as the generator would.

    Training panels hold 0-4 digits but test panels up to 9. A partner panel whose digits sit in other
    grid cells is placed "later": wherever it has a digit pixel (label > 0), its pixel and label overwrite
    this panel's, the generator's own rule. The result is a panel of up to 8 digits in distinct cells,
    built like a crowded test panel. Partners sharing a cell are not used (up to `attempts` random
    pairings are tried). Occupancy is read from each cell's unique band (see occupied_cells); a digit
    with no ink there (some 0s in the centre cell, whose band is the digit's central 7x7) goes unseen,
    so on rare occasions a partner's digit lands in an occupied centre cell.

    Args:
        images: (B, H, W, C) pixels (any dtype) of 64x64 grid panels.
        labels: (B, H, W) class indices.
        probability: Chance that a panel receives an overlay.
        generator: Seeded source of randomness (CPU).

    Returns:
        New images and labels; the inputs are not modified.
    """
    if probability <= 0:
        return images, labels
    count = len(images)
    wanted = torch.rand(count, generator=generator) < probability
    occupied = occupied_cells(labels)
    partner = torch.full((count,), -1, dtype=torch.long)
    for _ in range(attempts):
        candidates = torch.randperm(count, generator=generator)
        fits = wanted & (partner < 0) & ~(occupied & occupied[candidates]).any(1) & occupied[candidates].any(1)
        partner[fits] = candidates[fits]
    has_partner = partner >= 0
    source = torch.where(has_partner, partner, torch.arange(count))
    ink = (labels[source] > 0) & has_partner[:, None, None]
    images = torch.where(ink[..., None], images[source], images)
    labels = torch.where(ink, labels[source], labels)
    return images, labels
