"""Winograd with larger tiles: what F(4x4, 3x3) would buy and cost against the F(2x2, 3x3) of train.winograd.

For each 3x3 convolution that train.winograd computes with the defaults, at its training size:
1. The matrix products of one pass (the forward pass; each gradient's products make as many multiplications)
   in bfloat16, as F(2x2, 3x3) makes them (16 products of (tiles x in) by (in x out)) and as F(4x4, 3x3) would
   (36 products over a quarter of the tiles: 2.25 multiplications per output instead of 4).
2. The error of each in bfloat16 against the exact convolution of the same bfloat16 input, next to a direct
   bfloat16 convolution's. Both tile sizes are emulated here in PyTorch as segnet/cpu_kernels.cpp computes F(2x2,
   3x3): transforms in float32, the transformed tiles and filters rounded to bfloat16 once, float32 sums. The
   input is a ReLU's output, as in the model.
The transforms' own time is not measured: only F(2x2, 3x3) has kernels (the profile's Winograd table times them).
Usage: python -m benchmarks.winograd_tiles
"""

import argparse

import torch
from torch.nn import functional as F

from benchmarks.common import REPO, best_seconds_per_call
from benchmarks.profile import REPEATS, TRIALS, convolution_shapes
from segnet import cpu_kernels
from segnet.model import SegNet, SegNetConfig, use_winograd
from segnet.params import load_params

# F(m x m, 3x3) by the points 0, +-1 (m = 2) and 0, +-1, +-2 (m = 4), with the point at infinity (Lavin and Gray,
# 2016): input transform B^T (tile x tile), filter transform G (tile x 3), output transform A^T (m x tile).
TILES = {
    2: (
        [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
        [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
        [[1, 1, 1, 0], [0, 1, -1, -1]],
    ),
    4: (
        [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0],
         [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
    ),
}


def winograd_conv3x3(x: torch.Tensor, weight: torch.Tensor, outputs: int, rounded: torch.dtype) -> torch.Tensor:
    """The 3x3 convolution (stride 1, padding 1) of x (N, in, H, W) with weight (out, in, 3, 3) by F(outputs x outputs,
    3x3), H and W multiples of `outputs`. Transforms and sums in x's dtype if it is float64, else in float32, with the
    transformed tiles and filters rounded to `rounded` once."""
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    bt, g, at = (torch.tensor(matrix, dtype=compute) for matrix in TILES[outputs])
    tile = bt.shape[0]
    n, _, height, width = x.shape
    # Tiles of tile x tile inputs, `outputs` apart: the padding holds the border's zeros and the last tiles' overhang.
    padded = F.pad(x.to(compute), (1, tile - outputs - 1, 1, tile - outputs - 1))
    tiles = padded.unfold(2, tile, outputs).unfold(3, tile, outputs)  # N, in, rows, columns, tile, tile
    v = torch.einsum("ij,ncrwjk,lk->ncrwil", bt, tiles, bt).to(rounded).to(compute)
    u = torch.einsum("ij,ocjk,lk->ocil", g, weight.to(compute), g).to(rounded).to(compute)
    m = torch.einsum("ncrwil,ocil->norwil", v, u)
    y = torch.einsum("ij,norwjk,lk->norwil", at, m, at)  # N, out, rows, columns, outputs, outputs
    return y.permute(0, 1, 2, 4, 3, 5).reshape(n, weight.shape[0], height, width)


def relative_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """The error's norm over the exact value's."""
    return ((value.double() - exact).norm() / exact.norm()).item()


def product_seconds(batch: int, rows: int, inner: int, columns: int) -> float:
    """Best time of one batched bfloat16 product (batch, rows, inner) x (batch, inner, columns)."""
    left = torch.randn(batch, rows, inner).to(torch.bfloat16)
    right = torch.randn(batch, inner, columns).to(torch.bfloat16)
    return best_seconds_per_call(lambda: torch.bmm(left, right), REPEATS, TRIALS)


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    params = load_params(REPO / "params.yaml")
    batch_size, min_channels = params["train"]["batch_size"], params["train"]["winograd_min_channels"]
    if cpu_kernels.extension() is None:
        raise SystemExit("needs the CPU kernels, which decide which layers train.winograd computes (see the warning)")
    torch.manual_seed(0)  # the model's initial weights, and the inputs of the timed products
    model = SegNet(SegNetConfig(**params["model"]))
    # The layers training computes by F(2x2, 3x3), named as convolution_shapes names them (each block's conv is its
    # first module); marked on a copy of the model, so that the shapes below come from plain convolutions.
    taken = {f"{block}.0" for block in use_winograd(SegNet(SegNetConfig(**params["model"])), min_channels)}
    print(f"3x3 convolutions that train.winograd computes (min_channels {min_channels}), batch {batch_size}, bfloat16")
    print(f"{'layer':<20} {'size':>5} {'channels':>11} {'products F2 ms':>15} {'F4 ms':>7}"
          f" {'error: direct':>14} {'F2':>9} {'F4':>9}")
    totals = {2: 0.0, 4: 0.0}
    values = torch.Generator().manual_seed(0)
    # The panels' size: 64 x 64 in the course release and the built-in dataset.
    for name, conv, x, weight, _ in convolution_shapes(model, batch_size, (64, 64), torch.bfloat16):
        if name not in taken:
            continue
        size = x.shape[-1]
        times = {}
        for outputs in (2, 4):
            tile_count = batch_size * (size // outputs) ** 2
            times[outputs] = product_seconds((outputs + 2) ** 2, tile_count, conv.in_channels, conv.out_channels)
            totals[outputs] += times[outputs]
        # Errors on a quarter of the batch: the einsums hold float64 copies of every tile.
        sample = torch.relu(torch.randn(x[: batch_size // 4].shape, generator=values, dtype=torch.float64))
        sample = sample.to(torch.bfloat16)
        # The float32 master weights: autocast rounds them for a direct convolution, Winograd its transformed filters.
        master = conv.weight.detach()
        exact = F.conv2d(sample.double(), master.double(), padding=1)
        direct = relative_error(F.conv2d(sample, weight, padding=1), exact)
        f2, f4 = (relative_error(winograd_conv3x3(sample, master, outputs, torch.bfloat16), exact)
                  for outputs in (2, 4))
        print(f"{name:<20} {size:>5} {f'{conv.in_channels} -> {conv.out_channels}':>11} {times[2] * 1e3:>15.2f}"
              f" {times[4] * 1e3:>7.2f} {direct:>14.1e} {f2:>9.1e} {f4:>9.1e}")
    print(f"{'all, one pass':<38} {totals[2] * 1e3:>15.2f} {totals[4] * 1e3:>7.2f}")
    print(f"forward and both gradients: {3 * totals[2] * 1e3:.1f} ms by F(2x2, 3x3), {3 * totals[4] * 1e3:.1f} ms by "
          "F(4x4, 3x3), transforms not counted")


if __name__ == "__main__":
    main()
