"""Reading params.yaml once and flattening it for logging."""

import dataclasses
import math
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

from ruamel.yaml import YAML, YAMLError

T = TypeVar("T", bound="DataclassInstance")


def load_params(path: Path = Path("params.yaml")) -> dict:
    """Loads the params file DVC passes to every stage (read from the working directory, which is the
    experiment's own copy under `dvc exp run --temp` and `--queue`).

    Read as YAML 1.2, as DVC reads and writes it (with ruamel.yaml): `dvc exp run -S train.lr=0.00005` writes
    `5e-05`, which is a number in YAML 1.2 and a string in PyYAML's YAML 1.1 (which needs a dot), and
    `yes`/`no` stay strings. The pure-Python loader, since ruamel's C loader speaks YAML 1.1.
    """
    try:
        text = Path(path).read_text()
        params = YAML(typ="safe", pure=True).load(text)
    except YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(params, dict):
        raise ValueError(f"{path}: must hold a mapping of sections, got {type(params).__name__}")
    return params


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{"train": {"lr": 0.1}} -> {"train.lr": 0.1}; the names `dvc exp run -S` takes."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def read_seed(params: dict) -> int:
    """params.yaml's top-level `seed`, which seeds training: an integer >= 0."""
    value = params["seed"]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"params.yaml seed: must be an integer >= 0, got {value!r}")
    return value


def read_experiment(params: dict) -> str:
    """params.yaml's `tracking.experiment`: the MLflow experiment every stage logs its run to."""
    return _tracking_name(params, "experiment")


def read_registered_model(params: dict) -> str:
    """params.yaml's `tracking.registered_model`: the Model Registry name `python -m segnet.promote` uses."""
    return _tracking_name(params, "registered_model")


def _tracking_name(params: dict, key: str) -> str:
    value = params["tracking"].get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"params.yaml tracking.{key}: must be a non-empty name, got {value!r}")
    return value


def build(config_class: type[T], section: str, values: object, **from_data: object) -> T:
    """Builds a settings dataclass from the params.yaml section `section` (dotted where nested, such as
    `evaluate.bootstrap`), plus `from_data`: fields that come from the data, not from params.yaml.

    The one place that names the file: the dataclasses check their own rules and raise ValueError("key:
    problem"); here that becomes "params.yaml section.key: problem". Unknown and missing keys, values of the
    wrong type (`-S train.epochs=1.5`) and non-finite numbers are refused here, before the dataclass sees them.
    """
    if not isinstance(values, dict):
        raise ValueError(f"params.yaml {section}: must be a mapping of settings, got {values!r}")
    fields = {field.name: field for field in dataclasses.fields(config_class) if field.name not in from_data}
    unknown, missing = sorted(set(values) - set(fields)), sorted(set(fields) - set(values))
    if unknown:
        raise ValueError(f"params.yaml {section}: unknown key(s) {unknown}; known: {sorted(fields)}")
    if missing:
        raise ValueError(f"params.yaml {section}: missing key(s) {missing}")
    for name, value in values.items():
        expected = _TYPES.get(fields[name].type)
        if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
            raise ValueError(f"params.yaml {section}.{name}: must be {_WORDS[fields[name].type]}, got {value!r}")
        # `.inf`, `.nan` or `1e400` pass "a number" and every range check written as `lr > 0`.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"params.yaml {section}.{name}: must be a finite number, got {value!r}")
    try:
        return config_class(**values, **from_data)
    except ValueError as error:
        raise ValueError(f"params.yaml {section}.{error}") from None


# What YAML values each annotated field type accepts (an int is a fine float; a bool is not an int).
_TYPES: dict[object, tuple[type, ...]] = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
# The same types in the words of the error message, which read like read_seed's.
_WORDS: dict[object, str] = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def one_of(choices: tuple[str, ...]) -> str:
    """The words of check_rules for a setting that must be one of `choices`."""
    return "one of " + ", ".join(choices)


def check_rules(config: object, rules: dict[str, tuple[bool, str]]) -> None:
    """Raises ValueError("key: must be RULE, got VALUE") for the first of a settings dataclass's rules that
    does not hold: {field: (holds, what it must be)}. build() adds the file and section."""
    for name, (holds, rule) in rules.items():
        if not holds:
            raise ValueError(f"{name}: must be {rule}, got {getattr(config, name)!r}")
