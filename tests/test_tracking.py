from pathlib import Path

import pytest

from segnet.errors import TrackingError
from segnet.tracking import check_server, project_root
from tests.helpers import dead_server_uri


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
