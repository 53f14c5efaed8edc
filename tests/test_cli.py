import pytest

from segnet.cli import run_stage
from segnet.errors import DatasetError
from segnet.train import TrainingInterrupted


def _raise(error: BaseException):
    def main() -> None:
        raise error
    return main


@pytest.mark.parametrize("error, status, message", [
    (DatasetError("data/x.zip: not a zip file"), 1, "data/x.zip: not a zip file"),
    (ValueError("params.yaml train.lr: must be > 0"), 1, "params.yaml train.lr: must be > 0"),
    # A plain Ctrl-C carries no message of its own.
    (KeyboardInterrupt(), 130, "interrupted: stopped by the user"),
    (TrainingInterrupted(7, None), 130,
     "interrupted: training stopped at step 7; no checkpoint (checkpointing is off)"),
])
def test_a_stage_stopped_by_the_user_or_by_bad_input_exits_with_one_clear_line(error, status, message, caplog):
    with pytest.raises(SystemExit) as stopped:
        run_stage(_raise(error))
    assert stopped.value.code == status
    assert [(record.levelname, record.getMessage()) for record in caplog.records] == [("ERROR", message)]
