"""One MLflow parent run per pipeline execution, with the runs of its stages nested under it.

DVC runs each stage in its own process and tells it nothing that names the execution it belongs to: `dvc repro`
sets no variable, and `dvc exp run -f` reuses an experiment's name (DVC_EXP_NAME). The DVC process that runs the
stage does name it: its process id and start time are unique on the machine, and one DVC process runs one
execution at a time (a queue worker runs its experiments one after the other, each under its own name). The
first stage of an execution creates the parent run, named after its DVC experiment (`workspace` for `dvc repro`),
and each later stage finds it by that key. A stage run outside DVC (by hand) gets no parent.

The parent collects what its stages logged: their params, and the last value of each of their metrics, so that
its row in `mlflow ui` compares with other executions' rows. Each stage ends it with its own status; the last
stage to run leaves the execution's.
"""

import logging
import os
import socket
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

# Set by segnet.search: the run under which this execution's parent run is nested (a search's study run).
PARENT_RUN_ENV = "SEGNET_PARENT_RUN_ID"
# The tag naming an execution, and the `stage` tag of its parent run.
EXECUTION_TAG = "pipeline_execution"
PIPELINE = "pipeline"
# `dvc exp show` names the experiment in the workspace so; `dvc repro` runs there.
WORKSPACE = "workspace"
PARENT_TAG = "mlflow.parentRunId"

log = logging.getLogger(__name__)


def dvc_process(pid: int | None = None) -> str | None:
    """`PID.START` of the nearest ancestor process (of `pid`, default this one) that runs DVC; None if none does.

    START is the process's start time in clock ticks since boot, so that a later process reusing the id differs.
    """
    pid = os.getppid() if pid is None else pid
    while pid > 1:
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:3]
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # gone, or no /proc (not Linux)
            return None
        # The fields after the command's name, which may hold spaces, in parentheses: state, ppid, ...
        fields = stat.rsplit(")", 1)[1].split()
        # `dvc ...`, `python .venv/bin/dvc ...` or `python -m dvc ...` (DVC's queue workers).
        if any(Path(argument.decode(errors="replace")).name == "dvc" for argument in arguments):
            return f"{pid}.{fields[19]}"
        pid = int(fields[1])
    return None


def execution_name() -> str:
    return os.environ.get("DVC_EXP_NAME") or WORKSPACE


def open_execution(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> str | None:
    """The id of the running execution's parent run, created with `tags` by its first stage; None outside DVC.

    Callers hold the store's lock: two stages must not both create it.
    """
    process = dvc_process()
    if process is None:
        return None
    key = f"{execution_name()}@{socket.gethostname()}:{process}"
    found = client.search_runs([experiment_id], filter_string=f"tags.{EXECUTION_TAG} = '{key}'", max_results=1)
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run_tags = {**tags, "stage": PIPELINE, EXECUTION_TAG: key}
    if os.environ.get(PARENT_RUN_ENV):
        run_tags[PARENT_TAG] = os.environ[PARENT_RUN_ENV]
    return client.create_run(experiment_id, run_name=execution_name(), tags=run_tags).info.run_id


def close_execution(client: MlflowClient, parent_id: str, stage_run_id: str | None, status: str) -> None:
    """Copies a stage run's params and last metric values to its parent and ends the parent with `status`.

    A param the parent holds already keeps its value: MLflow refuses to change one, and a stage of the same
    execution logs the same value (evaluate logs the training params of the model it scores). A failure here is
    logged, not raised: the stage's own outcome, perhaps an error already on its way, is what the user must see.
    """
    try:
        if stage_run_id is not None:
            stage = client.get_run(stage_run_id).data
            logged = client.get_run(parent_id).data.params
            now = get_current_time_millis()
            params = [Param(key, value) for key, value in stage.params.items() if key not in logged]
            metrics = [Metric(key, value, now, 0) for key, value in stage.metrics.items()]
            for start in range(0, max(len(params), len(metrics)), 100):  # MLflow takes 100 params per batch
                client.log_batch(parent_id, metrics=metrics[start : start + 100], params=params[start : start + 100])
        client.set_terminated(parent_id, status)
    except MlflowException as error:
        log.warning("the pipeline run %s could not be updated: %s", parent_id, error)
