"""`python -m segnet.compare` on evaluate runs in a real MLflow store, as evaluate logs them.

Two tests run the real command (a result, and warnings on stderr); the others run its main() in this process.
"""

import hashlib

import mlflow
import numpy as np
import pytest
import torch
import yaml

from segnet.evaluation.metrics import mean_iou
from segnet.params import load_params
from segnet.tracking.runs import PANEL_CONFUSIONS
from tests.helpers import REPO, segnet_command, segnet_in_process

EXPERIMENT = "segnet-multi-digit-mnist"


def _panels(right_share: float, seed: int, truth_seed: int = 0) -> np.ndarray:
    """Confusion matrices of 200 panels of 3 classes, 100 pixels each (labels drawn with `truth_seed`), of which
    about `right_share` are predicted right (which ones: `seed`)."""
    truth = np.random.default_rng(truth_seed).integers(0, 3, (200, 100))
    guess = np.where(np.random.default_rng(seed).random((200, 100)) < right_share, truth, (truth + 1) % 3)
    return np.stack([np.bincount(t * 3 + g, minlength=9).reshape(3, 3) for t, g in zip(truth, guess, strict=True)])


@pytest.fixture
def store(tmp_path):
    """A folder with the repository's params.yaml and an MLflow store of its own, and a way to add evaluate runs."""
    (tmp_path / "params.yaml").write_bytes((REPO / "params.yaml").read_bytes())
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment(EXPERIMENT, artifact_location=str(tmp_path / "mlartifacts"))

    def add_run(
        panels: np.ndarray | None, stage="evaluate", dataset="abc", name=None, status="FINISHED", **more_tags
    ) -> str:
        """An evaluate run as the stage logs one: its tags, its interval settings and its per-panel matrices."""
        tags = {"stage": stage, "dataset_sha256": dataset, **more_tags} | ({"dvc_experiment": name} if name else {})
        run_id = client.create_run(experiment, tags=tags).info.run_id
        for key, value in {"resamples": 1000, "confidence": 0.95, "seed": 0}.items():
            client.log_param(run_id, f"evaluate.bootstrap.{key}", value)
        if panels is not None:
            np.savez_compressed(tmp_path / PANEL_CONFUSIONS, confusions=panels.astype(np.int32))
            client.log_artifact(run_id, str(tmp_path / PANEL_CONFUSIONS))
        client.set_terminated(run_id, status)
        return run_id

    return tmp_path, uri, add_run


def _set_bootstrap(folder, bootstrap) -> None:
    params = load_params(folder / "params.yaml")
    params["evaluate"]["bootstrap"] = bootstrap
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def test_a_clearly_better_run_is_found_better_by_name_or_id(store):
    folder, uri, add_run = store
    worse, better = _panels(0.80, 0), _panels(0.80, 0)
    better[:, [0, 1, 2], [0, 1, 2]] += better[:, [0, 1, 2], [1, 2, 0]]  # every panel: its errors turned right
    better[:, [0, 1, 2], [1, 2, 0]] = 0
    first = add_run(worse, name="baseline")
    add_run(better, name="fixed")
    add_run(None, name="fixed", status="FAILED")  # later, but failed: the name means the finished run
    result = segnet_command("compare", folder, uri, first, "fixed")
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "test miou on the same 200 panels; 95% intervals from 1000 resamples of the panels "
        "(B - A: the same panels for both)"
    )
    worse_miou = mean_iou(torch.from_numpy(worse.sum(0)))
    assert lines[1].split()[:5] == ["A", "baseline", "(run", f"{first[:8]})", f"{worse_miou:.4f}"]
    assert lines[2].split()[:2] == ["B", "fixed"] and lines[2].split()[4] == "1.0000"
    assert lines[-1] == "B is above A: the interval of the difference excludes 0"
    assert segnet_in_process("compare", folder, uri, "fixed", first).stdout.splitlines()[-1] == (
        "B is below A: the interval of the difference excludes 0"
    )


