"""Training in two processes (DistributedDataParallel, gloo) against one process, on real tiny data; stopping
and failing such a job."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml

from segnet.params import load_params
from segnet.training import distributed
from tests.helpers import PREPARE_STAGE, REPO, course_zip, kill_process_group, stage_env

TRAIN_STAGE = [sys.executable, "-m", "stages.train", "prepared"]
# SGD: Adam divides each step by the gradient's own running scale, which turns rounding differences in
# near-zero gradients into whole steps; SGD's steps are linear in the gradient, so the runs must agree closely.
SETTINGS = dict(epochs=8, batch_size=8, val_fraction=0.25, optimizer="sgd", lr=0.01)
RUNTIME = dict(val_batch_size=16, precision="float32", checkpoint_steps=0)
STEPS = 24  # 32 panels, a quarter held out for validation: 3 steps of 8 panels in each of 8 epochs
# Measured: the two runs' weights differ by at most 1.3e-6 (3.6e-6 over 2 epochs without the stop and resume).
# With batch-norm statistics per process instead of over the global batch, they differ by 0.04.
WEIGHT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder with tiny params and a prepared real dataset (.mat files written by scipy)."""
    root = tmp_path_factory.mktemp("distributed")
    course_zip(root / "data.zip", np.random.default_rng(0), train_files=4, test_files=1, per_file=8)
    params = load_params(REPO / "params.yaml")
    params["data"]["archive"] = "data.zip"
    params["model"].update(encoder_channels=[8, 8, 8, 8], decoder_channels=[8, 8, 8, 8])
    params["train"].update(SETTINGS)
    params["runtime"].update(RUNTIME)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(PREPARE_STAGE[:3] + ["prepared", "prepare.json"], root)
    return root


def _run(command: list[str], cwd: Path, **env: str) -> None:
    result = subprocess.run(command, cwd=cwd, env=stage_env() | env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"


def _outputs(name: str) -> list[str]:
    """The train stage's output arguments, all under the folder `name`."""
    return [f"{name}/model", f"{name}/train.json", f"{name}/history.csv", f"{name}/checkpoints"]


def _train(root: Path, name: str, store: str, processes: int) -> dict:
    """Runs the train stage with train.processes set; returns its weights, history and tracking store."""
    params = load_params(root / "params.yaml")
    params["runtime"]["processes"] = processes
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(TRAIN_STAGE + _outputs(name), root, MLFLOW_TRACKING_URI=f"sqlite:///{root / store}")
    return {
        "weights": torch.load(root / name / "model" / "model.pt", weights_only=True),
        "history": (root / name / "history.csv").read_text().splitlines(),
        "store": mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / store}"),
    }


