"""DVC stage `train`: trains SegNet on the prepared training split, selecting the epoch by validation mIoU.

Usage: python -m stages.train PREPARED_DIR MODEL_DIR METRICS_JSON HISTORY_CSV
The test split is not read here: only `evaluate` touches it.
"""

import csv
import io
import json
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from segnet.archive import sha256_file
from segnet.callbacks import ProgressBar
from segnet.cli import run_stage
from segnet.data import load_split, split_indices, to_input
from segnet.files import save_torch, write_bytes, write_json
from segnet.matfile import NUM_CLASSES
from segnet.model import SegNet, SegNetConfig
from segnet.params import build, load_params
from segnet.plots import miou_time_png
from segnet.tracking import TRAIN_STAGE, MLflowCallback, log_metrics, stage_run
from segnet.train import TrainConfig, set_seed, train


def main() -> None:
    prepared_dir, model_dir, metrics_path, history_path = (Path(arg) for arg in sys.argv[1:5])
    params = load_params()
    seed = params["seed"]
    model_config = build(SegNetConfig, "model", params["model"])
    train_config = build(TrainConfig, "train", params["train"])
    if model_config.num_classes != NUM_CLASSES:
        raise ValueError(
            f"params.yaml model.num_classes: the labels have {NUM_CLASSES} classes, got {model_config.num_classes}"
        )
    images, labels = load_split(prepared_dir, "train")
    dataset = json.loads((prepared_dir / "dataset.json").read_text())
    logged = {"seed": seed, "model": params["model"], "train": params["train"]}
    tags = {"dataset_sha256": dataset["archive_sha256"]}

    with stage_run(TRAIN_STAGE, params["tracking"]["experiment"], logged, tags):
        if images.shape[1] % model_config.downsampling or images.shape[2] % model_config.downsampling:
            raise ValueError(
                f"{prepared_dir}: panels are {tuple(images.shape[1:3])}, but a {len(model_config.encoder_channels)}"
                f"-level SegNet needs sides divisible by {model_config.downsampling}"
            )
        train_index, val_index = split_indices(len(images), train_config.val_fraction, seed)
        set_seed(seed)
        model = SegNet(model_config)
        result = train(
            model,
            images[train_index],
            labels[train_index],
            images[val_index],
            labels[val_index],
            num_classes=model_config.num_classes,
            config=train_config,
            seed=seed,
            callbacks=[ProgressBar(train_config.epochs), MLflowCallback()],
        )

        save_torch(model_dir / "model.pt", result.best_state)
        config = {**logged, "dataset_sha256": dataset["archive_sha256"], "best_epoch": result.best_epoch}
        write_json(model_dir / "config.json", config)
        summary = {
            "best_val_miou": result.best_val_miou,
            "best_epoch": result.best_epoch,
            "epochs": len(result.history),
            "final_train_loss": result.history[-1]["train_loss"],
            "train_seconds": result.train_seconds,
            "train_images_per_second": len(train_index) * len(result.history) / result.train_seconds,
        }
        write_json(metrics_path, summary)
        write_bytes(history_path, _history_csv(result.history))
        mlflow.set_tags({"model_sha256": sha256_file(model_dir / "model.pt"), "device": result.device,
                         "precision": result.amp_dtype})
        log_metrics(summary)
        for path in (model_dir / "config.json", metrics_path, history_path):
            mlflow.log_artifact(str(path))
        with tempfile.TemporaryDirectory() as folder:
            picture = Path(folder) / "miou_vs_time.png"
            picture.write_bytes(miou_time_png(result.history))
            mlflow.log_artifact(str(picture))
        _log_model(model, result.best_state, images[:2])


def _history_csv(history: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(history[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return text.getvalue().encode()


def _log_model(model: torch.nn.Module, state: dict, example_images: torch.Tensor) -> None:
    """Logs the selected weights as an MLflow PyTorch model with a signature and an input example.

    Saved as a torch.export program ("pt2"): loading it runs no pickle. The example holds two panels so
    that the exported batch dimension stays dynamic (a batch of one would be specialised to 1).
    """
    model.load_state_dict(state)
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    example = to_input(example_images, torch.device("cpu"), channels_last=False).numpy()
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
