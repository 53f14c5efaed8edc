"""The benchmark that runs where MLflow and DVC are not installed (`python -m benchmarks.gpu`, here on the CPU),
which settings the techniques benchmark varies, the profile's per-convolution timings, and how the py-spy
profile reads real py-spy samples."""

import argparse
import inspect
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from benchmarks import gpu, profile, stacks, techniques
from segnet.speed import cpu_kernels
from segnet.model.network import SegNet, SegNetConfig
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
    # A batch of 16 instead of params.yaml's 32 (as `dvc exp run -S` would set it): two steps per epoch.
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu", "--archive", str(archive), "--epochs", "2", "--json", str(results),
         "--set", "train.batch_size=16", "--set", "train.lr=5e-05"],
        cwd=REPO, env=clean_env(PYTHONPATH=str(absent)), capture_output=True, text=True, timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    summary = json.loads(results.read_text())
    assert summary["settings_changed"] == {"epochs": 2, "batch_size": 16, "lr": 5e-05}
    assert [record["epoch"] for record in summary["history"]] == [1, 2]
    assert [record["step"] for record in summary["history"]] == [2, 4]
    assert summary["best_epoch"] in (1, 2)
    assert summary["best_val_miou"] == max(record["val_miou"] for record in summary["history"])
    assert 0 < summary["test_miou"] <= 1 and summary["evaluation_images_per_second"] > 0
    assert f"test miou {summary['test_miou']:.4f} after" in finished.stdout


def test_the_gpu_benchmark_reads_train_settings_like_dvc_and_refuses_others():
    assert gpu.train_setting("train.lr=5e-05") == ("lr", 5e-05)  # a float, where YAML 1.1 would read a string
    assert gpu.train_setting("train.channels_last=false") == ("channels_last", False)
    assert gpu.train_setting("train.optimizer=sgd") == ("optimizer", "sgd")
    with pytest.raises(argparse.ArgumentTypeError, match="'batch_size=16': expected train.KEY=VALUE"):
        gpu.train_setting("batch_size=16")
    finished = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--set", "train.no_such_setting=1"],
                              cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2, finished.stderr
    assert "params.yaml train: unknown key(s) ['no_such_setting']" in finished.stderr


def test_the_techniques_benchmark_varies_the_settings_it_is_given_and_refuses_others():
    assert techniques.chosen_variants(on_gpu=False) == techniques.VARIANTS
    on_gpu = techniques.chosen_variants(on_gpu=True)
    assert on_gpu[0] is None and ("precision", "float32") in on_gpu
    assert not {name for name, _ in on_gpu[1:]} & set(techniques.CPU_ONLY)  # they do nothing on a GPU
    assert techniques.chosen_variants(True, ["batch_size", "compile"]) == [
        None, ("batch_size", 16), ("batch_size", 64), ("compile", True)]
    with pytest.raises(ValueError, match=r"no cuda variant of \['threads'\]; known: \['batch_size', "):
        techniques.chosen_variants(True, ["batch_size", "threads"])
    with pytest.raises(ValueError, match=r"no cpu variant of \['no_such_setting'\]"):
        techniques.chosen_variants(False, ["no_such_setting"])
    finished = subprocess.run([sys.executable, "-m", "benchmarks.techniques", "--only", "no_such_setting"],
                              cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert finished.returncode == 2 and "--only: no cpu variant of ['no_such_setting']" in finished.stderr


def test_the_profile_times_every_convolution_of_the_model_in_its_three_parts(monkeypatch, capsys):
    monkeypatch.setattr(profile, "REPEATS", 1)
    monkeypatch.setattr(profile, "TRIALS", 1)
    model, batch = SegNet(SegNetConfig()), 2
    profile.convolution_table(model, batch, (64, 64), torch.float32)
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    convolutions = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)}
    assert [row.split()[0] for row in rows] == list(convolutions) + ["all"]
    # Each layer at the size it runs at: 64 -> 8 down the encoder, back to 64 up the decoder.
    sizes = [int(row.split()[1]) for row in rows[:-1]]
    assert sizes == [64, 32, 16, 8, 8, 16, 32, 64, 64]
    # The model's input needs no gradient: the first layer's input gradient is not timed.
    assert rows[0].split()[7] == "-"
    forward_flops = 0
    for row, size in zip(rows[:-1], sizes):
        conv = convolutions[row.split()[0]]
        assert row.split()[2:5] == [str(conv.in_channels), "->", str(conv.out_channels)]
        forward_flops += 2 * batch * conv.weight.numel() * size * size
        timed = re.findall(r"(\d+\.\d+) \((\d+)\)", row)  # milliseconds (GFLOP/s) per timed part
        assert len(timed) == (2 if row is rows[0] else 3) and all(float(ms) > 0 for ms, _ in timed), row
    # The total row's forward time at its rate makes the model's forward FLOPs, within the printed digits.
    milliseconds, rate = (float(value) for value in re.findall(r"(\d+\.\d+) \((\d+)\)", rows[-1])[0])
    rounding = 0.005 / milliseconds + 0.5 / rate
    assert milliseconds * 1e-3 * rate * 1e9 == pytest.approx(forward_flops, rel=rounding * 1.01)


