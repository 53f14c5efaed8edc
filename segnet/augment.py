"""Training-time augmentation that follows how the panels are built."""

import torch
from torch.nn import functional as F

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


def deform_panels(
    images: torch.Tensor,
    labels: torch.Tensor,
    pixels: float,
    grid: int,
    generator: torch.Generator,
    affine: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bends each panel with its own smooth random displacement field (elastic distortion, Simard et al. 2003).

    Test panels are drawn from digit images training never sees. A displacement that varies smoothly
    across the panel gives each digit a differently bent stroke; an optional random linear map about the
    panel's centre adds the slant, rotation and size changes by which handwriting varies most. Every output
    pixel copies its nearest
    source pixel together with that pixel's label: no interpolation, so pixel values keep their exact
    distribution (faint anti-aliased edges included) and a pixel is a digit exactly where it has ink.
    Sources outside the panel give background.

    Args:
        images: (B, H, W, C) pixels, any dtype.
        labels: (B, H, W) class indices.
        pixels: Largest displacement of a control point, in pixels (0 disables).
        grid: Control points per side; the field is interpolated bicubically between them.
        generator: Seeded source of randomness (CPU).
        affine: Largest change of each entry of the 2x2 linear map (identity plus uniform noise in
            [-affine, affine]: shear, rotation and scaling of up to about that fraction; 0 disables).

    Returns:
        New images and labels; the inputs are not modified.
    """
    if pixels <= 0 and affine <= 0:
        return images, labels
    count, height, width = labels.shape
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    flow = torch.zeros(count, 2, height, width)
    if pixels > 0:
        control = (torch.rand(count, 2, grid, grid, generator=generator) * 2 - 1) * pixels
        flow += F.interpolate(control, size=(height, width), mode="bicubic", align_corners=True)  # (B, 2, H, W)
    if affine > 0:
        # Each output pixel samples the source at M @ (p - centre) + centre, M = identity + noise.
        noise = (torch.rand(count, 2, 2, generator=generator) * 2 - 1) * affine
        centred = torch.stack([rows - (height - 1) / 2, columns - (width - 1) / 2]).float()  # (2, H, W)
        flow += torch.einsum("bij,jhw->bihw", noise, centred)
    source_rows = (rows + flow[:, 0]).round().long()
    source_columns = (columns + flow[:, 1]).round().long()
    inside = (source_rows >= 0) & (source_rows < height) & (source_columns >= 0) & (source_columns < width)
    source = (source_rows.clamp(0, height - 1) * width + source_columns.clamp(0, width - 1)).flatten(1)  # (B, H*W)
    new_labels = labels.flatten(1).gather(1, source).view_as(labels) * inside
    channels = images.shape[-1]
    new_images = images.flatten(1, 2).gather(1, source[..., None].expand(-1, -1, channels)).view_as(images)
    return new_images * inside[..., None], new_labels
