"""segnet/speed/cpu_kernels.cpp against the PyTorch layers it replaces in training: the same function, the same
gradients."""

import copy
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segnet.model import SegNet
from segnet.speed import cpu_kernels, use_cpu_kernels
from tests.helpers import REPO, model_config

pytestmark = pytest.mark.skipif(cpu_kernels.extension() is None, reason="the CPU kernels did not build here")

# (batch, channels, height, width): channel counts that fill whole vectors and ones that do not, and row
# counts (batch x height x width) above and below the kernels' block of 512 rows, not a multiple of it.
SHAPES = [(4, 32, 16, 16), (3, 11, 10, 14), (2, 64, 2, 2)]


def _channels_last(shape, dtype, scale=3.0, shift=1.0, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * scale + shift
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_batch_norm_relu_matches_pytorch_forward_backward_and_running_statistics(shape, dtype, tolerance):
    reference = nn.BatchNorm2d(shape[1])
    weights = torch.Generator().manual_seed(2)  # not the global generator: other tests must not change the draw
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5, generator=weights)
        reference.bias.uniform_(-0.5, 0.5, generator=weights)
    fused = copy.deepcopy(reference)
    x = _channels_last(shape, dtype)
    grad = _channels_last(shape, dtype, scale=1.0, shift=0.0, seed=1)
    expected_input, fused_input = x.clone().requires_grad_(), x.clone().requires_grad_()

    expected = torch.relu(reference(expected_input))
    expected.backward(grad)
    output = cpu_kernels.batch_norm_relu(fused_input, fused)
    output.backward(grad)

    def close(a, b, scale=1.0):
        return torch.allclose(a.float(), b.float(), rtol=tolerance, atol=tolerance * scale)

    assert output.dtype == dtype and output.is_contiguous(memory_format=torch.channels_last)
    assert close(output, expected, expected.abs().max().item())
    assert (output > 0).float().mean() > 0.3  # the ReLU is exercised on both sides
    # Where batch norm's output lies within float rounding of zero, the two may put it on different sides of the
    # ReLU, each passing gradient as its own forward did. Such elements are left out of the comparison of input
    # gradients. Measured over 1,500 weight draws at the first shape in bfloat16: 10 of 49 million elements,
    # all within 4.2e-7 of zero. With unseeded weights this made the test fail about once in 300 draws.
    exact = nn.functional.batch_norm(
        x.double(), None, None, reference.weight.double(), reference.bias.double(), training=True
    )
    agree = (output > 0) == (expected > 0)
    assert exact[~agree].abs().le(1e-5).all()
    assert close(fused_input.grad[agree], expected_input.grad[agree], expected_input.grad.abs().max().item())
    assert close(fused.weight.grad, reference.weight.grad, reference.weight.grad.abs().max().item())
    assert close(fused.bias.grad, reference.bias.grad, reference.bias.grad.abs().max().item())
    assert torch.allclose(fused.running_mean, reference.running_mean, rtol=1e-4, atol=1e-4)
    assert torch.allclose(fused.running_var, reference.running_var, rtol=1e-3, atol=1e-3)
    assert fused.num_batches_tracked.item() == reference.num_batches_tracked.item() == 1


def test_batch_norm_relu_keeps_its_precision_when_the_mean_is_far_larger_than_the_spread():
    # x = 1000 +- 0.01: computed naively, E[x^2] - E[x]^2 and x * scale - mean * scale cancel most digits.
    x = _channels_last((4, 8, 16, 16), torch.float32, scale=0.01, shift=1000.0)
    exact = x.double()
    mean, var = exact.mean((0, 2, 3), keepdim=True), exact.var((0, 2, 3), unbiased=False, keepdim=True)
    truth = torch.relu((exact - mean) / (var + 1e-5).sqrt())
    ours = (cpu_kernels.batch_norm_relu(x, nn.BatchNorm2d(8)).double() - truth).abs().max()
    pytorch = (torch.relu(nn.BatchNorm2d(8)(x)).double() - truth).abs().max()
    # What is left is float32's rounding of the mean itself (half an ulp of 1000 is 3e-5, 0.003 spreads).
    assert ours < 5e-3 and ours <= pytorch


