"""What the cross-entropy weighs: every pixel alike, or each class by median-frequency balancing."""

import torch


def class_weights(label_counts: torch.Tensor) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus; the SegNet paper): median(freq) / freq(class)."""
    frequency = label_counts.double() / label_counts.sum()
    present = frequency > 0
    weights = torch.zeros_like(frequency)
    weights[present] = frequency[present].median() / frequency[present]
    return weights.float()


def training_class_weights(labels: torch.Tensor, index: torch.Tensor, num_classes: int) -> torch.Tensor:
    """class_weights of the labels of the panels in `index`, counted a chunk at a time (labels may be mapped)."""
    counts = torch.zeros(num_classes, dtype=torch.long)
    for chunk in index.split(4096):
        counts += torch.bincount(labels[chunk].reshape(-1).long(), minlength=num_classes)
    return class_weights(counts)
