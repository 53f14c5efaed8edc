"""The evaluate stage's checks of the model folder it is given: each fault is one line naming the file."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
import yaml

from segnet.files import save_torch, write_json
from segnet.model.network import SegNet
from segnet.model.storage import read_model
from segnet.params import load_params
from tests.helpers import REPO, clean_env, main_in_process, model_config

# A small SegNet's whole config, as the train stage records it (JSON: lists, not tuples).
SMALL = json.loads(json.dumps(dataclasses.asdict(model_config(encoder_channels=[4] * 4, decoder_channels=[4] * 4))))


def _model_folder(folder, **record_changes):
    """A model folder as the train stage writes it, of a small SegNet."""
    folder.mkdir()
    save_torch(folder / "model.pt", SegNet(model_config(**SMALL)).state_dict())
    write_json(
        folder / "config.json",
        {"seed": 0, "model": SMALL, "train": {"lr": 0.001}, "dataset_sha256": "ab", **record_changes},
    )
    return folder


def test_a_model_folder_the_train_stage_wrote_is_read(tmp_path):
    record, weights = read_model(_model_folder(tmp_path / "model"))
    assert record["model"] == SMALL and set(weights) == set(SegNet(model_config(**SMALL)).state_dict())


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda model: (model / "config.json").unlink(), "config.json: missing; run the train stage first"),
        (lambda model: (model / "config.json").write_text("{"), "config.json: not JSON"),
        (
            lambda model: (model / "config.json").write_text("[1]"),
            "config.json: not a record the train stage writes (no seed, model, train, dataset_sha256)",
        ),
        (
            lambda model: (model / "config.json").write_text(json.dumps({"seed": 0, "model": {}, "train": {}})),
            "config.json: not a record the train stage writes (no dataset_sha256)",
        ),
        (
            lambda model: (model / "model.pt").write_bytes((model / "model.pt").read_bytes()[:300]),
            "model.pt: not weights the train stage writes (RuntimeError)",
        ),
        (
            lambda model: (model / "model.pt").write_bytes(b"\x80\x02crandom\nbytes\n"),
            "model.pt: not weights the train stage writes (UnpicklingError)",
        ),
        (
            lambda model: torch.save(torch.zeros(3), model / "model.pt"),
            "model.pt: not weights the train stage writes (Tensor)",
        ),
        (
            lambda model: torch.save({"weight": [1, 2]}, model / "model.pt"),
            "model.pt: not weights the train stage writes (dict)",
        ),
    ],
)
def test_a_damaged_model_folder_is_named(tmp_path, damage, message):
    model = _model_folder(tmp_path / "model")
    damage(model)
    with pytest.raises(ValueError, match=f"^{tmp_path / 'model'}/" + message.replace("(", r"\(").replace(")", r"\)")):
        read_model(model)


@pytest.mark.parametrize(
    "model, message",
    [
        ({"encoder_channels": [4] * 4, "decoder_channels": [4] * 4, "width": 2}, "unexpected keyword argument 'width'"),
        (None, "argument after ** must be a mapping"),
    ],
)
def test_model_settings_that_make_no_segnet_are_named(tmp_path, model, message):
    folder = _model_folder(tmp_path / "model", model=model)
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    outputs = [str(tmp_path / name) for name in ("evaluate.json", "confusion.png", "predictions.png")]
    store = f"sqlite:///{tmp_path / 'm.db'}"
    result = main_in_process("stages.evaluate", tmp_path, "prepared", str(folder), *outputs, MLFLOW_TRACKING_URI=store)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR segnet: {folder / 'config.json'}: its model settings do not make a SegNet (")
    assert message in line


def test_the_stage_refuses_weights_of_another_model_before_its_mlflow_run(tmp_path):
    # The record says 8 channels per level, the weights have 4: the weights of another training.
    model = _model_folder(tmp_path / "model", model={**SMALL, "encoder_channels": [8] * 4, "decoder_channels": [8] * 4})
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    outputs = [str(tmp_path / name) for name in ("evaluate.json", "confusion.png", "predictions.png")]
    store = tmp_path / "mlflow.db"
    result = subprocess.run(
        [sys.executable, "-m", "stages.evaluate", "prepared", str(model), *outputs],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=f"sqlite:///{store}"),
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"ERROR segnet: {model / 'model.pt'}: does not fit the model in {model / 'config.json'} (size mismatch "
        "for encoder.0.block.0.weight: copying a param with shape torch.Size([4, 3, 3, 3]) from checkpoint, the "
        "shape in current model is torch.Size([8, 3, 3, 3]).); rerun the train stage (dvc repro train)"
    ]
    assert not store.exists() and not (tmp_path / "evaluate.json").exists()


@pytest.mark.parametrize(
    "bootstrap, message",
    [
        (5, "params.yaml evaluate.bootstrap: must be a mapping of settings, got 5"),
        (
            {"resamples": 10, "seed": 0, "confidence": 2},
            "params.yaml evaluate.bootstrap.confidence: must lie strictly between 0 and 1, got 2",
        ),
    ],
)
def test_bad_interval_settings_stop_the_stage_with_one_line_before_its_mlflow_run(tmp_path, bootstrap, message):
    model = _model_folder(tmp_path / "model")
    params = load_params(REPO / "params.yaml")
    params["evaluate"]["bootstrap"] = bootstrap
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    outputs = [str(tmp_path / name) for name in ("evaluate.json", "confusion.png", "predictions.png")]
    store = tmp_path / "mlflow.db"
    result = main_in_process(
        "stages.evaluate", tmp_path, "prepared", str(model), *outputs, MLFLOW_TRACKING_URI=f"sqlite:///{store}"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"ERROR segnet: {message}"]
    assert not store.exists() and not (tmp_path / "evaluate.json").exists()
