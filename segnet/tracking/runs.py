"""MLflow tracking: one run per stage execution, all in one store at the repository root.

The default store is `sqlite:///<root>/mlflow.db` with artifacts in `<root>/mlartifacts/`, where <root>
is the repository root even when DVC runs a stage in a temporary copy (`dvc exp run --temp` or
`--queue` execute under `<root>/.dvc/tmp/exps/`). MLFLOW_TRACKING_URI overrides the store; a relative
path in it is taken from <root> too, and a SQLite store named there keeps its artifacts beside it.
"""

import contextlib
import fcntl
import logging
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from segnet.errors import TrackingError
from segnet.params import flatten
from segnet.tracking.executions import PARENT_TAG, close_execution, open_execution
from segnet.tracking.lineage import log_dataset

log = logging.getLogger(__name__)

TRAIN_STAGE = "train"
EVALUATE_STAGE = "evaluate"
# What each stage's run does with its dataset (MLflow's context), and the split it reads.
DATASET_USE = {TRAIN_STAGE: ("training", "train"), EVALUATE_STAGE: ("evaluation", "test")}
# The evaluate run's per-panel confusion matrices, from which `python -m segnet.compare` resamples two runs.
PANEL_CONFUSIONS = "panel_confusions.npz"


def project_root(start: Path | None = None) -> Path:
    """The repository whose tracking store runs belong to, seen from `start` (default: the cwd)."""
    path = (start or Path.cwd()).resolve()
    parts = path.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return path


def find_project(start: Path) -> Path:
    """The project `start` lies in: the nearest folder at or above it with a params.yaml (as DVC's root has).

    Raises:
        ValueError: There is none.
    """
    for folder in (start, *start.parents):
        if (folder / "params.yaml").is_file():
            return project_root(folder)
    raise ValueError(f"{start}: no params.yaml here or above; run from the project")


def default_tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def resolve_tracking_uri(uri: str, root: Path) -> str:
    """`uri` with a relative local path (a SQLite file, a file store's folder) taken from the repository root.

    DVC runs `--temp` and `--queue` experiments in a copy of the repository that it deletes afterwards: a
    store named relative to the working directory (`sqlite:///mlflow.db`, MLflow's own quick-start value)
    would be created in that copy and deleted with it, runs and all, without an error.
    """
    if uri.startswith("sqlite:///"):
        database = uri.removeprefix("sqlite:///")
        if database and not database.startswith(("/", ":memory:")):
            return f"sqlite:///{root / database}"
        return uri
    if uri.startswith("file:") and not uri.startswith("file://"):  # file:mlruns, file:./mlruns
        path = Path(uri.removeprefix("file:"))
        return uri if path.is_absolute() else (root / path).as_uri()
    if "://" not in uri and not uri.startswith(("file:", "databricks")):  # a plain path: a file store
        path = Path(uri).expanduser()
        return str(path if path.is_absolute() else root / path)
    return uri


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a `sqlite:///` store on disk (None for other stores and in-memory ones)."""
    path = Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None
    return path if path is not None and path.is_absolute() else None


def artifact_location(uri: str) -> str | None:
    """Where a new experiment in the store `uri` keeps its artifacts: `mlartifacts/` beside a SQLite file.

    MLflow's default for a SQLite store is `./mlruns` under the working directory, which in DVC's temporary
    copies is deleted with them. A file store keeps artifacts inside itself, and a server decides for itself.
    """
    database = _sqlite_file(uri)
    return (database.parent / "mlartifacts").as_uri() if database else None


def check_server(uri: str, timeout: float = 5.0) -> None:
    """Fails fast, naming `uri`, when it is an MLflow server that does not answer its health check.

    MLflow's own client retries a dead server with back-off for minutes, and a stage would only meet it
    after reading its inputs; this check runs first. Stores that are not servers (sqlite, files) pass.
    """
    if not uri.startswith(("http://", "https://")):
        return
    health = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            if response.status == 200:
                return
            reason = f"HTTP {response.status}"
    except (urllib.error.URLError, OSError) as error:
        reason = str(getattr(error, "reason", error))
    raise TrackingError(
        f"MLFLOW_TRACKING_URI={uri}: the MLflow tracking server does not answer ({health}: {reason}). "
        "Start it (for example `mlflow server --host 127.0.0.1 --port 5000`), correct MLFLOW_TRACKING_URI, "
        "or unset it to use the project's own store (mlflow.db at the repository root)."
    )


def use_project_store(root: Path) -> str:
    """Points MLflow at the project's store (MLFLOW_TRACKING_URI, or the default at `root`); returns its URI.

    Raises:
        TrackingError: MLFLOW_TRACKING_URI names a server that does not answer.
    """
    # Read before set_tracking_uri, which writes MLFLOW_TRACKING_URI into the environment itself.
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if user_uri:
        check_server(user_uri)
    uri = resolve_tracking_uri(user_uri, root) if user_uri else default_tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    # The files this project downloads are small; MLflow's progress bars would only clutter stderr.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return uri


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """Holds an exclusive lock beside a SQLite store while it may be created.

    MLflow creates a fresh SQLite store's tables on first use, and two processes doing that at once (two
    queued experiments, `dvc queue start -j 2`) race: one fails with "duplicate column" or "table already
    exists". The same holds for creating the experiment. Serialising first use removes both races.
    """
    database = _sqlite_file(uri)
    if database is None:
        yield
        return
    lock_path = Path(f"{database}.lock")
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment `name` in the store `uri`, created with `artifact_location(uri)` if it is new.

    MLflow stores an experiment's artifact folder as an absolute path. Two stored folders that new runs must
    not write to are refused: `mlartifacts/` beside the SQLite file where it used to be, which after the
    store (or the project holding it) was moved or copied is the old folder, or is recreated outside if it
    is gone; and a folder in one of DVC's temporary copies (MLflow's default `./mlruns` there, before
    artifact_location existed), which DVC deleted when that experiment ended.
    """
    expected = artifact_location(uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, artifact_location=expected)
    stored = experiment.artifact_location
    if expected is None or stored == expected:
        return experiment.experiment_id
    if stored.rstrip("/").endswith("/mlartifacts"):
        reason = "the store was moved or copied after its runs were recorded, and new runs would write there"
    elif "/.dvc/tmp/exps/" in stored:
        reason = "a folder in a DVC experiment's temporary copy, which DVC deleted when that experiment ended"
    else:
        return experiment.experiment_id  # a folder the user chose or an older layout: theirs to keep
    raise TrackingError(
        f"{_sqlite_file(uri)}: experiment '{name}' keeps its artifacts in {stored}, not in {expected}: {reason}. "
        "Move the store and the mlartifacts/ beside it out of the way to start a fresh one, or set "
        "tracking.experiment to a new name (every stage reads it, so all of them run again)."
    )


