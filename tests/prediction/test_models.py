"""Loading the same weights from the model folder and from MLflow (a run's model, a registered model's alias) gives
the same masks."""

import numpy as np
import pytest
import torch

from segnet.prediction import load_segmenter, segment
from tests.prediction.conftest import REGISTERED, panel_bytes


def pictures() -> list[np.ndarray]:
    """A 64x64 panel, a larger picture of several windows, and a dark-on-light one, as grey float32."""
    panels = panel_bytes(4, seed=9).astype(np.float32) / np.float32(255)
    larger = np.block([[panels[0], panels[1], panels[2][:, :30]], [panels[3], panels[0], panels[1][:, :30]]])
    return [panels[0], larger[:, 5:], np.float32(1) - panels[2]]


@pytest.mark.parametrize("form", ["runs:/{run}/model", f"models:/{REGISTERED}@champion"])
def test_an_mlflow_model_gives_the_masks_of_the_folder_it_was_logged_from(monkeypatch, mlflow_store, segmenter, form):
    uri, run_id = mlflow_store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    logged = load_segmenter(form.format(run=run_id))
    assert (logged.channels, logged.window) == (segmenter.channels, segmenter.window) == (3, 64)
    windows = torch.from_numpy(pictures()[0])[None]
    assert torch.equal(logged(windows), segmenter(windows))
    for grey in pictures():
        from_folder, from_mlflow = segment(segmenter, grey), segment(logged, grey)
        assert np.array_equal(from_mlflow.mask, from_folder.mask) and from_mlflow.inverted == from_folder.inverted
        assert len(np.unique(from_folder.mask)) > 3


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (f"models:/{REGISTERED}@nobody", f"models:/{REGISTERED}@nobody: Registered model alias nobody not found"),
        ("models:/unknown@champion", "models:/unknown@champion: Registered Model with name=unknown not found"),
        ("runs:/0123456789abcdef/model", "runs:/0123456789abcdef/model: Run with id=0123456789abcdef not found"),
    ],
)
def test_an_mlflow_model_that_is_not_there_is_one_line_naming_it(monkeypatch, mlflow_store, model, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_store[0])
    with pytest.raises(ValueError) as refused:
        load_segmenter(model)
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)


def test_a_folder_without_a_model_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'model.pt'}: missing"):
        load_segmenter(str(tmp_path))


def test_outside_the_project_without_mlflow_tracking_uri_there_is_no_store_to_ask(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match=f"^{tmp_path}: no params.yaml here or above.*or set MLFLOW_TRACKING_URI$"):
        load_segmenter("models:/anything@champion")
