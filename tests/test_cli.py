import subprocess
import sys

import pytest

from segnet.cli import run_stage
from segnet.errors import DatasetError
from segnet.training.loop import TrainingInterrupted
from tests.helpers import REPO, clean_env


def _raise(error: BaseException):
    def main() -> None:
        raise error

    return main


@pytest.mark.parametrize(
    "error, status, message",
    [
        (DatasetError("data/x.zip: not a zip file"), 1, "data/x.zip: not a zip file"),
        (ValueError("params.yaml train.lr: must be > 0"), 1, "params.yaml train.lr: must be > 0"),
        # A plain Ctrl-C carries no message of its own.
        (KeyboardInterrupt(), 130, "interrupted: stopped by the user"),
        (
            TrainingInterrupted(7, None),
            130,
            "interrupted: training stopped at step 7; no checkpoint (checkpointing is off)",
        ),
    ],
)
def test_a_stage_stopped_by_the_user_or_by_bad_input_exits_with_one_clear_line(error, status, message, caplog):
    with pytest.raises(SystemExit) as stopped:
        run_stage(_raise(error))
    assert stopped.value.code == status
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [("ERROR", message)]


@pytest.mark.parametrize(
    "stage, given, usage",
    [
        ("generate", [], "python -m stages.generate OUTPUT_ZIP"),
        ("prepare", ["data/prepared"], "python -m stages.prepare OUTPUT_DIR METRICS_JSON"),
        (
            "train",
            ["a", "b", "c", "d", "e", "f"],
            "python -m stages.train PREPARED_DIR MODEL_DIR METRICS_JSON HISTORY_CSV CHECKPOINT_DIR",
        ),
        (
            "evaluate",
            ["data/prepared"],
            "python -m stages.evaluate PREPARED_DIR MODEL_DIR METRICS_JSON CONFUSION_PNG PREDICTIONS_PNG",
        ),
    ],
)
def test_a_stage_run_by_hand_with_the_wrong_paths_prints_its_usage(stage, given, usage, tmp_path):
    # Run where no params.yaml exists: the check comes before anything is read or written.
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *given],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        env=clean_env(PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"ERROR segnet: usage: {usage} (got {len(given)} argument(s); dvc.yaml shows them for each stage)"
    ]
    assert list(tmp_path.iterdir()) == []


def test_the_stages_that_need_no_torch_start_without_importing_it():
    # Importing torch takes about 1.5 s of each stage's start, and generate and prepare never compute with it:
    # a module that imports it at the top (segnet.devices, or torch for annotations) must stay out of their imports.
    imports = (
        "import sys, stages.generate, stages.prepare; print(sorted(name for name in sys.modules if 'torch' in name))"
    )
    result = subprocess.run(
        [sys.executable, "-c", imports], cwd=REPO, text=True, capture_output=True, env=clean_env(), check=True
    )
    assert result.stdout.strip() == "[]"
