"""`python -m segnet.compare --by KEY` on evaluate runs in a real MLflow store, and the bootstrap over seeds and
panels that it rests on."""

import itertools
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.entities import Param

from segnet.evaluation.bootstrap import BootstrapConfig, percentile_interval, seed_and_panel_resamples
from segnet.evaluation.metrics import mean_iou
from segnet.params import load_params
from segnet.tracking.groups import evaluate_runs, parse_where, same_value, select_groups, split_values
from segnet.tracking.runs import PANEL_CONFUSIONS
from tests.helpers import REPO, clean_env, segnet_in_process

RESAMPLES = 400
# The params an evaluate run carries from the model it scored, flattened as MLflow holds them.
TRAINED = {
    "seed": 0,
    "train.lr": 0.003,
    "train.epochs": 21,
    "train.batch_size": 32,
    "model.encoder_channels": [32, 64, 128, 512],
    "evaluate.bootstrap.resamples": 1000,
    "evaluate.bootstrap.confidence": 0.95,
    "evaluate.bootstrap.seed": 0,
}


def _panels(right_share: float, seed: int) -> np.ndarray:
    """Confusion matrices of 100 panels of 3 classes, 100 pixels each (the same labels for every call), of which
    about `right_share` are predicted right (which ones: `seed`)."""
    truth = np.random.default_rng(0).integers(0, 3, (100, 100))
    guess = np.where(np.random.default_rng(seed).random((100, 100)) < right_share, truth, (truth + 1) % 3)
    return np.stack([np.bincount(t * 3 + g, minlength=9).reshape(3, 3) for t, g in zip(truth, guess, strict=True)])


# Each experiment's runs: (train.lr, train.epochs, seed, share of pixels right or None for no artifact, more).
# Within a group the seeds differ in how good a model they gave (the share) and in which pixels it gets wrong.
Runs = list[tuple[float, int, int, float | None, dict]]
SETTINGS: Runs = [  # by train.epochs: 5 and 10 alike, 20 better on every seed; string order would put 5 last
    *((0.003, 5, seed, share, {}) for seed, share in enumerate([0.79, 0.80, 0.81])),
    *((0.003, 10, seed, share, {}) for seed, share in enumerate([0.81, 0.79, 0.80])),
    (0.003, 20, 0, 0.5, {"model": "scored twice"}),  # older: the later run of the same model counts
    *(
        (0.003, 20, seed, share, {"model": "scored twice"} if seed == 0 else {})
        for seed, share in enumerate([0.88, 0.89, 0.9])
    ),
    (0.003, 20, 3, None, {"status": "FAILED"}),
    (0.003, 20, 4, 0.5, {"deleted": True}),
]
SPREAD: Runs = [  # 0.001 above 0.003 on every seed's panels, but its seeds vary twice as much as the gap
    *((0.001, 21, seed, share, {}) for seed, share in enumerate([0.74, 0.84, 0.94])),
    *((0.003, 21, seed, share, {}) for seed, share in enumerate([0.70, 0.80, 0.90])),
]
BAD: Runs = [  # no artifacts: every refusal comes before any matrix is read
    *((lr, 21, seed, None, {}) for lr, seed in itertools.product([0.001, 0.003], [0, 1])),
    (0.01, 21, 0, None, {}),
    *((0.03, 2, seed, None, {}) for seed in (0, 1)),
    *((0.1, 21, seed, None, {"dataset": "def"}) for seed in (0, 1)),
    *((0.3, 21, seed, None, {}) for seed in (0, 0, 1)),
]
EXPERIMENTS = {"settings": SETTINGS, "spread": SPREAD, "bad": BAD}
# The commands run as a user runs them, each in a process of its own.
IN_PROCESSES = ("settings", "unknown key", "runs and --by")

COMMANDS = {
    "settings": ("settings", "--by", "train.epochs"),
    "spread": ("spread", "--by", "train.lr", "--values", "0.003,1e-3"),
    "unknown key": ("bad", "--by", "train.rl"),
    "where without =": ("bad", "--by", "train.lr", "--where", "train.epochs"),
    "where unknown key": ("bad", "--by", "train.lr", "--where", "train.epoch=21"),
    "value with no runs": ("bad", "--by", "train.lr", "--values", "0.001,0.5"),
    "one group": ("bad", "--by", "train.lr", "--where", "train.epochs=2"),
    "one seed": ("bad", "--by", "train.lr", "--values", "0.001,0.01"),
    "other test set": ("bad", "--by", "train.lr", "--values", "0.001,0.1"),
    "other params": ("bad", "--by", "train.lr", "--values", "0.001,0.03"),
    "seed twice": ("bad", "--by", "train.lr", "--values", "0.001,0.3"),
    "runs and --by": ("bad", "--by", "train.lr", "first", "second"),
}


