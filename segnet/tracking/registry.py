"""The Model Registry: every promoted model under one name, and the alias `champion` on the best of them.

A training run's model (the MLflow model the train stage logs) is registered as a version of the name in
params.yaml's `tracking.registered_model`. The alias `champion` moves to it only when the paired comparison of
segnet.tracking.comparison, on the test panels both models scored, puts its test mIoU above the champion's:
the interval of the difference must exclude 0. The first model registered becomes champion unopposed.
"""

import contextlib
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from segnet.evaluation.bootstrap import BootstrapConfig
from segnet.tracking.comparison import compare, describe
from segnet.tracking.runs import EVALUATE_STAGE, TRAIN_STAGE, find_run

CHAMPION = "champion"
# Where the train stage logs its model in its run (segnet.tracking.export.log_model).
MODEL_PATH = "model"


@dataclass
class Decision:
    """What promote found: lines that say why, and whether the alias should move (`beats`; False too when the
    candidate already is the champion, `current`)."""

    lines: list[str]
    beats: bool
    current: bool = False


def training_run(evaluate: Run) -> str:
    """The id of the train run whose model `evaluate` scored (its `train_run_id` tag).

    Raises:
        ValueError: The evaluate stage found no train run with that model's hash in this store.
    """
    run_id = evaluate.data.tags.get("train_run_id")
    if not run_id:
        raise ValueError(
            f"{describe(evaluate)}: scored a model that no train run in this store logged (no train_run_id tag); "
            "only a model trained with this store tracking it can be registered"
        )
    return run_id


def evaluate_run_of_training(client: MlflowClient, experiment: str, train_run_id: str) -> Run:
    """The latest finished evaluate run that scored the model of the train run `train_run_id`.

    Raises:
        ValueError: None did (a search trial, say, which trains only).
    """
    found = find_run(experiment, EVALUATE_STAGE, "train_run_id", train_run_id, finished=True)
    if found is None:
        raise ValueError(
            f"train run {train_run_id}: no finished evaluate run scored its model; score it first "
            "(for a DVC experiment: dvc exp apply NAME && dvc repro)"
        )
    return client.get_run(found)


def is_train_run(client: MlflowClient, run_id: str) -> bool:
    """Whether `run_id` names a train run of this store."""
    try:
        return client.get_run(run_id).data.tags.get("stage") == TRAIN_STAGE
    except MlflowException:
        return False


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version of `name` that holds the alias `champion` (None: no such model, or no champion yet)."""
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def decide(client: MlflowClient, experiment: str, name: str, candidate: Run, config: BootstrapConfig) -> Decision:
    """Whether the model `candidate` (an evaluate run) scored beats the champion of `name`, and why.

    Raises:
        ValueError: The two cannot be compared (other test panels, no per-panel matrices); the message says
            why, and --force is the way past it.
    """
    current = champion(client, name)
    if current is None:
        return Decision([f"{name} has no champion yet: {describe(candidate)} becomes the first"], beats=True)
    if not current.run_id:  # registered by hand from a file, say
        raise ValueError(f"the champion, {name} version {current.version}, names no training run to compare with")
    # The same weights from another training (training is bit-exact) are the champion too.
    champion_weights = current.tags.get("model_sha256")
    same_weights = bool(champion_weights) and candidate.data.tags.get("model_sha256") == champion_weights
    if current.run_id == training_run(candidate) or same_weights:
        return Decision(
            [f"{describe(candidate)} is already the champion ({name} version {current.version})"], False, True
        )
    try:
        defending = champion_score(client, experiment, current, candidate)
        comparison = compare(defending, candidate, config, names=(f"champion v{current.version}", "candidate"))
    except ValueError as error:
        raise ValueError(f"cannot compare with the champion ({name} version {current.version}): {error}") from error
    return Decision(comparison.lines, beats=comparison.low > 0)


def champion_score(client: MlflowClient, experiment: str, current: ModelVersion, candidate: Run) -> Run:
    """The evaluate run that scored the champion `current` on the candidate's test set: the one that won it the
    alias (its `evaluate_run_id` tag), else the latest that scored its training's model on those panels.

    Raises:
        ValueError: None did.
    """
    panels = candidate.data.tags.get("dataset_sha256")
    with contextlib.suppress(MlflowException):
        won = client.get_run(current.tags.get("evaluate_run_id", ""))
        if won.data.tags.get("dataset_sha256") == panels and won.info.status == "FINISHED":
            return won
    found = find_run(experiment, EVALUATE_STAGE, "train_run_id", str(current.run_id), finished=True)
    latest = client.get_run(found) if found else None
    if latest is None or latest.data.tags.get("dataset_sha256") != panels:
        raise ValueError(
            f"no finished evaluate run in experiment '{experiment}' scored it on the candidate's test set "
            f"(dataset_sha256 {panels})"
        )
    return latest


def register(client: MlflowClient, name: str, train_run_id: str) -> ModelVersion:
    """The version of `name` holding the train run's model: the one registered before, or a new one.

    Raises:
        ValueError: The run logged no model (it failed, was stopped, or was a pruned search trial).
    """
    for version in client.search_model_versions(f"name = '{name}' and run_id = '{train_run_id}'"):
        return version
    run = client.get_run(train_run_id)
    logged = [
        model
        for model in client.search_logged_models(
            [run.info.experiment_id], filter_string=f"source_run_id = '{train_run_id}'"
        )
        if model.name == MODEL_PATH
    ]
    if not logged:
        raise ValueError(f"train run {train_run_id}: logged no model (status {run.info.status.lower()})")
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="SegNet on multi-digit MNIST (python -m segnet.promote)")
    model_id = logged[0].model_id
    return client.create_model_version(name, f"models:/{model_id}", run_id=train_run_id, model_id=model_id)


def crown(client: MlflowClient, name: str, version: ModelVersion, evaluate: Run) -> None:
    """Moves the alias `champion` to `version`, recording on it the evaluate run that won it and its score."""
    client.set_model_version_tag(name, version.version, "evaluate_run_id", evaluate.info.run_id)
    client.set_model_version_tag(name, version.version, "model_sha256", evaluate.data.tags.get("model_sha256", ""))
    client.set_model_version_tag(name, version.version, "test_miou", str(evaluate.data.metrics.get("miou")))
    client.set_registered_model_alias(name, CHAMPION, version.version)
