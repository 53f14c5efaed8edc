"""Evaluate runs grouped by one setting, for `python -m segnet.compare --by KEY`.

A setting is judged by several training seeds, not by one model: the groups are the finished evaluate runs of
the project's MLflow experiment, one group per value of the param KEY (such as `train.lr`), each holding runs
of distinct seeds. Everything else the runs logged must be alike, or the comparison would credit KEY with what
another param did; `--where KEY=VALUE` picks the runs that share it. `runtime.*` and `evaluate.*` params are
left out of that check: they change how a model was trained or scored, not which model.
"""

import difflib
import math
from collections import defaultdict
from dataclasses import dataclass

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from segnet.tracking.runs import EVALUATE_STAGE

SEED_PARAM = "seed"
# Params that may differ within a comparison: how a model was trained or scored, not which model.
IGNORED_PREFIXES = ("runtime.", "evaluate.")
NOT_LOGGED = "(not logged)"


@dataclass
class Group:
    """The runs of one value of the compared param, ordered by seed.

    Attributes:
        value: The param's value as the runs logged it (MLflow stores params as strings).
        runs: Evaluate runs, one per seed.
    """

    value: str
    runs: list[Run]

    @property
    def seeds(self) -> list[str]:
        return [run.data.params.get(SEED_PARAM, NOT_LOGGED) for run in self.runs]


def parse_where(items: list[str]) -> dict[str, str]:
    """`--where KEY=VALUE` arguments as {KEY: VALUE}.

    Raises:
        ValueError: One has no `=` or no key, or a key is given twice.
    """
    where: dict[str, str] = {}
    for item in items:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--where {item}: expected KEY=VALUE, such as train.epochs=21")
        if key.strip() in where:
            raise ValueError(f"--where {key.strip()}: given twice; a run has one value of each param")
        where[key.strip()] = value.strip()
    return where


def split_values(text: str) -> list[str]:
    """`--values V1,V2,...` as a list, keeping commas inside brackets: `[32, 64],[32, 128]` is two values.

    Raises:
        ValueError: A value is empty or named twice.
    """
    values, depth, current = [], 0, ""
    for character in text:
        depth += {"[": 1, "(": 1, "]": -1, ")": -1}.get(character, 0)
        if character == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += character
    values.append(current.strip())
    if "" in values:
        raise ValueError(f"--values {text}: an empty value; expected V1,V2,... such as 0.001,0.003")
    twice = sorted({value for value in values if values.count(value) > 1})
    if twice:
        raise ValueError(f"--values {text}: {', '.join(twice)} named twice")
    return values


def same_value(logged: str, given: str) -> bool:
    """Whether a logged param equals a value the user typed: as text, or as numbers (1e-3 is 0.001)."""
    if logged == given:
        return True
    try:
        return float(logged) == float(given)
    except ValueError:
        return False


def evaluate_runs(client: MlflowClient, experiment: str) -> list[Run]:
    """The finished, active evaluate runs of MLflow experiment `experiment`, latest first, one per model: a model
    scored twice (the same model_sha256 tag) counts once, by its latest run.

    Raises:
        ValueError: The experiment holds none.
    """
    found = client.get_experiment_by_name(experiment)
    runs: list[Run] = []
    token = None
    while found is not None:
        page = client.search_runs(
            [found.experiment_id],
            filter_string=f"tags.stage = '{EVALUATE_STAGE}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1000,
            page_token=token,
        )
        runs += page
        token = page.token
        if not token:
            break
    if not runs:
        raise ValueError(f"no finished evaluate run in MLflow experiment '{experiment}' (tracking.experiment)")
    models: set[str] = set()
    latest = []
    for run in runs:
        model = run.data.tags.get("model_sha256", run.info.run_id)
        if model not in models:
            models.add(model)
            latest.append(run)
    return latest


def select_groups(runs: list[Run], key: str, where: dict[str, str], values: list[str] | None) -> list[Group]:
    """The groups to compare: `runs` that match every `where`, grouped by their value of param `key`, for
    `values` in that order (default: every value found, in numeric order when all are numbers).

    Raises:
        ValueError: In one line: an unknown `key` or `where` key, a `where` value no run has, a value with no
            runs, fewer than two groups, runs on different test sets, runs that differ in another param, or a
            group without runs of two distinct seeds (or with one seed twice).
    """
    if key == SEED_PARAM:
        raise ValueError(
            "--by seed: the seed tells apart the runs of one setting; group by a setting such as train.lr, "
            "or compare two runs with python -m segnet.compare A B"
        )
    for name in (key, *where):
        _check_logged(runs, name, f"--by {key}" if name == key else f"--where {name}={where[name]}")
    for name, value in where.items():
        logged = {run.data.params[name] for run in runs if name in run.data.params}
        if not any(same_value(found, value) for found in logged):
            raise ValueError(f"--where {name}={value}: no evaluate run has that value; logged: {_listing(logged)}")
    kept = [
        run
        for run in runs
        if key in run.data.params
        and all(same_value(run.data.params.get(name, NOT_LOGGED), value) for name, value in where.items())
    ]
    groups = _pick_groups(kept, key, where, values)
    _check_test_set(groups, key)
    _check_other_params(groups, key)
    for group in groups:
        _check_seeds(group, key)
    return groups


