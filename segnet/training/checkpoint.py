"""Training checkpoints: the whole loop state, written atomically, resumed only into the same run.

A checkpoint holds everything the loop needs to continue as if it had never stopped (weights, optimizer
and schedule state, the batch-order generator, the epoch's batch order and position, the history and the
best weights so far). It is tagged with a fingerprint of everything that decides the result (seed, model
and train settings, dataset, code), so a checkpoint from other settings is never resumed.
"""

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from segnet.files import save_torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
SOURCES = (".py", ".cpp")
# The project: the folder that holds this package and dvc.yaml (under `dvc exp run --temp`, the experiment's copy).
PROJECT = Path(__file__).resolve().parents[2]


def fingerprint(settings: dict, code_files: list[Path], root: Path) -> str:
    """A hex digest of `settings` (JSON-serialisable) and the paths (relative to `root`) and contents of
    `code_files`."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in sorted(code_files):
        digest.update(path.as_posix().encode() + b"\0" + (root / path).read_bytes() + b"\0")
    return digest.hexdigest()


def stage_code(stage: str, project: Path = PROJECT) -> list[Path]:
    """The project source files dvc.yaml lists as `stage`'s deps, folders expanded, relative to `project`: exactly
    the code whose edit reruns the stage (tests/test_stage_deps.py keeps that list equal to what it imports)."""
    deps = yaml.safe_load((project / "dvc.yaml").read_text())["stages"][stage]["deps"]
    files = []
    for dep in map(Path, deps):
        if dep.parts[0] in ("segnet", "stages"):
            folder = project / dep
            found = (
                [p.relative_to(project) for p in folder.rglob("*") if p.suffix in SOURCES] if folder.is_dir() else []
            )
            files += sorted(found) or [dep]
    return files


@dataclass
class Checkpointer:
    """Where and how often the training loop saves its state.

    Attributes:
        path: The checkpoint file; written to a temporary name, then renamed.
        every_steps: Save after this many optimizer steps (0: only at the end of each epoch).
        fingerprint: Identifies the settings, data and code the state belongs to.
        extra: Stored alongside the state for the caller (e.g. the tracking run to resume).
    """

    path: Path
    every_steps: int
    fingerprint: str
    extra: dict = field(default_factory=dict)

    def save(self, state: dict) -> None:
        save_torch(
            self.path,
            {"format_version": FORMAT_VERSION, "fingerprint": self.fingerprint, "extra": self.extra, "state": state},
        )

    def due(self, step: int) -> bool:
        """Whether a save is due after optimizer step `step` (every_steps; epochs' ends are the loop's)."""
        return self.every_steps > 0 and step % self.every_steps == 0

    def remove(self) -> None:
        """Deletes the checkpoint once the run has finished: a later forced rerun must start afresh."""
        self.path.unlink(missing_ok=True)


def load_checkpoint(path: Path, expected_fingerprint: str) -> dict | None:
    """Returns {"state": ..., "extra": ...} from `path`, or None when there is nothing to resume.

    A checkpoint written for other settings, data or code is ignored with a warning (and left alone:
    it may belong to another experiment). Tensors only: loaded with weights_only=True, so a planted file
    cannot run code.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a damaged file; resuming is impossible
        log.warning("%s: unreadable checkpoint (%s); training starts from the beginning", path, error)
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("format_version") != FORMAT_VERSION:
        log.warning("%s: not a checkpoint of this version; training starts from the beginning", path)
        return None
    if checkpoint.get("fingerprint") != expected_fingerprint:
        log.warning("%s: written for other settings, data or code; training starts from the beginning", path)
        return None
    return {"state": checkpoint["state"], "extra": checkpoint.get("extra", {})}


def run_checkpointer(
    folder: Path, params: dict, dataset: dict, processes: int, every_steps: int, extra: dict | None = None
) -> Checkpointer:
    """The checkpoint of the train stage's run, named after the fingerprint of all that decides its result: the
    params it logs (but how often checkpoints are saved, which does not), the dataset's record, the number of
    processes (a checkpoint of N processes resumes only in N) and the stage's code. A checkpoint of other
    settings, data or code is then never resumed."""
    runtime = {key: value for key, value in params["runtime"].items() if key != "checkpoint_steps"}
    settings = {**params, "runtime": runtime, "dataset": dataset, "processes": processes}
    digest = fingerprint(settings, stage_code("train"), PROJECT)
    return Checkpointer(folder / f"train-{digest[:16]}.pt", every_steps, digest, extra or {})