def test_two_runs_that_differ_by_chance_are_not_told_apart(store):
    # The same labels, errors on other pixels at the same rate: two models alike but for chance.
    folder, uri, add_run = store
    first, second = add_run(_panels(0.8, 1)), add_run(_panels(0.8, 2))
    result = segnet_in_process("compare", folder, uri, first, second)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == (
        "the test set does not tell A and B apart: the interval of the difference holds 0"
    )


def test_the_interval_settings_come_from_params_yaml_and_a_run_that_used_others_is_named(store):
    folder, uri, add_run = store
    _set_bootstrap(folder, {"resamples": 200, "confidence": 0.975, "seed": 1})
    first, second = add_run(_panels(0.8, 1)), add_run(_panels(0.8, 2))
    (folder / "sub").mkdir()  # from anywhere in the project: params.yaml is the root's
    result = segnet_command("compare", folder / "sub", uri, first, second)
    assert result.stdout.startswith("test miou on the same 200 panels; 97.5% intervals from 200 resamples")
    warnings = result.stderr.strip().splitlines()
    assert len(warnings) == 2 and all("logged its interval with other settings" in line for line in warnings)


def test_workspace_names_the_evaluate_run_of_the_model_in_data_model(store):
    folder, uri, add_run = store
    other = add_run(_panels(0.8, 1))
    model = folder / "data" / "model" / "model.pt"
    result = segnet_in_process("compare", folder, uri, "workspace", other)
    assert result.returncode == 1
    assert result.stderr.strip() == f"ERROR segnet: workspace: no {model}; run the pipeline first (dvc repro)"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"the weights of the workspace")
    result = segnet_in_process("compare", folder, uri, "workspace", other)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"ERROR segnet: workspace: no finished evaluate run scored {model}; run its evaluate stage (dvc repro)"
    )
    scored = add_run(_panels(0.9, 2), model_sha256=hashlib.sha256(model.read_bytes()).hexdigest())
    add_run(_panels(0.7, 3), model_sha256=hashlib.sha256(b"other weights").hexdigest())  # later, another model
    result = segnet_in_process("compare", folder, uri, "workspace", other)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[:3] == ["A", "run", scored[:8]]


@pytest.mark.parametrize(
    "case, message",
    [
        (
            "other test set",
            "scored different test sets (dataset_sha256 tags differ); a paired comparison needs the same",
        ),
        ("no panels", f"no {PANEL_CONFUSIONS} among its artifacts"),
        ("train run", "a train run, not an evaluate run"),
        ("failed run", "failed, not a finished evaluate run"),
        ("unknown", "nosuch: neither a run id nor a DVC experiment with a finished evaluate run"),
        ("other size", "per-panel matrices of shapes (200, 3, 3) and (100, 3, 3)"),
    ],
)
def test_runs_that_cannot_be_compared_stop_with_one_line(store, case, message):
    folder, uri, add_run = store
    first = add_run(_panels(0.8, 1))
    second = {
        "other test set": lambda: add_run(_panels(0.8, 2), dataset="def"),
        "no panels": lambda: add_run(None),
        "train run": lambda: add_run(None, stage="train"),
        "failed run": lambda: add_run(None, status="FAILED"),
        "unknown": lambda: "nosuch",
        "other size": lambda: add_run(_panels(0.8, 2)[:100]),
    }[case]()
    result = segnet_in_process("compare", folder, uri, first, second)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("ERROR segnet: ") and message in line


@pytest.mark.parametrize(
    "bootstrap, message",
    [
        (
            {"resamples": 0, "confidence": 0.95, "seed": 0},
            "params.yaml evaluate.bootstrap.resamples: 0 turns the intervals off",
        ),
        (5, "params.yaml evaluate.bootstrap: must be a mapping of settings, got 5"),
    ],
)
def test_interval_settings_that_allow_no_comparison_stop_it_with_one_line(store, bootstrap, message):
    folder, uri, add_run = store
    _set_bootstrap(folder, bootstrap)
    result = segnet_in_process("compare", folder, uri, add_run(_panels(0.8, 1)), add_run(_panels(0.8, 2)))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR segnet: {message}")
