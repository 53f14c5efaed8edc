"""segnet/speed/winograd.py against PyTorch's direct convolution: the same function and gradients, rounded
differently."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from segnet.model import SegNet
from segnet.speed import cpu_kernels, use_cpu_kernels, use_winograd, winograd
from tests.helpers import model_config

pytestmark = pytest.mark.skipif(cpu_kernels.extension() is None, reason="the CPU kernels did not build here")

# (batch, in, out, height, width): channel counts that fill the kernels' blocks of 64 and ones that leave a
# remainder, the smallest tile grid (one tile), non-square planes, and the deepest layer's shape.
SHAPES = [(2, 64, 128, 8, 8), (3, 5, 7, 6, 10), (1, 3, 4, 2, 2), (2, 70, 65, 4, 6), (2, 128, 512, 8, 8)]


def _random(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    return ((value.double() - exact).norm() / exact.norm()).item()


def _exact_and_winograd(shape, dtype):
    """The float64 direct convolution's output and gradients, and F(2x2, 3x3)'s in `dtype` (float32 weights)."""
    batch, in_channels, out_channels, height, width = shape
    x = _random((batch, in_channels, height, width), 0)
    weight = _random((out_channels, in_channels, 3, 3), 1) / (9 * in_channels) ** 0.5
    grad = _random((batch, out_channels, height, width), 2)
    exact_x, exact_weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    exact = F.conv2d(exact_x, exact_weight, padding=1)
    exact.backward(grad)
    ours_x = x.to(dtype).contiguous(memory_format=torch.channels_last).requires_grad_()
    ours_weight = weight.float().contiguous(memory_format=torch.channels_last).requires_grad_()
    ours = winograd.conv3x3(ours_x, ours_weight)
    ours.backward(grad.to(dtype).contiguous(memory_format=torch.channels_last))
    return (exact, exact_x.grad, exact_weight.grad), (ours, ours_x.grad, ours_weight.grad)


@pytest.mark.parametrize("shape", SHAPES)
def test_in_float32_output_and_both_gradients_equal_the_direct_convolution(shape):
    exact, ours = _exact_and_winograd(shape, torch.float32)
    output, grad_x, grad_weight = ours
    assert output.dtype == grad_x.dtype == grad_weight.dtype == torch.float32
    assert output.is_contiguous(memory_format=torch.channels_last)
    assert grad_x.is_contiguous(memory_format=torch.channels_last)
    # The weight's gradient comes back in the weight's own layout, which the fused optimizer expects.
    assert grad_weight.is_contiguous(memory_format=torch.channels_last)
    for name, value, expected in zip(("output", "grad x", "grad weight"), ours, exact, strict=True):
        assert _relative_error(value, expected) < 2e-6, name


@pytest.mark.parametrize("shape", SHAPES)
def test_in_bfloat16_the_error_stays_within_three_times_the_direct_convolutions(shape):
    exact, ours = _exact_and_winograd(shape, torch.bfloat16)
    batch, in_channels, out_channels, height, width = shape
    x = _random((batch, in_channels, height, width), 0, torch.bfloat16).contiguous(memory_format=torch.channels_last)
    weight = (_random((out_channels, in_channels, 3, 3), 1) / (9 * in_channels) ** 0.5).float().requires_grad_()
    x.requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        direct = F.conv2d(x, weight, padding=1)
    direct.backward(_random(direct.shape, 2, torch.bfloat16).contiguous(memory_format=torch.channels_last))
    assert ours[0].dtype == ours[1].dtype == torch.bfloat16 and ours[2].dtype == torch.float32
    # Measured: about 5.5e-3 against the direct bfloat16 convolution's 2.9e-3, for each of the three.
    for name, value, direct_value, expected in zip(
        ("output", "grad x", "grad weight"), ours, (direct, x.grad, weight.grad), exact, strict=True
    ):
        assert _relative_error(value, expected) < 3 * _relative_error(direct_value, expected), name


def test_any_weight_layout_any_gradient_layout_and_an_input_without_gradient():
    x = _random((2, 6, 4, 4), 0)
    weight = _random((5, 6, 3, 3), 1)
    grad = _random((2, 5, 4, 4), 2)
    exact_weight = weight.clone().requires_grad_()
    exact = F.conv2d(x, exact_weight, padding=1)
    exact.backward(grad)
    # A contiguous (not channels-last) weight, an input that needs no gradient (the model's first layer), and an
    # output gradient in the other memory format.
    ours_x = x.float().contiguous(memory_format=torch.channels_last)
    ours_weight = weight.float().contiguous().requires_grad_()
    ours = winograd.conv3x3(ours_x, ours_weight)
    ours.backward(grad.float().contiguous())
    assert ours_x.grad is None and ours_weight.grad.is_contiguous()
    assert _relative_error(ours, exact) < 2e-6 and _relative_error(ours_weight.grad, exact_weight.grad) < 2e-6


def test_under_autocast_a_float32_input_computes_in_bfloat16_as_a_direct_convolution_would():
    x = _random((2, 8, 4, 4), 0, torch.float32).contiguous(memory_format=torch.channels_last)
    weight = _random((8, 8, 3, 3), 1, torch.float32).requires_grad_()
    with torch.autocast("cpu", torch.bfloat16):
        ours, direct = winograd.conv3x3(x, weight), F.conv2d(x, weight, padding=1)
    assert ours.dtype == direct.dtype == torch.bfloat16
    assert _relative_error(ours, F.conv2d(x.double(), weight.double(), padding=1)) < 1e-2
    ours.float().sum().backward()
    exact_weight = weight.detach().double().requires_grad_()
    F.conv2d(x.double(), exact_weight, padding=1).sum().backward()
    assert weight.grad.dtype == torch.float32 and _relative_error(weight.grad, exact_weight.grad) < 1e-2


def test_the_same_bits_with_one_thread_and_with_two():
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append(_exact_and_winograd((4, 70, 64, 8, 8), torch.bfloat16)[1])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


def test_only_3x3_convolutions_with_stride_1_padding_1_and_no_bias_are_taken():
    assert winograd.takes(nn.Conv2d(4, 4, 3, padding=1, bias=False))
    for conv in (
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Conv2d(4, 4, 5, padding=2, bias=False),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, bias=False),
        nn.Conv2d(4, 4, 3, bias=False),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False),
        nn.Conv2d(4, 4, 3, padding=1, bias=False, padding_mode="reflect"),
    ):
        assert not winograd.takes(conv), conv
    plane = torch.zeros(1, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    assert winograd.applies(plane)
    assert not winograd.applies(plane[:, :, :5, :5].contiguous(memory_format=torch.channels_last))  # odd size
    assert not winograd.applies(plane.contiguous())  # not channels-last
    assert not winograd.applies(plane.half())


def test_the_layers_wide_enough_use_it_and_training_computes_what_it_computes_without(monkeypatch):
    calls = []
    conv3x3 = winograd.conv3x3
    monkeypatch.setattr(winograd, "conv3x3", lambda x, weight: calls.append(tuple(weight.shape)) or conv3x3(x, weight))
    torch.manual_seed(0)
    plain = SegNet(model_config()).to(memory_format=torch.channels_last).train()
    use_cpu_kernels(plain)
    fast = copy.deepcopy(plain)
    assert use_winograd(fast, 64) == ["encoder.2.block", "encoder.3.block", "decoder.0.block", "decoder.1.block"]
    assert use_winograd(copy.deepcopy(plain), 128) == ["encoder.3.block", "decoder.0.block"]
    assert use_winograd(copy.deepcopy(plain), 1024) == []
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 11, (2, 64, 64))
    losses = []
    for model in (plain, fast):
        loss = F.cross_entropy(model(images), labels)  # float32: the two differ by float rounding only
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    # It ran, in the four blocks and only there: the same values, not the same bits.
    assert calls == [(128, 64, 3, 3), (512, 128, 3, 3), (128, 512, 3, 3), (64, 128, 3, 3)]
    assert not torch.equal(plain.encoder[3].block[0].weight.grad, fast.encoder[3].block[0].weight.grad)
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-3, atol=1e-4 * a.grad.abs().max().item()), name
    # Evaluation runs PyTorch's convolutions: with the same weights and statistics, the same bits either way.
    fast.load_state_dict(plain.state_dict())
    plain.eval(), fast.eval()
    assert torch.equal(plain(images), fast(images))
