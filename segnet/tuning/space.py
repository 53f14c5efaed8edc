"""A search space, written by the user in YAML: the params a search varies, over what, and those it holds fixed.

    params:                                      # each a param of the train stage, as `dvc exp run -S` names it
      train.lr: {low: 0.0003, high: 0.01, log: true}
      train.weight_decay: {low: 0.0, high: 0.001}
      augment.overlay_partners: {low: 0, high: 2}   # integers: both ends are integers
      train.optimizer: {choices: [adamw, sgd]}
    fixed:                                       # every trial's, for example fewer epochs than the default
      train.epochs: 6
    first_trials:                                # optional: points to try first, such as today's defaults
      - {train.lr: 0.003, train.weight_decay: 0.0001, augment.overlay_partners: 2, train.optimizer: adamw}

Every key must be a param the train stage reads (dvc.yaml) that params.yaml holds, with values of its type.
"""

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from ruamel.yaml import YAML, YAMLError

from segnet.params import flatten

SECTIONS = ("params", "fixed", "first_trials")


@dataclass(frozen=True)
class SearchSpace:
    """A parsed space file: Optuna's distributions, the fixed values, the points to try first, and its text."""

    distributions: dict[str, BaseDistribution]
    fixed: dict[str, Any]
    first_trials: list[dict[str, Any]]
    canonical: str  # the space as sorted JSON: a study resumes only with the same one


def read_space(path: Path, trainable: dict[str, Any]) -> SearchSpace:
    """Reads the space file `path`; `trainable` maps each param the train stage reads to its params.yaml value.

    Raises:
        ValueError: The file is unreadable or not a space, names an unknown param, or a range is empty or of the
            wrong type; one line naming the file and the key.
    """
    try:
        spec = YAML(typ="safe", pure=True).load(path.read_text())
    except (OSError, YAMLError) as error:
        raise ValueError(f"{path}: cannot read a search space ({' '.join(str(error).split())})") from error
    if not isinstance(spec, dict) or set(spec) - set(SECTIONS) or not isinstance(spec.get("params"), dict):
        raise ValueError(f"{path}: must be a mapping with `params` (and optionally `fixed`, `first_trials`)")
    ranges, fixed = spec["params"], spec.get("fixed") or {}
    first_trials = spec.get("first_trials") or []
    if not ranges:
        raise ValueError(f"{path} params: empty; name at least one param to search")
    if not isinstance(fixed, dict) or not isinstance(first_trials, list):
        raise ValueError(f"{path}: `fixed` must be a mapping and `first_trials` a list of mappings")
    distributions = {key: _distribution(path, key, ranges[key], trainable) for key in ranges}
    for key, value in fixed.items():
        _check_value(path, f"fixed.{key}", key, value, trainable)
        if key in ranges:
            raise ValueError(f"{path} fixed.{key}: also in params; a param is either searched or fixed")
    for number, point in enumerate(first_trials):
        if not isinstance(point, dict) or set(point) - set(ranges):
            raise ValueError(f"{path} first_trials[{number}]: must map searched params to values, got {point!r}")
        for key, value in point.items():
            if not distributions[key]._contains(distributions[key].to_internal_repr(value)):
                raise ValueError(f"{path} first_trials[{number}].{key}: {value!r} lies outside its range")
    canonical = json.dumps({"params": ranges, "fixed": fixed}, sort_keys=True)
    return SearchSpace(distributions, fixed, first_trials, canonical)


def trainable_params(params: dict, train_stage_params: list) -> dict[str, Any]:
    """The params.yaml values the train stage reads (dvc.yaml lists sections, `train`, and keys, `seed`), but the
    MLflow experiment's name, which only says where its runs are logged."""
    read = [name for name in train_stage_params if name != "tracking.experiment"]
    return {
        key: value for key, value in flatten(params).items() if any(key == n or key.startswith(f"{n}.") for n in read)
    }


def _distribution(path: Path, key: str, spec: object, trainable: dict[str, Any]) -> BaseDistribution:
    where = f"{path} params.{key}"
    _check_known(where, key, trainable)
    current = trainable[key]
    if not isinstance(spec, dict) or not (set(spec) <= {"low", "high", "log"} and {"low", "high"} <= set(spec)):
        if isinstance(spec, dict) and set(spec) == {"choices"}:
            return _choices(where, key, spec["choices"], trainable)
        raise ValueError(f"{where}: must be {{low: L, high: H}} (log: true for a log scale) or {{choices: [...]}}")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    for name, bound in (("low", low), ("high", high)):
        if not _is_number(bound) or not math.isfinite(bound):
            raise ValueError(f"{where}.{name}: must be a finite number, got {bound!r}")
    if low >= high:
        raise ValueError(f"{where}: low {low} is not below high {high}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise ValueError(f"{where}.log: must be true or false, and true only for a range above 0")
    if isinstance(current, int) and not isinstance(current, bool):
        if not (isinstance(low, int) and isinstance(high, int)):
            raise ValueError(f"{where}: params.yaml {key} is an integer ({current}); give integer low and high")
        return IntDistribution(low, high, log=log)
    if not _is_number(current):
        raise ValueError(f"{where}: params.yaml {key} is {current!r}, not a number; give {{choices: [...]}}")
    return FloatDistribution(float(low), float(high), log=log)


def _choices(where: str, key: str, choices: object, trainable: dict[str, Any]) -> CategoricalDistribution:
    if not isinstance(choices, list) or not choices:
        raise ValueError(f"{where}.choices: must be a non-empty list, got {choices!r}")
    for choice in choices:
        _check_value(Path(where.split(" ")[0]), where.split(" ", 1)[1], key, choice, trainable)
    return CategoricalDistribution(choices)


def _check_known(where: str, key: str, trainable: dict[str, Any]) -> None:
    if key not in trainable:
        close = difflib.get_close_matches(key, trainable, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; the train stage reads {', '.join(trainable)}"
        raise ValueError(f"{where}: not a param the train stage reads (params.yaml, dvc.yaml){hint}")


def _check_value(path: Path, where: str, key: str, value: object, trainable: dict[str, Any]) -> None:
    """A fixed value or a choice: a scalar of the type params.yaml holds for `key` (any number for a number)."""
    _check_known(f"{path} {where}", key, trainable)
    current = trainable[key]
    if isinstance(current, list) or isinstance(value, (list, dict)):
        if type(value) is not type(current):
            raise ValueError(f"{path} {where}: must be a {type(current).__name__} like params.yaml's, got {value!r}")
        if isinstance(value, list) and "choices" in where:
            raise ValueError(f"{path} {where}: a choice must be a single value; fix list params under `fixed`")
        return
    same = type(value) is type(current) or (_is_number(value) and _is_number(current) and not isinstance(current, int))
    if not same:
        raise ValueError(f"{path} {where}: must be of params.yaml's type ({current!r}), got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
