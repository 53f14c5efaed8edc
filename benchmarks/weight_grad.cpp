// A hand-written bfloat16 weight gradient for 3x3 convolutions (stride 1, padding 1), measured against oneDNN's by
// benchmarks/dropped.py and dropped: see README, Performance. Not used by training.
//
// The CPU's bfloat16 dot-product instruction (vdpbf16ps) multiplies pairs of neighbouring bfloat16 values and adds
// both products to one float lane. The weight gradient dW[o][i][kh][kw] sums dY[n][o][h][w] * X[n][i][h+kh-1][w+kw-1]
// over images and pixels, so each pair has to hold two terms of that sum. Pairing two images at the same pixel keeps
// every kernel offset aligned (pairing neighbouring pixels would not, at odd offsets), so both operands are first
// packed as image pairs, one pass over each, one 32-bit word per pair: X as [N/2][H+2][W+2][C] with a zero border,
// dY as [N/2][H][W][O]. Then each step of the innermost loop loads 32 output channels' pairs (two vectors),
// broadcasts kInputsPerTile input channels' pairs, and updates 2 x kInputsPerTile float vectors of the result.

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace {

constexpr int kInputsPerTile = 8;    // input channels per tile
constexpr int kOutputsPerTile = 32;  // two vectors of 16 float lanes
// Pixels of image pairs per pass over a thread's tiles: 256 x channels x 4 bytes of each operand, 32-512 KB here,
// meant to stay in the core's cache while every tile reads it.
constexpr int64_t kChunkPixels = 256;

const uint16_t* bits(const torch::Tensor& t) { return reinterpret_cast<const uint16_t*>(t.data_ptr<at::BFloat16>()); }

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.dim() == 4 && t.scalar_type() == torch::kBFloat16 &&
                  t.is_contiguous(at::MemoryFormat::ChannelsLast),
              name, " must be a channels-last bfloat16 (N, C, H, W) tensor");
}

// Two bfloat16 values of the same element of images 2p and 2p+1 as one 32-bit word (zero for a missing image).
inline uint32_t pair_of(const uint16_t* first, const uint16_t* second, int64_t k) {
  return first[k] | (second ? static_cast<uint32_t>(second[k]) << 16 : 0u);
}

}  // namespace

// (N, C, H, W) -> (N/2, H+2, W+2, C) 32-bit pairs, zero border.
torch::Tensor pack_input(const torch::Tensor& x) {
  check(x, "x");
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3), pairs = (n + 1) / 2;
  auto packed = torch::empty({pairs, h + 2, w + 2, c}, x.options().dtype(torch::kInt));
  const uint16_t* src = bits(x);
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.data_ptr());
  at::parallel_for(0, pairs * (h + 2), 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t pair = row / (h + 2), y = row % (h + 2) - 1;
      uint32_t* out = dst + row * (w + 2) * c;
      if (y < 0 || y >= h) {
        std::memset(out, 0, (w + 2) * c * sizeof(uint32_t));
        continue;
      }
      const uint16_t* first = src + ((2 * pair) * h + y) * w * c;
      const uint16_t* second = 2 * pair + 1 < n ? first + h * w * c : nullptr;
      std::memset(out, 0, c * sizeof(uint32_t));
      std::memset(out + (w + 1) * c, 0, c * sizeof(uint32_t));
      for (int64_t k = 0; k < w * c; ++k) out[c + k] = pair_of(first, second, k);
    }
  });
  return packed;
}

// (N, O, H, W) -> (N/2, H, W, O) 32-bit pairs.
torch::Tensor pack_grad(const torch::Tensor& grad) {
  check(grad, "grad");
  const int64_t n = grad.size(0), o = grad.size(1), h = grad.size(2), w = grad.size(3), pairs = (n + 1) / 2;
  const int64_t image = h * w * o;
  auto packed = torch::empty({pairs, h, w, o}, grad.options().dtype(torch::kInt));
  const uint16_t* src = bits(grad);
  uint32_t* dst = reinterpret_cast<uint32_t*>(packed.data_ptr());
  at::parallel_for(0, pairs, 1, [&](int64_t begin, int64_t end) {
    for (int64_t pair = begin; pair < end; ++pair) {
      const uint16_t* first = src + 2 * pair * image;
      const uint16_t* second = 2 * pair + 1 < n ? first + image : nullptr;
      for (int64_t k = 0; k < image; ++k) dst[pair * image + k] = pair_of(first, second, k);
    }
  });
  return packed;
}

