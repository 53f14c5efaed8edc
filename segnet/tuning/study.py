"""An Optuna study whose trials are DVC experiments: `python -m segnet.search SPACE.yaml --trials N`.

Each trial is `dvc exp run --temp -n STUDY-NUMBER -S key=value ... train`: a named DVC experiment (in `dvc exp
show`) that trains only, in a temporary copy, so the workspace stays as it was. The objective is the best
validation mIoU of the trial's training: the test set is scored once, for the winner, when the user applies it
and runs `dvc repro`; choosing among trials by test mIoU would fit the settings to the test set. The train stage
reports validation mIoU to the trial after every epoch (segnet.training.pruning), so a median pruner stops a
trial that falls behind the others at the same epoch; such a trial ends as PRUNED with the epochs it ran.

The study lives in `optuna.db` beside mlflow.db and resumes where it stopped: `--trials N` counts the finished
and pruned trials of the study, and a trial cut short by Ctrl-C is run again from its start. In MLflow the study
is one run (`search STUDY`), each trial's pipeline run is a child of it, and its stage runs are their children.
"""

import contextlib
import json
import logging
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
from dvc.repo import Repo
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, Trial, TrialState

from segnet.params import check_rules
from segnet.tracking.executions import PARENT_RUN_ENV, PIPELINE
from segnet.training.pruning import PRUNED_AT, PRUNER, TRIAL_ENV
from segnet.tuning.space import SearchSpace

log = logging.getLogger(__name__)

STORAGE_FILE = "optuna.db"
SEARCH = "search"  # the `stage` tag of a study's MLflow run
STUDY_TAG = "optuna_study"
# The study's user attributes: its space, and the trials cut short by Ctrl-C that were queued to run again.
SPACE = "space"
REQUEUED = "requeued"
INTERRUPTED = "interrupted"  # a trial's user attribute
# Optuna's study names become DVC experiment names (STUDY-NUMBER), which git refs restrict.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class SearchConfig:
    """How a search samples and prunes (params.yaml `search`; no stage reads it).

    Attributes:
        seed: Seeds TPE's sampler, so that a study proposes the same trials after the same results.
        startup_trials: Trials sampled at random and run to their end before TPE models the results and the
            pruner judges other trials.
        warmup_epochs: Epochs every trial trains before it may be pruned.
    """

    seed: int
    startup_trials: int
    warmup_epochs: int

    def __post_init__(self):
        check_rules(
            self,
            {
                "seed": (self.seed >= 0, "an integer >= 0"),
                "startup_trials": (self.startup_trials >= 1, "an integer >= 1"),
                "warmup_epochs": (self.warmup_epochs >= 0, "an integer >= 0"),
            },
        )


def storage_url(root: Path) -> str:
    return f"sqlite:///{root / STORAGE_FILE}"


def open_study(root: Path, name: str, space: SearchSpace, config: SearchConfig) -> optuna.Study:
    """The study `name` in the project's storage, created for `space` or resumed with it.

    Raises:
        ValueError: The name is not usable as a DVC experiment name, or the study exists with another space.
    """
    if not STUDY_NAME.fullmatch(name):
        raise ValueError(f"study name {name!r}: use letters, digits, - and _ (it names the trials' DVC experiments)")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search prints one line per trial itself
    study = optuna.create_study(
        study_name=name,
        storage=storage_url(root),
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.seed, n_startup_trials=config.startup_trials),
        load_if_exists=True,
    )
    stored = study.user_attrs.get(SPACE)
    if stored is not None and stored != space.canonical:
        raise ValueError(
            f"{root / STORAGE_FILE}: study {name!r} exists with another space ({stored}); its trials would not "
            "compare with new ones. Name a new study (--study NAME), or restore the space it was started with"
        )
    if stored is None:
        study.set_user_attr(SPACE, space.canonical)
        for point in space.first_trials:
            study.enqueue_trial(point)
    study.set_user_attr(PRUNER, {"n_startup_trials": config.startup_trials, "n_warmup_steps": config.warmup_epochs})
    _requeue_interrupted(study)
    return study


def _requeue_interrupted(study: optuna.Study) -> None:
    """Queues again, with the same params, each trial a Ctrl-C cut short (and one left RUNNING by a killed search)."""
    abandoned = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for trial in abandoned:
        study.tell(trial.number, state=TrialState.FAIL)
    requeued = list(study.user_attrs.get(REQUEUED, []))
    interrupted = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if INTERRUPTED in t.user_attrs
    ]
    for trial in [*abandoned, *interrupted]:
        if trial.number not in requeued:
            study.enqueue_trial(trial.params, user_attrs={"repeats_trial": trial.number})
            requeued.append(trial.number)
    study.set_user_attr(REQUEUED, requeued)


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def run_search(
    root: Path, study: optuna.Study, space: SearchSpace, trials: int, client: MlflowClient, experiment_id: str
) -> None:
    """Runs trials until the study holds `trials` finished or pruned ones, each a `dvc exp run`.

    Raises:
        ValueError: A trial failed (not pruned); the message holds the end of its output and its log file.
        KeyboardInterrupt: Ctrl-C; the running trial is marked to run again when the search resumes.
    """
    study_run = _study_run(client, experiment_id, study, space, trials)
    status = "FAILED"
    try:
        while finished(study) < trials:
            trial = study.ask(space.distributions)
            state, value = _run_trial(root, study, trial, space, study_run)
            client.log_metric(study_run, "trial_value", value if value is not None else float("nan"), step=trial.number)
            _tag_trial_run(client, experiment_id, trial_name(study, trial), trial.number, state)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _end_study_run(client, study_run, study, status)


