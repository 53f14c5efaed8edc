"""The model folder the train stage writes and evaluate reads: the weights (model.pt) and their record
(config.json: the settings that produced them), which appear together or not at all."""

import dataclasses
import json
from pathlib import Path

import torch

from segnet.files import check_replaceable, save_torch, staged_directory, write_json
from segnet.model.network import SegNet, SegNetConfig

MODEL_FILE = "model.pt"
RECORD_FILE = "config.json"
# Everything the model folder holds: the weights and their record, which evaluate pairs with them.
MODEL_NAMES = frozenset({MODEL_FILE, RECORD_FILE})
# What the record holds, and evaluate reads.
RECORD_KEYS = ("seed", "model", "train", "dataset_sha256")


def check_model_folder(model_dir: Path, *other_outputs: Path) -> None:
    """Refuses a model folder that holds files the train stage did not write (it is replaced whole), or
    another output of the stage inside it."""
    check_replaceable(model_dir, MODEL_NAMES)
    for path in other_outputs:
        if path.resolve().is_relative_to(model_dir.resolve()):
            raise ValueError(
                f"{path}: inside the model folder {model_dir}, which holds only the model; name a path outside it"
            )


def save_model(model_dir: Path, state: dict, config: SegNetConfig, record: dict) -> None:
    """Writes the weights `state` and their record (`record` with the whole model `config`) as one folder,
    atomically."""
    with staged_directory(model_dir, MODEL_NAMES) as staging:
        save_torch(staging / MODEL_FILE, state)
        write_json(staging / RECORD_FILE, {**record, "model": dataclasses.asdict(config)})


def read_model(model_dir: Path) -> tuple[dict, dict]:
    """The train stage's record of a model (config.json) and its weights (model.pt), checked.

    Raises:
        ValueError: Either file is missing or is not what the train stage writes, naming the file.
    """
    weights_path, record_path = model_dir / MODEL_FILE, model_dir / RECORD_FILE
    for path in (weights_path, record_path):
        if not path.is_file():
            raise ValueError(f"{path}: missing; run the train stage first (dvc repro train)")
    try:
        record = json.loads(record_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{record_path}: not JSON ({error}); rerun the train stage (dvc repro train)") from error
    missing = [key for key in RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(
            f"{record_path}: not a record the train stage writes (no {', '.join(missing)}); rerun the "
            "train stage (dvc repro train)"
        )
    # Named by type only: torch's message advises weights_only=False, which would run whatever the file holds.
    not_weights = f"{weights_path}: not weights the train stage writes ({{}}); rerun the train stage (dvc repro train)"
    try:
        weights = torch.load(weights_path, map_location="cpu", weights_only=True)
    except OSError as error:  # could not be read, not a file of the wrong kind
        raise ValueError(f"{weights_path}: cannot be read ({error.strerror or error})") from error
    except MemoryError:
        raise
    except Exception as error:  # the weights-only unpickler and the zip reader under it raise several types
        raise ValueError(not_weights.format(type(error).__name__)) from error
    if not isinstance(weights, dict) or not all(isinstance(value, torch.Tensor) for value in weights.values()):
        raise ValueError(not_weights.format(type(weights).__name__))
    return record, weights


def load_model(model_dir: Path) -> tuple[SegNet, dict]:
    """The model in `model_dir` with its weights loaded, and its record; every fault named by its file."""
    record, weights = read_model(model_dir)
    try:
        model = SegNet(SegNetConfig(**record["model"]))
    except (TypeError, ValueError) as error:  # unknown or missing keys, or values SegNetConfig refuses
        raise ValueError(
            f"{model_dir / RECORD_FILE}: its model settings do not make a SegNet ({error}); rerun "
            "the train stage (dvc repro train)"
        ) from error
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        # torch's first line only says that loading failed; the next one says what does not fit.
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        raise ValueError(
            f"{model_dir / MODEL_FILE}: does not fit the model in {model_dir / RECORD_FILE} "
            f"({lines[1] if len(lines) > 1 else lines[0]}); rerun the train stage (dvc repro train)"
        ) from error
    return model, record
