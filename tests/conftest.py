"""How the suite runs: each worker's threads, the end-to-end tests marked `slow` (so that `make test-fast`,
`-m 'not slow'`, runs the unit tests alone), and the order its files go out to the workers.

Slow: what runs the pipeline or a stage in another process (`dvc repro`, a tiny project), a server, a browser,
several processes at once, a killed process, a benchmark, a fuzzer or a whole training run; `make test` runs all.
"""

import os

import pytest

from segnet.cores import available_cores

SLOW_FILES = (
    "tests/test_pipeline.py",
    "tests/tracking/test_experiments.py",
    "tests/training/test_distributed.py",
    "tests/tuning/test_search.py",
    "tests/tracking/test_server.py",
    "tests/test_benchmarks.py",
    "tests/prediction/test_predict.py",
    "tests/tracking/test_registry.py",
    "tests/dataset/test_hostile_input.py",
    "tests/dataset/test_fuzz.py",
)
"""Files all of whose tests are slow, relative to the repository, the longest first: they run first (below)."""

SLOW_TESTS = {
    "tests/test_cli.py": {"test_a_stage_run_by_hand_with_the_wrong_paths_prints_its_usage"},
    "tests/dataset/test_prepare.py": {
        "test_a_killed_prepare_stage_leaves_the_earlier_output_or_a_complete_new_one",
        "test_an_output_folder_of_other_files_is_refused_and_an_earlier_output_replaced",
        "test_the_train_stage_refuses_a_model_folder_it_cannot_replace_before_it_trains",
    },
    "tests/tracking/test_compare.py": {
        "test_a_clearly_better_run_is_found_better_by_name_or_id",
        "test_the_interval_settings_come_from_params_yaml_and_a_run_that_used_others_is_named",
    },
    "tests/evaluation/test_evaluate_input.py": {
        "test_the_stage_refuses_weights_of_another_model_before_its_mlflow_run",
    },
    "tests/speed/test_cpu_kernels.py": {
        "test_without_a_compiler_the_kernels_are_off_with_a_warning_and_training_still_runs",
        "test_a_build_in_progress_is_waited_for_and_one_that_was_killed_is_cleared",
        "test_training_after_a_killed_build_loads_the_kernels_instead_of_waiting_forever",
    },
    "tests/prediction/test_models.py": {
        "test_an_mlflow_model_gives_the_masks_of_the_folder_it_was_logged_from",
        "test_an_mlflow_model_that_is_not_there_is_one_line_naming_it",
    },
    "tests/tracking/test_runs.py": {
        "test_processes_opening_runs_on_a_fresh_sqlite_store_at_once_all_succeed",
        "test_a_stage_stopped_by_sigterm_ends_its_run_as_killed_and_exits_130",
    },
    # Whole training runs, in this process.
    "tests/training/test_loop.py": {
        "test_a_run_stopped_at_any_step_resumes_to_exactly_the_uninterrupted_result",
        "test_training_learns_and_returns_the_best_epochs_weights",
    },
}
"""Slow test functions (with all their parameters) in files of unit tests."""


def pytest_configure(config: pytest.Config) -> None:
    # Each process that runs tests (this one, or each pytest-xdist worker), and every stage or command it
    # starts, computes on its share of the cores, as the training launcher gives each of its processes: on two
    # cores, two workers at one thread each spent about 15% less CPU time on the suite than at two threads
    # each, whose threads beyond the cores wait on each other. Set here, before the workers start and before
    # any test module imports torch, which reads it once; the workers inherit it.
    workers = getattr(config.option, "numprocesses", None) or 1
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // workers)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = config.rootpath
    for item in items:
        file = item.path.relative_to(root).as_posix()
        name = getattr(item, "originalname", item.name)
        if file in SLOW_FILES or name in SLOW_TESTS.get(file, ()):
            item.add_marker(pytest.mark.slow)
    # The slow files first, the longest first, the rest in their order: pytest-xdist hands out files in this
    # order (make test turns off its own, by number of tests), so the short files fill the gaps at the end
    # instead of a long one starting last and keeping one core busy alone.
    rank = {file: position for position, file in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.relative_to(root).as_posix(), len(rank)))
