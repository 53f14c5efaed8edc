"""DVC stage `train`: trains SegNet on the prepared training split, selecting the epoch by validation mIoU.

Only the panels of each batch are read (memory-mapped), and never the test split. `runtime.processes: N`
launches the stage in N processes (or it joins the job `torchrun` started); rank 0 alone logs to MLflow and
writes checkpoints and outputs. The loop state is saved to CHECKPOINT_DIR every `runtime.checkpoint_steps`
steps and every epoch's end; a rerun with the same settings, data and code resumes from it (into the same
MLflow run) to exactly the weights of an uninterrupted run. Ctrl-C saves, marks the run KILLED, exits 130.
"""

import contextlib
import json
import sys
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from segnet import NUM_CLASSES
from segnet.cli import run_stage, stage_paths
from segnet.data import AugmentConfig, load_split, split_indices
from segnet.devices import select_device
from segnet.files import write_bytes, write_json
from segnet.interrupt import StopSignals
from segnet.model import MODEL_FILE, SegNet, SegNetConfig, check_model_folder, save_model
from segnet.params import build, load_params, read_experiment, read_seed
from segnet.tracking import TRAIN_STAGE, log_metrics, stage_run
from segnet.tracking.export import log_model, log_training
from segnet.training import EpochLog, ProgressBar, RuntimeConfig, TrainConfig, distributed, set_seed, train
from segnet.training.checkpoint import load_checkpoint, run_checkpointer
from segnet.training.pruning import PRUNED_AT, trial_pruning

USAGE = "python -m stages.train PREPARED_DIR MODEL_DIR METRICS_JSON HISTORY_CSV CHECKPOINT_DIR"


def main() -> None:
    prepared_dir, model_dir, metrics_path, history_path, checkpoint_dir = stage_paths(USAGE)
    params = load_params()
    seed, experiment = read_seed(params), read_experiment(params)
    # The input is checked before anything starts: before the MLflow run, and before `processes` processes.
    images, labels = load_split(prepared_dir, "train", mmap=True)
    dataset = json.loads((prepared_dir / "dataset.json").read_text())
    model_config = build(SegNetConfig, "model", params["model"], num_classes=NUM_CLASSES, in_channels=images.shape[3])
    config = build(TrainConfig, "train", params["train"])
    augmentation = build(AugmentConfig, "augment", params["augment"])
    runtime = build(RuntimeConfig, "runtime", params["runtime"])
    model_config.check_input_size(images.shape[1:3], prepared_dir)
    check_model_folder(model_dir, metrics_path, history_path, checkpoint_dir)  # now: it is replaced at the end
    if config.batch_size % runtime.processes:  # checked before N processes start, each to report it
        raise ValueError(
            f"params.yaml train.batch_size: {config.batch_size} does not divide among {runtime.processes} processes"
        )
    status = distributed.relaunch(runtime.processes, "stages.train", sys.argv[1:])
    if status is not None:
        sys.exit(status)
    world = distributed.launched_world()
    logged = {key: params[key] for key in ("seed", "model", "train", "augment", "runtime")}
    checkpointer = run_checkpointer(checkpoint_dir, logged, dataset, world.size, runtime.checkpoint_steps)
    if world.is_distributed:
        distributed.start(world, runtime.distributed_backend, select_device(runtime.device, world.local_rank))
    # Rank 0 writes checkpoints, so it alone reads them; on several nodes the others could not see the file.
    resume = distributed.from_main(
        load_checkpoint(checkpointer.path, checkpointer.fingerprint) if world.is_main else None
    )
    tags = {"dataset_sha256": dataset["archive_sha256"], "processes": str(world.size)}
    # Only the main process tracks: one MLflow run for the whole job.
    resumed_run = resume["extra"].get("mlflow_run_id") if resume else None
    tracked = stage_run(TRAIN_STAGE, experiment, logged, tags, resumed_run, dataset) if world.is_main else None
    pruning = trial_pruning(config.epochs) if world.is_main else None  # a search's trial, stopped if behind
    with tracked or contextlib.nullcontext() as run:
        train_index, val_index = split_indices(len(images), config.val_fraction, seed)
        set_seed(seed)
        model = SegNet(model_config)
        if run is not None:  # the main process's
            checkpointer.extra["mlflow_run_id"] = run.info.run_id
        progress = ProgressBar(config.epochs)
        # Log lines (Ctrl-C's notice) print above the bar, and it closes before the stage says why training stopped.
        with StopSignals() as stop, logging_redirect_tqdm(), contextlib.closing(progress):
            hooks: dict[str, Any] = {"resume": resume["state"] if resume else None, "stop_requested": stop.requested}
            if world.is_main:  # rank 0 alone shows progress, logs, checkpoints and reports to a search
                callbacks = [progress, EpochLog(log_metrics), *([pruning] if pruning else [])]
                hooks |= {"callbacks": callbacks, "checkpointer": checkpointer}
            split = (images, labels, train_index, val_index, model_config.num_classes)
            result = train(model, *split, config, augmentation, runtime, seed, world=world, **hooks)
        distributed.stop()
        if not world.is_main:
            return
        record = {**logged, "dataset_sha256": dataset["archive_sha256"], "best_epoch": result.best_epoch}
        save_model(model_dir, result.best_state, model_config, record)
        summary = result.summary() | ({PRUNED_AT: pruning.pruned_at} if pruning and pruning.pruned_at else {})
        write_json(metrics_path, summary)
        write_bytes(history_path, result.history_csv())
        log_training(result, summary, model_dir / MODEL_FILE, [model_dir / "config.json", metrics_path, history_path])
        # A fresh model: the trained one may hold cross-process batch norm, which only runs in a process group.
        log_model(SegNet(model_config), result.best_state, images[:2])
    checkpointer.remove()


if __name__ == "__main__":
    run_stage(main)