# Slow, as conftest.py marks test_compare.py: the commands run in processes of their own.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store holding EXPERIMENTS, a project folder for each (its params.yaml names it), and every
    command of COMMANDS run in its folder; returns (store URI, {experiment: folder}, {command: result})."""
    root = tmp_path_factory.mktemp("groups")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    folders = {}
    for experiment, runs in EXPERIMENTS.items():
        folders[experiment] = root / experiment
        folders[experiment].mkdir()
        params = load_params(REPO / "params.yaml")
        params["tracking"]["experiment"] = experiment
        params["evaluate"]["bootstrap"]["resamples"] = RESAMPLES
        (folders[experiment] / "params.yaml").write_text(yaml.safe_dump(params))
        experiment_id = client.create_experiment(experiment, artifact_location=str(root / "mlartifacts"))
        for order, (lr, epochs, seed, share, more) in enumerate(runs):
            _add_run(
                client, experiment_id, root, order, {"train.lr": lr, "train.epochs": epochs, "seed": seed}, share, more
            )

    def command(name: str) -> subprocess.CompletedProcess:
        experiment, *arguments = COMMANDS[name]
        return subprocess.run(
            [sys.executable, "-m", "segnet.compare", *arguments],
            cwd=folders[experiment],
            capture_output=True,
            text=True,
            timeout=180,
            env=clean_env(PYTHONPATH=str(REPO), MLFLOW_TRACKING_URI=uri),
        )

    # Each process spends seconds importing torch and mlflow: the real command runs for a success, a refusal by
    # the library and one by the command line; the other refusals run its main() in this process.
    in_process = [name for name in COMMANDS if name not in IN_PROCESSES]
    results = {
        name: segnet_in_process("compare", folders[COMMANDS[name][0]], uri, *COMMANDS[name][1:]) for name in in_process
    }
    with ThreadPoolExecutor(max_workers=len(IN_PROCESSES)) as pool:
        results |= dict(zip(IN_PROCESSES, pool.map(command, IN_PROCESSES), strict=True))
    return uri, folders, results


def _add_run(client, experiment_id, root, order, trained, share, more) -> None:
    """An evaluate run as the stage logs one: its tags, the params of the model it scored, its matrices."""
    tags = {
        "stage": "evaluate",
        "dataset_sha256": more.get("dataset", "abc"),
        "model_sha256": more.get("model", f"model {order}"),
    }
    # Start times a second apart: which run of a model is the latest must not be left to the clock.
    run_id = client.create_run(experiment_id, start_time=1_700_000_000_000 + order * 1000, tags=tags).info.run_id
    params = TRAINED | trained
    client.log_batch(run_id, params=[Param(key, str(value)) for key, value in params.items()])
    if share is not None:
        np.savez_compressed(root / PANEL_CONFUSIONS, confusions=_panels(share, order).astype(np.int32))
        client.log_artifact(run_id, str(root / PANEL_CONFUSIONS))
    client.set_terminated(run_id, more.get("status", "FINISHED"))
    if more.get("deleted"):
        client.delete_run(run_id)


def _miou(experiment: list, order: int) -> float:
    """The test mIoU of the run added `order`-th to `experiment`."""
    return mean_iou(torch.from_numpy(_panels(experiment[order][3], order).sum(0)))


@slow
def test_a_setting_better_on_every_seed_is_found_above_and_two_alike_are_not_told_apart(store):
    _, _, results = store
    result = results["settings"]
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"test miou by train.epochs on the same 100 panels; 95% intervals from {RESAMPLES} resamples of each "
        "group's seeds and of the panels (the same panels for all runs)"
    )
    assert lines[1].split() == ["train.epochs", "runs", "(seeds)", "miou", "interval", "seed", "std"]
    # In numeric order. Epochs 20 holds seeds 0-2 alone: the older scoring of seed 0's model, the failed run and
    # the deleted one are left out (counted, seed 0 would be there twice).
    table = [line.split() for line in lines[2:5]]
    assert [row[:5] for row in table] == [[value, "3", "(0,", "1,", "2)"] for value in ("5", "10", "20")]
    for row, orders in zip(table, ([0, 1, 2], [3, 4, 5], [7, 8, 9]), strict=True):
        mious = [_miou(SETTINGS, order) for order in orders]
        low, high = float(row[6].strip("[,")), float(row[7].strip("]"))
        assert float(row[5]) == pytest.approx(np.mean(mious), abs=1e-4) and low < float(row[5]) < high
        assert float(row[8]) == pytest.approx(np.std(mious, ddof=1), abs=1e-4)
    assert lines[6:] == [
        "  the runs do not tell train.epochs=5 and train.epochs=10 apart: the interval of the difference holds 0",
        lines[7],
        "  train.epochs=20 is above train.epochs=5: the interval of the difference excludes 0",
        lines[9],
        "  train.epochs=20 is above train.epochs=10: the interval of the difference excludes 0",
    ]
    assert lines[5].split()[:3] == ["train.epochs=10", "-", "train.epochs=5"]
    assert lines[7].split()[:4] == ["train.epochs=20", "-", "train.epochs=5", "+0.1396"]


@slow
def test_seeds_that_vary_more_than_the_gap_leave_it_open_though_the_panels_alone_would_not(store):
    _, _, results = store
    result = results["spread"]
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines[2:4]] == ["0.003", "0.001"]  # in the order --values gives
    assert lines[-1] == (
        "  the runs do not tell train.lr=0.003 and train.lr=0.001 apart: the interval of the difference holds 0"
    )
    # The same difference with the seeds held fixed, resampling the panels alone: the interval excludes 0.
    panels = torch.stack([torch.from_numpy(_panels(share, order)) for order, (*_, share, _) in enumerate(SPREAD)], 1)
    low, _ = percentile_interval(
        panels,
        lambda runs: np.mean([mean_iou(m) for m in runs[:3]]) - np.mean([mean_iou(m) for m in runs[3:]]),
        BootstrapConfig(resamples=RESAMPLES, confidence=0.95, seed=0),
    )
    assert low > 0


@slow
@pytest.mark.parametrize(
    "case, message",
    [
        (
            "unknown key",
            "--by train.rl: no evaluate run logged the param train.rl; they logged train.lr, train.epochs, ",
        ),
        ("where without =", "--where train.epochs: expected KEY=VALUE, such as train.epochs=21"),
        ("where unknown key", "--where train.epoch=21: no evaluate run logged the param train.epoch; they logged "),
        (
            "value with no runs",
            "--values 0.5: no evaluate run with train.lr=0.5; the values found: 0.001, 0.003, 0.01, 0.03, 0.1, 0.3",
        ),
        (
            "one group",
            "--by train.lr: 1 value (0.03) among the runs --where train.epochs=2 keeps; comparing needs at least two",
        ),
        (
            "one seed",
            "train.lr=0.01: runs of 1 seed (0); a group needs at least 2, such as from dvc exp run -S "
            "train.lr=0.01 -S seed=1",
        ),
        ("other test set", "the runs scored different test sets (dataset_sha256 tags differ): train.lr=0.001 (run "),
        (
            "other params",
            "train.epochs differs among the runs besides train.lr and the seed: 21 (train.lr=0.001); 2 "
            "(train.lr=0.03); compare runs alike but for train.lr, such as with --where train.epochs=",
        ),
        ("seed twice", "train.lr=0.3: seed 0 in 2 runs of different models with the same params (run "),
        ("runs and --by", "--by compares groups of runs, A B two runs: give one or the other"),
    ],
)
def test_input_that_allows_no_comparison_stops_it_with_one_line(store, case, message):
    _, _, results = store
    result = results[case]
    assert result.returncode == 1 and not result.stdout
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"ERROR segnet: {message}"), line


@slow
def test_runs_are_selected_by_values_as_numbers_and_the_rest_refused_naming_why(store):
    uri, _, _ = store
    client = mlflow.MlflowClient(uri)
    runs = evaluate_runs(client, "bad")
    groups = select_groups(runs, "train.lr", {"train.epochs": "21.0"}, ["1e-3", "0.003"])
    assert [(group.value, group.seeds) for group in groups] == [("0.001", ["0", "1"]), ("0.003", ["0", "1"])]
    for key, where, values, message in [
        (
            "train.lr",
            {"train.epochs": "7"},
            None,
            "--where train.epochs=7: no evaluate run has that value; logged: 2, 21",
        ),
        ("seed", {}, None, "--by seed: the seed tells apart the runs of one setting"),
        ("train.lr", {}, ["0.001", "1e-3"], "--values: 1e-3 names the group train.lr=0.001 again"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            select_groups(runs, key, where, values)
    with pytest.raises(ValueError, match="no finished evaluate run in MLflow experiment 'nosuch'"):
        evaluate_runs(client, "nosuch")


def test_where_and_values_are_read_as_the_user_means_them():
    assert parse_where(["train.epochs=21", "model.encoder_channels=[32, 64]"]) == {
        "train.epochs": "21",
        "model.encoder_channels": "[32, 64]",
    }
    assert split_values("[32, 64, 128],[32, 64, 256]") == ["[32, 64, 128]", "[32, 64, 256]"]
    assert same_value("0.001", "1e-3") and same_value("21", "21.0") and not same_value("adamw", "sgd")
    for bad, message in ([["=21"], "expected KEY=VALUE"], [["seed=1", "seed=2"], "seed: given twice"]):
        with pytest.raises(ValueError, match=message):
            parse_where(bad)
    with pytest.raises(ValueError, match="0.001 named twice"):
        split_values("0.001,0.003,0.001")


CONFIG = BootstrapConfig(resamples=RESAMPLES, confidence=0.95, seed=0)


def test_one_panel_and_identical_runs_give_every_resample_the_point_estimate():
    panel = torch.tensor([[[50, 10], [5, 35]]])  # (1 panel, 2, 2)
    confusions = panel.expand(4, 1, 2, 2)  # 4 runs alike
    scores = seed_and_panel_resamples(confusions, [[0, 1], [2, 3]], CONFIG)
    assert scores.shape == (RESAMPLES, 2)
    assert torch.all(scores == mean_iou(panel[0]))


def test_with_one_panel_the_interval_is_that_of_the_seeds_alone():
    # Two seeds scoring x and y: a resample's mean is x, (x + y) / 2 or y, a quarter, half and a quarter of the
    # time, so the 95% interval runs from x to y: as wide as the seeds are apart.
    confusions = torch.tensor([[[[50, 10], [5, 35]]], [[[60, 0], [5, 35]]]])  # (2 runs, 1 panel, 2, 2)
    x, y = (mean_iou(run[0]) for run in confusions)
    scores = seed_and_panel_resamples(confusions, [[0, 1]], BootstrapConfig(resamples=4000, confidence=0.95, seed=0))
    shares = [float((scores[:, 0] - value).abs().lt(1e-12).double().mean()) for value in (x, (x + y) / 2, y)]
    assert shares == pytest.approx([0.25, 0.5, 0.25], abs=0.03)
    assert np.percentile(scores[:, 0].numpy(), [2.5, 97.5]) == pytest.approx([x, y])


def test_with_one_run_per_group_it_is_the_panel_bootstrap():
    # Up to 100 resamples draw the same panels as percentile_interval; one run per group adds no spread.
    confusions = torch.from_numpy(_panels(0.8, 1))
    config = BootstrapConfig(resamples=100, confidence=0.95, seed=3)
    scores = seed_and_panel_resamples(confusions.unsqueeze(0), [[0]], config)
    assert list(np.percentile(scores[:, 0].numpy(), [2.5, 97.5])) == pytest.approx(
        percentile_interval(confusions, mean_iou, config), abs=1e-12
    )


def test_a_class_absent_from_a_resample_is_left_out_of_its_mean_as_mean_iou_does():
    # Class 2 occurs on panel 1 alone: resamples without panel 1 average over two classes.
    confusions = torch.tensor([[[[5, 1, 0], [2, 7, 0], [0, 0, 0]], [[3, 0, 0], [0, 4, 1], [0, 0, 6]]]])
    scores = seed_and_panel_resamples(confusions, [[0]], CONFIG)
    possible = {round(mean_iou(a * confusions[0, 0] + b * confusions[0, 1]), 12) for a, b in ((2, 0), (1, 1), (0, 2))}
    assert {round(float(score), 12) for score in scores[:, 0]} == possible
