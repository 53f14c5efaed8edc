"""`python -m segnet.promote` on a real MLflow store holding real logged models, and `mlflow models serve` of the
champion it names."""

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from segnet import promote
from segnet.evaluation.metrics import mean_iou
from segnet.model import SegNet
from segnet.prediction import load_segmenter, segment
from segnet.tracking.export import log_model
from segnet.tracking.registry import CHAMPION
from segnet.tracking.runs import PANEL_CONFUSIONS
from tests.helpers import REPO, clean_env, digit_panels, free_port, model_config, segnet_command, serving

EXPERIMENT = "segnet-multi-digit-mnist"
NAME = "segnet-multi-digit-mnist"  # params.yaml's tracking.registered_model


def _panels(right_share: float, seed: int) -> np.ndarray:
    """Confusion matrices of 200 panels of 3 classes, 100 pixels each, about `right_share` of them right."""
    truth = np.random.default_rng(0).integers(0, 3, (200, 100))
    guess = np.where(np.random.default_rng(seed).random((200, 100)) < right_share, truth, (truth + 1) % 3)
    return np.stack([np.bincount(t * 3 + g, minlength=9).reshape(3, 3) for t, g in zip(truth, guess, strict=True)])


# Each training: (DVC experiment name, seed of its weights, share of pixels its evaluate run got right, panel seed).
TRAININGS = {"weak": (1, 0.70, 1), "strong": (2, 0.90, 2), "peer": (3, 0.90, 3), "elsewhere": (4, 0.95, 4)}
# The test set each training was scored on (its archive's hash): `elsewhere` scored other panels.
DATASETS = {"elsewhere": "xyz"}


def _model(seed: int) -> SegNet:
    torch.manual_seed(seed)
    return SegNet(model_config(encoder_channels=[8, 8, 8, 8], decoder_channels=[8, 8, 8, 8])).eval()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A project folder (the repository's params.yaml) whose store holds, per TRAININGS, a train run with a real
    logged model and an evaluate run that scored it, as the stages log them; returns (folder, uri, run ids)."""
    folder = tmp_path_factory.mktemp("registry")
    (folder / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT, artifact_location=str(folder / "mlartifacts"))
    # log_model logs to the active run, in the store set here; set_tracking_uri also sets MLFLOW_TRACKING_URI,
    # which is put back afterwards (stages and commands started by later tests inherit it otherwise).
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    ids = {}
    try:
        for name, (seed, right, panel_seed) in TRAININGS.items():
            tags = {"dvc_experiment": name, "dataset_sha256": DATASETS.get(name, "abc"), "model_sha256": name}
            train = client.create_run(experiment, tags={"stage": "train", **tags}).info.run_id
            model = _model(seed)
            with mlflow.start_run(run_id=train):
                log_model(model, model.state_dict(), digit_panels(2, seed)[0])
            evaluate = client.create_run(experiment, tags={"stage": "evaluate", "train_run_id": train, **tags})
            for key, value in {"resamples": 1000, "confidence": 0.95, "seed": 0}.items():
                client.log_param(evaluate.info.run_id, f"evaluate.bootstrap.{key}", value)
            panels = _panels(right, panel_seed)
            client.log_metric(evaluate.info.run_id, "miou", mean_iou(torch.from_numpy(panels).sum(0)))
            np.savez_compressed(folder / PANEL_CONFUSIONS, confusions=panels.astype(np.int32))
            client.log_artifact(evaluate.info.run_id, str(folder / PANEL_CONFUSIONS))
            client.set_terminated(evaluate.info.run_id)
            ids[name] = {"train": train, "evaluate": evaluate.info.run_id}
        # A search trial: trained and logged no model, and no evaluate run scored it.
        ids["trial"] = {"train": client.create_run(experiment, tags={"stage": "train"}).info.run_id}
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    return folder, uri, ids


def _promote_here(folder: Path, uri: str, monkeypatch, capsys, *arguments: str) -> tuple[str, str | None]:
    """promote's main() in this process (each command's imports cost seconds): its output, and its refusal."""
    monkeypatch.chdir(folder)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # what promote sets, put back afterwards
    monkeypatch.setattr(sys, "argv", ["promote", *arguments])
    try:
        promote.main()
        refusal = None
    except ValueError as error:
        refusal = str(error)
    return capsys.readouterr().out, refusal


def _champion(uri: str) -> tuple[str, str | None]:
    """The champion version's number and training run id."""
    version = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version_by_alias(NAME, CHAMPION)
    return str(version.version), version.run_id


