"""Early stopping of a search's trial: the train stage reports each epoch's validation mIoU to its Optuna trial.

`python -m segnet.search` runs each trial as a `dvc exp run` and names the trial in the environment; the train
stage, a process DVC starts, reports to it through the study's storage and stops when Optuna's pruner says the
trial falls behind the others at the same epoch. Outside a search the variable is unset and nothing changes.
"""

import os

from segnet.training.callbacks import Callback

# STORAGE_URL|STUDY_NAME|TRIAL_ID, set by segnet.search for the trial's `dvc exp run`.
TRIAL_ENV = "SEGNET_SEARCH_TRIAL"
# The trial's user attribute a pruned train stage sets: the epoch after which it stopped.
PRUNED_AT = "pruned_at_epoch"
# The study's user attribute holding its median pruner's settings: the pruner judges in this process, not the
# search's, and Optuna keeps no pruner in its storage.
PRUNER = "median_pruner"


class Pruning(Callback):
    """Reports validation mIoU to an Optuna trial after every epoch; stops training when the pruner says so, but
    never after the last of `epochs`: a training that ran to its end is a finished trial, whatever its score."""

    def __init__(self, storage: str, study: str, trial_id: int, epochs: int):
        import optuna  # only a search's trials need it

        self.epochs = epochs

        settings = optuna.load_study(study_name=study, storage=storage).user_attrs[PRUNER]
        pruner = optuna.pruners.MedianPruner(**settings)
        self.trial = optuna.trial.Trial(optuna.load_study(study_name=study, storage=storage, pruner=pruner), trial_id)
        self.pruned_at: int | None = None

    def on_epoch_end(self, record: dict) -> None:
        self.trial.report(record["val_miou"], record["epoch"])
        if record["epoch"] < self.epochs and self.trial.should_prune():
            self.pruned_at = record["epoch"]
            self.trial.set_user_attr(PRUNED_AT, self.pruned_at)
            self.stop_training = True


def trial_pruning(epochs: int) -> Pruning | None:
    """The Pruning callback of the search trial this process runs for, training `epochs`; None outside a search.

    Raises:
        ValueError: The variable is set but malformed.
    """
    value = os.environ.get(TRIAL_ENV)
    if not value:
        return None
    storage, study, trial_id = value.rsplit("|", 2)
    if not trial_id.isdigit():
        raise ValueError(f"{TRIAL_ENV}={value}: not STORAGE|STUDY|TRIAL_ID")
    return Pruning(storage, study, int(trial_id), epochs)
