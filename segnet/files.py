"""Writing outputs atomically: a temporary name, then a rename, so no reader ever sees half a file."""

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Calls write(temporary) for a temporary file beside `path`, then renames it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    write(temporary)
    os.replace(temporary, path)


def write_bytes(path: Path, data: bytes) -> None:
    """Writes bytes to path atomically."""
    _replace_atomically(path, lambda temporary: temporary.write_bytes(data))


def write_json(path: Path, value) -> None:
    """Writes a JSON document (indented, keys in insertion order) atomically."""
    write_bytes(path, (json.dumps(value, indent=2) + "\n").encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """Saves an array as .npy (no pickle) atomically."""
    def write(temporary: Path) -> None:
        # Through a file object: given a path, np.save would append ".npy" to the temporary name.
        with open(temporary, "wb") as file:
            np.save(file, array, allow_pickle=False)

    _replace_atomically(path, write)


def save_torch(path: Path, value) -> None:
    """Saves tensors (a state dict) with torch.save atomically."""
    _replace_atomically(path, lambda temporary: torch.save(value, temporary))
