"""Hyperparameter search: a space the user writes in YAML, and an Optuna study whose trials are DVC experiments."""

from segnet.tuning.space import SearchSpace, read_space, trainable_params
from segnet.tuning.study import SearchConfig, open_study, run_search

__all__ = ["SearchConfig", "SearchSpace", "open_study", "read_space", "run_search", "trainable_params"]