def _stop_at_first_checkpoint(root: Path, name: str, store: str) -> str:
    """Runs the train stage in its own process group and Ctrl-Cs the group, as a terminal does, as soon as the
    first checkpoint exists; returns the stage's stderr after checking it stopped as Ctrl-C stops it."""
    stage = subprocess.Popen(
        TRAIN_STAGE + _outputs(name),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=stage_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{root / store}"},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not list((root / name / "checkpoints").glob("*.pt")):
            assert stage.poll() is None and time.monotonic() < deadline, stage.communicate()
            time.sleep(0.01)
        os.killpg(stage.pid, signal.SIGINT)
        _, stderr = stage.communicate(timeout=120)
    finally:
        kill_process_group(stage)
    assert stage.returncode == 130 and "Traceback" not in stderr, stderr
    return stderr


def test_two_gloo_processes_stopped_by_ctrl_c_and_resumed_train_what_one_process_trains_in_one_run(project):
    single = _train(project, "single", "single.db", processes=1)

    # Ctrl-C: both processes stop at one step, rank 0 saves the checkpoint, the run is KILLED, the stage exits 130.
    params = load_params(project / "params.yaml")
    params["runtime"].update(processes=2, checkpoint_steps=1)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stderr = _stop_at_first_checkpoint(project, "double", "double.db")
    (step,) = re.findall(r"ERROR segnet: interrupted: training stopped at step (\d+); checkpoint saved to", stderr)
    assert f"ERROR segnet: interrupted: training stopped at step {step} in process 1 of 2" in stderr
    (checkpoint,) = (project / "double" / "checkpoints").glob("*.pt")
    assert torch.load(checkpoint, weights_only=True)["state"]["loop"]["step"] == int(step) < STEPS
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'double.db'}")
    (stopped,) = client.search_runs([client.get_experiment_by_name("segnet-multi-digit-mnist").experiment_id])
    assert stopped.info.status == "KILLED" and not (project / "double" / "model").exists()

    # Run again, it resumes into the same run and ends with what one process trains.
    double = _train(project, "double", "double.db", processes=2)
    assert not list((project / "double" / "checkpoints").glob("*.pt"))  # deleted once training finished
    assert client.get_run(stopped.info.run_id).data.tags["resumed_from_step"] == step
    assert single["weights"].keys() == double["weights"].keys()
    for name, tensor in single["weights"].items():
        torch.testing.assert_close(double["weights"][name], tensor, atol=WEIGHT_TOLERANCE, rtol=0, msg=name)
    # The same loss per epoch (averaged over both processes' halves of each batch) and validation mIoU
    # (each process scores half of the validation panels).
    columns = single["history"][0].split(",")
    for one, two in zip(single["history"][1:], double["history"][1:], strict=True):
        one = dict(zip(columns, map(float, one.split(",")), strict=True))
        two = dict(zip(columns, map(float, two.split(",")), strict=True))
        assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-5)
        assert two["val_miou"] == pytest.approx(one["val_miou"], abs=1e-4)

    # One MLflow run for the whole job, written by rank 0, with the job's size on it.
    client = double["store"]
    experiment = client.get_experiment_by_name("segnet-multi-digit-mnist")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.data.tags["stage"] for run in runs] == ["train"]
    assert runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["processes"] == "2" and runs[0].data.params["runtime.processes"] == "2"
    assert runs[0].data.metrics["best_val_miou"] == pytest.approx(
        json.loads((project / "single" / "train.json").read_text())["best_val_miou"], abs=1e-4
    )


def test_a_global_batch_that_does_not_split_evenly_is_refused(project):
    original = (project / "params.yaml").read_text()
    params = load_params(project / "params.yaml")
    params["train"].update(batch_size=9)
    params["runtime"].update(processes=2)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run(
            TRAIN_STAGE + _outputs("odd"),
            cwd=project,
            capture_output=True,
            text=True,
            env=stage_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'odd.db'}"},
            timeout=300,
        )
    finally:
        (project / "params.yaml").write_text(original)
    assert result.returncode != 0
    assert "params.yaml train.batch_size: 9 does not divide among 2 processes" in result.stderr
    assert not (project / "odd" / "model").exists()


@pytest.mark.parametrize(
    "prepared, model, message",
    [
        ("nowhere", {}, "nowhere: no dataset.json, so not a complete prepared dataset"),
        # Seven levels halve 64x64 panels seven times: 128 does not divide 64.
        ("prepared", dict(encoder_channels=[8] * 7, decoder_channels=[8] * 7), "needs sides divisible by 128"),
        ("prepared", dict(kernel_size=4), "params.yaml model.kernel_size: must be odd and >= 1"),
    ],
)
def test_bad_input_stops_several_processes_before_they_start_with_one_line(project, prepared, model, message):
    # Checked in the launching process: otherwise every process would report it.
    original = (project / "params.yaml").read_text()
    params = load_params(project / "params.yaml")
    params["train"].update(batch_size=8)
    params["runtime"].update(processes=2)
    params["model"].update(model)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        result = subprocess.run(
            [*TRAIN_STAGE[:3], prepared, *_outputs("bad")],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=300,
            env=stage_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{project / 'bad.db'}"},
        )
    finally:
        (project / "params.yaml").write_text(original)
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr and "torchrun" not in result.stderr
    assert len([line for line in result.stderr.splitlines() if line.startswith("ERROR")]) == 1
    assert not (project / "bad").exists()


