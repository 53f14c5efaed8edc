"""The training loop: model-agnostic, driven by a TrainConfig, reporting through callbacks."""

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segnet.data.augment import augment
from segnet.training.callbacks import Callback
from segnet.training.checkpoint import Checkpointer
from segnet.data.loading import to_input
from segnet.cores import available_cores
from segnet.devices import select_amp_dtype, select_device, use_exact_float32
from segnet.training.distributed import (
    BACKENDS, SINGLE_PROCESS, World, any_across, barrier, sum_across, synchronize_batch_norm,
)
from segnet.evaluation.inference import accumulate_confusion, autocast
from segnet.training.losses import soft_iou_loss
from segnet.evaluation.metrics import mean_iou
from segnet.speed import keep_freed_memory, use_cpu_kernels, use_winograd

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
PRECISIONS = ("auto", "float32", "bfloat16")
CLASS_WEIGHTINGS = ("none", "median_frequency")


def _one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(choices)


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; the defaults here are overridden by params.yaml."""

    epochs: int = 21
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    warmup_fraction: float = 0.2
    val_fraction: float = 0.1
    overlay_probability: float = 1.0
    overlay_partners: int = 2
    deform_pixels: float = 1.0
    deform_grid: int = 9
    deform_affine: float = 0.0
    ema_decay: float = 0.0
    val_batch_size: int = 256
    class_weighting: str = "none"
    soft_iou_weight: float = 0.0
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    cpu_kernels: bool = True
    winograd: bool = True
    winograd_min_channels: int = 64
    keep_freed_memory: bool = True
    threads: int = 0
    checkpoint_steps: int = 100
    processes: int = 1
    distributed_backend: str = "auto"

    def __post_init__(self):
        # Each setting's rule: whether it holds, and the words the error gives for it.
        rules = {
            "epochs": (self.epochs >= 1, "an integer >= 1"),
            "batch_size": (self.batch_size >= 2, "an integer >= 2 (batch norm needs two values per channel)"),
            "lr": (self.lr > 0, "a number > 0"),
            "momentum": (0 <= self.momentum < 1, "a number in [0, 1)"),
            "weight_decay": (self.weight_decay >= 0, "a number >= 0"),
            "warmup_fraction": (0 < self.warmup_fraction < 1, "a number in (0, 1)"),
            "val_fraction": (0 < self.val_fraction < 1, "a number in (0, 1)"),
            "overlay_probability": (0 <= self.overlay_probability <= 1, "a number in [0, 1]"),
            "overlay_partners": (self.overlay_partners >= 0, "an integer >= 0"),
            "deform_pixels": (self.deform_pixels >= 0, "a number >= 0"),
            "deform_grid": (self.deform_grid >= 2, "an integer >= 2"),
            "deform_affine": (0 <= self.deform_affine < 1, "a number in [0, 1)"),
            "ema_decay": (0 <= self.ema_decay < 1, "a number in [0, 1)"),
            "val_batch_size": (self.val_batch_size >= 1, "an integer >= 1"),
            "soft_iou_weight": (self.soft_iou_weight >= 0, "a number >= 0"),
            "winograd_min_channels": (self.winograd_min_channels >= 1, "an integer >= 1"),
            "threads": (self.threads >= 0, "an integer >= 0 (0: one per core)"),
            "checkpoint_steps": (self.checkpoint_steps >= 0, "an integer >= 0"),
            "processes": (self.processes >= 1, "an integer >= 1"),
            "distributed_backend": (self.distributed_backend in BACKENDS, _one_of(BACKENDS)),
            "optimizer": (self.optimizer in OPTIMIZERS, _one_of(OPTIMIZERS)),
            "schedule": (self.schedule in SCHEDULES, _one_of(SCHEDULES)),
            "precision": (self.precision in PRECISIONS, _one_of(PRECISIONS)),
            "class_weighting": (self.class_weighting in CLASS_WEIGHTINGS, _one_of(CLASS_WEIGHTINGS)),
        }
        for name, (holds, rule) in rules.items():
            if not holds:
                raise ValueError(f"params.yaml train.{name}: must be {rule}, got {getattr(self, name)!r}")
        # More threads than cores wait on each other at every step: a tiny model on a 2-core machine trained
        # 4.4x slower at 4 threads and 19x slower at 16, and 100,000 failed to start with an unrelated traceback.
        cores = available_cores()
        if self.threads > cores:
            raise ValueError(f"params.yaml train.threads: {self.threads} is more than the {cores} cores "
                             "this process may use; 0 uses one thread per core")


@dataclass
class TrainResult:
    """The selected model's weights and the per-epoch history."""

    best_state: dict
    best_epoch: int
    best_val_miou: float
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    device: str = "cpu"
    amp_dtype: str = "float32"
    cpu_kernels: bool = False
    winograd_layers: list[str] = field(default_factory=list)  # conv-bn-relu blocks that used segnet.speed.winograd
    resumed_from_step: int = 0
    images_trained: int = 0  # every step's global batch, those before a resume included

    @property
    def images_per_second(self) -> float:
        """Training images per second of the whole run, validation included."""
        return self.images_trained / self.train_seconds


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (Ctrl-C, SIGTERM) after saving a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint: Path | None, world: World = SINGLE_PROCESS):
        if world.is_main:
            where = f"; checkpoint saved to {checkpoint}" if checkpoint else "; no checkpoint (checkpointing is off)"
        else:  # only rank 0 writes checkpoints
            where = f" in process {world.rank} of {world.size}, whose checkpoint is process 0's"
        super().__init__(f"training stopped at step {step}{where}")
        self.step = step
        self.checkpoint = checkpoint


