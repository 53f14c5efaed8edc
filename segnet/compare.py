"""Whether two runs', or two settings', test mIoU really differ: `python -m segnet.compare A B | --by KEY`.

A and B are finished evaluate runs, named by MLflow run id, DVC experiment name or `workspace`
(segnet.tracking.comparison says how each is found and how the paired bootstrap works). `--by KEY`
[--where KEY=VALUE ...] [--values V1,V2,...] instead groups the evaluate runs by their value of the param
KEY, each group several seeds of one setting (segnet.tracking.groups), and compares the groups over both
seeds and panels. The resampling settings are params.yaml's `evaluate.bootstrap`.
"""

import argparse
from pathlib import Path

from mlflow.tracking import MlflowClient

from segnet.cli import run_stage
from segnet.evaluation.bootstrap import read_bootstrap
from segnet.params import load_params
from segnet.tracking.comparison import (
    compare,
    compare_groups,
    find_evaluate_run,
    warn_of_other_settings,
)
from segnet.tracking.groups import evaluate_runs, parse_where, select_groups, split_values
from segnet.tracking.runs import find_project, use_project_store

USAGE = "python -m segnet.compare A B, or python -m segnet.compare --by KEY [--where KEY=VALUE ...] [--values V1,V2]"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m segnet.compare", description=__doc__.splitlines()[0])
    parser.add_argument("first", metavar="A", nargs="?", help="evaluate run id, DVC experiment name, or workspace")
    parser.add_argument("second", metavar="B", nargs="?", help="evaluate run id, DVC experiment name, or workspace")
    parser.add_argument(
        "--by",
        metavar="KEY",
        help="compare settings: group the evaluate runs by this param (such as train.lr), each group several seeds",
    )
    parser.add_argument(
        "--where", metavar="KEY=VALUE", action="append", default=[], help="only runs with this param value (repeatable)"
    )
    parser.add_argument("--values", metavar="V1,V2,...", help="the groups to compare, in this order (default: all)")
    arguments = parser.parse_args()
    given = [name for name in (arguments.first, arguments.second) if name is not None]
    if arguments.by is not None and given:
        raise ValueError(f"--by compares groups of runs, A B two runs: give one or the other ({USAGE})")
    if arguments.by is None and (len(given) != 2 or arguments.where or arguments.values is not None):
        raise ValueError(f"usage: {USAGE}")
    # The arguments are checked before the store is opened: a typo stops here.
    where = parse_where(arguments.where)
    values = split_values(arguments.values) if arguments.values is not None else None
    root = find_project(Path.cwd())
    params = load_params(root / "params.yaml")
    config = read_bootstrap(params["evaluate"])
    if config.resamples < 1:
        raise ValueError(
            "params.yaml evaluate.bootstrap.resamples: 0 turns the intervals off; set it (to 1000, say) to compare"
        )
    use_project_store(root)
    client = MlflowClient()
    experiment = params["tracking"]["experiment"]
    if arguments.by is not None:
        groups = select_groups(evaluate_runs(client, experiment), arguments.by, where, values)
        print("\n".join(compare_groups(arguments.by, groups, config)))
        return
    first, second = (find_evaluate_run(client, experiment, name, root) for name in given)
    warn_of_other_settings([first, second], config)
    print("\n".join(compare(first, second, config).lines))


if __name__ == "__main__":
    run_stage(main)