def test_the_first_model_is_champion_and_only_one_that_beats_it_takes_over(store, monkeypatch, capsys):
    folder, uri, ids = store
    # The first model registered is champion unopposed, here named by its train run's id.
    output, refusal = _promote_here(folder, uri, monkeypatch, capsys, ids["weak"]["train"])
    assert refusal is None and "has no champion yet" in output
    assert _champion(uri) == ("1", ids["weak"]["train"])
    output, refusal = _promote_here(folder, uri, monkeypatch, capsys, "weak")
    assert refusal is None and "is already the champion (segnet-multi-digit-mnist version 1)" in output

    # A model clearly better on the same panels (named by its evaluate run) takes the alias.
    output, refusal = _promote_here(folder, uri, monkeypatch, capsys, ids["strong"]["evaluate"])
    assert refusal is None, refusal
    lines = output.splitlines()
    assert lines[1].startswith("champion v1  weak") and lines[2].startswith("candidate") and "strong" in lines[2]
    assert "candidate is above champion v1" in output
    assert _champion(uri) == ("2", ids["strong"]["train"])
    won = mlflow.MlflowClient(uri, registry_uri=uri).get_model_version(NAME, "2")
    assert won.tags["evaluate_run_id"] == ids["strong"]["evaluate"] and 0.8 < float(won.tags["test_miou"]) < 1

    # A worse one is refused with both scores and the interval, as a real command: exit 1 and one line.
    result = segnet_command("promote", folder, uri, "weak")
    assert result.returncode == 1
    assert "champion v2  strong" in result.stdout and "candidate is below champion v2" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == (
        "ERROR segnet: segnet-multi-digit-mnist version 1 is registered but not champion: it does not beat the "
        "champion on these panels (--force makes it champion anyway)"
    )
    assert _champion(uri) == ("2", ids["strong"]["train"])

    # One as good: the panels cannot tell them apart, so it is registered but not champion; --force crowns it.
    output, refusal = _promote_here(folder, uri, monkeypatch, capsys, "peer")
    assert "the test set does not tell champion v2 and candidate apart" in output
    assert refusal is not None and refusal.startswith("segnet-multi-digit-mnist version 3 is registered")
    output, refusal = _promote_here(folder, uri, monkeypatch, capsys, "peer", "--force")
    assert refusal is None and _champion(uri) == ("3", ids["peer"]["train"])
    versions = mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(f"name = '{NAME}'")
    assert sorted(int(version.version) for version in versions) == [1, 2, 3]  # each model registered once

    # Scored on other panels: no comparison, so no promotion, and nothing registered.
    _, refusal = _promote_here(folder, uri, monkeypatch, capsys, "elsewhere")
    assert refusal is not None and refusal.startswith("cannot compare with the champion (segnet-multi-digit-mnist")
    assert "scored it on the candidate's test set (dataset_sha256 xyz)" in refusal
    assert refusal.endswith("; --force makes it champion without a comparison")
    versions = mlflow.MlflowClient(uri, registry_uri=uri).search_model_versions(f"name = '{NAME}'")
    assert len(versions) == 3 and _champion(uri) == ("3", ids["peer"]["train"])


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("nosuch", "nosuch: neither a run id nor a DVC experiment with a finished evaluate run"),
        ("trial", "no finished evaluate run scored its model; score it first"),
    ],
)
def test_a_run_that_cannot_be_promoted_is_refused_with_one_line(store, monkeypatch, capsys, name, refusal):
    folder, uri, ids = store
    run_id = ids[name]["train"] if name in ids else name
    _, found = _promote_here(folder, uri, monkeypatch, capsys, run_id)
    assert found is not None and refusal in found
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    assert not client.search_model_versions(f"name = '{NAME}' and run_id = '{run_id}'")  # nothing registered


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_champion_served_by_mlflow_answers_as_predict_does_and_survives_a_bad_request(
    store, tmp_path, monkeypatch, capsys
):
    folder, uri, _ = store
    _promote_here(folder, uri, monkeypatch, capsys, "peer", "--force")
    url = f"http://127.0.0.1:{free_port()}"
    command = ["mlflow", "models", "serve", "-m", f"models:/{NAME}@{CHAMPION}", "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]]
    with serving(command, folder, clean_env(MLFLOW_TRACKING_URI=uri), f"{url}/ping", tmp_path / "serve.log"):
        # Grey panels, as predict reads a picture: one grey value repeated in the model's three channels.
        grey = digit_panels(2, seed=7)[0].float().div(255).mean(dim=3)
        pixels = grey[:, None].expand(-1, 3, -1, -1).contiguous()
        status, answer = _post(url, json.dumps({"inputs": pixels.tolist()}).encode())
        assert status == 200, answer
        scores = torch.tensor(answer["predictions"])
        assert scores.shape == (2, 11, 64, 64)
        # python -m segnet.predict's segmentation of the same pictures with the same champion.
        for variable in ("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"):
            monkeypatch.setenv(variable, "false")  # what predict sets, put back after the test
        segmenter = load_segmenter(f"models:/{NAME}@{CHAMPION}")
        for served, picture in zip(scores.argmax(1), grey, strict=True):
            assert np.array_equal(served.numpy(), segment(segmenter, picture.numpy()).mask)
        # MLflow's error for a request that is not a tensor of the signature's shape; the server keeps serving.
        status, error = _post(url, b'{"inputs": [[1, 2, 3]]}')
        assert status == 400 and error["error_code"] == "INVALID_PARAMETER_VALUE", error
        status, again = _post(url, json.dumps({"inputs": pixels.tolist()}).encode())
        assert status == 200 and torch.equal(torch.tensor(again["predictions"]), scores)
