"""Writing outputs atomically: a temporary name, then a rename, so no reader ever sees half a file."""

import json
import os
from pathlib import Path

import numpy as np
import torch


def write_bytes(path: Path, data: bytes) -> None:
    """Writes bytes to path via a temporary file in the same folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def write_json(path: Path, value) -> None:
    """Writes a JSON document (indented, keys in insertion order) atomically."""
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Saves an array as .npy (no pickle) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        np.save(file, array, allow_pickle=False)
    os.replace(temporary, path)


def save_torch(path: Path, value) -> None:
    """Saves tensors (a state dict) with torch.save atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    torch.save(value, temporary)
    os.replace(temporary, path)
