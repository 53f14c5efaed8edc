"""The training loop: model-agnostic, its state a LoopState, reporting through callbacks."""

import copy
import csv
import io
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

from segnet.data.augment import AugmentConfig, augment
from segnet.data.loading import to_input
from segnet.devices import select_amp_dtype, select_device, use_exact_float32
from segnet.evaluation.inference import accumulate_confusion, autocast
from segnet.evaluation.metrics import mean_iou
from segnet.speed import keep_freed_memory, use_cpu_kernels, use_winograd
from segnet.training.callbacks import Callback
from segnet.training.checkpoint import Checkpointer
from segnet.training.config import RuntimeConfig, TrainConfig
from segnet.training.distributed import (
    SINGLE_PROCESS,
    World,
    any_across,
    barrier,
    sum_across,
    synchronize_batch_norm,
)
from segnet.training.losses import training_class_weights
from segnet.training.optim import make_optimizer, make_schedule

log = logging.getLogger(__name__)


@dataclass
class LoopState:
    """The loop's whole state: a checkpoint of it resumes the run as if it had never stopped."""

    epoch: int = 1
    batch: int = 0  # the next batch of the epoch to train on
    step: int = 0
    order: torch.Tensor | None = None  # the epoch's batches, (steps, batch_size) panel positions; None between
    running_loss: torch.Tensor | None = None  # the epoch's summed loss, float64 on the device
    elapsed_s: float = 0.0  # training time before this process's start (a resumed run's)
    best_state: dict | None = None
    best_epoch: int = 0
    best_miou: float = -math.inf
    history: list[dict] = field(default_factory=list)


