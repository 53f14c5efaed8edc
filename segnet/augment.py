"""Training-time augmentation that follows how the panels are built."""

import torch


def overlay_panels(
    images: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paints another panel's digits over a share of the panels in a batch.

    The generator's own rule: wherever the partner panel has a digit pixel (label > 0), its pixel and
    label overwrite this panel's. Training panels hold 0-4 digits but test panels up to 9; overlaid
    panels hold up to 8, so the model learns crowded, overlapping scenes like the test set's.

    Args:
        images: (B, H, W, C) pixels (any dtype).
        labels: (B, H, W) class indices.
        probability: Chance that a panel receives an overlay.
        generator: Seeded source of randomness (CPU).

    Returns:
        New images and labels; the inputs are not modified.
    """
    if probability <= 0:
        return images, labels
    count = len(images)
    chosen = torch.rand(count, generator=generator) < probability
    partners = torch.randperm(count, generator=generator)
    ink = (labels[partners] > 0) & chosen[:, None, None]
    images = torch.where(ink[..., None], images[partners], images)
    labels = torch.where(ink, labels[partners], labels)
    return images, labels