def _check_logged(runs: list[Run], name: str, option: str) -> None:
    """Raises naming `option` when no run logged the param `name`, listing params they did log (closest first)."""
    if any(name in run.data.params for run in runs):
        return
    known = sorted({param for run in runs for param in run.data.params if not param.startswith(IGNORED_PREFIXES)})
    close = difflib.get_close_matches(name, known, n=3)
    shown = close + [param for param in known if param not in close]
    more = f" and {len(shown) - 8} more" if len(shown) > 8 else ""
    raise ValueError(f"{option}: no evaluate run logged the param {name}; they logged {', '.join(shown[:8])}{more}")


def _pick_groups(runs: list[Run], key: str, where: dict[str, str], values: list[str] | None) -> list[Group]:
    """`runs` grouped by their value of `key`: those of `values` in that order, or all in numeric order."""
    by_value: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_value[run.data.params[key]].append(run)
    found = _ordered(list(by_value))
    among = "".join(f" --where {name}={value}" for name, value in where.items())
    among = f" among the runs{among} keeps" if where else ""
    groups: list[Group] = []
    for value in values if values is not None else found:
        logged = [found_value for found_value in found if same_value(found_value, value)]
        if not logged:
            raise ValueError(
                f"--values {value}: no evaluate run with {key}={value}{among}; the values found: {_listing(found)}"
            )
        if any(group.value in logged for group in groups):
            if values is not None:
                raise ValueError(f"--values: {value} names the group {key}={logged[0]} again")
            continue  # 1 and 1.0 logged by different runs: one group
        members = [run for found_value in logged for run in by_value[found_value]]
        groups.append(Group(logged[0], sorted(members, key=lambda run: _order_key(run.data.params.get(SEED_PARAM)))))
    if len(groups) < 2:
        shown = f" ({groups[0].value})" if groups else ""
        raise ValueError(f"--by {key}: {len(groups)} value{shown}{among}; comparing needs at least two")
    return groups


def _check_test_set(groups: list[Group], key: str) -> None:
    scored: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))  # dataset -> group -> runs
    for group in groups:
        for run in group.runs:
            scored[run.data.tags.get("dataset_sha256", NOT_LOGGED)][group.value].append(_name(run))
    if len(scored) > 1:
        listed = "; ".join(
            ", ".join(f"{key}={value} ({', '.join(runs)})" for value, runs in by_group.items()) + f" on {dataset[:12]}"
            for dataset, by_group in scored.items()
        )
        raise ValueError(
            f"the runs scored different test sets (dataset_sha256 tags differ): {listed}; the comparison draws "
            "the same panels for all runs"
        )


def _check_other_params(groups: list[Group], key: str) -> None:
    """Raises naming the first param besides `key` and the seed whose value differs among the groups' runs."""
    runs = [(group.value, run) for group in groups for run in group.runs]
    names = sorted({name for _, run in runs for name in run.data.params})
    for name in names:
        if name in (key, SEED_PARAM) or name.startswith(IGNORED_PREFIXES):
            continue
        holding: dict[str, dict[str, None]] = defaultdict(dict)  # its value -> the groups with it, in order
        for value, run in runs:
            holding[run.data.params.get(name, NOT_LOGGED)][value] = None
        if len(holding) > 1:
            common = max(holding, key=lambda logged: sum(run.data.params.get(name) == logged for _, run in runs))
            held = "; ".join(f"{logged} ({key}={', '.join(values)})" for logged, values in holding.items())
            raise ValueError(
                f"{name} differs among the runs besides {key} and the seed: {held}; compare runs alike but "
                f"for {key}, such as with --where {name}={common}"
            )


def _check_seeds(group: Group, key: str) -> None:
    seeds = group.seeds
    twice = sorted({seed for seed in seeds if seeds.count(seed) > 1}, key=_order_key)
    if twice:
        runs = [_name(run) for run in group.runs if run.data.params.get(SEED_PARAM, NOT_LOGGED) == twice[0]]
        raise ValueError(
            f"{key}={group.value}: seed {twice[0]} in {len(runs)} runs of different models with the same params "
            f"({', '.join(runs)}); delete all but one in mlflow ui (deleted runs are left out)"
        )
    if len(seeds) < 2:
        raise ValueError(
            f"{key}={group.value}: runs of {len(seeds)} seed ({_listing(seeds)}); a group needs at least 2, "
            f"such as from dvc exp run -S {key}={group.value} -S seed=1"
        )


def _name(run: Run) -> str:
    return f"run {run.info.run_id[:8]}"


def _listing(values: list[str] | set[str]) -> str:
    return ", ".join(_ordered(list(values)))


def _ordered(values: list[str]) -> list[str]:
    """`values` in numeric order when all are numbers, else in text order."""
    return sorted(values, key=_order_key) if all(_is_number(value) for value in values) else sorted(values)


def _order_key(value: str | None) -> tuple[float, str]:
    number = float(value) if value is not None and _is_number(value) else math.inf
    return number, value or ""


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