def project_experiment(experiment: str, root: Path) -> tuple[MlflowClient, str]:
    """A client of the project's store and the id of `experiment` in it, created if new."""
    uri = use_project_store(root)
    with _store_lock(uri):  # the client's first use creates a fresh store's tables
        client = MlflowClient()
        return client, _experiment_id(client, experiment, uri)


def _git_commit(cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return result.stdout.strip()


@contextlib.contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: dict,
    tags: dict | None = None,
    resume_run_id: str | None = None,
    dataset: dict | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Opens the MLflow run of one stage execution, with its params, identifying tags and the `dataset` it
    reads (a prepared folder's dataset.json) as an MLflow dataset input. A train run samples the machine's
    CPU, memory and GPU use as MLflow system metrics while it runs.

    A stage that raises ends its run as FAILED; one stopped by Ctrl-C or SIGTERM (KeyboardInterrupt) ends it
    as KILLED. `resume_run_id` reopens that run (a training resumed from its checkpoint) when the store
    still has it; otherwise a new run is started.
    """
    # `-S tracking.experiment=2026` arrives as a number, which MLflow refuses with a traceback.
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"the MLflow experiment must be a non-empty name, got {experiment!r}")
    root = project_root()
    uri = use_project_store(root)
    execution_tags = {"project_root": str(root)}
    dvc_experiment = os.environ.get("DVC_EXP_NAME")
    if dvc_experiment:
        execution_tags["dvc_experiment"] = dvc_experiment
    if os.environ.get("DVC_EXP_BASELINE_REV"):
        execution_tags["dvc_baseline_rev"] = os.environ["DVC_EXP_BASELINE_REV"]
    commit = _git_commit(Path.cwd())
    if commit:
        execution_tags["git_commit"] = commit
        execution_tags["mlflow.source.git.commit"] = commit
    with _store_lock(uri):  # the client's first use creates a fresh store's tables
        client = MlflowClient()
        experiment_id = _experiment_id(client, experiment, uri)
        parent_id = open_execution(client, experiment_id, execution_tags)
    run_tags = {"stage": stage, **execution_tags, **(tags or {})}
    if parent_id:
        run_tags[PARENT_TAG] = parent_id  # a resumed training run moves under the execution that resumes it
    run_name = f"{stage} {dvc_experiment}" if dvc_experiment else stage
    # The system metrics monitor announces its start, its GPU search and its stop at INFO on every run.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    if resume_run_id and not _run_exists(resume_run_id, experiment_id):
        log.warning("run %s to resume is not in this tracking store; starting a new run", resume_run_id)
        resume_run_id = None
    status, run_id = "FAILED", None
    try:
        with mlflow.start_run(
            run_id=resume_run_id,
            experiment_id=experiment_id,
            run_name=run_name,
            tags=run_tags,
            log_system_metrics=stage == TRAIN_STAGE,
        ) as run:
            run_id = run.info.run_id
            try:
                _log_params(flatten(params), run if resume_run_id else None)
                if dataset is not None:
                    log_dataset(dataset, root, *DATASET_USE[stage])
                yield run
                status = "FINISHED"
            except KeyboardInterrupt:
                status = "KILLED"
                mlflow.end_run(status=status)
                raise
    finally:
        if parent_id:
            close_execution(client, parent_id, run_id, status)


def _log_params(params: dict, resumed: mlflow.ActiveRun | None) -> None:
    """Logs `params` to the active run. A resumed run keeps the values it was started with: MLflow refuses to
    change a logged param, and a checkpoint resumes despite a changed `runtime.checkpoint_steps` (it does not
    change the result), so a changed value is recorded as the tag `resumed_with.<key>` instead."""
    logged = resumed.data.params if resumed else {}
    changed = {key: value for key, value in params.items() if key in logged and logged[key] != str(value)}
    for key, value in changed.items():
        log.warning(
            "%s was %s when this run started; the resumed part runs with %s (tag resumed_with.%s)",
            key,
            logged[key],
            value,
            key,
        )
    mlflow.set_tags({f"resumed_with.{key}": value for key, value in changed.items()})
    mlflow.log_params({key: value for key, value in params.items() if key not in logged})


def _run_exists(run_id: str, experiment_id: str) -> bool:
    try:
        found = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return found.info.experiment_id == experiment_id and found.info.lifecycle_stage == "active"


def find_run(experiment: str, stage: str, tag: str, value: str, finished: bool = False) -> str | None:
    """The id of the latest run of `stage` whose tag `tag` equals `value`, of the FINISHED ones if `finished`
    (None if there is none)."""
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    if found is None or "'" in value:  # a quote would end the filter's string: no tag value we write has one
        return None
    status = " and attributes.status = 'FINISHED'" if finished else ""
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.stage = '{stage}' and tags.{tag} = '{value}'{status}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def log_metrics(values: dict, step: int | None = None) -> None:
    """Logs the numeric leaves of a (nested) metrics dict; nulls (absent classes) are skipped."""
    numeric = {k: float(v) for k, v in flatten(values).items() if isinstance(v, (int, float)) and v is not None}
    mlflow.log_metrics(numeric, step=step)


def log_panel_confusions(confusions: np.ndarray) -> None:
    """Logs per-panel confusion matrices (N, classes, classes) to the active run as PANEL_CONFUSIONS."""
    # int32: a count is at most one panel's pixels. Compressed: most cells are 0.
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / PANEL_CONFUSIONS
        np.savez_compressed(path, confusions=confusions.astype(np.int32))
        mlflow.log_artifact(str(path))


def load_panel_confusions(run_id: str) -> np.ndarray:
    """The per-panel confusion matrices an evaluate run logged (int64), from the active tracking store.

    Raises:
        ValueError: The run has none (it was scored before they were logged), or they are not what evaluate logs.
    """
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=PANEL_CONFUSIONS, dst_path=folder)
        except (mlflow.exceptions.MlflowException, OSError) as error:
            raise ValueError(
                f"run {run_id}: no {PANEL_CONFUSIONS} among its artifacts ({error}); score its "
                "model again with the evaluate stage (in its workspace: "
                "dvc repro --force --single-item evaluate)"
            ) from error
        try:
            with np.load(path, allow_pickle=False) as archive:
                confusions = archive["confusions"]
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"run {run_id}: {PANEL_CONFUSIONS} is not what evaluate logs ({error})") from error
    if confusions.ndim != 3 or confusions.shape[1] != confusions.shape[2] or confusions.dtype != np.int32:
        raise ValueError(
            f"run {run_id}: {PANEL_CONFUSIONS} holds {confusions.dtype} {confusions.shape}, "
            "not per-panel confusion matrices"
        )
    return confusions.astype(np.int64)
