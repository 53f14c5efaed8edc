"""params.yaml is read as DVC reads and writes it (YAML 1.2), and a broken one is named."""

import re

import pytest

from segnet.params import build, load_params
from segnet.training import TrainConfig
from tests.helpers import REPO


def test_numbers_as_dvc_writes_them_are_numbers_and_yes_stays_a_string(tmp_path):
    # `dvc exp run -S train.lr=0.00005` writes `5e-05`; a hand edit may say `3e-3`. Both lack a dot, which
    # YAML 1.1 readers (PyYAML) need to see a float, so they came through as strings and were refused.
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  lr: 5e-05\n  weight_decay: 3e-3\n  epochs: 2\n  name: yes\n")
    assert load_params(path) == {"train": {"lr": 5e-05, "weight_decay": 0.003, "epochs": 2, "name": "yes"}}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("train:\n  lr: 1\n  lr: 2\n", "not valid YAML .*duplicate key"),
        ("train: [1, 2\n", "not valid YAML"),
        ("- train\n", "must hold a mapping of sections, got list"),
        ("", "must hold a mapping of sections, got NoneType"),
    ],
)
def test_a_broken_params_file_is_named_with_its_problem(tmp_path, text, problem):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"(?s)^{re.escape(str(path))}: {problem}"):
        load_params(path)


@pytest.mark.parametrize("text", ["1e400", ".inf", "-.inf", ".nan"])
def test_a_number_that_is_not_finite_is_refused_by_name(tmp_path, text):
    path = tmp_path / "params.yaml"
    path.write_text(f"train:\n  lr: {text}\n")
    values = {**load_params(REPO / "params.yaml")["train"], **load_params(path)["train"]}
    with pytest.raises(ValueError, match=r"^params.yaml train.lr: must be a finite number, got (-?inf|nan)$"):
        build(TrainConfig, "train", values)
