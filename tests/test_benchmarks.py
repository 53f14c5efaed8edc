"""The benchmarks' own logic: settings changed by name, both training measurements in fresh processes, where
the figures go, the variants the techniques benchmark runs, the profile's timed parts, and how the py-spy
profile reads real samples."""

import inspect
import json
import subprocess
import sys
import zipfile

import pytest
import torch

from benchmarks import common, measure, profile, stacks, techniques
from segnet.dataset import SplitSpec, build_archive
from segnet.model import SegNet
from segnet.speed import cpu_kernels
from tests.helpers import REPO, clean_env


def test_a_setting_changes_by_its_name_alone_and_an_unknown_name_is_refused():
    settings = common.load_settings(batch_size=16, winograd=False, deform_pixels=0.0)
    assert (settings["batch_size"], settings["winograd"], settings["deform_pixels"]) == (16, False, 0.0)
    assert (settings["epochs"], settings["device"]) == (1, "cpu")  # a short run on the CPU unless changed
    assert settings.training()["config"].batch_size == 16
    with pytest.raises(ValueError, match="params.yaml has no training setting 'no_such_setting'; known: "):
        common.load_settings(no_such_setting=1)


def test_every_variant_of_the_techniques_benchmark_is_a_valid_setting():
    for name, value in techniques.VARIANTS:
        common.load_settings(**{name: value}).training()  # checked as the train stage checks params.yaml


def test_the_techniques_benchmark_varies_the_settings_it_is_given_and_refuses_others():
    assert techniques.chosen_variants(on_gpu=False) == techniques.VARIANTS
    on_gpu = techniques.chosen_variants(on_gpu=True)
    assert ("precision", "float32") in on_gpu
    assert not {name for name, _ in on_gpu} & set(techniques.CPU_ONLY)  # they do nothing on a GPU
    assert techniques.chosen_variants(True, ["batch_size"]) == [("batch_size", 16), ("batch_size", 64)]
    with pytest.raises(ValueError, match=r"no cuda variant of \['threads'\]; known: \['batch_size', "):
        techniques.chosen_variants(True, ["batch_size", "threads"])
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.techniques", "--only", "no_such_setting"],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 2 and "--only: no cpu variant of ['no_such_setting']" in finished.stderr


def test_both_training_loops_measure_in_a_fresh_process(tmp_path):
    # Files of 4 panels, not the benchmarks' 32: each loop takes a few steps of a few panels.
    archive = tmp_path / "archive.zip"
    build_archive(
        archive, seed=0, train=SplitSpec(common.MIN_FILES, 4, 0, 4), test=SplitSpec(1, 4, 0, 9), test_digit_fraction=0.2
    )
    with zipfile.ZipFile(archive) as opened:
        opened.extractall(tmp_path / "extracted")
    common.prepare(archive, tmp_path / "prepared")
    assert measure.in_fresh_process("reference", tmp_path) > 0
    assert measure.in_fresh_process("ours", tmp_path, batch_size=4) > 0


def test_a_report_is_printed_and_written_as_markdown_and_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    common.report("example", ["| a | b |", "|---|---:|", "| x | 1.0 |"], {"x": 1.0})
    assert capsys.readouterr().out == "| a | b |\n|---|---:|\n| x | 1.0 |\n"
    assert (tmp_path / "results" / "example.md").read_text() == "| a | b |\n|---|---:|\n| x | 1.0 |\n"
    written = json.loads((tmp_path / "results" / "example.json").read_text())
    assert written["x"] == 1.0 and written["machine"]["cores"] >= 1


def test_the_profile_times_every_convolution_of_the_model_in_its_three_parts(monkeypatch, capsys):
    monkeypatch.setattr(profile, "REPEATS", 1)
    monkeypatch.setattr(profile, "TRIALS", 1)
    model = SegNet(common.load_settings().model)
    profile.convolution_table(model, 2, (64, 64), torch.float32)
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    convolutions = {name: module for name, module in model.named_modules() if isinstance(module, torch.nn.Conv2d)}
    assert [row.split()[0] for row in rows] == list(convolutions) + ["all"]
    # Each layer at the size it runs at: 64 -> 8 down the encoder, back to 64 up the decoder.
    assert [int(row.split()[1]) for row in rows[:-1]] == [64, 32, 16, 8, 8, 16, 32, 64, 64]
    assert rows[0].split()[7] == "-"  # the model's input needs no gradient
    for row in rows[:-1]:
        conv = convolutions[row.split()[0]]
        assert row.split()[2:5] == [str(conv.in_channels), "->", str(conv.out_channels)]


@pytest.mark.skipif(cpu_kernels.extension() is None, reason="the CPU kernels did not build here")
def test_the_profile_times_each_3x3_convolution_whole_by_direct_and_winograd(monkeypatch, capsys):
    monkeypatch.setattr(profile, "REPEATS", 1)
    monkeypatch.setattr(profile, "TRIALS", 1)
    profile.winograd_table(SegNet(common.load_settings().model), 2, (64, 64), torch.bfloat16)
    rows = capsys.readouterr().out.strip().splitlines()[2:]
    # Every 3x3 convolution but the first, whose 3-channel input needs no gradient; not the 1x1 classifier.
    assert [row.split()[0] for row in rows] == [
        "encoder.1.block.0",
        "encoder.2.block.0",
        "encoder.3.block.0",
        "decoder.0.block.0",
        "decoder.1.block.0",
        "decoder.2.block.0",
        "decoder.3.block.0",
    ]
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


SPY_TARGET = """
import time
import torch

def interpreted(seconds):
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(10_000):
            count += 1

def native(seconds):
    x = torch.randn(1024, 1024)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        x @ x

torch.set_num_threads(2)
interpreted(1.5)
native(1.5)
"""


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

    from segnet.data import augment
    from segnet.model import network
    from segnet.training import loop, losses

    defined = {
        "loadmat": scipy_io.loadmat,
        "_engine_run_backward": graph._engine_run_backward,
        "step": torch.optim.AdamW.step,
        "cross_entropy": torch.nn.functional.cross_entropy,
        "forward": network.SegNet.forward,
        "train": loop.train,
        "reference_images_per_second": measure.reference_images_per_second,
    }
    frames = [f"{name} ({inspect.getsourcefile(function)}:1)" for name, function in defined.items()]
    frames += [f"anything ({inspect.getsourcefile(module)}:1)" for module in (augment, losses)]
    markers = [marker for _, phase_markers in stacks.PHASES for marker in phase_markers]
    for marker in markers + list(stacks.LOOPS.values()):
        # py-spy names a file by its path under site-packages or the working folder: a marker is its start.
        function, _, path = marker.rpartition("(")
        assert any(frame.startswith(function) and f"/{path}" in frame for frame in frames), marker
