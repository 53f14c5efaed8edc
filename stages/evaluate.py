"""DVC stage `evaluate`: scores the trained model on the whole test split with one confusion matrix."""

import json
import logging
from pathlib import Path

import mlflow
import torch

from segnet.evaluation.bootstrap import panel_confusions, percentile_interval, read_bootstrap
from segnet.cli import run_stage, stage_paths
from segnet.data.loading import load_split
from segnet.devices import select_device, use_exact_float32
from segnet.files import sha256_file, write_bytes, write_json
from segnet.evaluation.inference import EvaluateConfig, predict_batches
from segnet.evaluation.metrics import mean_iou, summarize
from segnet.model.network import SegNet, SegNetConfig
from segnet.params import build, load_params
from segnet.evaluation.plots import confusion_png, predictions_png
from segnet.tracking.runs import EVALUATE_STAGE, TRAIN_STAGE, find_run, log_metrics, log_panel_confusions, stage_run

USAGE = "python -m stages.evaluate PREPARED_DIR MODEL_DIR METRICS_JSON CONFUSION_PNG PREDICTIONS_PNG"

log = logging.getLogger("segnet.evaluate")
# What the train stage's config.json holds, and evaluate reads.
RECORD_KEYS = ("seed", "model", "train", "dataset_sha256")


def read_model(model_dir: Path) -> tuple[dict, dict]:
    """The train stage's record of a model (config.json) and its weights (model.pt), checked.

    Raises:
        ValueError: Either file is missing or is not what the train stage writes, naming the file.
    """
    weights_path, record_path = model_dir / "model.pt", model_dir / "config.json"
    for path in (weights_path, record_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing; run the train stage first (dvc repro train)")
    try:
        record = json.loads(record_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{record_path}: not JSON ({error}); rerun the train stage (dvc repro train)") from error
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(f"{record_path}: not a record the train stage writes (no {', '.join(missing)}); rerun the "
                         "train stage (dvc repro train)")
    # Named by type only: torch's message advises weights_only=False, which would run whatever the file holds.
    not_weights = f"{weights_path}: not weights the train stage writes ({{}}); rerun the train stage (dvc repro train)"
    try:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except OSError as error:  # could not be read, not a file of the wrong kind
        raise ValueError(f"{weights_path}: cannot be read ({error.strerror or error})") from error
    except MemoryError:
        raise
    except Exception as error:  # the weights-only unpickler and the zip reader under it raise several types
        raise ValueError(not_weights.format(type(error).__name__)) from error
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ValueError(not_weights.format(type(weights).__name__))
    return record, weights


def main() -> None:
    prepared_dir, model_dir, metrics_path, confusion_path, predictions_path = stage_paths(USAGE)
    params = load_params()
    settings = params["evaluate"]
    config = build(EvaluateConfig, "evaluate", {key: value for key, value in settings.items() if key != "bootstrap"})
    interval = read_bootstrap(settings)
    experiment = params["tracking"]["experiment"]
    # The input is checked before the MLflow run starts: bad input leaves no failed run behind.
    trained, weights = read_model(model_dir)
    try:
        model = SegNet(SegNetConfig(**trained["model"]))
    except (TypeError, ValueError) as error:  # unknown or missing keys, or values SegNetConfig refuses
        raise ValueError(f"{model_dir / 'config.json'}: its model settings do not make a SegNet ({error}); rerun "
                         "the train stage (dvc repro train)") from error
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        # torch's first line only says that loading failed; the next one says what does not fit.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(f"{model_dir / 'model.pt'}: does not fit the model in {model_dir / 'config.json'} "
                         f"({lines[1] if len(lines) > 1 else lines[0]}); rerun the train stage (dvc repro train)"
                         ) from error
    images, labels = load_split(prepared_dir, "test")
    scored = json.loads((prepared_dir / "dataset.json").read_text())["archive_sha256"]
    if scored != trained["dataset_sha256"]:
        log.warning("%s: the test split of another archive than the model was trained on", prepared_dir)
    # The training params come from the model's own record, so the evaluate run carries exactly what
    # produced the weights it scores: evaluate runs alone can then be compared param against mIoU.
    model_sha256 = sha256_file(model_dir / "model.pt")
    tags = {"model_sha256": model_sha256, "dataset_sha256": scored, "train_dataset_sha256": trained["dataset_sha256"]}
    logged = {"seed": trained["seed"], "model": trained["model"], "train": trained["train"], "evaluate": settings}

    with stage_run(EVALUATE_STAGE, experiment, logged, tags):
        # The weights' hash names the train run that wrote them, in whatever workspace it ran.
        train_run_id = find_run(experiment, TRAIN_STAGE, "model_sha256", model_sha256)
        if train_run_id:
            mlflow.set_tag("train_run_id", train_run_id)
        else:
            log.warning("no train run with this model's hash in the tracking store; the evaluate run is unlinked")
        device = select_device(config.device, setting="evaluate.device")
        model.to(device=device, memory_format=torch.channels_last)
        # Evaluation runs in float32 whatever training used: the reported numbers must not depend on it.
        use_exact_float32()
        # One confusion matrix per test panel: their sum scores the set, their resamples give the interval.
        panels = torch.cat([panel_confusions(labels[window], prediction, model.config.num_classes)
                            for window, prediction in predict_batches(model, images, config.batch_size, device)])
        confusion = panels.sum(0)
        metrics = summarize(confusion)
        if interval.resamples:
            low, high = percentile_interval(panels, mean_iou, interval)
            # Next to miou, so that `dvc exp show` shows the three together.
            metrics = {"miou": metrics.pop("miou"), "miou_ci_low": low, "miou_ci_high": high, **metrics}
        write_json(metrics_path, metrics)
        write_bytes(confusion_path, confusion_png(confusion))
        samples = slice(0, config.samples)
        _, predictions = next(predict_batches(model, images[samples], config.samples, device))
        write_bytes(predictions_path, predictions_png(images[samples], labels[samples], predictions))

        per_class = {f"iou_{name}": value for name, value in metrics.pop("per_class_iou").items()}
        log_metrics({**metrics, **per_class})
        mlflow.log_dict(confusion.tolist(), "confusion_matrix.json")
        log_panel_confusions(panels.numpy())
        for path in (metrics_path, confusion_path, predictions_path):
            mlflow.log_artifact(str(path))


if __name__ == "__main__":
    run_stage(main)
