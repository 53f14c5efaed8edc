"""Training-time augmentation that follows how the panels are built."""

import functools
from dataclasses import dataclass

import torch
from torch.nn import functional as F

from segnet import CELL_OFFSETS, DIGIT_SIZE
from segnet.params import check_rules

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


# Both augmentations only move whole pixels, each with its label. They are computed as a map from every
# output pixel to the batch pixel it copies: an index into the batch's pixels flattened, where the index
# one past the last pixel means blank background. Maps compose, so the pixels themselves are gathered once
# per batch (augment) instead of once per step of the augmentation.


def identity_sources(count: int, height: int, width: int) -> torch.Tensor:
    """The map that copies every pixel from where it is: (B, H, W) indices."""
    return torch.arange(count * height * width).view(count, height, width)


def gather_pixels(images: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The panels that `sources` describes: each pixel and its label copied from its source, blank = 0."""
    if images.dtype == torch.uint8 and images.shape[-1] == 3 and labels.dtype == torch.uint8:
        # A pixel's three colour bytes and its label fit one 32-bit word: one gather moves both.
        words = torch.cat([images, labels[..., None]], -1).view(torch.int32).reshape(-1)
        moved = torch.cat([words, words.new_zeros(1)])[sources].view(torch.uint8).view(*sources.shape, 4)
        return moved[..., :3], moved[..., 3]
    channels = images.shape[-1]
    pixels = torch.cat([images.reshape(-1, channels), images.new_zeros(1, channels)])
    classes = torch.cat([labels.reshape(-1), labels.new_zeros(1)])
    return pixels[sources].view(*sources.shape, channels), classes[sources].view_as(sources)


def overlay_sources(
    sources: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator, attempts: int = 4
) -> torch.Tensor:
    """overlay_panels on a pixel map: `labels` are the batch's original labels, `sources` the map so far."""
    if probability <= 0:
        return sources
    count = len(sources)
    current = torch.cat([labels.reshape(-1), labels.new_zeros(1)])[sources]  # (B, H, W) labels of the map
    wanted = torch.rand(count, generator=generator) < probability
    occupied = occupied_cells(current)
    partner = torch.full((count,), -1, dtype=torch.long)
    for _ in range(attempts):
        candidates = torch.randperm(count, generator=generator)
        fits = wanted & (partner < 0) & ~(occupied & occupied[candidates]).any(1) & occupied[candidates].any(1)
        partner[fits] = candidates[fits]
    has_partner = partner >= 0
    source = torch.where(has_partner, partner, torch.arange(count))
    ink = (current[source] > 0) & has_partner[:, None, None]
    return torch.where(ink, sources[source], sources)


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
    sources = overlay_sources(identity_sources(*labels.shape), labels, probability, generator, attempts)
    return gather_pixels(images, labels, sources)


@functools.cache
def _bicubic_weights(grid: int, size: int) -> torch.Tensor:
    """(size, grid): bicubic interpolation (align_corners) of `grid` control values onto `size` pixels.

    Interpolating the identity gives the weights, so field = W @ control @ W.T is separable bicubic
    interpolation, as F.interpolate computes it, as two small matrix products.
    """
    return F.interpolate(torch.eye(grid)[None, None], size=(size, grid), mode="bicubic", align_corners=True)[0, 0]


def deform_sources(
    count: int, height: int, width: int, pixels: float, grid: int, generator: torch.Generator
) -> torch.Tensor:
    """The pixel map of deform_panels for a batch of `count` panels."""
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    flow = torch.zeros(count, 2, height, width)
    if pixels > 0:
        control = (torch.rand(count, 2, grid, grid, generator=generator) * 2 - 1) * pixels
        flow += _bicubic_weights(grid, height) @ control @ _bicubic_weights(grid, width).T  # (B, 2, H, W)
    source_rows = (rows + flow[:, 0]).round_().long()
    source_columns = (columns + flow[:, 1]).round_().long()
    inside = (source_rows >= 0) & (source_rows < height) & (source_columns >= 0) & (source_columns < width)
    panel = torch.arange(count).view(count, 1, 1) * (height * width)
    blank = count * height * width
    return torch.where(inside, panel + source_rows * width + source_columns, blank)


def deform_panels(
    images: torch.Tensor,
    labels: torch.Tensor,
    pixels: float,
    grid: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bends each panel with its own smooth random displacement field (elastic distortion, Simard et al. 2003).

    Test panels are drawn from digit images training never sees. A displacement that varies smoothly
    across the panel gives each digit a differently bent stroke; an optional random linear map about the
    panel's centre adds the slant, rotation and size changes by which handwriting varies most. Every output
    pixel copies its nearest source pixel together with that pixel's label: no interpolation, so pixel
    values keep their exact distribution (faint anti-aliased edges included) and a pixel is a digit
    exactly where it has ink. Sources outside the panel give background.

    Args:
        images: (B, H, W, C) pixels, any dtype.
        labels: (B, H, W) class indices.
        pixels: Largest displacement of a control point, in pixels (0 disables).
        grid: Control points per side; the field is interpolated bicubically between them.
        generator: Seeded source of randomness (CPU).

    Returns:
        New images and labels; the inputs are not modified.
    """
    if pixels <= 0:
        return images, labels
    count, height, width = labels.shape
    return gather_pixels(images, labels, deform_sources(count, height, width, pixels, grid, generator))


@dataclass(frozen=True)
class AugmentConfig:
    """params.yaml's `augment` section.

    Attributes:
        overlay_probability: Share of panels offered another panel's digits in their free cells, per round.
        overlay_partners: Overlay rounds per batch (2 makes panels of up to 9 digits, like the test set).
        deform_pixels: Largest shift of an elastic distortion's control point, in pixels (0: off).
        deform_grid: Control points per side of the distortion field.
    """

    overlay_probability: float
    overlay_partners: int
    deform_pixels: float
    deform_grid: int

    def __post_init__(self):
        check_rules(
            self,
            {
                "overlay_probability": (0 <= self.overlay_probability <= 1, "a number in [0, 1]"),
                "overlay_partners": (self.overlay_partners >= 0, "an integer >= 0"),
                "deform_pixels": (self.deform_pixels >= 0, "a number >= 0"),
                "deform_grid": (self.deform_grid >= 2, "an integer >= 2"),
            },
        )


def augment(
    images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, config: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """deform_panels, then `overlay_partners` rounds of overlay_panels, drawing the same random numbers in
    the same order; the pixels are gathered once at the end."""
    if config.deform_pixels <= 0 and (config.overlay_partners == 0 or config.overlay_probability <= 0):
        return images, labels
    if config.deform_pixels > 0:
        count, height, width = labels.shape
        sources = deform_sources(count, height, width, config.deform_pixels, config.deform_grid, generator)
    else:
        sources = identity_sources(*labels.shape)
    for _ in range(config.overlay_partners):
        sources = overlay_sources(sources, labels, config.overlay_probability, generator)
    return gather_pixels(images, labels, sources)
