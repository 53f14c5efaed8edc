"""The train stage's side of a search: reports to a real Optuna study in SQLite, and when it stops training."""

import optuna
import pytest

from segnet.training.pruning import PRUNED_AT, PRUNER, TRIAL_ENV, Pruning, trial_pruning


@pytest.fixture
def study(tmp_path) -> optuna.Study:
    """A study, as segnet.search leaves it, whose one finished trial reached 0.5 at epochs 1 and 2."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    created = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    created.set_user_attr(PRUNER, {"n_startup_trials": 1, "n_warmup_steps": 0})
    finished = created.ask()
    for epoch in (1, 2):
        finished.report(0.5, epoch)
    created.tell(finished, 0.5)
    return created


def start(study: optuna.Study, tmp_path, monkeypatch, epochs: int) -> tuple[optuna.trial.Trial, Pruning]:
    """A new trial of `study`, and the callback a train stage of `epochs` builds for it from the environment."""
    trial = study.ask()
    monkeypatch.setenv(TRIAL_ENV, f"sqlite:///{tmp_path / 'optuna.db'}|s|{trial._trial_id}")
    pruning = trial_pruning(epochs)
    assert pruning is not None
    return trial, pruning


def test_a_trial_behind_the_median_stops_after_that_epoch_and_one_ahead_goes_on(study, tmp_path, monkeypatch):
    trial, pruning = start(study, tmp_path, monkeypatch, epochs=3)
    pruning.on_epoch_end({"epoch": 1, "val_miou": 0.1})  # below the finished trial's 0.5 at epoch 1
    assert pruning.stop_training and pruning.pruned_at == 1
    reported = study.trials[trial.number]
    assert reported.intermediate_values == {1: 0.1} and reported.user_attrs[PRUNED_AT] == 1
    # The pruner weighs a trial's best epoch so far: one that was ahead is not stopped by one bad epoch.
    _, ahead = start(study, tmp_path, monkeypatch, epochs=3)
    ahead.on_epoch_end({"epoch": 1, "val_miou": 0.6})
    ahead.on_epoch_end({"epoch": 2, "val_miou": 0.1})
    assert not ahead.stop_training


def test_the_last_epoch_is_never_pruned_a_training_that_ran_to_its_end_is_a_finished_trial(
    study, tmp_path, monkeypatch
):
    trial, pruning = start(study, tmp_path, monkeypatch, epochs=1)
    pruning.on_epoch_end({"epoch": 1, "val_miou": 0.1})
    assert not pruning.stop_training and pruning.pruned_at is None
    assert study.trials[trial.number].intermediate_values == {1: 0.1}


def test_outside_a_search_there_is_no_callback_and_a_malformed_variable_is_named(monkeypatch):
    monkeypatch.delenv(TRIAL_ENV, raising=False)
    assert trial_pruning(epochs=3) is None
    monkeypatch.setenv(TRIAL_ENV, "sqlite:///x.db|s|three")
    with pytest.raises(ValueError, match=f"{TRIAL_ENV}=sqlite:///x.db|s|three: not STORAGE|STUDY|TRIAL_ID"):
        trial_pruning(epochs=3)