namespace {

// Adds rows [rows_begin, rows_end) (a row: one image pair's pixels at one height) to one tile's float sums.
void tile(const uint32_t* __restrict grad, const uint32_t* __restrict input, float* __restrict sums,
          int64_t rows_begin, int64_t rows_end, int64_t h, int64_t w, int64_t o, int64_t c, int64_t o0, int64_t kh,
          int64_t kw, int64_t i0) {
  __m512 acc[2][kInputsPerTile];
  for (int v = 0; v < 2; ++v)
    for (int j = 0; j < kInputsPerTile; ++j) acc[v][j] = _mm512_loadu_ps(sums + (v * kInputsPerTile + j) * 16);
  for (int64_t row = rows_begin; row < rows_end; ++row) {
    const int64_t pair = row / h, y = row % h;
    const uint32_t* a = grad + row * w * o + o0;
    const uint32_t* b = input + ((pair * (h + 2) + y + kh) * (w + 2) + kw) * c + i0;
    for (int64_t x = 0; x < w; ++x, a += o, b += c) {
      const __m512bh low = (__m512bh)_mm512_loadu_si512(a), high = (__m512bh)_mm512_loadu_si512(a + 16);
      for (int j = 0; j < kInputsPerTile; ++j) {
        const __m512bh input_pair = (__m512bh)_mm512_set1_epi32(static_cast<int>(b[j]));
        acc[0][j] = _mm512_dpbf16_ps(acc[0][j], low, input_pair);
        acc[1][j] = _mm512_dpbf16_ps(acc[1][j], high, input_pair);
      }
    }
  }
  for (int v = 0; v < 2; ++v)
    for (int j = 0; j < kInputsPerTile; ++j) _mm512_storeu_ps(sums + (v * kInputsPerTile + j) * 16, acc[v][j]);
}

}  // namespace

// float (O, C, 3, 3), channels-last like the model's parameters, from pack_input's and pack_grad's results. Threads
// split the tiles, so each output is summed by one thread in one order whatever the thread count.
torch::Tensor weight_grad_of_packed(const torch::Tensor& input, const torch::Tensor& grad) {
  const int64_t pairs = grad.size(0), h = grad.size(1), w = grad.size(2), o = grad.size(3), c = input.size(3);
  TORCH_CHECK(input.scalar_type() == torch::kInt && grad.scalar_type() == torch::kInt && input.dim() == 4 &&
                  grad.dim() == 4 && input.is_contiguous() && grad.is_contiguous(),
              "weight_grad_of_packed: takes pack_input's and pack_grad's results");
  TORCH_CHECK(o % kOutputsPerTile == 0 && c % kInputsPerTile == 0 && input.size(0) == pairs &&
                  input.size(1) == h + 2 && input.size(2) == w + 2,
              "weight_grad_of_packed: needs output channels divisible by 32, input channels by 8, and one batch");
  const uint32_t* g = reinterpret_cast<const uint32_t*>(grad.data_ptr());
  const uint32_t* x = reinterpret_cast<const uint32_t*>(input.data_ptr());
  const int64_t output_blocks = o / kOutputsPerTile, input_blocks = c / kInputsPerTile;
  const int64_t tiles = output_blocks * 9 * input_blocks, per_tile = 2 * kInputsPerTile * 16;
  auto sums = torch::zeros({tiles, per_tile}, torch::kFloat);
  float* s = sums.data_ptr<float>();
  const int64_t rows = pairs * h, chunk_rows = std::max<int64_t>(1, kChunkPixels / w);
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t o_block = t / (9 * input_blocks), k = (t / input_blocks) % 9, i_block = t % input_blocks;
        tile(g, x, s + t * per_tile, r0, std::min(rows, r0 + chunk_rows), h, w, o, c, o_block * kOutputsPerTile,
             k / 3, k % 3, i_block * kInputsPerTile);
      }
    }
  });
  // Tile t holds [2][kInputsPerTile][16]: output o_block * 32 + v * 16 + lane, input i_block * kInputsPerTile + j.
  // Reordered to (O, kh, kw, C) memory: channels-last (O, C, 3, 3).
  return sums.view({output_blocks, 3, 3, input_blocks, 2, kInputsPerTile, 16})
      .permute({0, 4, 6, 1, 2, 3, 5})
      .reshape({o, 3, 3, c})
      .permute({0, 3, 1, 2});
}

// The weight gradient of a 3x3 convolution (stride 1, padding 1) with input x and output gradient grad, both
// channels-last bfloat16 (N, C, H, W): packing and the kernel.
torch::Tensor weight_grad(const torch::Tensor& x, const torch::Tensor& grad) {
  return weight_grad_of_packed(pack_input(x), pack_grad(grad));
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("pack_input", &pack_input);
  m.def("pack_grad", &pack_grad);
  m.def("weight_grad_of_packed", &weight_grad_of_packed);
  m.def("weight_grad", &weight_grad);
}
