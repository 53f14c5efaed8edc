"""DVC stage `train`: trains SegNet on the prepared training split, selecting the epoch by validation mIoU.

The test split is not read here: only `evaluate` touches it. The prepared panels are memory-mapped: only
the panels of each batch are read, so a dataset larger than memory trains too.

Several processes: `train.processes: N` makes this stage launch itself in N processes on this machine
(segnet.training.distributed.run_in_processes, DistributedDataParallel); started by `torchrun` (any number of nodes),
it joins the job torchrun describes instead. Either way the rank-0 process alone logs to MLflow and writes
checkpoints and outputs.

Interrupted training resumes: the loop state is saved to CHECKPOINT_DIR every train.checkpoint_steps steps
and at every epoch's end, and the next run with the same settings, data and code continues from it (into the
same MLflow run), ending with exactly the weights of an uninterrupted run. Ctrl-C saves a checkpoint, marks
the MLflow run KILLED and exits with 130. The checkpoint is deleted once training has finished.
"""

import contextlib
import csv
import io
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch
from tqdm.contrib.logging import logging_redirect_tqdm

import segnet
from segnet import NUM_CLASSES
from segnet.training.callbacks import EpochLog, ProgressBar
from segnet.training.checkpoint import Checkpointer, fingerprint, load_checkpoint
from segnet.cli import run_stage, stage_paths
from segnet.training import distributed
from segnet.data.loading import load_split, split_indices, to_float_input
from segnet.devices import select_device
from segnet.files import check_replaceable, save_torch, sha256_file, staged_directory, write_bytes, write_json
from segnet.interrupt import StopSignals
from segnet.model.network import SegNet, SegNetConfig
from segnet.params import build, load_params, read_seed
from segnet.evaluation.plots import miou_time_png
from segnet.tracking.runs import TRAIN_STAGE, log_metrics, stage_run
from segnet.training.loop import TrainConfig, set_seed, train

MODEL_FILE = "model.pt"
# Everything the model folder holds: the weights and their record, which evaluate pairs with them.
MODEL_NAMES = frozenset({MODEL_FILE, "config.json"})
USAGE = "python -m stages.train PREPARED_DIR MODEL_DIR METRICS_JSON HISTORY_CSV CHECKPOINT_DIR"


