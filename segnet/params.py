"""Reading params.yaml once and flattening it for logging."""

import dataclasses
from pathlib import Path

import yaml


def load_params(path: Path = Path("params.yaml")) -> dict:
    """Loads the params file DVC passes to every stage (read from the working directory, which is the
    experiment's own copy under `dvc exp run --temp` and `--queue`)."""
    with open(path) as file:
        return yaml.safe_load(file)


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
    return config_class(**values)


# What YAML values each annotated field type accepts (an int is a fine float; a bool is not an int).
_TYPES = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}
# The same types in the words of the error message, which read like read_seed's.
_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