def test_a_torchrun_job_of_one_process_is_joined_not_launched_again(monkeypatch):
    # `torchrun --nproc-per-node 1` with train.processes: 2 must train in torchrun's one process (torchrun's
    # count wins), not start a second launcher from inside it.
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.launched() and distributed.launched_world() == distributed.SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.launched() and not distributed.launched_world().is_distributed


# A job whose process 0 would run for two minutes and whose process 1 fails; process 0 first records whether it
# will die with its launcher (prctl PR_GET_PDEATHSIG), and process 1 fails once that is written.
FAILING_JOB = """
import ctypes, os, sys, time
if os.environ["RANK"] == "1":
    while not os.path.exists("death_signal"):
        time.sleep(0.01)
    sys.exit(3)
death_signal = ctypes.c_int()
ctypes.CDLL(None).prctl(2, ctypes.byref(death_signal))
with open("death_signal.tmp", "w") as file:
    file.write(str(death_signal.value))
os.rename("death_signal.tmp", "death_signal")
time.sleep(120)
"""


def test_when_one_process_fails_the_launcher_stops_the_others_and_returns_its_status(tmp_path, monkeypatch):
    (tmp_path / "failing_job.py").write_text(FAILING_JOB)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    assert distributed.run_in_processes(2, "failing_job", []) == 3
    assert time.monotonic() - started < 60  # not the two minutes process 0 would sleep
    assert (tmp_path / "death_signal").read_text() == str(int(signal.SIGKILL))


# A job stopped by Ctrl-C in which process 0 fails while stopping (its checkpoint cannot be written, say) and
# process 1 never sees a signal, as when it is blocked in a collective that waits for process 0.
FAILING_WHILE_STOPPING = """
import os, signal, sys, time
rank = os.environ["RANK"]
if rank == "0":
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(1))
else:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
open(f"ready{rank}", "w").close()
time.sleep(120)
"""


def _ctrl_c_once_ready(folder):
    """Sends this process SIGINT once both processes of a job have written their ready file."""
    while not all((folder / f"ready{rank}").exists() for rank in (0, 1)):
        time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)  # the launcher's handler takes it, in the main thread


def test_a_process_that_fails_while_the_job_stops_on_ctrl_c_is_reported_and_the_blocked_one_killed(
    tmp_path, monkeypatch
):
    (tmp_path / "stopping_job.py").write_text(FAILING_WHILE_STOPPING)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "_FAILED_JOB_GRACE_S", 1.0)  # the test waits it out: 1 s, not 10

    threading.Thread(target=_ctrl_c_once_ready, args=(tmp_path,), daemon=True).start()
    started = time.monotonic()
    # Process 0's own status, not 130: stopping did not go as asked.
    assert distributed.run_in_processes(2, "stopping_job", []) == 1
    # Process 1 got SIGKILL after the grace, not after its two minutes or gloo's half-hour timeout.
    assert time.monotonic() - started < distributed._FAILED_JOB_GRACE_S + 30


# A job stopped by Ctrl-C as asked, in which process 0 takes a while longer to end (its MLflow run, say).
SLOW_TO_STOP = """
import os, signal, sys, time
rank = os.environ["RANK"]
def stop(signum, frame):
    if rank == "0":
        time.sleep(3)
        open("finished0", "w").close()
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
open(f"ready{rank}", "w").close()
time.sleep(120)
"""


def test_a_process_that_takes_its_time_to_stop_on_ctrl_c_is_not_killed(tmp_path, monkeypatch):
    (tmp_path / "slow_job.py").write_text(SLOW_TO_STOP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(distributed, "_FAILED_JOB_GRACE_S", 1.0)  # shorter than process 0's 3 s
    threading.Thread(target=_ctrl_c_once_ready, args=(tmp_path,), daemon=True).start()
    assert distributed.run_in_processes(2, "slow_job", []) == 130
    assert (tmp_path / "finished0").exists()
