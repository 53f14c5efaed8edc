"""End to end: `python -m segnet.search` on a tiny project, its trials real `dvc exp run`s, in a real MLflow store."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import clean_env, kill_process_group, run, set_params, tiny_project

# A good learning rate first, then one so small that its first epoch falls behind: with one finished trial before
# the median pruner judges, the second trial is pruned after its first epoch. A constant schedule, so that the
# learning rates differ from the first step on.
SPACE = """
params:
  train.lr: {low: 0.0000001, high: 0.05, log: true}
fixed:
  train.epochs: 2
  train.schedule: constant
first_trials:
  - {train.lr: 0.03}
  - {train.lr: 0.0000001}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A tiny project, committed, with a space file and a search that prunes after one finished trial."""
    root = tiny_project(tmp_path_factory.mktemp("search"))
    set_params(root, {"search": dict(startup_trials=1, warmup_epochs=0)})
    (root / "space.yaml").write_text(SPACE)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "space"], root)
    return root


def search(root: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "segnet.search", "space.yaml", *arguments], root, check=check)


def study(root: Path, name: str = "space") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{root / 'optuna.db'}")


def dvc_experiments(root: Path) -> dict[str, dict]:
    shown = json.loads(run(["dvc", "exp", "show", "--json"], root).stdout)
    return {
        exp["name"]: exp["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        for exp in exp["revs"]
    }


def test_a_search_prunes_a_trial_that_falls_behind_resumes_after_ctrl_c_and_refuses_a_changed_space(project):
    printed = search(project, "--trials", "2").stdout.splitlines()
    trials = study(project).trials
    assert [trial.state for trial in trials] == [TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[1].user_attrs["pruned_at_epoch"] == 1 and list(trials[1].intermediate_values) == [1]
    assert trials[0].value == max(trials[0].intermediate_values.values())  # the best epoch's validation mIoU
    assert printed[-1].split() == ["dvc", "exp", "apply", "space-0", "&&", "dvc", "repro", *printed[-1].split()[7:]]
    assert "pruned after epoch 1" in printed[3]

    # Each trial is a DVC experiment that trained only; the pruned one says where it stopped.
    experiments = dvc_experiments(project)
    assert {"space-0", "space-1"} <= set(experiments)
    assert experiments["space-1"]["params"]["params.yaml"]["data"]["train"]["lr"] == pytest.approx(1e-7)
    train_metrics = experiments["space-1"]["metrics"]["metrics/train.json"]["data"]
    assert train_metrics["pruned_at_epoch"] == 1 and train_metrics["epochs"] == 1
    # DVC's run cache keeps the finished training only: a later `dvc exp run` with the pruned trial's params asks
    # for the whole training, which the pruned one is not.
    entries = [entry.read_text() for entry in (project / ".dvc" / "cache" / "runs").glob("*/*/*")]
    assert sum(entry.startswith("cmd: python -m stages.train") for entry in entries) == 1
    # Not scored on the test set: its evaluate metrics are still the committed ones.
    committed = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert experiments["space-0"]["metrics"]["metrics/evaluate.json"]["data"] == committed

    # In MLflow: the study's run, each trial's pipeline run under it, and each trial's train run under that.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("segnet-multi-digit-mnist")
    runs = client.search_runs([experiment.experiment_id])
    (study_run,) = [found for found in runs if found.data.tags["stage"] == "search"]
    assert study_run.info.run_name == "search space" and study_run.info.status == "FINISHED"
    assert study_run.data.metrics["best_val_miou"] == trials[0].value
    executions = {found.info.run_name: found for found in runs if found.data.tags["stage"] == "pipeline"}
    assert set(executions) == {"space-0", "space-1"}
    assert {found.data.tags["mlflow.parentRunId"] for found in executions.values()} == {study_run.info.run_id}
    assert executions["space-1"].data.tags["optuna_state"] == "PRUNED"
    assert executions["space-0"].data.tags["optuna_state"] == "COMPLETE"
    trained = {found.data.tags["mlflow.parentRunId"]: found for found in runs if found.data.tags["stage"] == "train"}
    pruned_run = trained[executions["space-1"].info.run_id]
    assert pruned_run.info.status == "FINISHED" and pruned_run.data.metrics["pruned_at_epoch"] == 1

    # Ctrl-C in the third trial: the search stops with 130, and the same command runs that trial again.
    process = subprocess.Popen(
        [sys.executable, "-m", "segnet.search", "space.yaml", "--trials", "3"],
        cwd=project,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("trial 2 (space-2)"), first
        # Once its training has reported an epoch, as a user would see the progress bar move.
        while not study(project).trials[2].intermediate_values:
            assert process.poll() is None, process.communicate()
            time.sleep(0.5)
        os.killpg(process.pid, signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            kill_process_group(process)
    assert process.returncode == 130, stderr
    interrupted = study(project).trials[2]
    assert interrupted.state == TrialState.FAIL and interrupted.user_attrs["interrupted"] is True

    search(project, "--trials", "3")
    trials = study(project).trials
    assert len(trials) == 4 and trials[3].params == interrupted.params and trials[3].user_attrs["repeats_trial"] == 2
    assert sum(trial.state in (TrialState.COMPLETE, TrialState.PRUNED) for trial in trials) == 3

    # The study resumed with another space, or a space naming a param the train stage does not read: one line
    # each, and nothing started.
    (project / "other.yaml").write_text(SPACE.replace("0.05", "0.1"))
    refused = run(
        [sys.executable, "-m", "segnet.search", "other.yaml", "--study", "space", "--trials", "5"], project, check=False
    )
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "study 'space' exists with another space" in refused.stderr
    (project / "typo.yaml").write_text("params:\n  train.lrr: {low: 0.001, high: 0.01}\n")
    refused = run([sys.executable, "-m", "segnet.search", "typo.yaml", "--trials", "1"], project, check=False)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "typo.yaml params.train.lrr: not a param the train stage reads" in refused.stderr
    assert "did you mean train.lr" in refused.stderr
    assert optuna.get_all_study_names(f"sqlite:///{project / 'optuna.db'}") == ["space"]
    assert len(study(project).trials) == 4