@dataclass
class Setup:
    """What the loop builds once before its first step."""

    model: nn.Module
    forward: nn.Module  # the model, or its DistributedDataParallel wrapper
    device: torch.device
    amp_dtype: torch.dtype | None
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    weights: torch.Tensor | None  # the cross-entropy's class weights
    steps_per_epoch: int
    total_steps: int
    local: slice  # this process's panels of each global batch
    cpu_kernels: bool
    winograd_layers: list[str]


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

    def summary(self) -> dict:
        """The run's metrics, as the train stage writes them to metrics/train.json."""
        return {
            "best_val_miou": self.best_val_miou,
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "final_train_loss": self.history[-1]["train_loss"],
            "train_seconds": self.train_seconds,
            "train_images_per_second": self.images_per_second,
        }

    def history_csv(self) -> bytes:
        """One row per epoch (epoch, step, train_loss, val_miou, lr, elapsed_s), as CSV."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(self.history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        return text.getvalue().encode()


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


def train(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    val_index: torch.Tensor,
    num_classes: int,
    config: TrainConfig,
    augmentation: AugmentConfig,
    runtime: RuntimeConfig,
    seed: int,
    callbacks: Sequence[Callback] = (),
    checkpointer: Checkpointer | None = None,
    resume: dict | None = None,
    stop_requested: Callable[[], bool] = lambda: False,
    world: World = SINGLE_PROCESS,
) -> TrainResult:
    """Trains `model` and returns the weights of the epoch with the best validation mIoU.

    `model` maps pixels as segnet.data.to_input gives them to (N, classes, H, W) logits; `images` (N, H, W, C)
    and `labels` (N, H, W) may be memory-mapped (only each batch's panels are read). `seed` seeds the batch
    order and the augmentation. `checkpointer` saves the state every `every_steps` steps and every epoch's end;
    `resume` (load_checkpoint's "state") continues a run to exactly the weights of an uninterrupted one (on the
    CPU). `stop_requested` is polled after every step: True saves and raises TrainingInterrupted. `world`: this
    process among the training processes, whose group is started; each trains on its slice of every batch.
    """
    setup = _set_up(model, labels, train_index, num_classes, config, runtime, world)
    batch_order = torch.Generator().manual_seed(seed)
    state = _restore(setup, batch_order, resume) if resume is not None else LoopState()
    resumed_from_step = state.step

    def elapsed() -> float:
        return state.elapsed_s + time.perf_counter() - start

    def save() -> None:
        if checkpointer:
            checkpointer.save(_snapshot(setup, batch_order, state, elapsed()))

    def stop_if_requested(save_first: bool) -> None:
        if any_across(stop_requested(), setup.device):
            if save_first:
                save()
            barrier()  # a launcher (torchrun) may end the job when one process exits: all wait for rank 0's save
            raise TrainingInterrupted(state.step, checkpointer.path if checkpointer else None, world)

    for callback in callbacks:
        callback.on_train_start(setup.total_steps, setup.steps_per_epoch, state.step)
    start = time.perf_counter()
    while state.epoch <= config.epochs:
        model.train()
        if state.order is None:
            # The last partial batch is dropped: every step sees the same batch size, which keeps batch-norm
            # statistics and the learning-rate schedule consistent.
            order = torch.randperm(len(train_index), generator=batch_order)
            state.order = order[: setup.steps_per_epoch * config.batch_size].view(setup.steps_per_epoch, -1)
            state.batch = 0
            state.running_loss = torch.zeros((), dtype=torch.float64)
        state.running_loss = torch.as_tensor(state.running_loss).to(setup.device)
        while state.batch < setup.steps_per_epoch:
            batch = train_index[state.order[state.batch]]
            loss = _step(setup, *augment(images[batch], labels[batch], batch_order, augmentation), runtime, world)
            state.running_loss += loss
            state.batch, state.step = state.batch + 1, state.step + 1
            for callback in callbacks:
                callback.on_step_end(state.step, loss)
            # Mid-epoch checkpoints; the epoch's last step is covered by the end-of-epoch one below.
            if checkpointer and checkpointer.due(state.step) and state.batch < setup.steps_per_epoch:
                save()
            stop_if_requested(save_first=True)
        record = _validate(setup, state, images, labels, val_index, num_classes, runtime, world, elapsed)
        save()
        for callback in callbacks:
            callback.on_epoch_end(record)
        stop_if_requested(save_first=False)  # the state was saved just above
        if any_across(any(callback.stop_training for callback in callbacks), setup.device):
            break  # a callback ends training early (a search prunes its trial); the best epoch so far stands
    for callback in callbacks:
        callback.on_train_end()
    return _result(setup, state, elapsed(), resumed_from_step, config.batch_size)


def _set_up(
    model: nn.Module,
    labels: torch.Tensor,
    train_index: torch.Tensor,
    num_classes: int,
    config: TrainConfig,
    runtime: RuntimeConfig,
    world: World,
) -> Setup:
    """Puts the model on its device with the speed code the runtime settings ask for, and builds the optimizer,
    the schedule and the loss weights."""
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    if runtime.keep_freed_memory:
        keep_freed_memory()
    if config.batch_size % world.size:
        raise ValueError(f"batch_size {config.batch_size} does not divide among {world.size} processes")
    device = select_device(runtime.device, world.local_rank if world.is_distributed else None)
    amp_dtype = select_amp_dtype(runtime.precision, device)
    use_exact_float32()  # what autocast leaves in float32 (or all of it, at precision float32) stays exact on GPUs
    memory_format = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)  # type: ignore[call-overload]  # torch's stubs omit it
    kernels = runtime.cpu_kernels and device.type == "cpu" and use_cpu_kernels(model)
    winograd_layers = use_winograd(model, runtime.winograd_min_channels) if kernels and runtime.winograd else []
    forward = model
    if world.is_distributed:
        synchronize_batch_norm(model, device)
        forward = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    weights = None
    if config.class_weighting == "median_frequency":
        weights = training_class_weights(labels, train_index, num_classes).to(device)
    optimizer = make_optimizer(model, config)
    steps_per_epoch = len(train_index) // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {len(train_index)} training images")
    # Every process builds the whole global batch (the same batch order and augmentation draws), then
    # trains on its own slice: the data are then exactly those of a single-process run.
    local_batch_size = config.batch_size // world.size
    local = slice(world.rank * local_batch_size, (world.rank + 1) * local_batch_size)
    return Setup(
        model=model,
        forward=forward,
        device=device,
        amp_dtype=amp_dtype,
        optimizer=optimizer,
        schedule=make_schedule(optimizer, config, steps_per_epoch * config.epochs),
        weights=weights,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * config.epochs,
        cpu_kernels=kernels,
        winograd_layers=winograd_layers,
        local=local,
    )


def _step(
    setup: Setup, images: torch.Tensor, labels: torch.Tensor, runtime: RuntimeConfig, world: World
) -> torch.Tensor:
    """One optimizer step on this process's slice of a global batch; returns the global batch's detached loss."""
    inputs = to_input(images[setup.local], setup.device, runtime.channels_last)
    targets = labels[setup.local].to(setup.device, non_blocking=True).long()
    with autocast(setup.device, setup.amp_dtype):
        logits = setup.forward(inputs)
    loss = F.cross_entropy(logits.float(), targets, weight=setup.weights)
    setup.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    setup.optimizer.step()
    setup.schedule.step()
    loss = loss.detach()
    if world.is_distributed:
        # The global batch's loss, the same on every process, so that rank 0's checkpointed sum is all's.
        loss = sum_across(loss.clone()) / world.size
    return loss


def _validate(
    setup: Setup,
    state: LoopState,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_index: torch.Tensor,
    num_classes: int,
    runtime: RuntimeConfig,
    world: World,
    elapsed: Callable[[], float],
) -> dict:
    """Scores the epoch's weights on the validation panels, keeps them if they are the best so far, and moves
    the state to the next epoch; returns the epoch's record."""
    # Each process scores its share of the validation panels; the confusion matrices add up.
    confusion = sum_across(
        accumulate_confusion(
            setup.model,
            images,
            labels,
            num_classes,
            runtime.val_batch_size,
            setup.device,
            setup.amp_dtype,
            runtime.channels_last,
            index=val_index[world.rank :: world.size],
        ).to(setup.device)
    ).cpu()
    record = {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": float(torch.as_tensor(state.running_loss)) / setup.steps_per_epoch,
        "val_miou": mean_iou(confusion),
        "lr": setup.optimizer.param_groups[0]["lr"],
        "elapsed_s": elapsed(),
    }
    state.history.append(record)
    if record["val_miou"] > state.best_miou:
        state.best_miou, state.best_epoch = record["val_miou"], state.epoch
        state.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in setup.model.state_dict().items()})
    state.epoch, state.order, state.running_loss = state.epoch + 1, None, None
    return record


