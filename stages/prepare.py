"""DVC stage `prepare`: validates the archive named by data.archive and writes the split arrays."""

import dataclasses
from pathlib import Path

import mlflow

from segnet import CLASS_NAMES
from segnet.cli import run_stage, stage_paths
from segnet.cores import available_cores
from segnet.dataset.archive import ArchiveLimits
from segnet.dataset.prepare import prepare_dataset
from segnet.files import write_json
from segnet.params import build, load_params, read_experiment
from segnet.tracking.runs import log_metrics, stage_run

USAGE = "python -m stages.prepare OUTPUT_DIR METRICS_JSON"


def main() -> None:
    output_dir, metrics_path = stage_paths(USAGE)
    params = load_params()
    settings = dict(params["data"])
    archive = settings.pop("archive")
    if not isinstance(archive, str) or not archive:
        raise ValueError(f"params.yaml data.archive: must be the path of a zip file, got {archive!r}")
    archive = Path(archive)
    workers = settings.pop("workers")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise ValueError(f"params.yaml data.workers: must be an integer >= 0, got {workers!r}")
    workers = workers or available_cores()
    limits = build(ArchiveLimits, "data", settings)
    # The resolved limits, defaults included, are logged with the run.
    logged = {"data": {"archive": str(archive), "workers": workers, **dataclasses.asdict(limits)}}
    with stage_run("prepare", read_experiment(params), logged):
        summary = prepare_dataset(archive, output_dir, limits=limits, workers=workers)
        # DVC's metrics keep the counts: in `dvc exp show` a text value takes a column as wide as itself (the
        # archive's path, its 64-digit hash) and crowds the scores out of the table. The texts go to MLflow as
        # tags, the class histograms as metrics, and both stay in dataset.json.
        histograms = {
            split: dict(zip(CLASS_NAMES, summary.pop(f"{split}_class_pixels"), strict=True))
            for split in ("train", "test")
        }
        counts = {key: value for key, value in summary.items() if isinstance(value, int)}
        mlflow.set_tags({key: value for key, value in summary.items() if key not in counts})
        write_json(metrics_path, counts)
        log_metrics(counts)
        log_metrics({f"{split}_class_pixels": pixels for split, pixels in histograms.items()})
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifact(str(output_dir / "dataset.json"))


if __name__ == "__main__":
    run_stage(main)
