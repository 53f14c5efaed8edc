"""DVC stage `evaluate`: scores the trained model on the whole test split with one confusion matrix."""

import json
import logging

import mlflow
import torch

from segnet.cli import run_stage, stage_paths
from segnet.data import load_split
from segnet.devices import select_device, use_exact_float32
from segnet.files import sha256_file, write_bytes, write_json
from segnet.inference import EvaluateConfig, accumulate_confusion, predict_batches
from segnet.metrics import summarize
from segnet.model import SegNet, SegNetConfig
from segnet.params import build, load_params
from segnet.plots import confusion_png, predictions_png
from segnet.tracking import TRAIN_STAGE, find_run, log_metrics, stage_run

USAGE = "python -m stages.evaluate PREPARED_DIR MODEL_DIR METRICS_JSON CONFUSION_PNG PREDICTIONS_PNG"

log = logging.getLogger("segnet.evaluate")


def main() -> None:
    prepared_dir, model_dir, metrics_path, confusion_path, predictions_path = stage_paths(USAGE)
    params = load_params()
    settings = params["evaluate"]
    config = build(EvaluateConfig, "evaluate", settings)
    if not (model_dir / "model.pt").is_file():
        raise ValueError(f"{model_dir / 'model.pt'}: missing; run the train stage first (dvc repro train)")
    experiment = params["tracking"]["experiment"]
    # The training params come from the model's own record, so the evaluate run carries exactly what
    # produced the weights it scores: evaluate runs alone can then be compared param against mIoU.
    trained = json.loads((model_dir / "config.json").read_text())
    model_sha256 = sha256_file(model_dir / "model.pt")
    tags = {"model_sha256": model_sha256, "dataset_sha256": trained["dataset_sha256"]}
    logged = {"seed": trained["seed"], "model": trained["model"], "train": trained["train"], "evaluate": settings}

    with stage_run("evaluate", experiment, logged, tags):
        # The weights' hash names the train run that wrote them, in whatever workspace it ran.
        train_run_id = find_run(experiment, TRAIN_STAGE, "model_sha256", model_sha256)
        if train_run_id:
            mlflow.set_tag("train_run_id", train_run_id)
        else:
            log.warning("no train run with this model's hash in the tracking store; the evaluate run is unlinked")
        model = SegNet(SegNetConfig(**trained["model"]))
        model.load_state_dict(torch.load(model_dir / "model.pt", map_location="cpu", weights_only=True))
        device = select_device(config.device, setting="evaluate.device")
        model.to(device=device, memory_format=torch.channels_last)
        images, labels = load_split(prepared_dir, "test")
        # Evaluation runs in float32 whatever training used: the reported numbers must not depend on it.
        use_exact_float32()
        confusion = accumulate_confusion(
            model, images, labels, model.config.num_classes, config.batch_size, device
        )
        metrics = summarize(confusion)
        write_json(metrics_path, metrics)
        write_bytes(confusion_path, confusion_png(confusion))
        samples = slice(0, config.samples)
        _, predictions = next(predict_batches(model, images[samples], config.samples, device))
        write_bytes(predictions_path, predictions_png(images[samples], labels[samples], predictions))

        per_class = {f"iou_{name}": value for name, value in metrics.pop("per_class_iou").items()}
        log_metrics({**metrics, **per_class})
        mlflow.log_dict(confusion.tolist(), "confusion_matrix.json")
        for path in (metrics_path, confusion_path, predictions_path):
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    run_stage(main)
