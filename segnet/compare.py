"""Whether two runs' test mIoU really differ: `python -m segnet.compare A B`.

A and B are finished evaluate runs, named by MLflow run id, DVC experiment name or `workspace`
(segnet.tracking.comparison says how each is found and how the paired bootstrap works). The resampling
settings are params.yaml's `evaluate.bootstrap`.
"""

import argparse
import os
from pathlib import Path

from mlflow.tracking import MlflowClient

from segnet.cli import run_stage
from segnet.evaluation.bootstrap import read_bootstrap
from segnet.params import load_params
from segnet.tracking.comparison import compare, find_evaluate_run, find_project, warn_of_other_settings
from segnet.tracking.runs import use_project_store


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.compare", description=__doc__.splitlines()[0])
    parser.add_argument("first", metavar="A", help="evaluate run id, DVC experiment name, or workspace")
    parser.add_argument("second", metavar="B", help="evaluate run id, DVC experiment name, or workspace")
    arguments = parser.parse_args()
    root = find_project(Path.cwd())
    params = load_params(root / "params.yaml")
    config = read_bootstrap(params["evaluate"])
    if config.resamples < 1:
        raise ValueError(
            "params.yaml evaluate.bootstrap.resamples: 0 turns the intervals off; set it (to 1000, say) to compare"
        )
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # two small files: stderr stays clean
    use_project_store(root)
    client = MlflowClient()
    experiment = params["tracking"]["experiment"]
    first, second = (find_evaluate_run(client, experiment, name, root) for name in (arguments.first, arguments.second))
    warn_of_other_settings([first, second], config)
    print("\n".join(compare(first, second, config)))


if __name__ == "__main__":
    run_stage(main)
