"""DVC stage `evaluate`: scores the trained model on the whole test split (one confusion matrix, boundary F1)."""

import json
import logging

import mlflow
import torch

from segnet.cli import run_stage, stage_paths
from segnet.data.loading import load_split
from segnet.devices import select_device, use_exact_float32
from segnet.evaluation.bootstrap import panel_confusions, percentile_interval, read_bootstrap
from segnet.evaluation.boundary import panel_boundary_f1
from segnet.evaluation.inference import EvaluateConfig, predict_batches
from segnet.evaluation.metrics import mean_iou, summarize
from segnet.evaluation.plots import confusion_png, predictions_png
from segnet.files import sha256_file, write_bytes, write_json
from segnet.model import MODEL_FILE, load_model
from segnet.params import build, load_params, read_experiment
from segnet.tracking.runs import EVALUATE_STAGE, TRAIN_STAGE, find_run, log_metrics, log_panel_confusions, stage_run

USAGE = "python -m stages.evaluate PREPARED_DIR MODEL_DIR METRICS_JSON CONFUSION_PNG PREDICTIONS_PNG"

log = logging.getLogger("stages.evaluate")


def main() -> None:
    prepared_dir, model_dir, metrics_path, confusion_path, predictions_path = stage_paths(USAGE)
    params = load_params()
    settings = params["evaluate"]
    config = build(EvaluateConfig, "evaluate", {key: value for key, value in settings.items() if key != "bootstrap"})
    interval = read_bootstrap(settings)
    experiment = read_experiment(params)
    # The input is checked before the MLflow run starts: bad input leaves no failed run behind.
    model, trained = load_model(model_dir)
    images, labels = load_split(prepared_dir, "test")
    dataset = json.loads((prepared_dir / "dataset.json").read_text())
    scored = dataset["archive_sha256"]
    if scored != trained["dataset_sha256"]:
        log.warning("%s: the test split of another archive than the model was trained on", prepared_dir)
    # The training params come from the model's own record, so the evaluate run carries exactly what
    # produced the weights it scores: evaluate runs alone can then be compared param against mIoU.
    model_sha256 = sha256_file(model_dir / MODEL_FILE)
    tags = {"model_sha256": model_sha256, "dataset_sha256": scored, "train_dataset_sha256": trained["dataset_sha256"]}
    logged = {key: trained[key] for key in ("seed", "model", "train", "augment")} | {"evaluate": settings}

    with stage_run(EVALUATE_STAGE, experiment, logged, tags, dataset=dataset):
        # The weights' hash names the train run that wrote them, in whatever workspace it ran.
        train_run_id = find_run(experiment, TRAIN_STAGE, "model_sha256", model_sha256)
        if train_run_id:
            mlflow.set_tag("train_run_id", train_run_id)
        else:
            log.warning("no train run with this model's hash in the tracking store; the evaluate run is unlinked")
        device = select_device(config.device)
        model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs omit it
        # Evaluation runs in float32 whatever training used: the reported numbers must not depend on it.
        use_exact_float32()
        # One confusion matrix per test panel: their sum scores the set, their resamples give the interval.
        # One boundary F1 per panel: their mean is the set's.
        confusions, boundary_scores = [], []
        for window, prediction in predict_batches(model, images, config.batch_size, device):
            confusions.append(panel_confusions(labels[window], prediction, model.config.num_classes))
            boundary_scores.append(panel_boundary_f1(labels[window], prediction, model.config.num_classes))
        panels = torch.cat(confusions)
        confusion = panels.sum(0)
        metrics = summarize(confusion)
        per_class_iou = metrics.pop("per_class_iou")
        metrics["boundary_f1"] = float(torch.cat(boundary_scores).mean())
        if interval.resamples:
            low, high = percentile_interval(panels, mean_iou, interval)
            # Next to miou, so that `dvc exp show` shows the three together.
            metrics = {"miou": metrics.pop("miou"), "miou_ci_low": low, "miou_ci_high": high, **metrics}
        write_json(metrics_path, metrics | {"per_class_iou": per_class_iou})
        write_bytes(confusion_path, confusion_png(confusion))
        samples = slice(0, config.samples)
        _, predictions = next(predict_batches(model, images[samples], config.samples, device))
        write_bytes(predictions_path, predictions_png(images[samples], labels[samples], predictions))

        per_class = {f"iou_{name}": value for name, value in per_class_iou.items()}
        log_metrics({**metrics, **per_class})
        mlflow.log_text(json.dumps(confusion.tolist(), indent=2), "confusion_matrix.json")
        log_panel_confusions(panels.numpy())
        for path in (metrics_path, confusion_path, predictions_path):
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    run_stage(main)
