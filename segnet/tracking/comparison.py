"""Whether two runs' test mIoU really differ (`python -m segnet.compare A B`).

A and B are finished evaluate runs in the project's store, named by MLflow run id, by DVC experiment name
(the latest finished evaluate run of `dvc exp run -n NAME`), or `workspace` (that of the model in data/model).
Both must have scored the same test panels. Each run's own interval says how far its score could move with
other test panels; the difference B - A gets a paired bootstrap: every resample draws the same panels for
both models, so the panels' shared difficulty cancels and the interval of the difference is narrower than
the two intervals side by side suggest. The resampling settings are params.yaml's `evaluate.bootstrap`.

`python -m segnet.compare --by KEY` compares settings instead of models: groups of runs, one per value of the
param KEY and each of several seeds (segnet.tracking.groups selects them), by a bootstrap over both the seeds
and the panels (segnet.evaluation.bootstrap.seed_and_panel_resamples).
"""

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from segnet.evaluation.bootstrap import BootstrapConfig, percentile_interval, seed_and_panel_resamples
from segnet.evaluation.metrics import mean_iou
from segnet.files import sha256_file
from segnet.params import flatten
from segnet.tracking.groups import Group
from segnet.tracking.runs import EVALUATE_STAGE, find_run, load_panel_confusions

log = logging.getLogger(__name__)

# The name of the model in the workspace, as in `dvc exp show`.
WORKSPACE = "workspace"
# Where the train stage writes that model (dvc.yaml's `data/model` output).
WORKSPACE_MODEL = Path("data") / "model" / "model.pt"


def find_evaluate_run(client: MlflowClient, experiment: str, name: str, root: Path) -> Run:
    """The evaluate run with id `name`; for `workspace`, the latest finished evaluate run of the model in the
    project `root` (the one `dvc repro` or the last `dvc exp run` left there); else the latest finished evaluate
    run of DVC experiment `name`.

    Raises:
        ValueError: None exists, or the run with that id is not a finished evaluate run.
    """
    try:
        run = client.get_run(name)
    except MlflowException:
        run = None
    if run is not None:
        if run.data.tags.get("stage") != EVALUATE_STAGE:
            raise ValueError(
                f"run {name}: a {run.data.tags.get('stage', 'untagged')} run, not an evaluate run; "
                "name the evaluate run of the experiment"
            )
        if run.info.lifecycle_stage != "active" or run.info.status != "FINISHED":
            raise ValueError(
                f"run {name}: {run.info.status.lower()}"
                f"{' and deleted' if run.info.lifecycle_stage != 'active' else ''}, not a finished "
                "evaluate run"
            )
        return run
    if name == WORKSPACE:
        model = root / WORKSPACE_MODEL
        if not model.is_file():
            raise ValueError(f"workspace: no {model}; run the pipeline first (dvc repro)")
        # The evaluate run names the weights it scored by their hash.
        tag, value = "model_sha256", sha256_file(model)
        missing = f"workspace: no finished evaluate run scored {model}; run its evaluate stage (dvc repro)"
    else:
        tag, value = "dvc_experiment", name
        missing = (
            f"{name}: neither a run id nor a DVC experiment with a finished evaluate run in MLflow "
            f"experiment '{experiment}' (tracking.experiment)"
        )
    run_id = find_run(experiment, EVALUATE_STAGE, tag, value, finished=True)
    if run_id is None:
        raise ValueError(missing)
    return client.get_run(run_id)


def describe(run: Run) -> str:
    experiment = run.data.tags.get("dvc_experiment")
    return f"{experiment} (run {run.info.run_id[:8]})" if experiment else f"run {run.info.run_id[:8]}"


@dataclasses.dataclass
class Comparison:
    """The table's lines, and the interval of the difference second - first."""

    lines: list[str]
    low: float
    high: float


