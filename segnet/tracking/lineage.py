"""The data a run read, as an MLflow dataset input: the archive named by its path and SHA-256.

Only the prepared folder's dataset.json is read (prepare records the archive's path and hash there); the
arrays are never loaded for this. MLflow keeps a digest of at most 36 characters: the first 32 hex digits of
the SHA-256, whose whole value the run carries in its `dataset_sha256` tag.
"""

import warnings
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

DIGEST_LENGTH = 32


def log_dataset(summary: dict, root: Path, context: str, split: str) -> None:
    """Logs the archive that prepare summarised in `summary` (its dataset.json) as an input of the active run.

    Args:
        summary: The prepared folder's dataset.json.
        root: The project root, which a relative archive path is taken from.
        context: What the run did with it, as MLflow's UI shows it ("training", "evaluation").
        split: The split of the archive the run read (train, test), as the input's tag.
    """
    archive = Path(summary["archive"])
    with warnings.catch_warnings():
        # A local path matches MLflow's local source under two registered schemes ("" and "file"), and it
        # warns that it picked one of the two, which are the same class.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted in multiple ways")
        source = resolve_dataset_source(str(archive if archive.is_absolute() else root / archive))
    digest = summary["archive_sha256"][:DIGEST_LENGTH]
    # Instantiated as MLflow's documentation shows; its stubs leave `profile` abstract, which it answers None.
    dataset = MetaDataset(source, name=archive.name, digest=digest)  # type: ignore[abstract]
    mlflow.log_input(dataset, context=context, tags={"split": split})
