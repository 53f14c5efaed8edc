"""The search space file: what it turns into, and one line naming the file and the key for each mistake."""

from pathlib import Path

import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from ruamel.yaml import YAML

from segnet.tuning import read_space, trainable_params
from tests.helpers import PARAMS, REPO

TRAIN_STAGE_PARAMS = YAML(typ="safe", pure=True).load((REPO / "dvc.yaml").read_text())["stages"]["train"]["params"]
TRAINABLE = trainable_params(PARAMS, TRAIN_STAGE_PARAMS)


def space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def test_the_train_stages_params_are_searchable_and_no_others():
    assert {"seed", "train.lr", "train.epochs", "augment.overlay_partners", "model.kernel_size"} <= set(TRAINABLE)
    assert not {key for key in TRAINABLE if key.split(".")[0] in ("evaluate", "generate", "data", "tracking")}


def test_ranges_choices_fixed_values_and_first_trials_become_optunas(tmp_path):
    parsed = read_space(
        space(
            tmp_path,
            """
params:
  train.lr: {low: 0.0003, high: 0.01, log: true}
  augment.overlay_partners: {low: 0, high: 2}
  train.weight_decay: {low: 0, high: 0.001}
  train.optimizer: {choices: [adamw, sgd]}
fixed:
  train.epochs: 4
first_trials:
  - {train.lr: 0.003, augment.overlay_partners: 2}
""",
        ),
        TRAINABLE,
    )
    assert parsed.distributions == {
        "train.lr": FloatDistribution(0.0003, 0.01, log=True),
        "augment.overlay_partners": IntDistribution(0, 2),
        "train.weight_decay": FloatDistribution(0.0, 0.001),
        "train.optimizer": CategoricalDistribution(["adamw", "sgd"]),
    }
    assert parsed.fixed == {"train.epochs": 4}
    assert parsed.first_trials == [{"train.lr": 0.003, "augment.overlay_partners": 2}]
    # The identity a resumed study is checked against: the same space, written in another order, is the same.
    reordered = read_space(
        space(
            tmp_path,
            """
fixed: {train.epochs: 4}
params:
  train.optimizer: {choices: [adamw, sgd]}
  train.weight_decay: {low: 0, high: 0.001}
  augment.overlay_partners: {low: 0, high: 2}
  train.lr: {low: 0.0003, high: 0.01, log: true}
""",
        ),
        TRAINABLE,
    )
    assert reordered.canonical == parsed.canonical


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("params: {train.lrr: {low: 0.001, high: 0.01}}", "params.train.lrr: not a param the train stage reads"),
        ("params: {train.lrr: {low: 0.001, high: 0.01}}", "did you mean train.lr"),
        ("params: {evaluate.batch_size: {low: 8, high: 64}}", "params.evaluate.batch_size: not a param the train"),
        ("params: {train.lr: {low: 0.01, high: 0.001}}", "params.train.lr: low 0.01 is not below high 0.001"),
        ("params: {train.lr: {low: 0.0, high: 0.01, log: true}}", "params.train.lr.log: must be true or false, and"),
        ("params: {train.lr: {low: 0.001, high: .inf}}", "params.train.lr.high: must be a finite number"),
        ("params: {train.epochs: {low: 1.5, high: 4}}", "params.train.epochs: params.yaml train.epochs is an integer"),
        ("params: {train.optimizer: {low: 1, high: 2}}", "params.yaml train.optimizer is 'adamw', not a number"),
        ("params: {train.optimizer: {choices: []}}", "params.train.optimizer.choices: must be a non-empty list"),
        ("params: {train.optimizer: {choices: [adamw, 3]}}", "params.train.optimizer: must be of params.yaml's type"),
        ("params: {train.lr: [0.001, 0.01]}", "params.train.lr: must be {low: L, high: H}"),
        ("params: {}", "params: empty"),
        ("fixed: {train.epochs: 2}", "must be a mapping with `params`"),
        ("params: {train.lr: {low: 0.001, high: 0.01}}\nfixed: {train.epochs: two}", "fixed.train.epochs: must be of"),
        ("params: {train.lr: {low: 0.001, high: 0.01}}\nfixed: {train.lrr: 0.1}", "fixed.train.lrr: not a param"),
        (
            "params: {train.lr: {low: 0.001, high: 0.01}}\nfixed: {train.lr: 0.003}",
            "fixed.train.lr: also in params",
        ),
        (
            "params: {train.lr: {low: 0.001, high: 0.01}}\nfirst_trials: [{train.lr: 0.5}]",
            "first_trials[0].train.lr: 0.5 lies outside its range",
        ),
        (
            "params: {train.lr: {low: 0.001, high: 0.01}}\nfirst_trials: [{train.epochs: 3}]",
            "first_trials[0]: must map searched params to values",
        ),
        ("params: {train.lr: {low: 0.001, high: 0.01}\n", "cannot read a search space"),
    ],
)
def test_a_bad_space_is_refused_with_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = space(tmp_path, text)
    with pytest.raises(ValueError) as raised:
        read_space(path, TRAINABLE)
    assert str(raised.value).startswith(str(path)) and message in str(raised.value)
    assert "\n" not in str(raised.value)