@pytest.mark.skipif(cpu_kernels.extension() is None, reason="the CPU kernels did not build here")
def test_the_profile_times_each_3x3_convolution_whole_by_direct_and_winograd(monkeypatch, capsys):
    monkeypatch.setattr(profile, "REPEATS", 1)
    monkeypatch.setattr(profile, "TRIALS", 1)
    profile.winograd_table(SegNet(SegNetConfig()), 2, (64, 64), torch.bfloat16)
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    # Every 3x3 convolution but the first, whose 3-channel input needs no gradient; not the 1x1 classifier.
    assert [row.split()[0] for row in rows] == [
        "encoder.1.block.0", "encoder.2.block.0", "encoder.3.block.0",
        "decoder.0.block.0", "decoder.1.block.0", "decoder.2.block.0", "decoder.3.block.0"]
    for row in rows:
        direct, fast, ratio = row.split()[-3:]
        assert float(direct) > 0 and float(fast) > 0
        assert float(ratio.rstrip("x")) == pytest.approx(float(fast) / float(direct), abs=0.01, rel=0.02)


def test_each_timed_part_of_a_convolution_computes_what_its_column_is_named_after():
    # Stride and dilation other than 1, so that a part that dropped the layer's settings gets other shapes.
    conv = torch.nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, bias=False)
    x = torch.randn(2, 4, 9, 9, requires_grad=True)
    weight = conv.weight.detach().clone().requires_grad_()
    y = torch.nn.functional.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation)
    grad = torch.randn_like(y)
    y.backward(grad)
    forward, input_grad, weight_grad = profile.convolution_parts(conv, x.detach(), weight.detach(), grad)
    assert torch.allclose(forward(), y, atol=1e-5)
    grad_input, grad_weight, _ = input_grad()
    assert grad_weight is None and torch.allclose(grad_input, x.grad, atol=1e-5)
    grad_input, grad_weight, _ = weight_grad()
    assert grad_input is None and torch.allclose(grad_weight, weight.grad, atol=1e-5)


def test_py_spy_samples_of_a_python_loop_and_of_a_matrix_product_are_told_apart(tmp_path):
    target = tmp_path / "target.py"
    target.write_text(SPY_TARGET)
    samples = stacks.record([sys.executable, str(target)], 100, tmp_path / "samples.txt", cwd=tmp_path, timeout=120)
    interpreter, waiting, native = stacks.WORKS
    for function, works in (("interpreted", [interpreter]), ("native", [native, waiting])):
        cells, total = stacks.breakdown(samples, f"{function} (target.py")
        # 1.5 s at 100 samples/s; py-spy pauses the process at each sample, so fewer are taken.
        assert total > 20, (function, total)
        # The matrix product is split over two threads: the main thread waits at the end of each for the other,
        # the longer the busier the machine.
        assert sum(cells[stacks.OTHER, work] for work in works) > 0.9 * total, (function, cells)
        assert cells[stacks.OTHER, works[0]] > 0.3 * total, (function, cells)
    # torch is imported inside no function here; in the training loops its first-use imports are left out.
    assert stacks.breakdown(samples, "<module> (target.py")[1] < sum(samples.values())


def test_every_phase_and_loop_marker_names_a_function_where_it_is_defined():
    from scipy import io as scipy_io
    from torch.autograd import graph
    from benchmarks import measure
    from segnet import augment, losses, model, train
    defined = {
        "loadmat": scipy_io.loadmat, "_engine_run_backward": graph._engine_run_backward,
        "step": torch.optim.AdamW.step, "cross_entropy": torch.nn.functional.cross_entropy,
        "forward": model.SegNet.forward, "train": train.train,
        "reference_images_per_second": measure.reference_images_per_second,
    }
    frames = [f"{name} ({inspect.getsourcefile(function)}:1)" for name, function in defined.items()]
    frames += [f"anything ({inspect.getsourcefile(module)}:1)" for module in (augment, losses)]
    markers = [marker for _, phase_markers in stacks.PHASES for marker in phase_markers]
    for marker in markers + list(stacks.LOOPS.values()):
        # py-spy names a file by its path under site-packages or the working folder: a marker is its start.
        function, _, path = marker.rpartition("(")
        assert any(frame.startswith(function) and f"/{path}" in frame for frame in frames), marker
