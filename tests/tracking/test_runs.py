import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from segnet.errors import TrackingError
from segnet.params import read_experiment
from segnet.tracking.runs import artifact_location, check_server, project_root, resolve_tracking_uri, stage_run
from tests.helpers import REPO, dead_server_uri


def test_stores_that_are_not_servers_need_no_check(tmp_path):
    check_server(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_server(str(tmp_path / "mlruns"))


def test_a_server_that_does_not_answer_is_named_with_the_fix():
    with dead_server_uri() as dead:
        with pytest.raises(TrackingError, match=f"MLFLOW_TRACKING_URI={dead}: .*does not answer.*unset it"):
            check_server(dead, timeout=2)


def test_runs_inside_dvc_experiment_copies_belong_to_the_repository_root(tmp_path):
    assert project_root(tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc") == Path(tmp_path).resolve()
    assert project_root(tmp_path) == Path(tmp_path).resolve()


OPEN_A_RUN = """
import sys, mlflow
from segnet.tracking.runs import stage_run
with stage_run("race", "race", {"worker": sys.argv[1]}):
    mlflow.log_metric("done", 1)
"""


def test_processes_opening_runs_on_a_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    # Unserialised, MLflow's table creation races and one process dies ("duplicate column name").
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(REPO)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_A_RUN, str(index)], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
        )
        for index in range(3)
    ]
    try:
        for worker in workers:
            _, stderr = worker.communicate(timeout=120)  # reads as it waits: a full pipe cannot stall the worker
            assert worker.returncode == 0, stderr
    finally:
        for worker in workers:
            worker.kill()  # none outlives a failure; a no-op for those that finished
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(found.data.params["worker"] for found in runs) == ["0", "1", "2"]
    assert all(found.info.status == "FINISHED" for found in runs)


def _clean_tracking_env(monkeypatch):
    """No MLFLOW_ or DVC_ variables, now and after the test (mlflow.set_tracking_uri sets MLFLOW_TRACKING_URI)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    for name in [name for name in os.environ if name.startswith(("MLFLOW_", "DVC_"))]:
        monkeypatch.delenv(name)


def test_a_run_resumed_with_another_checkpoint_interval_keeps_its_params_and_tags_the_change(tmp_path, monkeypatch):
    # A checkpoint resumes whatever runtime.checkpoint_steps is now (it does not change the result), but MLflow
    # refuses to change a logged param: the resumed stage must not fail on it.
    _clean_tracking_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with stage_run("train", "resume", {"runtime": {"checkpoint_steps": 100}, "train": {"lr": 0.1}}) as run:
        run_id = run.info.run_id
    with stage_run(
        "train", "resume", {"runtime": {"checkpoint_steps": 50}, "train": {"lr": 0.1}, "seed": 3}, resume_run_id=run_id
    ) as resumed:
        assert resumed.info.run_id == run_id
    found = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(run_id)
    assert found.info.status == "FINISHED"
    assert found.data.params == {"runtime.checkpoint_steps": "100", "train.lr": "0.1", "seed": "3"}
    assert found.data.tags["resumed_with.runtime.checkpoint_steps"] == "50"
    assert "resumed_with.train.lr" not in found.data.tags


@pytest.mark.parametrize("experiment", [2026, "", None])
def test_a_bad_experiment_name_is_refused_before_the_store_is_touched(tmp_path, monkeypatch, experiment):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^params.yaml tracking.experiment: must be a non-empty name"):
        read_experiment({"tracking": {"experiment": experiment}})
    with pytest.raises(ValueError, match=r"^the MLflow experiment must be a non-empty name"):
        with stage_run("prepare", experiment, {}):
            pass
    assert not (tmp_path / "mlflow.db").exists()


# A stage's process stopped by `kill` (SIGTERM) outside training, which has its own polite stop.
STOPPED_BY_KILL = """
import os, signal
from segnet.cli import run_stage
from segnet.tracking.runs import stage_run

def main():
    with stage_run("evaluate", "killed", {}):
        os.kill(os.getpid(), signal.SIGTERM)

