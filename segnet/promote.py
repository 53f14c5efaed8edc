"""Registers a training run's model and makes it champion if it wins: `python -m segnet.promote RUN [--force]`.

RUN is a DVC experiment name, `workspace` (the model in data/model), or an MLflow run id (of a train run or of
the evaluate run that scored it). Its model becomes a version of params.yaml's `tracking.registered_model` in
MLflow's Model Registry, and the alias `champion` moves to it only when the paired comparison on the same test
panels puts its test mIoU above the champion's (segnet.tracking.registry). Otherwise it stays a registered
version, both scores and the interval of their difference are printed, and the command exits 1; `--force` moves
the alias regardless. Use the champion as `models:/NAME@champion` (python -m segnet.predict, mlflow models serve).
"""

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

from segnet.cli import run_stage
from segnet.evaluation.bootstrap import read_bootstrap
from segnet.params import load_params, read_experiment, read_registered_model
from segnet.tracking.comparison import find_evaluate_run
from segnet.tracking.registry import crown, decide, evaluate_run_of_training, is_train_run, register, training_run
from segnet.tracking.runs import find_project, use_project_store


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.promote", description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN", help="DVC experiment name, workspace, or a train or evaluate run id")
    parser.add_argument("--force", action="store_true", help="make it champion even if it does not beat the champion")
    arguments = parser.parse_args()
    root = find_project(Path.cwd())
    params = load_params(root / "params.yaml")
    experiment, name = read_experiment(params), read_registered_model(params)
    if any(character in name for character in "/:'"):  # MLflow refuses / and :, and ' would end its filters
        raise ValueError(f"params.yaml tracking.registered_model: {name!r} may not hold /, : or '")
    config = read_bootstrap(params["evaluate"])
    use_project_store(root)
    client = MlflowClient()
    if is_train_run(client, arguments.run):
        candidate = evaluate_run_of_training(client, experiment, arguments.run)
    else:
        candidate = find_evaluate_run(client, experiment, arguments.run, root)
    train_run_id = training_run(candidate)
    try:
        decision = decide(client, experiment, name, candidate, config)
    except ValueError as error:
        if not arguments.force:
            raise ValueError(f"{error}; --force makes it champion without a comparison") from error
        print(f"not compared: {error}")
        decision = None
    if decision:
        print("\n".join(decision.lines))
        if decision.current:
            return
    version = register(client, name, train_run_id)
    if decision and not decision.beats and not arguments.force:
        raise ValueError(
            f"{name} version {version.version} is registered but not champion: it does not beat the champion on "
            "these panels (--force makes it champion anyway)"
        )
    crown(client, name, version, candidate)
    print(f"models:/{name}@champion is now version {version.version} (train run {train_run_id})")


if __name__ == "__main__":
    run_stage(main)