def set_seed(seed: int) -> None:
    """Seeds every random number generator training touches."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def class_weights(label_counts: torch.Tensor) -> torch.Tensor:
    """Median-frequency balancing (Eigen & Fergus; the SegNet paper): median(freq) / freq(class)."""
    frequency = label_counts.double() / label_counts.sum()
    present = frequency > 0
    weights = torch.zeros_like(frequency)
    weights[present] = frequency[present].median() / frequency[present]
    return weights.float()


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


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    if config.schedule == "onecycle":
        # OneCycleLR divides by (warm-up steps - 1) and by the steps after it: a warm-up of exactly one
        # step, or of all steps, divides by zero. Short runs get 1.5 steps of warm-up and at least half a
        # step after it; longer runs keep warmup_fraction as it is.
        warmup_steps = min(max(config.warmup_fraction * total_steps, 1.5), total_steps - 0.5)
        # One-cycle also cycles momentum against the learning rate, 0.95 -> 0.85 -> 0.95 (PyTorch's default).
        # AdamW's beta1 keeps that cycle (the defaults were measured with it); SGD keeps train.momentum as set.
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=warmup_steps / total_steps,
            cycle_momentum=config.optimizer != "sgd",
        )
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@torch.no_grad()
def update_average(averaged: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """Moves `averaged`'s weights towards `model`'s; batch-norm statistics are copied, as they already average.

    The decay ramps up from 0.1 over the first steps (as in TensorFlow's ExponentialMovingAverage), so
    the average does not remember the random initialisation.
    """
    decay = min(decay, (1 + step) / (10 + step))
    torch._foreach_lerp_(list(averaged.parameters()), list(model.parameters()), 1 - decay)
    for average, live in zip(averaged.buffers(), model.buffers()):
        average.copy_(live)


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    val_index: torch.Tensor,
    num_classes: int,
    config: TrainConfig,
    seed: int,
    callbacks: Sequence[Callback] = (),
    checkpointer: Checkpointer | None = None,
    resume: dict | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    world: World = SINGLE_PROCESS,
) -> TrainResult:
    """Trains `model` and returns the weights of the epoch with the best validation mIoU.

    Args:
        model: A module mapping (N, 3, H, W) pixels to (N, classes, H, W) logits; it gets them as segnet.data.loading.to_input
            gives them (uint8 0-255 where the split is stored as bytes, else float32 in [0, 1]), as SegNet takes them.
        images: (N, H, W, 3) uint8 or float pixels (see segnet.data.loading); may be memory-mapped, as only the
            panels of each batch are read.
        labels: (N, H, W) class indices.
        train_index, val_index: The panels to train on and to select the epoch by.
        num_classes: Number of classes in the labels.
        config: Optimisation and hardware settings.
        seed: Seeds initialisation-independent randomness here (batch order).
        callbacks: Receive progress events.
        checkpointer: Saves the loop state every `every_steps` steps and at the end of every epoch.
        resume: A state saved by `checkpointer` (segnet.training.checkpoint.load_checkpoint's "state"): training
            continues from it and ends exactly as the uninterrupted run would (on the CPU).
        stop_requested: Polled after every step; when it returns True the loop saves a checkpoint and
            raises TrainingInterrupted.
        world: This process's place among the training processes (segnet.training.distributed); the process group
            must already be started. Each process trains on its slice of every global batch.

    Raises:
        TrainingInterrupted: `stop_requested` returned True.
    """
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.keep_freed_memory:
        keep_freed_memory()
    if config.batch_size % world.size:
        raise ValueError(f"train.batch_size {config.batch_size} does not divide among {world.size} processes")
    device = select_device(config.device, world.local_rank if world.is_distributed else None)
    amp_dtype = select_amp_dtype(config.precision, device)
    use_exact_float32()  # what autocast leaves in float32 (or all of it, at precision float32) stays exact on GPUs
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    kernels = config.cpu_kernels and device.type == "cpu" and use_cpu_kernels(model)
    winograd_layers = use_winograd(model, config.winograd_min_channels) if kernels and config.winograd else []
    forward = model
    if world.is_distributed:
        synchronize_batch_norm(model, device)
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    # The compiled module shares its parameters with `model`, so state_dict() keeps plain names.
    forward = torch.compile(forward) if config.compile else forward
    # Every process builds the whole global batch (the same batch order and augmentation draws), then
    # trains on its own slice: the data are then exactly those of a single-process run.
    local_batch_size = config.batch_size // world.size
    local = slice(world.rank * local_batch_size, (world.rank + 1) * local_batch_size)

    weights = None
    if config.class_weighting == "median_frequency":
        counts = sum(torch.bincount(labels[chunk].reshape(-1).long(), minlength=num_classes)
                     for chunk in train_index.split(4096))
        weights = class_weights(counts).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_index) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train_index)} training images")
    total_steps = steps_per_epoch * config.epochs
    schedule = make_schedule(optimizer, config, total_steps)
    batch_order = torch.Generator().manual_seed(seed)
    # An exponential moving average of the weights, validated and selected instead of the live ones.
    averaged = copy.deepcopy(model) if config.ema_decay else None

    # The loop's whole state: a checkpoint of it resumes the run as if it had never stopped. `order` holds
    # the current epoch's batches (None between epochs) and `batch` the next one to train on.
    loop = {
        "epoch": 1, "batch": 0, "step": 0, "order": None, "running_loss": None, "elapsed_s": 0.0,
        "best_state": None, "best_epoch": 0, "best_miou": -math.inf, "history": [],
    }
    if resume is not None:
        model.load_state_dict(resume["model"])
        if averaged is not None:
            averaged.load_state_dict(resume["averaged"])
        optimizer.load_state_dict(resume["optimizer"])
        schedule.load_state_dict(resume["schedule"])
        batch_order.set_state(resume["batch_order"])
        torch.set_rng_state(resume["torch_rng"])
        loop.update(resume["loop"])
        log.info("resuming at epoch %d, step %d of %d", loop["epoch"], loop["step"], total_steps)
    resumed_from_step = loop["step"]

    def save_checkpoint() -> None:
        checkpointer.save({
            "model": model.state_dict(),
            "averaged": averaged.state_dict() if averaged is not None else None,
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "batch_order": batch_order.get_state(),
            "torch_rng": torch.get_rng_state(),
            "loop": {**loop, "elapsed_s": loop["elapsed_s"] + time.perf_counter() - start},
        })

    def stop_if_requested(save: bool) -> None:
        if any_across(stop_requested(), device):
            if save and checkpointer:
                save_checkpoint()
            # A launcher may end the whole job as soon as one process exits (torchrun does): all wait for rank 0's
            # checkpoint.
            barrier()
            raise TrainingInterrupted(loop["step"], checkpointer.path if checkpointer else None, world)

    for callback in callbacks:
        callback.on_train_start(total_steps, steps_per_epoch, loop["step"])
    start = time.perf_counter()
    while loop["epoch"] <= config.epochs:
        model.train()
        if loop["order"] is None:
            # The last partial batch is dropped: every step sees the same batch size, which keeps
            # batch-norm statistics and the learning-rate schedule consistent.
            order = torch.randperm(len(train_index), generator=batch_order)[: steps_per_epoch * config.batch_size]
            loop.update(order=order.view(steps_per_epoch, config.batch_size), batch=0,
                        running_loss=torch.zeros((), dtype=torch.float64))
        running_loss = loop["running_loss"] = loop["running_loss"].to(device)  # summed in place, step by step
        while loop["batch"] < steps_per_epoch:
            batch = train_index[loop["order"][loop["batch"]]]
            batch_images, batch_labels = augment(
                images[batch], labels[batch], batch_order, config.deform_pixels, config.deform_grid,
                config.deform_affine, config.overlay_partners, config.overlay_probability,
            )
            inputs = to_input(batch_images[local], device, config.channels_last)
            targets = batch_labels[local].to(device, non_blocking=True).long()
            with autocast(device, amp_dtype):
                logits = forward(inputs)
            logits = logits.float()
            loss = F.cross_entropy(logits, targets, weight=weights)
            if config.soft_iou_weight:
                loss = loss + config.soft_iou_weight * soft_iou_loss(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if averaged is not None:
                update_average(averaged, model, config.ema_decay, loop["step"])
            loss_value = loss.detach()
            if world.is_distributed:
                # The global batch's loss, the same on every process, so that rank 0's checkpointed sum is all's.
                loss_value = sum_across(loss_value.clone()) / world.size
            running_loss += loss_value
            loop["batch"] += 1
            loop["step"] += 1
            for callback in callbacks:
                callback.on_step_end(loop["step"], loss_value)
            # Mid-epoch checkpoints; the epoch's last step is covered by the end-of-epoch one below.
            if (checkpointer and checkpointer.every_steps and loop["step"] % checkpointer.every_steps == 0
                    and loop["batch"] < steps_per_epoch):
                save_checkpoint()
            stop_if_requested(save=True)

        selected = averaged if averaged is not None else model
        # Each process scores its share of the validation panels; the confusion matrices add up.
        confusion = sum_across(accumulate_confusion(
            selected, images, labels, num_classes, config.val_batch_size, device, amp_dtype, config.channels_last,
            index=val_index[world.rank::world.size],
        ).to(device)).cpu()
        record = {
            "epoch": loop["epoch"],
            "step": loop["step"],
            "train_loss": float(running_loss) / steps_per_epoch,
            "val_miou": mean_iou(confusion),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": loop["elapsed_s"] + time.perf_counter() - start,
        }
        loop["history"].append(record)
        if record["val_miou"] > loop["best_miou"]:
            loop.update(best_miou=record["val_miou"], best_epoch=loop["epoch"])
            loop["best_state"] = copy.deepcopy({k: v.detach().cpu() for k, v in selected.state_dict().items()})
        loop.update(epoch=loop["epoch"] + 1, order=None, running_loss=None)
        if checkpointer:
            save_checkpoint()
        for callback in callbacks:
            callback.on_epoch_end(record)
        stop_if_requested(save=False)  # the state was saved just above
    for callback in callbacks:
        callback.on_train_end()

    return TrainResult(
        best_state=loop["best_state"],
        best_epoch=loop["best_epoch"],
        best_val_miou=loop["best_miou"],
        history=loop["history"],
        train_seconds=loop["elapsed_s"] + time.perf_counter() - start,
        device=str(device),
        amp_dtype=str(amp_dtype).replace("torch.", "") if amp_dtype else "float32",
        cpu_kernels=kernels,
        winograd_layers=winograd_layers,
        resumed_from_step=resumed_from_step,
        images_trained=loop["step"] * config.batch_size,
    )
