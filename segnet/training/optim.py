"""The optimizer and the learning-rate schedule of params.yaml's `train` section."""

import torch
from torch import nn

from segnet.training.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # Weight decay on conv weights only: decaying batch-norm scales and biases only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        # Nesterov's look-ahead needs momentum: without it this is plain SGD.
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    # The fused kernel updates all parameters in one pass each, instead of a dozen small ops per tensor.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in model.parameters())
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def make_schedule(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    if config.schedule == "onecycle":
        # OneCycleLR divides by (warm-up steps - 1) and by the steps after it: a warm-up of exactly one
        # step, or of all steps, divides by zero. Short runs get 1.5 steps of warm-up and at least half a
        # step after it; longer runs keep warmup_fraction as it is.
        warmup_steps = min(max(config.warmup_fraction * total_steps, 1.5), total_steps - 0.5)
        # One-cycle also cycles momentum against the learning rate, 0.95 -> 0.85 -> 0.95 (PyTorch's default).
        # AdamW's beta1 keeps that cycle (the defaults were measured with it); SGD keeps train.momentum as set.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=total_steps,
            pct_start=warmup_steps / total_steps,
            cycle_momentum=config.optimizer != "sgd",
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
