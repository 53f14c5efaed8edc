"""End to end: the real `dvc repro` and `dvc exp run` on tiny data, checked in a real MLflow store."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from segnet.params import load_params
from tests.helpers import (
    clean_env,
    course_zip,
    dead_server_uri,
    kill_process_group,
    run,
    set_params,
    tiny_project,
    write_zip,
)

# What the project fixture's `dvc repro` left, read before any test adds experiments: its MLflow runs by
# stage and its metrics/evaluate.json.
FIRST_REPRO: dict[str, dict] = {}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh clone-like copy of the repository (tracked files only), with tiny params, after dvc repro."""
    root = tiny_project(tmp_path_factory.mktemp("project"))
    # The tiny training lasts seconds; MLflow samples the machine every 10 s unless told otherwise.
    run(["dvc", "repro"], root, env=clean_env(MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL="1"))
    FIRST_REPRO.update(runs=runs_by_stage(root), evaluate=json.loads((root / "metrics" / "evaluate.json").read_text()))
    return root


def store(root: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")


def runs_by_stage(root: Path) -> dict[str, list[mlflow.entities.Run]]:
    client = store(root)
    experiment = client.get_experiment_by_name("segnet-multi-digit-mnist")
    assert experiment is not None, f"{root}: no MLflow experiment segnet-multi-digit-mnist"
    found: dict[str, list[mlflow.entities.Run]] = {}
    for found_run in client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"]):
        found.setdefault(found_run.data.tags["stage"], []).append(found_run)
    return found


def test_repro_writes_metrics_model_and_plots(project):
    metrics = json.loads((project / "metrics" / "evaluate.json").read_text())
    assert list(metrics) == [
        "miou",
        "miou_ci_low",
        "miou_ci_high",
        "miou_digits",
        "pixel_accuracy",
        "mean_class_accuracy",
        "boundary_f1",
        "per_class_iou",
    ]
    assert len(metrics["per_class_iou"]) == 11 and 0.0 <= metrics["miou"] <= 1.0
    assert 0 <= metrics["miou_ci_low"] <= metrics["miou_ci_high"] <= 1
    prepared = json.loads((project / "metrics" / "prepare.json").read_text())
    # Numbers only: a text column in `dvc exp show` is as wide as its value and pushes the scores out of view.
    assert prepared == {
        "height": 64,
        "width": 64,
        "train_files": 4,
        "train_images": 32,
        "test_files": 2,
        "test_images": 12,
    }
    history = (project / "metrics" / "train_history.csv").read_text().splitlines()
    assert history[0] == "epoch,step,train_loss,val_miou,lr,elapsed_s" and len(history) == 3
    state = torch.load(project / "data" / "model" / "model.pt", weights_only=True)
    assert state["classifier.weight"].shape == (11, 8, 1, 1)
    for picture in ("confusion_matrix.png", "predictions.png"):
        assert (project / "metrics" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Each of `dvc plots show`'s curves is drawn once: DVC draws a stage's plot file on its own too, so that
    # one must carry its own axes, or it comes out as a default (the file's last column against its rows).
    plots = json.loads(run(["dvc", "plots", "show", "--json"], project).stdout)["data"]
    curves = {
        (
            plot["content"]["title"]["text"],
            plot["content"]["encoding"]["x"]["field"],
            plot["content"]["layer"][0]["encoding"]["y"]["field"],
        )
        for drawn in plots.values()
        for plot in drawn
        if plot["type"] == "vega"
    }
    assert curves == {
        ("Training loss per epoch", "epoch", "train_loss"),
        ("Validation mIoU per epoch", "epoch", "val_miou"),
        ("Validation mIoU against wall-clock training time", "elapsed_s", "val_miou"),
    }
    assert "pipelines are up to date" in run(["dvc", "repro"], project).stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_evaluate_scores_a_model_trained_on_a_gpu_with_its_own_device_setting(project, tmp_path):
    # The model's record says it trained on CUDA; evaluate.device (auto) decides where it is scored, so a
    # model pulled onto a machine without a GPU is evaluated there, to the same metrics.
    model = tmp_path / "model"
    shutil.copytree(project / "data" / "model", model)
    config = json.loads((model / "config.json").read_text())
    config["runtime"]["device"] = "cuda"
    (model / "config.json").write_text(json.dumps(config))
    # Run from a folder of its own (the project's params), so that its MLflow run stays out of the project's store.
    shutil.copy(project / "params.yaml", tmp_path / "params.yaml")
    outputs = [str(tmp_path / name) for name in ("evaluate.json", "confusion.png", "predictions.png")]
    run(
        [sys.executable, "-m", "stages.evaluate", str(project / "data" / "prepared"), str(model), *outputs],
        tmp_path,
        env=clean_env(PYTHONPATH=str(project)),
    )
    assert (tmp_path / "evaluate.json").read_bytes() == (project / "metrics" / "evaluate.json").read_bytes()


def test_every_stage_is_one_linked_mlflow_run_in_the_root_store(project, monkeypatch, tmp_path):
    runs = dict(FIRST_REPRO["runs"])
    # One pipeline execution, one parent run: `dvc repro` runs in the workspace, and the parent is named so.
    (execution,) = runs.pop("pipeline")
    assert execution.info.run_name == "workspace" and execution.info.status == "FINISHED"
    assert {stage: len(found) for stage, found in runs.items()} == {
        "generate": 1,
        "prepare": 1,
        "train": 1,
        "evaluate": 1,
    }
    assert all(found[0].info.status == "FINISHED" for found in runs.values())
    assert all(found[0].data.tags["mlflow.parentRunId"] == execution.info.run_id for found in runs.values())
    # Its row compares with other executions': the stages' params and last metric values.
    assert execution.data.params["train.lr"] == runs["train"][0].data.params["train.lr"]
    assert execution.data.params["generate.seed"] == runs["generate"][0].data.params["generate.seed"]
    assert execution.data.metrics["miou"] == runs["evaluate"][0].data.metrics["miou"]
    assert execution.data.metrics["best_val_miou"] == runs["train"][0].data.metrics["best_val_miou"]
    train_run, evaluate_run = runs["train"][0], runs["evaluate"][0]
    prepare_run = runs["prepare"][0]
    dataset = json.loads((project / "data" / "prepared" / "dataset.json").read_text())
    assert {key: prepare_run.data.tags[key] for key in ("archive", "archive_sha256", "train_pixel_dtype")} == {
        key: dataset[key] for key in ("archive", "archive_sha256", "train_pixel_dtype")
    }
    assert prepare_run.data.metrics["train_images"] == 32
    pixels = [prepare_run.data.metrics[f"train_class_pixels.{name}"] for name in ["background"] + list("1234567890")]
    assert sum(pixels) == 32 * 64 * 64
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    assert all(found[0].data.tags["git_commit"] == commit for found in runs.values())

    committed_lr = load_params(project / "params.yaml")["train"]["lr"]
    assert train_run.data.params["train.lr"] == str(committed_lr)
    assert set(train_run.data.metrics) >= {"train_loss", "val_miou", "best_val_miou"}
    history = store(project).get_metric_history(train_run.info.run_id, "val_miou")
    assert [point.step for point in history] == [1, 2]
    # Time to accuracy: each epoch's validation mIoU is logged with its wall-clock time, and plotted.
    elapsed = store(project).get_metric_history(train_run.info.run_id, "elapsed_s")
    assert [point.step for point in elapsed] == [1, 2] and 0 < elapsed[0].value < elapsed[1].value
    train_artifacts = {item.path for item in store(project).list_artifacts(train_run.info.run_id)}
    assert {"miou_vs_time.png", "train_history.csv", "train.json", "config.json"} <= train_artifacts
    # The machine's figures while it trained (sampled each second here: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL).
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(train_run.data.metrics)
    # Both runs name what they read as an MLflow dataset input: the archive by its path and hash.
    for found, context, split in ((train_run, "training", "train"), (evaluate_run, "evaluation", "test")):
        (used,) = found.inputs.dataset_inputs
        assert (used.dataset.name, used.dataset.digest) == ("multi-digit-mnist.zip", dataset["archive_sha256"][:32])
        assert json.loads(used.dataset.source)["uri"] == str(project / dataset["archive"])
        assert {tag.key: tag.value for tag in used.tags} == {"mlflow.data.context": context, "split": split}

    # The evaluate run names its train run and carries the training params next to the test metrics.
    assert evaluate_run.data.tags["train_run_id"] == train_run.info.run_id
    assert evaluate_run.data.params["train.lr"] == train_run.data.params["train.lr"]
    assert evaluate_run.data.params["model.encoder_channels"] == "[8, 8, 8, 8]"
    assert evaluate_run.data.metrics["miou"] == pytest.approx(FIRST_REPRO["evaluate"]["miou"])
    artifacts = {item.path for item in store(project).list_artifacts(evaluate_run.info.run_id)}
    assert {"evaluate.json", "confusion_matrix.png", "predictions.png", "panel_confusions.npz"} <= artifacts
    # One confusion matrix per test panel, which add up to the set's.
    folder = Path(store(project).download_artifacts(evaluate_run.info.run_id, "", str(tmp_path)))
    with np.load(folder / "panel_confusions.npz", allow_pickle=False) as logged_panels:
        panels = logged_panels["confusions"]
    assert panels.shape == (12, 11, 11) and (panels.sum(axis=(1, 2)) == 64 * 64).all()
    assert panels.sum(0).tolist() == json.loads((folder / "confusion_matrix.json").read_text())
    assert (project / "mlartifacts").is_dir() and not (project / "mlruns").exists()

    # The model is an MLflow model with a signature, loadable and predicting the right shape.
    # set_tracking_uri also sets MLFLOW_TRACKING_URI, which monkeypatch puts back after the test; MLflow's
    # in-process URI stays set, which is harmless, since every other caller names its store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    logged = mlflow.search_logged_models(experiment_ids=[train_run.info.experiment_id], output_format="list")
    logged = [model for model in logged if model.source_run_id == train_run.info.run_id]
    assert len(logged) == 1
    info = mlflow.models.get_model_info(logged[0].model_uri)
    assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] == (-1, 3, 64, 64)
    # With pickle refused, MLflow checks every record of the pt2 archive with torch's weights-only
    # unpickler before loading: the logged model passes, so loading it cannot run planted code.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = mlflow.pytorch.load_model(logged[0].model_uri)
    assert loaded(torch.rand(2, 3, 64, 64)).shape == (2, 11, 64, 64)


def stop_queue_workers(root: Path, grace_s: float = 30) -> None:
    """Ends the queue workers still running in `root` (SIGTERM, then SIGKILL after `grace_s`).

    dvc-task's worker watches its own queue and shuts itself down once it finds it empty. Seen here
    (dvc-task 0.40.2): under load its check got no answer from the busy worker, took that for an empty queue,
    and sent a shutdown that the worker never received; the worker then idled forever, deaf to
    `dvc queue stop` too, while every experiment had finished. A signal still ends it.
    """

    def running(pid: int) -> bool:  # a queue worker, not an exited one or a recycled pid
        try:
            return b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False

    for pid_file in (root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
        pid = int(pid_file.read_text())
        if running(pid):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while running(pid) and time.monotonic() < deadline:
                time.sleep(0.5)
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_grid_sweep_queued_on_two_workers_runs_every_combination_into_dvc_and_mlflow(project, tmp_path):
    # A fresh store is where two workers race to create MLflow's tables. A copy of the project (with its
    # DVC cache, without its store) gives one, and leaves the shared project's store alone.
    copy = tmp_path / "project"
    shutil.copytree(
        project,
        copy,
        ignore=lambda folder, names: (
            {"mlflow.db", "mlflow.db.lock", "mlartifacts"}
            if Path(folder) == project
            else {"tmp"}
            if Path(folder) == project / ".dvc"
            else set()
        ),
    )
    run(["git", "checkout", "--", "params.yaml"], copy)
    # A key DVC does not know stops the sweep with its own message before anything is queued.
    refused = run(["dvc", "exp", "run", "--queue", "-S", "train.lrr=0.1,0.2"], copy, check=False)
    assert refused.returncode != 0 and "Key 'lrr' is not in struct" in refused.stderr
    # DVC's grid syntax: 2 learning rates x 2 seeds. Rates no earlier run used: DVC would restore a seen one
    # from its run cache, not train.
    run(["dvc", "exp", "run", "--queue", "-S", "train.lr=0.0011,0.0012", "-S", "seed=1,2"], copy)
    try:
        # `dvc queue start` returns at once, but its background workers keep its stdout: capturing that output
        # would wait for the workers to exit, and one may never exit (stop_queue_workers).
        with open(tmp_path / "queue-start.log", "w") as log:
            subprocess.run(
                ["dvc", "queue", "start", "-j", "2"],
                cwd=copy,
                env=clean_env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=True,
            )
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline:
            # `dvc queue status` can read a worker's record while the worker writes it, and fail on the half-written
            # JSON (seen here with dvc 3.67; treeverse/dvc#8014 reports its kin): the next poll reads it whole.
            polled = run(["dvc", "queue", "status"], copy, check=False)
            status = polled.stdout if polled.returncode == 0 else polled.stdout + polled.stderr
            if polled.returncode == 0 and status.count("Success") + status.count("Failed") >= 4:
                break
            time.sleep(5)  # each `dvc queue status` takes a second of CPU from the workers
    finally:
        run(["dvc", "queue", "stop"], copy, check=False)
        stop_queue_workers(copy)
    assert polled.returncode == 0 and status.count("Success") == 4, status

    # The sweep's experiments, by the names DVC gave them (the project holds earlier tests' experiments too).
    names = {line.split()[1] for line in status.splitlines() if line.endswith("Success")}
    shown = json.loads(run(["dvc", "exp", "show", "--json"], copy).stdout)
    swept = {
        exp["name"]: exp["data"]["params"]["params.yaml"]["data"]
        for baseline in shown
        for exp in (baseline.get("experiments") or [])
        for exp in exp["revs"]
        if exp["name"] in names
    }
    combinations = {(params["train"]["lr"], params["seed"]) for params in swept.values()}
    assert combinations == {(lr, seed) for lr in (0.0011, 0.0012) for seed in (1, 2)}, swept

    # In MLflow: one parent run per experiment, named after it, holding the stages it ran. Generate and prepare
    # were restored from DVC's cache (the data did not change), so they left no run.
    runs = runs_by_stage(copy)
    executions = {found.info.run_name: found for found in runs["pipeline"]}
    assert len(swept) == 4 and set(executions) == set(swept)
    for stage in ("train", "evaluate"):
        by_parent = {found.data.tags["mlflow.parentRunId"]: found for found in runs[stage]}
        assert set(by_parent) == {found.info.run_id for found in executions.values()}
        assert all(found.info.status == "FINISHED" for found in by_parent.values())
    for name, execution in executions.items():
        assert execution.info.status == "FINISHED" and execution.data.tags["dvc_experiment"] == name
        assert execution.data.params["train.lr"] == str(swept[name]["train"]["lr"])
    # The seed drives training: at each learning rate, the two seeds trained other weights.
    weights = {
        (found.data.params["train.lr"], found.data.params["seed"]): found.data.tags["model_sha256"]
        for found in runs["evaluate"]
    }
    assert all(weights[lr, "1"] != weights[lr, "2"] for lr in ("0.0011", "0.0012")), weights
    assert "generate" not in runs and "prepare" not in runs
    assert not list((copy / ".dvc" / "tmp").rglob("mlflow.db"))

    # The settings compared: two seeds per learning rate, on the same test panels.
    lines = run([sys.executable, "-m", "segnet.compare", "--by", "train.lr"], copy).stdout.splitlines()
    assert lines[0].startswith("test miou by train.lr on the same 12 panels"), lines
    means = {}
    for line, lr in zip(lines[2:4], ("0.0011", "0.0012"), strict=True):
        scores = [found.data.metrics["miou"] for found in runs["evaluate"] if found.data.params["train.lr"] == lr]
        means[lr] = sum(scores) / 2
        assert line.split()[:5] == [lr, "2", "(1,", "2)", f"{means[lr]:.4f}"], lines
    difference = lines[4].split()
    assert difference[:4] == ["train.lr=0.0012", "-", "train.lr=0.0011", f"{means['0.0012'] - means['0.0011']:+.4f}"]
    assert (
        lines[5]
        .strip()
        .endswith(("the interval of the difference excludes 0", "the interval of the difference holds 0"))
    )


def _output_bytes(root: Path) -> dict[str, bytes]:
    """Every file DVC tracks as a stage output: the built-in zip, prepared arrays, the model and the pictures."""
    files = [path for path in (root / "data").rglob("*") if path.is_file() and path.name != ".gitignore"]
    files += [root / "metrics" / name for name in ("confusion_matrix.png", "predictions.png")]
    return {str(path.relative_to(root)): path.read_bytes() for path in files}


def test_a_local_dvc_remote_takes_a_push_and_gives_back_every_output_on_pull(project, tmp_path):
    copy = tmp_path / "project"
    shutil.copytree(project, copy, ignore=lambda folder, names: {"tmp"} if Path(folder) == project / ".dvc" else set())
    assert "up to date" in run(["dvc", "status"], copy).stdout
    outputs = _output_bytes(copy)
    assert {"data/prepared/train_images.npy", "data/model/model.pt", "data/builtin/multi-digit-mnist.zip"} <= set(
        outputs
    )

    remote = tmp_path / "dvc-storage"
    run(["dvc", "remote", "add", "-d", "storage", str(remote)], copy)
    run(["dvc", "push"], copy)
    assert any(path.is_file() for path in remote.rglob("*"))
    # As on another machine: no outputs and no cache, only the repository and the remote.
    shutil.rmtree(copy / ".dvc" / "cache")
    for name in outputs:
        (copy / name).unlink()
    run(["dvc", "pull"], copy)
    assert _output_bytes(copy) == outputs
    assert "up to date" in run(["dvc", "status"], copy).stdout


def test_bad_archive_fails_clearly_and_keeps_the_last_good_results(project, tmp_path):
    lock_before = (project / "dvc.lock").read_text()
    metrics_before = (project / "metrics" / "evaluate.json").read_text()
    bad = tmp_path / "users-own.zip"
    write_zip(bad, {"multi-digit-mnist/batch00001.mat": b"not a mat file", "testset001.mat": b"nor this"})
    bad_bytes = bad.read_bytes()
    params_before = (project / "params.yaml").read_text()
    try:
        set_params(project, {"data": {"archive": str(bad)}})
        result = run(["dvc", "repro"], project, check=False)
    finally:
        (project / "params.yaml").write_text(params_before)
    assert result.returncode != 0
    assert f"{bad}:multi-digit-mnist/batch00001.mat: not a readable MATLAB 5 .mat file" in result.stderr
    assert "Traceback" not in result.stderr
    assert bad.read_bytes() == bad_bytes
    assert (project / "dvc.lock").read_text() == lock_before
    assert (project / "metrics" / "evaluate.json").read_text() == metrics_before
    # The last good outputs come back from the DVC cache: no stage needs to run again.
    restored = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in restored
    assert (project / "data" / "prepared" / "train_images.npy").is_file()
    assert (project / "metrics" / "evaluate.json").read_text() == metrics_before


def test_a_users_own_zip_outside_the_project_is_used_and_left_untouched(project, tmp_path):
    own = tmp_path / "elsewhere" / "multi-digit-mnist-dataset.zip"
    own.parent.mkdir()
    course_zip(own, np.random.default_rng(7), train_files=2, test_files=1, per_file=8, folder="data/multi-digit-mnist/")
    own_bytes = own.read_bytes()
    # Up to prepare, which is what reads the zip: what follows is the same for every archive.
    run(["dvc", "exp", "run", "-n", "own-zip", "-S", f"data.archive={own}", "prepare"], project)
    prepared = json.loads((project / "data" / "prepared" / "dataset.json").read_text())
    assert prepared["archive"] == str(own) and prepared["train_images"] == 16 and prepared["test_images"] == 8
    assert own.read_bytes() == own_bytes


def test_a_tracking_server_that_is_down_stops_a_stage_at_its_start(project):
    lock_before = (project / "dvc.lock").read_text()
    with dead_server_uri() as dead:
        # The timeout catches MLflow's own minutes-long retrying: the check must fail before any of it.
        result = subprocess.run(
            ["dvc", "repro", "--force", "--single-item", "train"],
            cwd=project,
            env=clean_env(MLFLOW_TRACKING_URI=dead),
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode != 0
    assert f"MLFLOW_TRACKING_URI={dead}: the MLflow tracking server does not answer" in result.stderr
    assert "Traceback" not in result.stderr
    assert "epoch" not in result.stderr  # no training started
    assert (project / "dvc.lock").read_text() == lock_before
    run(["dvc", "checkout"], project)
    assert (project / "data" / "model" / "model.pt").is_file()


def _start_repro(root: Path, *arguments: str) -> subprocess.Popen:
    """`dvc repro` in its own process group, as a terminal would run it, so a signal reaches every process."""
    return subprocess.Popen(
        ["dvc", "repro", *arguments],
        cwd=root,
        env=clean_env(),
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _signal_at_first_checkpoint(process: subprocess.Popen, root: Path, signum: int) -> tuple[str, str]:
    """Sends `signum` to the whole `dvc repro` process group as soon as a checkpoint exists."""
    try:
        deadline = time.monotonic() + 300
        while not list((root / "data" / "checkpoints").glob("*.pt")):
            assert process.poll() is None, f"training ended before any checkpoint:\n{process.communicate()}"
            assert time.monotonic() < deadline, "no checkpoint within 300 s"
            time.sleep(0.01)
        os.killpg(process.pid, signum)
        return process.communicate(timeout=120)
    except BaseException:
        # A training left running would hold DVC's lock, failing the cleanup's `dvc repro` and hiding this error,
        # and would slow every test still to run.
        kill_process_group(process)
        raise


def _checkpoint(root: Path) -> dict:
    (path,) = (root / "data" / "checkpoints").glob("*.pt")
    return torch.load(path, weights_only=True)


def test_killed_training_resumes_exactly_and_ctrl_c_saves_and_marks_the_run_killed(project):
    params_before = (project / "params.yaml").read_text()
    # 6 epochs of 3 steps (the tiny committed params; earlier tests may have left others in the workspace).
    # The first checkpoint comes at a random step (by step 3, an epoch's end), and the kill follows it at once.
    run(["git", "checkout", "--", "params.yaml"], project)
    run(["dvc", "repro"], project)  # back to the committed params' results, from DVC's run cache
    every = int(np.random.default_rng().integers(2, 12))
    print(f"checkpoint_steps: {every}")  # shown if the test fails, to repeat it
    set_params(project, {"train": {"epochs": 6}, "runtime": {"checkpoint_steps": every}})
    lock_before = (project / "dvc.lock").read_text()
    try:
        # SIGKILL: nothing can be saved at the kill, so training resumes from the last checkpoint.
        _signal_at_first_checkpoint(_start_repro(project), project, signal.SIGKILL)
        killed_at = _checkpoint(project)["state"]["loop"]["step"]
        killed_run = _checkpoint(project)["extra"]["mlflow_run_id"]
        # Checkpoints come every `every` steps and at each epoch's end (every 3 steps).
        assert 0 < killed_at < 18 and (killed_at % every == 0 or killed_at % 3 == 0), (every, killed_at)
        assert not (project / "data" / "model" / "model.pt").exists()
        assert (project / "dvc.lock").read_text() == lock_before
        assert store(project).get_run(killed_run).info.status == "RUNNING"  # nobody could end it

        # Resumed with checkpoints at another interval, which does not change the result: the run resumes, and
        # its MLflow run keeps the interval it started with and tags the new one (MLflow refuses to change a param).
        set_params(project, {"train": {"epochs": 6}, "runtime": {"checkpoint_steps": every + 1}})
        resumed = run(["dvc", "repro"], project)
        assert f"resuming at epoch {killed_at // 3 + 1}, step {killed_at} of 18" in resumed.stderr
        assert not list((project / "data" / "checkpoints").glob("*.pt"))  # deleted once finished
        finished = store(project).get_run(killed_run)
        assert finished.info.status == "FINISHED" and finished.data.tags["resumed_from_step"] == str(killed_at)
        assert finished.data.params["runtime.checkpoint_steps"] == str(every)
        assert len(finished.inputs.dataset_inputs) == 1  # the resumed part read the same archive
        assert finished.data.tags["resumed_with.runtime.checkpoint_steps"] == str(every + 1)
        resumed_weights = (project / "data" / "model" / "model.pt").read_bytes()
        resumed_metrics = (project / "metrics" / "evaluate.json").read_bytes()

        # The same run uninterrupted gives the same weights and test metrics to the bit.
        run(["dvc", "repro", "--force", "--single-item", "train", "evaluate"], project)
        assert (project / "data" / "model" / "model.pt").read_bytes() == resumed_weights
        assert (project / "metrics" / "evaluate.json").read_bytes() == resumed_metrics

        # Ctrl-C (SIGINT to the terminal's process group): the stage saves where it is and stops cleanly.
        _, stderr = _signal_at_first_checkpoint(
            _start_repro(project, "--force", "--single-item", "train"), project, signal.SIGINT
        )
        interrupted = _checkpoint(project)
        assert "SIGINT received: stopping after this step" in stderr and "Traceback" not in stderr
        assert f"training stopped at step {interrupted['state']['loop']['step']}" in stderr
        # Both messages start their own line: the progress bar's line is cleared for the first and ended before
        # the second (the bar redraws itself after a carriage return, so both are line breaks here).
        lines = re.split(r"[\r\n]", stderr)
        assert any(line.startswith("WARNING segnet.interrupt: SIGINT received") for line in lines), stderr
        assert any(line.startswith("ERROR segnet: interrupted: training stopped at step") for line in lines), stderr
        assert store(project).get_run(interrupted["extra"]["mlflow_run_id"]).info.status == "KILLED"
        assert not (project / "data" / "model" / "model.pt").exists()
        again = run(["dvc", "repro", "--force", "--single-item", "train"], project)
        assert f"step {interrupted['state']['loop']['step']} of 18" in again.stderr
        assert (project / "data" / "model" / "model.pt").read_bytes() == resumed_weights
        assert store(project).get_run(interrupted["extra"]["mlflow_run_id"]).info.status == "FINISHED"
    finally:
        (project / "params.yaml").write_text(params_before)
        run(["dvc", "repro"], project)
