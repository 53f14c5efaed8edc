"""The shared tracking server for real: PostgreSQL and `mlflow server` on loopback, a tiny `dvc repro` against it."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import psycopg
import pytest

from segnet.errors import ServerError
from segnet.tracking import server
from tests.helpers import REPO, apt_install_or_skip, clean_env, free_port, run, tiny_project

STAGES = {"generate", "prepare", "train", "evaluate"}


def _install_postgres_or_skip() -> None:
    """Installs Debian's PostgreSQL when it is missing and this process may; otherwise skips, saying why."""
    try:
        server.postgres_bin_dir()
        return
    except ServerError as missing:
        apt_install_or_skip(["postgresql"], f"PostgreSQL is missing ({missing})")
    # Debian's package may start its own cluster on install: the test started it, so the test stops it.
    clusters = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True).stdout
    for version, name, _, status, *_ in (line.split() for line in clusters.splitlines() if line.strip()):
        if status == "online":
            subprocess.run(["pg_ctlcluster", version, name, "stop"], check=True)


def _distinct_free_ports(count: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < count:
        ports.add(free_port())
    return sorted(ports)


def _nothing_listens_on(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_pipeline_tracks_its_runs_in_a_shared_server_with_a_postgresql_database(tmp_path):
    _install_postgres_or_skip()
    project = tiny_project(tmp_path / "project")
    # Not under tmp_path, which only root may enter: as root, PostgreSQL runs as the user `postgres`.
    folder = Path(tempfile.mkdtemp(prefix="segnet-server-"))
    folder.chmod(0o755)
    port, postgres_port = _distinct_free_ports(2)
    try:
        with server.tracking_server(folder, port, postgres_port, log_file=tmp_path / "mlflow-server.log") as shared:
            assert shared.uri == f"http://127.0.0.1:{port}"
            run(["dvc", "repro"], project, env=clean_env(MLFLOW_TRACKING_URI=shared.uri))

            client = mlflow.MlflowClient(tracking_uri=shared.uri)
            experiment = client.get_experiment_by_name("segnet-multi-digit-mnist")
            found = client.search_runs([experiment.experiment_id])
            runs = {found_run.data.tags["stage"]: found_run for found_run in found}
            # The stages' runs, and the execution's parent run above them.
            assert len(found) == len(STAGES) + 1 and set(runs) == STAGES | {"pipeline"}
            assert {found_run.data.tags.get("mlflow.parentRunId") for found_run in found} == {
                None,
                runs["pipeline"].info.run_id,
            }
            assert all(found_run.info.status == "FINISHED" for found_run in found)
            assert runs["train"].data.params["train.epochs"] == "2"
            assert set(runs["train"].data.metrics) >= {"train_loss", "val_miou"}
            evaluated = json.loads((project / "metrics" / "evaluate.json").read_text())
            assert runs["evaluate"].data.metrics["miou"] == pytest.approx(evaluated["miou"])
            assert runs["evaluate"].data.tags["train_run_id"] == runs["train"].info.run_id

            # Artifacts travel through the server into its own folder; the project keeps no store of its own.
            assert runs["evaluate"].info.artifact_uri.startswith("mlflow-artifacts:/")
            downloaded = mlflow.artifacts.download_artifacts(
                run_id=runs["evaluate"].info.run_id,
                artifact_path="evaluate.json",
                dst_path=str(tmp_path),
                tracking_uri=shared.uri,
            )
            assert json.loads(Path(downloaded).read_text()) == evaluated
            assert list(shared.artifacts.rglob("evaluate.json"))
            assert not (project / "mlflow.db").exists() and not (project / "mlartifacts").exists()

            # The server's Model Registry takes the first model as champion.
            promoted = run(
                [sys.executable, "-m", "segnet.promote", "workspace"],
                project,
                env=clean_env(MLFLOW_TRACKING_URI=shared.uri, PYTHONPATH=str(REPO)),
            )
            assert "has no champion yet" in promoted.stdout
            champion = client.get_model_version_by_alias("segnet-multi-digit-mnist", "champion")
            assert champion.run_id == runs["train"].info.run_id

            # The runs' metadata lives in PostgreSQL.
            with psycopg.connect(shared.backend_uri) as connection:
                rows = connection.execute("SELECT run_uuid, status FROM runs").fetchall()
            assert dict(rows) == {found_run.info.run_id: "FINISHED" for found_run in found}
            server_process = shared.process
            # A second server on the same folder is refused before it touches the running cluster.
            other_port, other_postgres_port = _distinct_free_ports(2)
            with pytest.raises(ServerError, match=f"{folder}: already served by process {os.getpid()}"):
                with server.tracking_server(folder, other_port, other_postgres_port):
                    pass
            assert client.get_experiment_by_name("segnet-multi-digit-mnist") is not None
            with psycopg.connect(shared.backend_uri) as connection:
                assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == len(found)
        # Everything it started is gone: the server's whole process group and both listeners.
        assert server_process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.killpg(server_process.pid, 0)
        assert _nothing_listens_on(port) and _nothing_listens_on(postgres_port)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_a_folder_is_served_by_one_server_at_a_time(tmp_path):
    with server.claim_folder(tmp_path):
        with pytest.raises(ServerError, match=f"{tmp_path}: already served by process {os.getpid()}; stop that"):
            with server.claim_folder(tmp_path):
                pass
    # Released when the first server ends, or its process dies: the next one takes the folder.
    holder = subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_WAIT, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=clean_env(PYTHONPATH=str(REPO)),
    )
    try:
        assert holder.stdout.readline() == b"claimed\n"
        with pytest.raises(ServerError, match=f"already served by process {holder.pid}"):
            with server.claim_folder(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    with server.claim_folder(tmp_path):
        assert (tmp_path / "server.lock").read_text() == f"{os.getpid()}\n"
    # A link planted at the lock's name is not followed.
    (tmp_path / "server.lock").unlink()
    (tmp_path / "precious").write_text("keep")
    (tmp_path / "server.lock").symlink_to(tmp_path / "precious")
    with pytest.raises(ServerError, match="server.lock: cannot be opened"):
        with server.claim_folder(tmp_path):
            pass
    assert (tmp_path / "precious").read_text() == "keep"


CLAIM_AND_WAIT = """
import sys, time
from pathlib import Path
from segnet.tracking import server
with server.claim_folder(Path(sys.argv[1])):
    print("claimed", flush=True)
    time.sleep(600)
"""
