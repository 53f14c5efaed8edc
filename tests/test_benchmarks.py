"""The benchmark that runs where MLflow and DVC are not installed (`python -m benchmarks.gpu`, here on the CPU),
and the profile's per-convolution timings."""

import json
import subprocess
import sys

import numpy as np
import torch

from benchmarks import profile
from segnet.model import SegNet, SegNetConfig
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


def test_the_profile_times_every_convolution_of_the_model_in_its_three_parts(monkeypatch, capsys):
    monkeypatch.setattr(profile, "REPEATS", 1)
    monkeypatch.setattr(profile, "TRIALS", 1)
    model = SegNet(SegNetConfig())
    profile.convolution_table(model, 2, torch.float32)
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    convolutions = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)]
    assert [row.split()[0] for row in rows] == convolutions + ["all"]
    first = rows[0].split()
    # The model's input needs no gradient: the first layer's input gradient is not timed.
    assert first[:5] == ["encoder.0.block.0", "64", "3", "->", "32"] and first[7] == "-"
    for row in rows[1:]:
        milliseconds = [float(cell) for cell in row.split()[-6::2]]
        assert all(value > 0 for value in milliseconds), row
    assert rows[-2].split()[1:5] == ["64", "32", "->", "11"]  # the 1x1 classifier at full size
