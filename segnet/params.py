"""Reading params.yaml once and flattening it for logging."""

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