def _result(setup: Setup, state: LoopState, seconds: float, resumed_from_step: int, batch_size: int) -> TrainResult:
    assert state.best_state is not None, "no epoch ran"
    return TrainResult(
        best_state=state.best_state,
        best_epoch=state.best_epoch,
        best_val_miou=state.best_miou,
        history=state.history,
        train_seconds=seconds,
        device=str(setup.device),
        amp_dtype=str(setup.amp_dtype or "float32").replace("torch.", ""),
        cpu_kernels=setup.cpu_kernels,
        winograd_layers=setup.winograd_layers,
        resumed_from_step=resumed_from_step,
        images_trained=state.step * batch_size,
    )


def _snapshot(setup: Setup, batch_order: torch.Generator, state: LoopState, elapsed_s: float) -> dict:
    """Everything _restore needs to continue the run exactly."""
    return {
        "model": setup.model.state_dict(),
        "optimizer": setup.optimizer.state_dict(),
        "schedule": setup.schedule.state_dict(),
        "batch_order": batch_order.get_state(),
        "torch_rng": torch.get_rng_state(),
        "loop": {**vars(state), "elapsed_s": elapsed_s},
    }


def _restore(setup: Setup, batch_order: torch.Generator, resume: dict) -> LoopState:
    setup.model.load_state_dict(resume["model"])
    setup.optimizer.load_state_dict(resume["optimizer"])
    setup.schedule.load_state_dict(resume["schedule"])
    batch_order.set_state(resume["batch_order"])
    torch.set_rng_state(resume["torch_rng"])
    state = LoopState(**resume["loop"])
    log.info("resuming at epoch %d, step %d of %d", state.epoch, state.step, setup.total_steps)
    return state
