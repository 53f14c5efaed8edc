"""Reading params.yaml once and flattening it for logging."""

import dataclasses
import math
from pathlib import Path

import yaml

try:
    from ruamel.yaml import YAML, YAMLError
except ImportError:  # benchmarks/gpu.py's machine: PyTorch, SciPy and PyYAML, but no DVC and so no ruamel
    YAML, YAMLError = None, yaml.YAMLError


def load_params(path: Path = Path("params.yaml")) -> dict:
    """Loads the params file DVC passes to every stage (read from the working directory, which is the
    experiment's own copy under `dvc exp run --temp` and `--queue`).

    Read as YAML 1.2, as DVC reads and writes it (with ruamel.yaml): `dvc exp run -S train.lr=0.00005` writes
    `5e-05`, which is a number in YAML 1.2 and a string in PyYAML's YAML 1.1 (which needs a dot), and
    `yes`/`no` stay strings. The pure-Python loader, since ruamel's C loader speaks YAML 1.1. Where ruamel is
    not installed, PyYAML reads it, which gives the same values for the committed params.yaml.
    """
    try:
        text = Path(path).read_text()
        params = YAML(typ="safe", pure=True).load(text) if YAML else yaml.safe_load(text)
    except (YAMLError, yaml.YAMLError) as error:
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


def build(config_class: type, section: str, values: dict):
    """Builds a settings dataclass from a params.yaml section, turning unknown keys and values of the
    wrong type into a ValueError that names the section (e.g. `-S train.epochs=1.5`)."""
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"params.yaml {section}: unknown key(s) {unknown}; known: {sorted(fields)}")
    for name, value in values.items():
        expected = _TYPES.get(fields[name].type)
        if expected and (not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)):
            raise ValueError(f"params.yaml {section}.{name}: must be {_WORDS[fields[name].type]}, got {value!r}")
        # `.inf`, `.nan` or `1e400` pass "a number" and every range check written as `lr > 0`.
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"params.yaml {section}.{name}: must be a finite number, got {value!r}")
    return config_class(**values)


# What YAML values each annotated field type accepts (an int is a fine float; a bool is not an int).
_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
# The same types in the words of the error message, which read like read_seed's.
_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
