import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from segnet.errors import TrackingError
from segnet.tracking import check_server, project_root
from tests.helpers import dead_server_uri

REPO = Path(__file__).resolve().parents[1]


def test_stores_that_are_not_servers_need_no_check(tmp_path):
    check_server(f"sqlite:///{tmp_path / 'mlflow.db'}")
    check_server(str(tmp_path / "mlruns"))


def test_a_server_that_does_not_answer_is_named_with_the_fix():
    dead = dead_server_uri()
    with pytest.raises(TrackingError, match=f"MLFLOW_TRACKING_URI={dead}: .*does not answer.*unset it"):
        check_server(dead, timeout=2)


def test_runs_inside_dvc_experiment_copies_belong_to_the_repository_root(tmp_path):
    assert project_root(tmp_path / ".dvc" / "tmp" / "exps" / "run" / "abc") == Path(tmp_path).resolve()
    assert project_root(tmp_path) == Path(tmp_path).resolve()


OPEN_A_RUN = """
import sys, mlflow
from segnet.tracking import stage_run
with stage_run("race", "race", {"worker": sys.argv[1]}):
    mlflow.log_metric("done", 1)
"""


def test_processes_opening_runs_on_a_fresh_sqlite_store_at_once_all_succeed(tmp_path):
    # Unserialised, MLflow's table creation races and one process dies ("duplicate column name").
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PYTHONPATH"] = str(REPO)
    workers = [subprocess.Popen([sys.executable, "-c", OPEN_A_RUN, str(index)], cwd=tmp_path, env=env,
                                stderr=subprocess.PIPE, text=True) for index in range(3)]
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