def _pool_input(dtype):
    # Small integers: many ties inside windows, zeros as after a ReLU, and one NaN.
    x = torch.randint(-1, 3, (3, 5, 6, 8), generator=torch.Generator().manual_seed(0)).float().clamp(min=0)
    x[1, 2, 3, 4] = float("nan")
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooling_and_unpooling_match_pytorch_exactly_with_ties_and_nan(dtype):
    x = _pool_input(dtype)
    expected_input, our_input = x.clone().requires_grad_(), x.clone().requires_grad_()

    values, indices = F.max_pool2d(expected_input, 2, return_indices=True)
    expected = F.max_unpool2d(values, indices, 2)
    our_values, where = cpu_kernels.max_pool(our_input)
    ours = cpu_kernels.max_unpool(our_values, where)

    def same(a, b):  # NaN counts as equal to NaN
        return a.dtype == b.dtype and torch.equal(torch.nan_to_num(a, nan=-7.0), torch.nan_to_num(b, nan=-7.0))

    assert where.dtype == torch.uint8 and set(where.unique().tolist()) == {0, 1, 2, 3}
    assert same(our_values, values) and same(ours, expected)
    # Both are pure moves of values, so their gradients are exact too.
    grad = torch.randn(ours.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    (expected * grad).sum().backward()
    (ours * grad).sum().backward()
    assert same(our_input.grad, expected_input.grad)


def test_the_kernels_give_the_same_bits_with_one_thread_and_with_two():
    norm = nn.BatchNorm2d(32)
    x = _channels_last((8, 32, 32, 32), torch.bfloat16)
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            norm_copy = copy.deepcopy(norm)
            leaf = x.clone().requires_grad_()
            output = cpu_kernels.batch_norm_relu(leaf, norm_copy)
            pooled, where = cpu_kernels.max_pool(output)
            cpu_kernels.max_unpool(pooled, where).float().square().sum().backward()
            results.append((output, pooled, where, leaf.grad, norm_copy.weight.grad, norm_copy.running_var))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_a_model_with_the_kernels_computes_what_it_computes_without_them():
    config = model_config(encoder_channels=(8, 16, 16, 16), decoder_channels=(16, 16, 8, 8))
    torch.manual_seed(0)
    plain = SegNet(config).to(memory_format=torch.channels_last).train()
    fast = copy.deepcopy(plain)
    assert use_cpu_kernels(fast)
    images = torch.rand(4, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 11, (4, 64, 64))
    losses = []
    for model in (plain, fast):
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-3 * a.grad.abs().max().item()), name
    # Evaluation runs PyTorch's layers, with the running statistics both updated alike.
    plain.eval(), fast.eval()
    assert torch.allclose(plain(images), fast(images), atol=1e-4)
    assert fast.state_dict().keys() == plain.state_dict().keys()


def test_without_a_compiler_the_kernels_are_off_with_a_warning_and_training_still_runs(tmp_path):
    script = (
        "import torch\n"
        "from segnet.model import SegNet, SegNetConfig\n"
        "from segnet.speed import use_cpu_kernels\n"
        "model = SegNet(SegNetConfig((4, 4, 4, 4), (4, 4, 4, 4), 3, 'ink_sqrt', 11, 3)).train()\n"
        "print('kernels on:', use_cpu_kernels(model))\n"
        "model(torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)).sum().backward()\n"
    )
    # A fresh build folder (no cached build) and a compiler that does not exist.
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path / "build"), "CXX": str(tmp_path / "no-such-compiler")}
    finished = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert "kernels on: False" in finished.stdout
    assert "could not build the CPU kernels" in finished.stderr


HOLD_THE_TURN = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from segnet.speed.cpu_kernels import build_turn\n"
    "folder = Path(sys.argv[1])\n"
    "with build_turn(folder):\n"
    "    (folder / 'lock').touch()  # what torch's build leaves while it runs\n"
    "    print('holding', flush=True)\n"
    "    time.sleep(300)\n"
)


def _hold_the_turn(folder) -> subprocess.Popen:
    """A process inside build_turn(folder) with torch's build lock present, as in the middle of a build."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_TURN, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
    return holder


def test_a_build_in_progress_is_waited_for_and_one_that_was_killed_is_cleared(tmp_path):
    holder = _hold_the_turn(tmp_path)
    entered = threading.Event()

    def take_the_turn():
        with cpu_kernels.build_turn(tmp_path):
            entered.set()

    waiting = threading.Thread(target=take_the_turn)
    waiting.start()
    try:
        # A live build keeps its lock, and its turn, however long it takes.
        assert not entered.wait(timeout=2)
        assert (tmp_path / "lock").exists()
    finally:
        holder.kill()  # killed mid-build: torch's lock stays behind
        holder.wait()
    assert entered.wait(timeout=30)
    waiting.join()
    assert not (tmp_path / "lock").exists()


def test_training_after_a_killed_build_loads_the_kernels_instead_of_waiting_forever():
    # The real build folder: torch names its lock there, and every training process loads from it. Before
    # build_turn, a lock left there made every later load wait without end, saying nothing.
    build_directory = cpu_kernels.build_directory()
    holder = _hold_the_turn(build_directory)
    holder.kill()
    holder.wait()
    load = "from segnet.speed.cpu_kernels import extension\nassert extension() is not None\n"
    finished = subprocess.run([sys.executable, "-c", load], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr


def test_each_python_environment_and_torch_version_builds_in_its_own_folder(monkeypatch):
    # torch's build file names the environment's include paths: two venvs sharing a folder rebuilt in turns.
    here = cpu_kernels._build_signature()
    assert cpu_kernels._build_signature() == here
    monkeypatch.setattr(sys, "prefix", "/another/venv")
    elsewhere = cpu_kernels._build_signature()
    monkeypatch.setattr(torch, "__version__", "0.0.0")
    assert len({here, elsewhere, cpu_kernels._build_signature()}) == 3
