"""The model predict runs: the train stage's model folder, or an MLflow model (`models:/NAME@ALIAS`,
`runs:/RUN_ID/model`), loaded either way into the same callable with the same float input, so that the same
weights give the same masks."""

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from segnet import PANEL_SIZE
from segnet.model import load_model

# `models:/...`, `runs:/...`, and any other URI MLflow resolves; anything else is a folder.
URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


@dataclass(frozen=True)
class Segmenter:
    """A model that labels square grey windows.

    Attributes:
        logits: Float32 pixels (N, channels, window, window) in [0, 1] -> class logits (N, classes, window, window).
        channels: The colour channels it takes; a grey window is repeated into each.
        window: The side of the windows it takes.
    """

    logits: Callable[[torch.Tensor], torch.Tensor]
    channels: int
    window: int

    @torch.inference_mode()
    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        """Grey windows (N, window, window) float32 in [0, 1] -> logits (N, classes, window, window)."""
        return self.logits(windows[:, None].expand(-1, self.channels, -1, -1).contiguous())


def load_segmenter(model: str) -> Segmenter:
    """The model `model` names: an MLflow model URI, or the path of a model folder (model.pt + config.json).

    Raises:
        ValueError: Naming `model`: no such model, or one this project did not log.
    """
    if URI.match(model):
        return _mlflow_segmenter(model)
    network, _ = load_model(Path(model))
    network.eval()
    # The MLflow model is exported for PANEL_SIZE windows; the folder's takes the same ones.
    return Segmenter(network, network.config.in_channels, PANEL_SIZE)


def _mlflow_segmenter(uri: str) -> Segmenter:
    # Here, not at the top: a folder model needs no MLflow, whose import takes seconds.
    import mlflow
    from mlflow.exceptions import MlflowException

    _use_tracking_store()
    # The pt2 archive's example inputs are a pickle: MLflow checks it with torch's weights-only unpickler first,
    # so a model someone else logged cannot run code as it loads (docs/reliability.md). The caller may opt out.
    os.environ.setdefault("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    try:
        channels, window = _input_shape(uri, mlflow.models.get_model_info(uri).signature)
        network = mlflow.pytorch.load_model(uri)
    except MlflowException as error:
        raise ValueError(f"{uri}: {error.message}") from error
    except OSError as error:  # the store names artifacts that are gone
        raise ValueError(f"{uri}: its files cannot be read ({error})") from error
    return Segmenter(network, channels, window)


def _input_shape(uri: str, signature) -> tuple[int, int]:
    """The channels and window side of the pixels (N, C, S, S) the train stage's MLflow model documents."""
    inputs = signature.inputs.to_dict() if signature else []
    shape = inputs[0].get("tensor-spec", {}).get("shape") if len(inputs) == 1 else None
    if not shape or len(shape) != 4 or shape[2] != shape[3] or min(shape[1:]) < 1:
        raise ValueError(
            f"{uri}: not a model the train stage logs (its input signature is {shape}, not (-1, C, S, S) pixels)"
        )
    return int(shape[1]), int(shape[2])


def _use_tracking_store() -> None:
    """Points MLflow at MLFLOW_TRACKING_URI, or at the project's own store as every stage does."""
    from segnet.tracking.runs import find_project, use_project_store

    try:
        root = find_project(Path.cwd())
    except ValueError as error:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            raise ValueError(
                f"{error}, where the project's MLflow store (mlflow.db) is; or set MLFLOW_TRACKING_URI"
            ) from error
        root = Path.cwd()  # a relative path in the URI is taken from here
    use_project_store(root)
