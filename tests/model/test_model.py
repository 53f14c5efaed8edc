import pytest
import torch

from segnet.model.network import SegNet, SegNetConfig
from segnet.params import build, load_params
from tests.helpers import REPO, model_config

TINY = model_config(encoder_channels=(4, 6, 8, 10), decoder_channels=(8, 6, 4, 4))


def test_output_shape_and_backward():
    model = SegNet(TINY)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 11, 64, 64)
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert images.grad.abs().sum() > 0


def test_default_architecture_matches_params_yaml():
    # Issue 2 set the encoder at 32, 64, 128, 256; issue 3 widened the deepest level to 512 (measured: README).
    model = SegNet(model_config())
    params = load_params(REPO / "params.yaml")["model"]
    assert [level.block[0].out_channels for level in model.encoder] == params["encoder_channels"] == [32, 64, 128, 512]
    assert [level.block[0].out_channels for level in model.decoder] == params["decoder_channels"]
    assert [level.block[0].out_channels for level in model.decoder] == [128, 64, 32, 32]
    assert all(level.block[0].kernel_size == (3, 3) for level in model.encoder)
    assert isinstance(model.encoder[0].block[1], torch.nn.BatchNorm2d)
    assert model.classifier.kernel_size == (1, 1) and model.classifier.out_channels == 11


def test_unpooling_puts_values_back_where_the_pooling_maxima_were():
    model = SegNet(model_config(encoder_channels=(1,), decoder_channels=(1,), num_classes=2, in_channels=1))
    level_in = torch.tensor([[[[1.0, 5.0], [2.0, 0.0]]]])  # maximum at row 0, column 1
    pooled, indices = model.encoder[0].pool(level_in)
    assert indices.item() == 1
    unpooled = model.decoder[0].unpool(pooled, indices)
    assert torch.equal(unpooled, torch.tensor([[[[0.0, 5.0], [0.0, 0.0]]]]))


def test_each_decoder_level_unpools_with_the_indices_of_its_mirrored_encoder_level():
    model = SegNet(TINY).eval()
    pooled, unpooled = [], []
    for level in model.encoder:
        level.pool.register_forward_hook(lambda module, args, output: pooled.append(output[1]))
    for level in model.decoder:
        level.unpool.register_forward_hook(lambda module, args, output: unpooled.append(args[1]))
    model(torch.rand(2, 3, 64, 64))
    assert len(pooled) == len(unpooled) == 4
    for indices_used, indices_made in zip(unpooled, reversed(pooled), strict=True):
        assert indices_used is indices_made


@pytest.mark.parametrize(
    "arguments",
    [
        dict(encoder_channels=(32, 64), decoder_channels=(32,)),
        dict(encoder_channels=(32, 64), decoder_channels=(16, 32)),
        dict(kernel_size=4),
        dict(num_classes=1),
        dict(encoder_channels=(), decoder_channels=()),
    ],
)
def test_nonsense_configurations_raise(arguments):
    with pytest.raises(ValueError):
        model_config(**arguments)
    # Read from params.yaml, the error names the file and section.
    values = {key: value for key, value in arguments.items() if key not in ("num_classes", "in_channels")}
    data = {"num_classes": arguments.get("num_classes", 11), "in_channels": 3}
    with pytest.raises(ValueError, match="^params.yaml model.(encoder_channels|decoder_channels|kernel_size|num_cl)"):
        build(SegNetConfig, "model", {**load_params(REPO / "params.yaml")["model"], **values}, **data)


# Widths as params.yaml could give them: a bare number, null, a fraction (which int() would cut to 32), a YAML true.
@pytest.mark.parametrize("widths", [32, None, [32.7, 64, 128, 512], [True, 64, 128, 512], [0, 64, 128, 512]])
def test_channel_widths_must_be_a_list_of_whole_numbers(widths):
    with pytest.raises(ValueError, match=r"^encoder_channels: must be a list of integers >= 1"):
        model_config(encoder_channels=widths)
    # The lists that YAML and config.json give are taken, as tuples.
    assert model_config(encoder_channels=[32, 64, 128, 512]) == model_config()


def test_input_size_must_fit_the_pooling_levels():
    with pytest.raises(ValueError, match="multiples of 16"):
        SegNet(TINY)(torch.rand(1, 3, 60, 60))


@pytest.mark.parametrize(
    "transform, faint, full",
    [
        ("linear", 1 / 255, 1.0),
        ("sqrt", (1 / 255) ** 0.5, 1.0),
        ("ink_sqrt", 0.5 + 0.5 * (1 / 255) ** 0.5, 1.0),
    ],
)
def test_input_transforms_lift_faint_ink_keep_background_at_zero_and_are_part_of_the_model(transform, faint, full):
    model = SegNet(model_config(encoder_channels=(1,), decoder_channels=(1,), in_channels=1, input_transform=transform))
    seen = {}
    model.encoder[0].block[0].register_forward_hook(lambda m, args, out: seen.update(first_conv_input=args[0]))
    model(torch.tensor([[[[0.0, 1 / 255], [1.0, 0.0]]]]))
    assert seen["first_conv_input"].flatten().tolist() == pytest.approx([0.0, faint, full, 0.0])


@pytest.mark.parametrize("transform", ["linear", "sqrt", "ink_sqrt"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "pixel_words"])
def test_bytes_give_the_first_conv_the_same_input_as_their_float_values_bit_for_bit(transform, layout):
    model = SegNet(model_config(encoder_channels=(4,), decoder_channels=(4,), input_transform=transform))
    seen = []
    model.encoder[0].block[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    every_byte = torch.arange(256, dtype=torch.uint8).reshape(2, 8, 16)
    pixels = torch.stack([every_byte.roll(shift) for shift in (7, 85, 170)], dim=-1)  # N, H, W, C: channels differ
    as_bytes, as_floats = pixels.permute(0, 3, 1, 2), pixels.float().div(255.0).permute(0, 3, 1, 2)
    if layout == "contiguous":
        as_bytes, as_floats = as_bytes.contiguous(), as_floats.contiguous()
    if layout == "pixel_words":  # as the augmentation hands panels over: colour and label in one 4-byte word
        words = torch.cat([pixels, torch.zeros_like(pixels[..., :1])], dim=-1)
        as_bytes = words[..., :3].permute(0, 3, 1, 2)
        assert not as_bytes.is_contiguous(memory_format=torch.channels_last)
    channels_last = layout != "contiguous"
    model(as_bytes)
    model(as_floats)
    from_bytes, from_floats = seen
    assert from_bytes.dtype == torch.float32 and torch.equal(from_bytes, from_floats)
    assert from_bytes.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert from_bytes.is_contiguous() != channels_last
    assert "byte_values" not in model.state_dict()  # it follows from the config, so weights files are unchanged


def test_an_unknown_input_transform_is_refused():
    with pytest.raises(ValueError, match="input_transform"):
        model_config(input_transform="log")