run_stage(main)
"""


def test_a_stage_stopped_by_sigterm_ends_its_run_as_killed_and_exits_130(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    result = subprocess.run(
        [sys.executable, "-c", STOPPED_BY_KILL],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env | {"PYTHONPATH": str(Path(__file__).parents[2])},
        timeout=120,
    )
    assert result.returncode == 130, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "ERROR segnet: interrupted: SIGTERM"
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("killed").experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]


@pytest.mark.parametrize(
    ("uri", "resolved"),
    [
        ("sqlite:///mlflow.db", "sqlite:///{root}/mlflow.db"),
        ("sqlite:///stores/other.db", "sqlite:///{root}/stores/other.db"),
        ("sqlite:////elsewhere/other.db", "sqlite:////elsewhere/other.db"),
        ("mlruns", "{root}/mlruns"),
        ("/elsewhere/mlruns", "/elsewhere/mlruns"),
        ("file:///elsewhere/mlruns", "file:///elsewhere/mlruns"),
        ("file:mlruns", "file://{root}/mlruns"),
        ("file:./mlruns", "file://{root}/mlruns"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("http://127.0.0.1:5050", "http://127.0.0.1:5050"),
        ("databricks", "databricks"),
    ],
)
def test_a_relative_store_path_is_taken_from_the_repository_root(tmp_path, uri, resolved):
    assert resolve_tracking_uri(uri, tmp_path) == resolved.format(root=tmp_path)


@pytest.mark.parametrize(
    ("uri", "location"),
    [
        ("sqlite:////a/b/other.db", "file:///a/b/mlartifacts"),
        ("sqlite:///:memory:", None),
        ("sqlite:///", None),
        ("http://127.0.0.1:5050", None),
        ("/a/mlruns", None),
    ],
)
def test_a_sqlite_store_keeps_its_artifacts_beside_it(uri, location):
    assert artifact_location(uri) == location


def test_a_relative_store_named_inside_a_dvc_experiment_copy_lands_in_the_repository(tmp_path, monkeypatch):
    # `dvc exp run --temp` runs the stage in a copy it deletes afterwards: a store and artifacts resolved from
    # there were deleted with it, without an error.
    _clean_tracking_env(monkeypatch)
    copy = tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///other.db")
    (copy / "note.txt").write_text("an artifact")
    with stage_run("prepare", "relative", {"seed": 1}) as run:
        mlflow.log_artifact(str(copy / "note.txt"))
    assert not (copy / "other.db").exists() and not (copy / "mlruns").exists()
    found = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'other.db'}").get_run(run.info.run_id)
    assert found.data.params == {"seed": "1"}
    assert (tmp_path / "mlartifacts" / run.info.run_id / "artifacts" / "note.txt").is_file()


@pytest.mark.parametrize("named", [None, "sqlite:///mlflow.db"])
def test_a_moved_project_refuses_to_write_artifacts_into_its_old_folder(tmp_path, monkeypatch, named):
    _clean_tracking_env(monkeypatch)
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    monkeypatch.chdir(old)
    with stage_run("prepare", "moved", {}):
        pass
    old.rename(new)
    monkeypatch.chdir(new)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")  # a new process, as each stage is
    if named:  # the same store named by the user
        monkeypatch.setenv("MLFLOW_TRACKING_URI", named)
    with pytest.raises(
        TrackingError,
        match=(
            rf"^{new / 'mlflow.db'}: experiment 'moved' keeps its artifacts in {old.as_uri()}/mlartifacts, not in "
            rf"{new.as_uri()}/mlartifacts: the store was moved or copied"
        ),
    ):
        with stage_run("prepare", "moved", {}):
            pass
    assert not old.exists()
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with stage_run("prepare", "moved again", {}) as run:  # the way out the message names: a new experiment
        assert run.info.artifact_uri.startswith((new / "mlartifacts").as_uri())


def test_an_experiment_whose_artifacts_were_in_a_deleted_dvc_copy_is_refused(tmp_path, monkeypatch):
    # Made by earlier code with a user's store under `dvc exp run --temp`: MLflow's default ./mlruns in the copy.
    _clean_tracking_env(monkeypatch)
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'team.db'}"
    client = mlflow.MlflowClient(store)
    gone = (tmp_path / ".dvc" / "tmp" / "exps" / "standalone" / "tmpold" / "mlruns" / "1").as_uri()
    client.create_experiment("in a copy", artifact_location=gone)
    chosen = (tmp_path / "my-artifacts").as_uri()
    client.create_experiment("chosen", artifact_location=chosen)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    with pytest.raises(TrackingError, match=f"keeps its artifacts in {gone}, not in .* temporary copy"):
        with stage_run("prepare", "in a copy", {}):
            pass
    with stage_run("prepare", "chosen", {}) as run:  # a folder the user chose stays theirs
        assert run.info.artifact_uri.startswith(chosen)
