"""A tiny real model for the prediction tests, saved as the train stage saves it and logged to a real MLflow store
as the train stage logs it, and writers of real image files."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from segnet.data.loading import to_float_input
from segnet.model import SegNet, load_model, save_model
from segnet.prediction import Segmenter, load_segmenter
from segnet.tracking.export import log_model
from tests.helpers import digit_panels, model_config

CONFIG = model_config(encoder_channels=[8, 16], decoder_channels=[8, 8])
REGISTERED = "tiny-segnet"


def tiny_weights() -> dict:
    """A seeded 2-level SegNet whose batch norm statistics are measured on generated panels. Untrained, but its
    classes vary from pixel to pixel and with the input (a fresh one's batch norm gives one class nearly
    everywhere), which is what checks of windows and loading need."""
    torch.manual_seed(0)
    model = SegNet(CONFIG)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # the plain mean over the batch, not a running blend with the initial 0 and 1
    images, _ = digit_panels(16, seed=0)
    with torch.no_grad():
        model.train()(to_float_input(images))
    return model.state_dict()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The tiny model as the train stage leaves it: model.pt and config.json."""
    folder = tmp_path_factory.mktemp("trained") / "model"
    save_model(folder, tiny_weights(), CONFIG, {"seed": 0, "train": {}, "dataset_sha256": "generated"})
    return folder


@pytest.fixture(scope="session")
def network(model_dir) -> SegNet:
    """The tiny model, loaded from its folder, in eval mode."""
    return load_model(model_dir)[0].eval()


@pytest.fixture(scope="session")
def segmenter(model_dir) -> Segmenter:
    return load_segmenter(str(model_dir))


@pytest.fixture(scope="session")
def mlflow_store(tmp_path_factory, model_dir) -> tuple[str, str]:
    """A SQLite MLflow store holding the tiny model, logged by the train stage's log_model and registered with the
    alias champion: (the store's URI, the run id)."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:  # set_tracking_uri also sets MLFLOW_TRACKING_URI
        patch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mlflow.set_tracking_uri(uri)
        client = MlflowClient()
        experiment = client.create_experiment("predict", artifact_location=(folder / "mlartifacts").as_uri())
        images, _ = digit_panels(2, seed=1)
        with mlflow.start_run(experiment_id=experiment) as run:
            log_model(SegNet(CONFIG), load_model(model_dir)[0].state_dict(), images)
        version = mlflow.register_model(f"runs:/{run.info.run_id}/model", REGISTERED)
        client.set_registered_model_alias(REGISTERED, "champion", version.version)
    return uri, run.info.run_id


def write_image(path: Path, pixels: np.ndarray, **options) -> Path:
    """Writes uint8 pixels (H, W) or (H, W, C) with Pillow, in the format the suffix names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def panel_bytes(count: int, seed: int) -> np.ndarray:
    """Generated multi-digit panels as grey bytes: uint8 (N, 64, 64), light digits on black."""
    images, _ = digit_panels(count, seed)
    return images[..., 0].numpy()
