"""SegNet (Badrinarayanan et al., 2017) sized for 64x64 multi-digit MNIST panels.

Each encoder level is conv -> batch norm -> ReLU -> 2x2 max pooling that keeps its indices; each
decoder level is max unpooling with the matching level's indices -> conv -> batch norm -> ReLU.
A final linear 1x1 conv maps to class scores. Softmax lives in the loss and in prediction.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

INPUT_TRANSFORMS = ("linear", "sqrt", "ink_sqrt")


def transform_input(x: torch.Tensor, transform: str) -> torch.Tensor:
    """Float pixels in [0, 1] -> the first conv's input, by `transform` (one of INPUT_TRANSFORMS)."""
    if transform == "sqrt":
        # Labels mark every non-zero pixel as ink, down to anti-aliased edges of 1/255. The square
        # root lifts such faint ink (1/255 -> 0.06) so the first conv tells it from background.
        return x.clamp(min=0).sqrt()
    if transform == "ink_sqrt":
        # The same, with every inked pixel starting at 0.5: ink against background becomes a step.
        return torch.where(x > 0, 0.5 + 0.5 * x.clamp(min=0).sqrt(), torch.zeros_like(x))
    return x


@dataclass(frozen=True)
class SegNetConfig:
    """Widths per level (encoder top-down, decoder bottom-up), kernel size and input transform (params.yaml
    `model`); classes and input channels (from the data)."""

    encoder_channels: tuple[int, ...]
    decoder_channels: tuple[int, ...]
    kernel_size: int
    input_transform: str
    num_classes: int
    in_channels: int

    def __post_init__(self):
        # The widths come from params.yaml as YAML lists (and back from config.json as JSON ones): each must be
        # a list of whole numbers, not a bare number, nor 32.7 quietly cut to 32.
        for name in ("encoder_channels", "decoder_channels"):
            widths = getattr(self, name)
            if not isinstance(widths, (list, tuple)) or not all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in widths
            ):
                raise ValueError(f"{name}: must be a list of integers >= 1, got {widths!r}")
            object.__setattr__(self, name, tuple(widths))
        if len(self.encoder_channels) == 0 or len(self.encoder_channels) != len(self.decoder_channels):
            raise ValueError(
                "encoder_channels and decoder_channels need the same non-zero length (one decoder "
                f"level per encoder level), got {self.encoder_channels} and {self.decoder_channels}"
            )
        # Decoder level i unpools with the indices of encoder level L-1-i, so its input width must match that
        # level's width: decoder_channels[i] feeds decoder level i+1, which uses encoder level L-2-i.
        expected = tuple(reversed(self.encoder_channels))[1:]
        if self.decoder_channels[:-1] != expected:
            raise ValueError(
                f"decoder_channels[:-1] must mirror the encoder ({expected}) so that unpooling "
                f"indices fit, got {self.decoder_channels}"
            )
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be odd and >= 1 (to keep the size), got {self.kernel_size}")
        if self.input_transform not in INPUT_TRANSFORMS:
            raise ValueError(f"input_transform: must be one of {INPUT_TRANSFORMS}, got {self.input_transform!r}")
        if self.num_classes < 2 or self.in_channels < 1:
            raise ValueError(
                f"num_classes and in_channels: need >= 2 and >= 1, got {self.num_classes}, {self.in_channels}"
            )

    @property
    def downsampling(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** len(self.encoder_channels)

    def check_input_size(self, size: Sequence[int], source: object) -> None:
        """Refuses panels of `size` (height, width) from `source` whose sides the levels cannot halve evenly."""
        if size[0] % self.downsampling or size[1] % self.downsampling:
            raise ValueError(
                f"{source}: panels are {tuple(size)}, but a {len(self.encoder_channels)}-level SegNet "
                f"(model.encoder_channels) needs sides divisible by {self.downsampling}"
            )


class ConvBatchNormReLU(nn.Sequential):
    """conv -> batch norm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        # No conv bias: batch norm's shift makes it redundant.
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class EncoderLevel(nn.Module):
    """conv-bn-relu, then 2x2 max pooling that returns where each maximum came from."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.block = ConvBatchNormReLU(in_channels, out_channels, kernel_size)
        self.pool = nn.MaxPool2d(2, stride=2, return_indices=True)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.pool(self.block(x))  # (N, C, H/2, W/2) values and pool_indices


class DecoderLevel(nn.Module):
    """2x2 max unpooling with the encoder's indices, then conv-bn-relu."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.unpool = nn.MaxUnpool2d(2, stride=2)
        self.block = ConvBatchNormReLU(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor, pool_indices: torch.Tensor) -> torch.Tensor:
        # Autocast would run unpooling in float32 on the CPU: a cast of the level's largest tensor there and
        # back, forward and backward. Unpooling only moves values, so it is exact in whatever dtype x has.
        with torch.autocast(x.device.type, enabled=False):
            x = self.unpool(x, pool_indices)
        return self.block(x)  # (N, C, H, W) -> (N, C', 2H, 2W)


class SegNet(nn.Module):
    """Encoder-decoder segmentation network returning per-pixel class logits (N, classes, H, W)."""

    byte_values: torch.Tensor

    def __init__(self, config: SegNetConfig):
        super().__init__()
        self.config = config
        widths = (config.in_channels,) + config.encoder_channels
        self.encoder = nn.ModuleList(
            EncoderLevel(widths[i], widths[i + 1], config.kernel_size) for i in range(len(config.encoder_channels))
        )
        # The first decoder level unpools the deepest encoder output, so it starts at that width.
        widths = (config.encoder_channels[-1],) + config.decoder_channels
        self.decoder = nn.ModuleList(
            DecoderLevel(widths[i], widths[i + 1], config.kernel_size) for i in range(len(config.decoder_channels))
        )
        self.classifier = nn.Conv2d(config.decoder_channels[-1], config.num_classes, kernel_size=1)
        # What transform_input makes of each byte value k (as k / 255), computed by the same float32 operations on
        # the CPU, so looking bytes up gives the CPU's float path's input bit for bit, in two passes over the batch
        # (the indices, then the lookup) where that path makes about seven. (PyTorch's CUDA division by a number
        # multiplies by its reciprocal, so there the float path may differ in the last bit for some bytes.)
        # Not saved with the weights: it follows from the config.
        byte_values = transform_input(torch.arange(256, dtype=torch.float32).div_(255.0), config.input_transform)
        self.register_buffer("byte_values", byte_values, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels (N, C, H, W), uint8 0-255 or float in [0, 1] -> logits (N, classes, H, W)."""
        if x.shape[-1] % self.config.downsampling or x.shape[-2] % self.config.downsampling:
            raise ValueError(
                f"input height and width must be multiples of {self.config.downsampling}, got {tuple(x.shape[-2:])}"
            )
        x = self.look_up_bytes(x) if x.dtype == torch.uint8 else transform_input(x, self.config.input_transform)
        pool_indices = []
        for level in self.encoder:  # (N, 3, 64, 64) -> (N, 512, 4, 4) with defaults
            x, indices = level(x)
            pool_indices.append(indices)
        for level, indices in zip(self.decoder, reversed(pool_indices), strict=True):  # -> (N, 32, 64, 64)
            x = level(x, indices)
        return self.classifier(x)  # (N, classes, H, W) logits

    def look_up_bytes(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 pixels 0-255 (N, C, H, W) -> float32 input, as transform_input gives for x / 255: channels-last where
        x's channels are finer-strided than its columns, else contiguous; the values are the same either way. The
        training loop's augmented panels are such a view (a pixel every 4 bytes), not a channels-last tensor."""
        if x.dim() == 4 and x.stride(1) < x.stride(3):
            # Look up in memory order (N, H, W, C): take returns its result in the index's logical order.
            return self.byte_values.take(x.permute(0, 2, 3, 1).long()).permute(0, 3, 1, 2)
        return self.byte_values.take(x.long())  # take: measured faster here than indexing, with int or long