def trial_name(study: optuna.Study, trial: Trial | FrozenTrial) -> str:
    return f"{study.study_name}-{trial.number}"


def _run_trial(
    root: Path, study: optuna.Study, trial: Trial, space: SearchSpace, study_run: str
) -> tuple[TrialState, float | None]:
    """Runs one trial's `dvc exp run`, tells the study how it ended, prints a line; returns (state, value)."""
    name = trial_name(study, trial)
    values = {**space.fixed, **trial.params}
    settings = [argument for key, value in values.items() for argument in ("-S", f"{key}={json.dumps(value)}")]
    command = ["dvc", "exp", "run", "--temp", "-n", name, *settings, "train"]
    shown = " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}" for key, value in trial.params.items()
    )
    print(f"trial {trial.number} ({name}): {shown}", flush=True)
    env = {
        **os.environ,
        TRIAL_ENV: f"{storage_url(root)}|{study.study_name}|{trial._trial_id}",
        PARENT_RUN_ENV: study_run,
    }
    start, started_at = time.monotonic(), time.time()
    with tempfile.NamedTemporaryFile("w", prefix=f"{name}-", suffix=".log", delete=False) as output:
        try:
            returncode = subprocess.run(command, cwd=root, env=env, stdout=output, stderr=subprocess.STDOUT).returncode
        except KeyboardInterrupt:
            trial.set_user_attr(INTERRUPTED, True)
            study.tell(trial, state=TrialState.FAIL)
            raise
    seconds = time.monotonic() - start
    if returncode != 0:
        trial.set_user_attr("log", output.name)
        study.tell(trial, state=TrialState.FAIL)
        tail = "\n".join(Path(output.name).read_text(errors="replace").splitlines()[-15:])
        raise ValueError(
            f"trial {trial.number} ({name}): `{' '.join(command)}` exited with {returncode}:\n{tail}\n"
            f"(its whole output: {output.name})"
        )
    os.unlink(output.name)
    reported = study.get_trials(deepcopy=False)[trial.number]
    trial.set_user_attr("seconds", round(seconds, 1))
    if PRUNED_AT in reported.user_attrs:
        _forget_trainings(root, since=started_at)
        study.tell(trial, state=TrialState.PRUNED)
        print(f"  pruned after epoch {reported.user_attrs[PRUNED_AT]} ({seconds:.0f} s)", flush=True)
        return TrialState.PRUNED, None
    # No reports: DVC restored this training from its run cache (the same params, data and code ran before).
    value = max(reported.intermediate_values.values()) if reported.intermediate_values else _restored_value(root, name)
    study.tell(trial, value)
    print(f"  best validation miou {value:.4f} ({seconds:.0f} s)", flush=True)
    return TrialState.COMPLETE, value


def _forget_trainings(root: Path, since: float) -> None:
    """Removes from DVC's run cache the train stage's runs written since `since` (a time.time()).

    The run cache holds one file per stage run, which DVC restores for the same params, data and code instead of
    running the stage. A pruned training stopped early because of other trials, which its params do not say:
    left there, it would be restored for a later `dvc exp run` with the same params, which asks for the whole
    training.
    """
    for entry in Path(Repo(str(root)).stage_cache.cache_dir).glob("*/*/*"):
        if entry.stat().st_mtime >= since and entry.read_text().startswith("cmd: python -m stages.train"):
            entry.unlink()
            with contextlib.suppress(OSError):  # other runs of the same stage and params share the folder
                entry.parent.rmdir()


def _restored_value(root: Path, name: str) -> float:
    """The best validation mIoU in the metrics/train.json of DVC experiment `name` (a git ref under refs/exps)."""
    refs = subprocess.run(
        ["git", "for-each-ref", "--format=%(refname)", "refs/exps"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    ref = next(ref for ref in refs if ref.endswith(f"/{name}"))
    shown = subprocess.run(
        ["git", "show", f"{ref}:metrics/train.json"], cwd=root, capture_output=True, text=True, check=True
    )
    return float(json.loads(shown.stdout)["best_val_miou"])


def _study_run(client: MlflowClient, experiment_id: str, study: optuna.Study, space: SearchSpace, trials: int) -> str:
    """The study's MLflow run: found again when the search resumes, else created with the space as params."""
    name = study.study_name
    found = client.search_runs(
        [experiment_id], filter_string=f"tags.stage = '{SEARCH}' and tags.{STUDY_TAG} = '{name}'", max_results=1
    )
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        tags = {"stage": SEARCH, STUDY_TAG: name}
        run_id = client.create_run(experiment_id, run_name=f"search {name}", tags=tags).info.run_id
        params = [Param(f"space.{key}", str(value)) for key, value in space.distributions.items()]
        params += [Param(key, json.dumps(value)) for key, value in space.fixed.items()]
        client.log_batch(run_id, params=params[:100])
    client.set_tag(run_id, "trials", str(trials))
    return run_id


def _tag_trial_run(client: MlflowClient, experiment_id: str, name: str, number: int, state: TrialState) -> None:
    """Marks the trial's pipeline run with its trial number and how it ended (PRUNED shows in `mlflow ui`)."""
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.stage = '{PIPELINE}' and tags.dvc_experiment = '{name}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        client.set_tag(found[0].info.run_id, "optuna_trial", str(number))
        client.set_tag(found[0].info.run_id, "optuna_state", state.name)


def _end_study_run(client: MlflowClient, run_id: str, study: optuna.Study, status: str) -> None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = max(complete, key=lambda trial: trial.values[0])
        client.log_metric(run_id, "best_val_miou", best.values[0])
        client.set_tag(run_id, "best_trial", trial_name(study, best))
    client.set_terminated(run_id, status)