def compare(first: Run, second: Run, config: BootstrapConfig, names: tuple[str, str] = ("A", "B")) -> Comparison:
    """Each run's test mIoU with its interval, and the paired difference second - first, the runs labelled
    `names` in the table."""
    if first.data.tags.get("dataset_sha256") != second.data.tags.get("dataset_sha256"):
        raise ValueError(
            f"{describe(first)} and {describe(second)} scored different test sets (dataset_sha256 tags "
            "differ); a paired comparison needs the same panels"
        )
    a, b = (torch.from_numpy(load_panel_confusions(run.info.run_id)) for run in (first, second))
    if a.shape != b.shape:
        raise ValueError(
            f"{describe(first)} and {describe(second)}: per-panel matrices of shapes {tuple(a.shape)} "
            f"and {tuple(b.shape)}; the same test set gives the same shape"
        )
    rows = []
    for label, run, confusions in zip(names, (first, second), (a, b), strict=True):
        low, high = percentile_interval(confusions, mean_iou, config)
        rows.append((f"{label}  {describe(run)}", mean_iou(confusions.sum(0)), low, high))
    # Each panel's two matrices side by side (N, 2, classes, classes): a resample draws them together.
    gain_low, gain_high = percentile_interval(
        torch.stack([a, b], dim=1), lambda pair: mean_iou(pair[1]) - mean_iou(pair[0]), config
    )
    difference = f"{names[1]} - {names[0]}"
    width = max(len(row[0]) for row in rows + [(difference,)])
    lines = [
        f"test miou on the same {len(a):,} panels; {config.confidence * 100:g}% intervals from "
        f"{config.resamples} resamples of the panels ({difference}: the same panels for both)"
    ]
    lines += [f"{name:<{width}}  {value:.4f}   [{low:.4f}, {high:.4f}]" for name, value, low, high in rows]
    gain = rows[1][1] - rows[0][1]
    lines.append(f"{difference:<{width}}  {gain:+.4f}  [{gain_low:+.4f}, {gain_high:+.4f}]")
    if gain_low > 0 or gain_high < 0:
        side = "above" if gain_low > 0 else "below"
        lines.append(f"{names[1]} is {side} {names[0]}: the interval of the difference excludes 0")
    else:
        lines.append(
            f"the test set does not tell {names[0]} and {names[1]} apart: the interval of the difference holds 0"
        )
    return Comparison(lines, gain_low, gain_high)


def warn_of_other_settings(runs: list[Run], config: BootstrapConfig) -> None:
    """Warns where a run logged its own interval with other resampling settings than `config`, which the
    comparison uses."""
    current = {key: str(value) for key, value in flatten({"evaluate.bootstrap": dataclasses.asdict(config)}).items()}
    for run in runs:
        logged = {key: run.data.params.get(key, "not logged") for key in current}
        if logged != current:
            log.warning(
                "%s logged its interval with other settings (%s); these intervals use params.yaml's (%s)",
                describe(run),
                logged,
                current,
            )


def compare_groups(key: str, groups: list[Group], config: BootstrapConfig) -> list[str]:
    """The table's lines: each group's mean test mIoU over its runs with its interval and the spread of its
    seeds, then for each pair of groups (A before B) the difference B - A, its interval and a verdict."""
    confusions = _load_confusions([run for group in groups for run in group.runs])
    members, start = [], 0
    for group in groups:
        members.append(list(range(start, start + len(group.runs))))
        start += len(group.runs)
    resampled = seed_and_panel_resamples(confusions, members, config).numpy()  # (resamples, groups)
    mious = np.array([mean_iou(matrices.sum(0)) for matrices in confusions])
    means = [float(mious[runs].mean()) for runs in members]
    rows = [[key, "runs (seeds)", "miou", "interval", "seed std"]]
    for index, group in enumerate(groups):
        low, high = _percentiles(resampled[:, index], config.confidence)
        seeds = f"{len(group.runs)} ({', '.join(group.seeds)})"
        spread = mious[members[index]].std(ddof=1)
        rows.append([group.value, seeds, f"{means[index]:.4f}", f"[{low:.4f}, {high:.4f}]", f"{spread:.4f}"])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = [
        f"test miou by {key} on the same {confusions.shape[1]:,} panels; {config.confidence * 100:g}% intervals "
        f"from {config.resamples} resamples of each group's seeds and of the panels (the same panels for all runs)"
    ]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
    pairs = list(itertools.combinations(range(len(groups)), 2))
    names = [f"{key}={group.value}" for group in groups]
    width = max(len(f"{names[b]} - {names[a]}") for a, b in pairs)
    for a, b in pairs:
        low, high = _percentiles(resampled[:, b] - resampled[:, a], config.confidence)
        lines.append(f"{f'{names[b]} - {names[a]}':<{width}}  {means[b] - means[a]:+.4f}  [{low:+.4f}, {high:+.4f}]")
        if low > 0 or high < 0:
            verdict = f"{names[b]} is {'above' if low > 0 else 'below'} {names[a]}"
            lines.append(f"  {verdict}: the interval of the difference excludes 0")
        else:
            lines.append(
                f"  the runs do not tell {names[a]} and {names[b]} apart: the interval of the difference holds 0"
            )
    return lines


def _load_confusions(runs: list[Run]) -> torch.Tensor:
    """The runs' per-panel confusion matrices, stacked: (runs, N, classes, classes).

    Raises:
        ValueError: A run has none, or their shapes differ.
    """
    confusions = [torch.from_numpy(load_panel_confusions(run.info.run_id)) for run in runs]
    if len({matrices.shape for matrices in confusions}) > 1:
        shapes = ", ".join(f"{describe(run)} {tuple(c.shape)}" for run, c in zip(runs, confusions, strict=True))
        raise ValueError(f"per-panel matrices of different shapes: {shapes}; the same test set gives the same shape")
    return torch.stack(confusions)


def _percentiles(scores: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central `confidence` share of `scores`, as percentile_interval takes it."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(scores, [tail, 100 - tail])
    return float(low), float(high)
