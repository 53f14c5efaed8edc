"""What the train stage logs to its MLflow run once training ends: tags, metrics, files and the model."""

import tempfile
from pathlib import Path

import mlflow
import numpy as np
import torch

from segnet.data.loading import to_float_input
from segnet.evaluation.plots import miou_time_png
from segnet.files import sha256_file
from segnet.tracking.runs import log_metrics


def log_training(result, summary: dict, model_file: Path, files: list[Path]) -> None:
    """Logs a finished training (a segnet.training.TrainResult) to the active run: where and how it ran, the
    `summary` metrics, the `files`, and validation mIoU against time as a picture."""
    mlflow.set_tags(
        {
            "model_sha256": sha256_file(model_file),
            "device": result.device,
            "precision": result.amp_dtype,
            "resumed_from_step": result.resumed_from_step,
            "cpu_kernels": str(result.cpu_kernels).lower(),
            "winograd_layers": " ".join(result.winograd_layers) or "none",
        }
    )
    log_metrics(summary)
    for path in files:
        mlflow.log_artifact(str(path))
    with tempfile.TemporaryDirectory() as folder:
        picture = Path(folder) / "miou_vs_time.png"
        picture.write_bytes(miou_time_png(result.history))
        mlflow.log_artifact(str(picture))


def log_model(model: torch.nn.Module, state: dict, example_images: torch.Tensor) -> None:
    """Logs the selected weights as an MLflow PyTorch model with a signature and an input example.

    Saved as a torch.export program ("pt2"): weights as raw tensor bytes, the graph as JSON. Only the example
    inputs inside are a torch.save pickle; MLflow checks it with the weights-only unpickler before loading when
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false (see docs/reliability.md). The example holds two panels so
    that the exported batch dimension stays dynamic (a batch of one would be specialised to 1).
    """
    model.load_state_dict(state)
    # torch's stubs leave out Module.to's memory_format, which it takes.
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()  # type: ignore[call-overload]
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