def main() -> None:
    prepared_dir, model_dir, metrics_path, history_path, checkpoint_dir = stage_paths(USAGE)
    params = load_params()
    seed = read_seed(params)
    model_config = build(SegNetConfig, "model", params["model"])
    train_config = build(TrainConfig, "train", params["train"])
    if model_config.num_classes != NUM_CLASSES:
        raise ValueError(
            f"params.yaml model.num_classes: the labels have {NUM_CLASSES} classes, got {model_config.num_classes}"
        )
    # The input is checked before anything starts: in one process before its MLflow run, and before
    # `train.processes` processes start, where each process would report the same failure.
    images, labels = load_split(prepared_dir, "train", mmap=True)
    dataset_record = (prepared_dir / "dataset.json").read_text()
    if images.shape[1] % model_config.downsampling or images.shape[2] % model_config.downsampling:
        raise ValueError(
            f"{prepared_dir}: panels are {tuple(images.shape[1:3])}, but a {len(model_config.encoder_channels)}"
            f"-level SegNet (params.yaml model.encoder_channels) needs sides divisible by {model_config.downsampling}"
        )
    if model_config.in_channels != images.shape[3]:
        raise ValueError(f"params.yaml model.in_channels: the panels have {images.shape[3]} colour channels, "
                         f"got {model_config.in_channels}")
    # Now, not after training: the model folder is replaced at the end.
    check_replaceable(model_dir, MODEL_NAMES)
    for path in (metrics_path, history_path, checkpoint_dir):
        if path.resolve().is_relative_to(model_dir.resolve()):
            raise ValueError(f"{path}: inside the model folder {model_dir}, which holds only the model; name a path "
                             "outside it")
    world = distributed.launched_world()
    if train_config.processes > 1 and not distributed.launched():
        # Checked here too (train() checks any job's size), so that a bad size fails before N processes start.
        if train_config.batch_size % train_config.processes:
            raise ValueError(f"train.batch_size {train_config.batch_size} does not divide among "
                             f"{train_config.processes} processes")
        sys.exit(distributed.run_in_processes(train_config.processes, "stages.train", sys.argv[1:]))
    dataset = json.loads(dataset_record)
    logged = {"seed": seed, "model": params["model"], "train": params["train"]}
    tags = {"dataset_sha256": dataset["archive_sha256"], "processes": str(world.size)}

    # How often to checkpoint does not change the result, so it is left out of what a checkpoint must match.
    # The number of processes is: a checkpoint of N processes resumes only in N processes.
    decisive = {**logged, "train": {k: v for k, v in params["train"].items() if k != "checkpoint_steps"},
                "dataset": dataset_record, "processes": world.size}
    run_fingerprint = fingerprint(decisive, training_code())
    checkpoint_path = checkpoint_dir / f"train-{run_fingerprint[:16]}.pt"
    if world.is_distributed:
        distributed.start(world, train_config.distributed_backend,
                          select_device(train_config.device, world.local_rank))
    # Rank 0 writes checkpoints, so it alone reads them; on several nodes the others could not see the file.
    resume = distributed.from_main(load_checkpoint(checkpoint_path, run_fingerprint) if world.is_main else None)
    resume_run_id = resume["extra"].get("mlflow_run_id") if resume else None
    # Only the main process tracks: one MLflow run for the whole job.
    tracked = (stage_run(TRAIN_STAGE, params["tracking"]["experiment"], logged, tags, resume_run_id)
               if world.is_main else contextlib.nullcontext())
    with tracked as run:
        train_index, val_index = split_indices(len(images), train_config.val_fraction, seed)
        set_seed(seed)
        model = SegNet(model_config)
        checkpointer = None
        if world.is_main:
            checkpointer = Checkpointer(checkpoint_path, train_config.checkpoint_steps, run_fingerprint,
                                        extra={"mlflow_run_id": run.info.run_id})
        progress = ProgressBar(train_config.epochs)
        # While the bar is shown, log lines (Ctrl-C's notice) print above it; when training stops or fails, the
        # bar is closed before the stage reports why, so neither message lands on the bar's line.
        with StopSignals() as stop, logging_redirect_tqdm(), contextlib.closing(progress):
            result = train(
                model,
                images,
                labels,
                train_index,
                val_index,
                num_classes=model_config.num_classes,
                config=train_config,
                seed=seed,
                callbacks=[progress, EpochLog(log_metrics)] if world.is_main else [],
                checkpointer=checkpointer,
                resume=resume["state"] if resume else None,
                stop_requested=stop.requested,
                world=world,
            )
        distributed.stop()
        if not world.is_main:
            return

        config = {**logged, "dataset_sha256": dataset["archive_sha256"], "best_epoch": result.best_epoch}
        # Weights and their config appear together or not at all: evaluate must never pair one with another's.
        with staged_directory(model_dir, MODEL_NAMES) as staging:
            save_torch(staging / MODEL_FILE, result.best_state)
            write_json(staging / "config.json", config)
        summary = {
            "best_val_miou": result.best_val_miou,
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "final_train_loss": result.history[-1]["train_loss"],
            "train_seconds": result.train_seconds,
            "train_images_per_second": result.images_per_second,
        }
        write_json(metrics_path, summary)
        write_bytes(history_path, _history_csv(result.history))
        mlflow.set_tags({"model_sha256": sha256_file(model_dir / MODEL_FILE), "device": result.device,
                         "precision": result.amp_dtype, "resumed_from_step": result.resumed_from_step,
                         "cpu_kernels": str(result.cpu_kernels).lower(),
                         "winograd_layers": " ".join(result.winograd_layers) or "none"})
        log_metrics(summary)
        for path in (model_dir / "config.json", metrics_path, history_path):
            mlflow.log_artifact(str(path))
        with tempfile.TemporaryDirectory() as folder:
            picture = Path(folder) / "miou_vs_time.png"
            picture.write_bytes(miou_time_png(result.history))
            mlflow.log_artifact(str(picture))
        # A fresh model: the trained one may hold cross-process batch norm, which only runs in a process group.
        _log_model(SegNet(model_config), result.best_state, images[:2])
    checkpointer.remove()


def training_code() -> list[Path]:
    """The source files that decide what training computes: a checkpoint resumes only under the same ones."""
    package = Path(segnet.__file__).parent
    return sorted([*package.glob("*.py"), *package.glob("*.cpp"), Path(__file__)])


def _history_csv(history: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


def _log_model(model: torch.nn.Module, state: dict, example_images: torch.Tensor) -> None:
    """Logs the selected weights as an MLflow PyTorch model with a signature and an input example.

    Saved as a torch.export program ("pt2"): weights as raw tensor bytes, the graph as JSON. Only the example
    inputs inside are a torch.save pickle; MLflow checks it with the weights-only unpickler before loading when
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false (see the README). The example holds two panels so
    that the exported batch dimension stays dynamic (a batch of one would be specialised to 1).
    """
    model.load_state_dict(state)
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    example = to_float_input(example_images).numpy()
    with torch.inference_mode():
        output = model(torch.from_numpy(example)).numpy()
    mlflow.pytorch.log_model(
        model,
        name="model",
        signature=mlflow.models.infer_signature(example, output),
        input_example=example.astype(np.float32),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )


if __name__ == "__main__":
    run_stage(main)
