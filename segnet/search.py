"""Search the settings: `python -m segnet.search SPACE.yaml --trials N [--study NAME]`.

An Optuna study (TPE sampling, median pruning on validation mIoU) whose trials are `dvc exp run`s of the train
stage; segnet.tuning.study says how. It ends by printing the best trial and the commands that make it the
workspace's model and score it on the test set. Ctrl-C stops it; the same command resumes it.
"""

import argparse
from pathlib import Path

from ruamel.yaml import YAML

from segnet.cli import run_stage
from segnet.params import build, load_params, read_experiment
from segnet.tracking.runs import find_project, project_experiment
from segnet.tuning import SearchConfig, open_study, read_space, run_search, trainable_params
from segnet.tuning.study import STORAGE_FILE, trial_name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.search", description=__doc__.splitlines()[0])
    parser.add_argument("space", type=Path, metavar="SPACE.yaml", help="the params to search and their ranges")
    parser.add_argument("--trials", type=int, required=True, help="finished or pruned trials the study should hold")
    parser.add_argument("--study", help="the study's name (default: the space file's name without .yaml)")
    arguments = parser.parse_args()
    if arguments.trials < 1:
        raise ValueError(f"--trials: must be at least 1, got {arguments.trials}")
    root = find_project(Path.cwd())
    params = load_params(root / "params.yaml")
    config = build(SearchConfig, "search", params.get("search"))
    train_stage = YAML(typ="safe", pure=True).load((root / "dvc.yaml").read_text())["stages"]["train"]
    space = read_space(arguments.space, trainable_params(params, train_stage["params"]))
    client, experiment_id = project_experiment(read_experiment(params), root)
    study = open_study(root, arguments.study or arguments.space.stem, space, config)
    run_search(root, study, space, arguments.trials, client, experiment_id)
    best = study.best_trial
    print(
        f"best of {len(study.trials)} trials in study {study.study_name!r} ({root / STORAGE_FILE}): trial "
        f"{best.number}, validation miou {best.value:.4f}, {best.params}\n"
        f"  dvc exp apply {trial_name(study, best)} && dvc repro   # its settings and model here, then its test score"
    )


if __name__ == "__main__":
    run_stage(main)
