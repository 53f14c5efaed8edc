"""The benchmark that runs where MLflow and DVC are not installed: `python -m benchmarks.gpu`, here on the CPU."""

import json
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, clean_env, course_zip


def test_the_gpu_benchmark_prepares_trains_and_scores_the_default_model_without_tracking(tmp_path):
    # A bare GPU box has none of these: here they are shadowed by packages that refuse to import.
    absent = tmp_path / "absent"
    for package in ("mlflow", "dvc", "mlxtend"):
        (absent / package).mkdir(parents=True)
        (absent / package / "__init__.py").write_text(f"raise ImportError('{package} is not installed here')\n")
    archive = tmp_path / "course.zip"
    # 36 training panels: with params.yaml's validation share and batch of 32, one step per epoch.
    course_zip(archive, np.random.default_rng(3), train_files=3, test_files=1, per_file=12)
    results = tmp_path / "gpu.json"
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--archive", str(archive), "--epochs", "2", "--json", str(results)],
        cwd=REPO, env=clean_env(PYTHONPATH=str(absent)), capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(results.read_text())
    assert [record["epoch"] for record in summary["history"]] == [1, 2]
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_val_miou"] == max(record["val_miou"] for record in summary["history"])
    assert 0 < summary["test_miou"] <= 1 and summary["evaluation_images_per_second"] > 0
    assert f"test miou {summary['test_miou']:.4f} after" in finished.stdout
