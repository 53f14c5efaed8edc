// CPU kernels for SegNet's memory-bound layers in training, on channels-last tensors (bfloat16 or float32):
//  - batch norm (batch statistics) followed by ReLU, forward and backward, two passes over memory each way.
//    PyTorch runs them as separate kernels, each reading and writing the whole activation, and its
//    bfloat16 channels-last batch norm is several times slower than the memory traffic it needs.
//  - 2x2 max pooling that records, per output, which of its window's four inputs was the maximum (one
//    byte, where PyTorch stores an int64 index into the whole plane), and the unpooling that puts values
//    back there. Each writes every output once, where PyTorch first zero-fills, then scatters.
//  - the transforms of Winograd's F(2x2, 3x3) convolution (segnet/speed/winograd.py), which has no PyTorch
//    counterpart on the CPU; its products are PyTorch's batched matrix multiplications.
// Built on first use by segnet/speed/cpu_kernels.py. No result depends on the thread count: batch norm accumulates
// its sums in float within fixed blocks of rows and adds the blocks in double in a fixed order, and the
// Winograd kernels add in one fixed order per element.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// Rows per block of a reduction: float sums over at most this many values, then double across blocks.
constexpr int64_t kBlockRows = 512;

inline float load(const float* p, int64_t i) { return p[i]; }

inline float load(const at::BFloat16* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[i]) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline void store(float* p, int64_t i, float value) { p[i] = value; }

inline void store(at::BFloat16* p, int64_t i, float value) {
  // Round to nearest even, as PyTorch's own conversion does (NaN stays NaN).
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  uint16_t rounded = (bits & 0x7fffffffu) > 0x7f800000u
                         ? static_cast<uint16_t>((bits >> 16) | 0x40u)
                         : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
  reinterpret_cast<uint16_t*>(p)[i] = rounded;
}

// The per-block loops take restrict pointers and run over channels innermost, so the compiler vectorises
// them; each block's float sums go to its own row of a (blocks x channels) array, added in double afterwards.

template <typename T>
void block_stats(const T* __restrict x, const float* __restrict pivot, int64_t rows, int64_t channels,
                 float* __restrict sum, float* __restrict sum_sq) {
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t c = 0; c < channels; ++c) {
      const float d = load(x, row * channels + c) - pivot[c];
      sum[c] += d;
      sum_sq[c] += d * d;
    }
  }
}

template <typename T>
void block_normalise(const T* __restrict x, const float* __restrict mean, const float* __restrict scale,
                     const float* __restrict shift,
                     int64_t rows, int64_t channels, T* __restrict y) {
  for (int64_t i = 0; i < rows * channels; i += channels) {
    // Centred first: x * scale + (bias - mean * scale) would cancel digits where the mean is large.
    for (int64_t c = 0; c < channels; ++c) {
      store(y, i + c, std::max((load(x, i + c) - mean[c]) * scale[c] + shift[c], 0.0f));
    }
  }
}

template <typename T>
void block_grad_sums(const T* __restrict g, const T* __restrict x, const T* __restrict y, const float* __restrict mean,
                     int64_t rows, int64_t channels, float* __restrict sum_g, float* __restrict sum_gx) {
  for (int64_t i = 0; i < rows * channels; i += channels) {
    for (int64_t c = 0; c < channels; ++c) {
      // ReLU passes the gradient only where its output is positive.
      const float masked = load(y, i + c) > 0.0f ? load(g, i + c) : 0.0f;
      sum_g[c] += masked;
      sum_gx[c] += masked * (load(x, i + c) - mean[c]);
    }
  }
}

template <typename T>
void block_grad_input(const T* __restrict g, const T* __restrict x, const T* __restrict y, const float* __restrict mean,
                      const float* __restrict k_g, const float* __restrict k_x, const float* __restrict k_0,
                      int64_t rows, int64_t channels, T* __restrict dx) {
  for (int64_t i = 0; i < rows * channels; i += channels) {
    for (int64_t c = 0; c < channels; ++c) {
      const float masked = load(y, i + c) > 0.0f ? load(g, i + c) : 0.0f;
      store(dx, i + c, masked * k_g[c] - (load(x, i + c) - mean[c]) * k_x[c] - k_0[c]);
    }
  }
}

// Runs `body(first_row, rows_in_block, block)` for every block of kBlockRows rows, in parallel.
template <typename Body>
void for_blocks(int64_t rows, const Body& body) {
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const int64_t row = block * kBlockRows;
      body(row, std::min(kBlockRows, rows - row), block);
    }
  });
}

// Adds the blocks' float sums (blocks x channels) in double, in block order.
std::vector<double> add_blocks(const std::vector<float>& partial, int64_t channels) {
  std::vector<double> total(channels, 0.0);
  for (size_t i = 0; i < partial.size(); ++i) total[i % channels] += partial[i];
  return total;
}

template <typename T>
void forward_kernel(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias, double eps,
                    at::Tensor& output, at::Tensor& mean_out, at::Tensor& var_out, at::Tensor& invstd_out) {
  const int64_t channels = input.size(1);
  const int64_t rows = input.numel() / channels;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  const T* x = input.data_ptr<T>();
  T* y = output.data_ptr<T>();
  // Sums of x - pivot and its square in one pass: with the first row as pivot, the values are centred
  // near zero, so E[d^2] - E[d]^2 keeps its precision even where the mean is large against the spread.
  std::vector<float> pivot(channels);
  for (int64_t c = 0; c < channels; ++c) pivot[c] = load(x, c);
  std::vector<float> sums(blocks * channels, 0.0f), squares(blocks * channels, 0.0f);
  for_blocks(rows, [&](int64_t row, int64_t count, int64_t block) {
    block_stats(x + row * channels, pivot.data(), count, channels, sums.data() + block * channels,
                squares.data() + block * channels);
  });
  const std::vector<double> sum = add_blocks(sums, channels), sum_sq = add_blocks(squares, channels);
  std::vector<float> centre(channels), scale(channels), shift(channels);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  float* mean_p = mean_out.data_ptr<float>();
  float* var_p = var_out.data_ptr<float>();
  float* invstd_p = invstd_out.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const double shifted_mean = sum[c] / rows;
    const double var = std::max(sum_sq[c] / rows - shifted_mean * shifted_mean, 0.0);
    const float mean = static_cast<float>(pivot[c] + shifted_mean);
    const float invstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    mean_p[c] = mean;
    var_p[c] = static_cast<float>(var);
    invstd_p[c] = invstd;
    scale[c] = w[c] * invstd;
    centre[c] = mean;
    shift[c] = b[c];
  }
  for_blocks(rows, [&](int64_t row, int64_t count, int64_t) {
    block_normalise(x + row * channels, centre.data(), scale.data(), shift.data(), count, channels,
                    y + row * channels);
  });
}

template <typename T>
void backward_kernel(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                     const at::Tensor& weight, const at::Tensor& mean_t, const at::Tensor& invstd_t,
                     at::Tensor& grad_input, at::Tensor& grad_weight, at::Tensor& grad_bias) {
  const int64_t channels = input.size(1);
  const int64_t rows = input.numel() / channels;
  const int64_t blocks = (rows + kBlockRows - 1) / kBlockRows;
  const T* g = grad_output.data_ptr<T>();
  const T* x = input.data_ptr<T>();
  const T* y = output.data_ptr<T>();
  T* dx = grad_input.data_ptr<T>();
  const float* mean = mean_t.data_ptr<float>();
  const float* invstd = invstd_t.data_ptr<float>();
  const float* w = weight.data_ptr<float>();
  std::vector<float> sums_g(blocks * channels, 0.0f), sums_gx(blocks * channels, 0.0f);
  for_blocks(rows, [&](int64_t row, int64_t count, int64_t block) {
    const int64_t at = row * channels;
    block_grad_sums(g + at, x + at, y + at, mean, count, channels, sums_g.data() + block * channels,
                    sums_gx.data() + block * channels);
  });
  const std::vector<double> sum_g = add_blocks(sums_g, channels), sum_gx = add_blocks(sums_gx, channels);
  // d input = w * invstd * (g - mean(g) - xhat * mean(g * xhat)), xhat = (x - mean) * invstd.
  std::vector<float> k_g(channels), k_x(channels), k_0(channels);
  float* grad_w = grad_weight.data_ptr<float>();
  float* grad_b = grad_bias.data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const float mean_g = static_cast<float>(sum_g[c] / rows);
    const float mean_gx = static_cast<float>(sum_gx[c] / rows);
    k_g[c] = w[c] * invstd[c];
    k_x[c] = k_g[c] * mean_gx * invstd[c] * invstd[c];
    k_0[c] = k_g[c] * mean_g;
    grad_w[c] = static_cast<float>(sum_gx[c] * invstd[c]);
    grad_b[c] = static_cast<float>(sum_g[c]);
  }
  for_blocks(rows, [&](int64_t row, int64_t count, int64_t) {
    const int64_t at = row * channels;
    block_grad_input(g + at, x + at, y + at, mean, k_g.data(), k_x.data(), k_0.data(), count, channels, dx + at);
  });
}

// 2x2 windows of an (N, H, W, C) tensor: row r = n * H/2 + oh of the output covers input rows 2 oh and
// 2 oh + 1 of image n. Window position k: 0 top left, 1 top right, 2 bottom left, 3 bottom right.

// The value of a bfloat16 (uint16_t bits) or float32 (uint32_t bits) element.
inline float as_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

inline float as_float(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

// Bits = uint16_t (bfloat16) or uint32_t (float32). The lambdas capture sizes by value and the channel
// loops are marked `omp simd`: the outputs are distinct arrays, which the compiler cannot prove on its own
// (a uint8_t store may alias anything), and without it does not vectorise.
template <typename Bits>
void max_window_kernel(const Bits* y, int64_t n, int64_t h, int64_t w, int64_t channels, Bits* values,
                       uint8_t* where) {
  const int64_t out_h = h / 2, out_w = w / 2;
  at::parallel_for(0, n * out_h, 1, [=](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const Bits* top = y + ((r / out_h) * h + 2 * (r % out_h)) * w * channels;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const Bits* k0 = top + 2 * ow * channels;
        const Bits* k1 = k0 + channels;
        const Bits* k2 = k0 + w * channels;
        const Bits* k3 = k2 + channels;
        Bits* value = values + (r * out_w + ow) * channels;
        uint8_t* position = where + (r * out_w + ow) * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          // The first maximum in row-major order; NaN wins, as in PyTorch's max_pool2d.
          float best = as_float(k0[c]);
          Bits chosen = k0[c];
          uint8_t k = 0;
          float v = as_float(k1[c]);
          bool take = v > best || v != v;
          best = take ? v : best;
          chosen = take ? k1[c] : chosen;
          k = take ? 1 : k;
          v = as_float(k2[c]);
          take = v > best || v != v;
          best = take ? v : best;
          chosen = take ? k2[c] : chosen;
          k = take ? 2 : k;
          v = as_float(k3[c]);
          take = v > best || v != v;
          chosen = take ? k3[c] : chosen;
          k = take ? 3 : k;
          value[c] = chosen;
          position[c] = k;
        }
      }
    }
  });
}

template <typename Bits>
void scatter_window_kernel(const Bits* values, const uint8_t* where, int64_t n, int64_t out_h, int64_t out_w,
                           int64_t channels, Bits* y) {
  const int64_t w = 2 * out_w;
  at::parallel_for(0, n * out_h, 1, [=](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      Bits* top = y + 2 * r * w * channels;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const Bits* value = values + (r * out_w + ow) * channels;
        const uint8_t* position = where + (r * out_w + ow) * channels;
        Bits* k0 = top + 2 * ow * channels;
        Bits* k1 = k0 + channels;
        Bits* k2 = k0 + w * channels;
        Bits* k3 = k2 + channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const Bits v = value[c];
          const uint8_t k = position[c];
          k0[c] = k == 0 ? v : 0;
          k1[c] = k == 1 ? v : 0;
          k2[c] = k == 2 ? v : 0;
          k3[c] = k == 3 ? v : 0;
        }
      }
    }
  });
}

template <typename Bits>
void gather_window_kernel(const Bits* y, const uint8_t* where, int64_t n, int64_t out_h, int64_t out_w,
                          int64_t channels, Bits* values) {
  const int64_t w = 2 * out_w;
  at::parallel_for(0, n * out_h, 1, [=](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) {
      const Bits* top = y + 2 * r * w * channels;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        Bits* value = values + (r * out_w + ow) * channels;
        const uint8_t* position = where + (r * out_w + ow) * channels;
        const Bits* k0 = top + 2 * ow * channels;
        const Bits* k1 = k0 + channels;
        const Bits* k2 = k0 + w * channels;
        const Bits* k3 = k2 + channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const uint8_t k = position[c];
          value[c] = k == 0 ? k0[c] : k == 1 ? k1[c] : k == 2 ? k2[c] : k3[c];
        }
      }
    }
  });
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be a 4-d channels-last contiguous tensor");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat, name,
              " must be bfloat16 or float32");
}

// Calls body(T{}) with the tensor's element type: at::BFloat16 or float.
template <typename Body>
void with_element_type(const at::Tensor& t, const Body& body) {
  if (t.scalar_type() == at::kBFloat16) {
    body(at::BFloat16{});
  } else {
    body(float{});
  }
}

// Returns (output, batch mean, biased batch variance, 1 / sqrt(variance + eps)).
std::vector<at::Tensor> forward(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                                double eps) {
  check(input, "input");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && bias.scalar_type() == at::kFloat &&
                  weight.is_contiguous() && bias.is_contiguous() && weight.numel() == input.size(1) &&
                  bias.numel() == input.size(1),
              "weight and bias must be contiguous float32 with one value per channel");
  auto output = at::empty_like(input, at::MemoryFormat::ChannelsLast);
  auto stats = weight.options();
  auto mean = at::empty({input.size(1)}, stats), var = at::empty_like(mean), invstd = at::empty_like(mean);
  with_element_type(input, [&](auto element) {
    forward_kernel<decltype(element)>(input, weight, bias, eps, output, mean, var, invstd);
  });
  return {output, mean, var, invstd};
}

// Returns (grad input, grad weight, grad bias).
std::vector<at::Tensor> backward(const at::Tensor& grad_output, const at::Tensor& input, const at::Tensor& output,
                                 const at::Tensor& weight, const at::Tensor& mean, const at::Tensor& invstd) {
  check(grad_output, "grad_output");
  check(input, "input");
  check(output, "output");
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && output.scalar_type() == input.scalar_type(),
              "grad_output, input and output must share a dtype");
  auto grad_input = at::empty_like(input, at::MemoryFormat::ChannelsLast);
  auto grad_weight = at::empty_like(weight), grad_bias = at::empty_like(weight);
  with_element_type(input, [&](auto element) {
    backward_kernel<decltype(element)>(grad_output, input, output, weight, mean, invstd, grad_input, grad_weight,
                                       grad_bias);
  });
  return {grad_input, grad_weight, grad_bias};
}

// Calls body(Bits{}) with the unsigned type of the tensor's element size: uint16_t for bfloat16, uint32_t for
// float32. The pooling kernels only compare (as floats) and move elements, so they work on their bits.
template <typename Body>
void with_element_bits(const at::Tensor& t, const Body& body) {
  if (t.element_size() == 2) {
    body(uint16_t{});
  } else {
    body(uint32_t{});
  }
}

// (N, C, H, W) channels-last -> (values (N, C, H/2, W/2), where (N, C, H/2, W/2) uint8), both channels-last.
std::vector<at::Tensor> max_window(const at::Tensor& input) {
  check(input, "input");
  TORCH_CHECK(input.size(2) % 2 == 0 && input.size(3) % 2 == 0, "height and width must be even");
  const int64_t n = input.size(0), channels = input.size(1), h = input.size(2), w = input.size(3);
  auto values = at::empty({n, channels, h / 2, w / 2}, input.options(), at::MemoryFormat::ChannelsLast);
  auto where = at::empty({n, channels, h / 2, w / 2}, input.options().dtype(at::kByte), at::MemoryFormat::ChannelsLast);
  with_element_bits(input, [&](auto bits) {
    using Bits = decltype(bits);
    max_window_kernel(static_cast<const Bits*>(input.data_ptr()), n, h, w, channels,
                      static_cast<Bits*>(values.data_ptr()), where.data_ptr<uint8_t>());
  });
  return {values, where};
}

void check_where(const at::Tensor& values, const at::Tensor& where) {
  check(values, "values");
  TORCH_CHECK(where.scalar_type() == at::kByte && where.sizes() == values.sizes() &&
                  where.is_contiguous(at::MemoryFormat::ChannelsLast),
              "where must be channels-last uint8 of the values' shape");
}

// values at their window positions of a (N, C, 2H, 2W) channels-last tensor, zeros elsewhere.
at::Tensor scatter_window(const at::Tensor& values, const at::Tensor& where) {
  check_where(values, where);
  const int64_t n = values.size(0), channels = values.size(1), h = values.size(2), w = values.size(3);
  auto output = at::empty({n, channels, 2 * h, 2 * w}, values.options(), at::MemoryFormat::ChannelsLast);
  with_element_bits(values, [&](auto bits) {
    using Bits = decltype(bits);
    scatter_window_kernel(static_cast<const Bits*>(values.data_ptr()), where.data_ptr<uint8_t>(), n, h, w, channels,
                          static_cast<Bits*>(output.data_ptr()));
  });
  return output;
}

// The value at each window's recorded position of a (N, C, 2H, 2W) channels-last tensor.
at::Tensor gather_window(const at::Tensor& input, const at::Tensor& where) {
  check(input, "input");
  const int64_t n = input.size(0), channels = input.size(1), h = input.size(2) / 2, w = input.size(3) / 2;
  TORCH_CHECK(where.scalar_type() == at::kByte && where.dim() == 4 && where.size(0) == n && where.size(1) == channels &&
                  where.size(2) == h && where.size(3) == w && input.size(2) == 2 * h && input.size(3) == 2 * w &&
                  where.is_contiguous(at::MemoryFormat::ChannelsLast),
              "where must be channels-last uint8 with half the input's height and width");
  auto values = at::empty({n, channels, h, w}, input.options(), at::MemoryFormat::ChannelsLast);
  with_element_bits(input, [&](auto bits) {
    using Bits = decltype(bits);
    gather_window_kernel(static_cast<const Bits*>(input.data_ptr()), where.data_ptr<uint8_t>(), n, h, w, channels,
                         static_cast<Bits*>(values.data_ptr()));
  });
  return values;
}

// Winograd's minimal filtering F(2x2, 3x3) for 3x3 convolutions with stride 1 and padding 1 (segnet/speed/winograd.py).
// A tile is a 2x2 block of outputs and reads the 4x4 block of zero-padded inputs around it; tile t is
// (image, tile row, tile column) in that order. Transformed tensors are (16, tiles, channels): one row of
// channels per position of the 4x4 transform, so that the sums over channels become 16 matrix products.
// With B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1] and A^T = [1 1 1 0; 0 1 -1 -1]:
//   winograd_tiles:       input tile d -> B^T d B
//   winograd_untile:      product m -> output tile A^T m A
//   winograd_grad_tiles:  output gradient tile g -> A g A^T (the adjoint of winograd_untile)
//   winograd_untile_grad: tile gradients v -> input gradient, B v B^T per tile, overlapping tiles added (the
//                         adjoint of winograd_tiles)
// Every value is computed in float from its inputs and rounded once; no sum depends on the thread count.

// The kernels work on blocks of kLanes channels held in small local arrays, so that a tile's 16 blocks and
// their transforms stay in the first level of cache (16 x 64 floats: 4 KiB). Measured on our CPU, blocks of
// 64 ran up to 2.3x faster than whole rows of channels, and blocks of 16 or 32 slower than 64.
constexpr int kLanes = 64;
using Lanes = float[kLanes];

// Loads `width` (<= kLanes) channels from p, zeros in the rest; the full width is the vectorised case.
template <typename T>
inline void load_lanes(const T* __restrict p, int width, float* __restrict lanes) {
  if (width == kLanes) {
    for (int k = 0; k < kLanes; ++k) lanes[k] = load(p, k);
  } else {
    for (int k = 0; k < kLanes; ++k) lanes[k] = k < width ? load(p, k) : 0.0f;
  }
}

template <typename T>
inline void store_lanes(T* __restrict p, int width, const float* __restrict lanes) {
  if (width == kLanes) {
    for (int k = 0; k < kLanes; ++k) store(p, k, lanes[k]);
  } else {
    for (int k = 0; k < width; ++k) store(p, k, lanes[k]);
  }
}

// Applies a 4-point transform along one direction of a 4x4 block of lanes: `step` 4 transforms columns (the four
// rows' entries in one column), 1 transforms rows. Input transform B^T: (d0 - d2, d1 + d2, d2 - d1, d1 - d3).
inline void input_transform(const Lanes* in, int step, Lanes* out) {
  for (int line = 0; line < 4; ++line) {
    const int first = step == 4 ? line : line * 4;  // the line's first element
    const float* d0 = in[first];
    const float* d1 = in[first + step];
    const float* d2 = in[first + 2 * step];
    const float* d3 = in[first + 3 * step];
    for (int k = 0; k < kLanes; ++k) {
      out[first][k] = d0[k] - d2[k];
      out[first + step][k] = d1[k] + d2[k];
      out[first + 2 * step][k] = d2[k] - d1[k];
      out[first + 3 * step][k] = d1[k] - d3[k];
    }
  }
}

// The adjoint of input_transform, B: (v0, v1 - v2 + v3, v1 + v2 - v0, -v3).
inline void input_transform_adjoint(const Lanes* in, int step, Lanes* out) {
  for (int line = 0; line < 4; ++line) {
    const int first = step == 4 ? line : line * 4;
    const float* v0 = in[first];
    const float* v1 = in[first + step];
    const float* v2 = in[first + 2 * step];
    const float* v3 = in[first + 3 * step];
    for (int k = 0; k < kLanes; ++k) {
      out[first][k] = v0[k];
      out[first + step][k] = v1[k] - v2[k] + v3[k];
      out[first + 2 * step][k] = v1[k] + v2[k] - v0[k];
      out[first + 3 * step][k] = -v3[k];
    }
  }
}

// Tile t of an (n, h/2, w/2) grid: its image, tile row and tile column.
struct TilePlace {
  int64_t image, row, column;
  TilePlace(int64_t tile, int64_t tiles_h, int64_t tiles_w)
      : image(tile / (tiles_h * tiles_w)), row(tile / tiles_w % tiles_h), column(tile % tiles_w) {}
};

// Runs body(place, tile, c, width) for every tile of an (n, h/2, w/2) grid and every block of `width` (<= kLanes)
// channels starting at c, the tiles in parallel.
template <typename Body>
void for_tile_blocks(int64_t n, int64_t h, int64_t w, int64_t channels, const Body& body) {
  const int64_t tiles_h = h / 2, tiles_w = w / 2;
  at::parallel_for(0, n * tiles_h * tiles_w, 1, [&](int64_t first, int64_t last) {
    for (int64_t tile = first; tile < last; ++tile) {
      const TilePlace place(tile, tiles_h, tiles_w);
      for (int64_t c = 0; c < channels; c += kLanes) {
        body(place, tile, c, static_cast<int>(std::min<int64_t>(kLanes, channels - c)));
      }
    }
  });
}

template <typename T>
void winograd_tiles_kernel(const T* x, int64_t n, int64_t h, int64_t w, int64_t channels, T* out) {
  const int64_t tiles = n * (h / 2) * (w / 2);
  for_tile_blocks(n, h, w, channels, [&](const TilePlace& place, int64_t tile, int64_t c, int width) {
    Lanes block[16], rows[16], transformed[16];
    for (int i = 0; i < 4; ++i) {
      for (int j = 0; j < 4; ++j) {
        const int64_t y = 2 * place.row + i - 1, x_ = 2 * place.column + j - 1;
        if (y < 0 || y >= h || x_ < 0 || x_ >= w) {
          std::fill(block[i * 4 + j], block[i * 4 + j] + kLanes, 0.0f);  // the padding
        } else {
          load_lanes(x + ((place.image * h + y) * w + x_) * channels + c, width, block[i * 4 + j]);
        }
      }
    }
    input_transform(block, 4, rows);       // B^T d
    input_transform(rows, 1, transformed);  // (B^T d) B
    for (int k = 0; k < 16; ++k) store_lanes(out + (k * tiles + tile) * channels + c, width, transformed[k]);
  });
}

template <typename T>
void winograd_untile_kernel(const T* m, int64_t n, int64_t h, int64_t w, int64_t channels, T* y) {
  const int64_t tiles = n * (h / 2) * (w / 2);
  for_tile_blocks(n, h, w, channels, [&](const TilePlace& place, int64_t tile, int64_t c, int width) {
    Lanes block[16], rows[8];
    for (int k = 0; k < 16; ++k) load_lanes(m + (k * tiles + tile) * channels + c, width, block[k]);
    for (int b = 0; b < 4; ++b) {  // A^T m: rows (m0 + m1 + m2, m1 - m2 - m3)
      for (int k = 0; k < kLanes; ++k) {
        rows[b][k] = block[b][k] + block[4 + b][k] + block[8 + b][k];
        rows[4 + b][k] = block[4 + b][k] - block[8 + b][k] - block[12 + b][k];
      }
    }
    for (int i = 0; i < 2; ++i) {  // (A^T m) A, the same along each row
      const Lanes* r = rows + 4 * i;
      Lanes left, right;
      for (int k = 0; k < kLanes; ++k) {
        left[k] = r[0][k] + r[1][k] + r[2][k];
        right[k] = r[1][k] - r[2][k] - r[3][k];
      }
      T* target = y + ((place.image * h + 2 * place.row + i) * w + 2 * place.column) * channels + c;
      store_lanes(target, width, left);
      store_lanes(target + channels, width, right);
    }
  });
}

template <typename T>
void winograd_grad_tiles_kernel(const T* g, int64_t n, int64_t h, int64_t w, int64_t channels, T* out) {
  const int64_t tiles = n * (h / 2) * (w / 2);
  for_tile_blocks(n, h, w, channels, [&](const TilePlace& place, int64_t tile, int64_t c, int width) {
    Lanes grad[4], rows[8], transformed[16];
    for (int i = 0; i < 2; ++i) {
      const T* source = g + ((place.image * h + 2 * place.row + i) * w + 2 * place.column) * channels + c;
      load_lanes(source, width, grad[2 * i]);
      load_lanes(source + channels, width, grad[2 * i + 1]);
    }
    // g A^T along each row: (u, u + v, u - v, -v); then A (.) along each column, the same.
    for (int i = 0; i < 2; ++i) {
      for (int k = 0; k < kLanes; ++k) {
        const float u = grad[2 * i][k], v = grad[2 * i + 1][k];
        rows[4 * i][k] = u;
        rows[4 * i + 1][k] = u + v;
        rows[4 * i + 2][k] = u - v;
        rows[4 * i + 3][k] = -v;
      }
    }
    for (int b = 0; b < 4; ++b) {
      for (int k = 0; k < kLanes; ++k) {
        const float u = rows[b][k], v = rows[4 + b][k];
        transformed[b][k] = u;
        transformed[4 + b][k] = u + v;
        transformed[8 + b][k] = u - v;
        transformed[12 + b][k] = -v;
      }
    }
    for (int k = 0; k < 16; ++k) store_lanes(out + (k * tiles + tile) * channels + c, width, transformed[k]);
  });
}

template <typename T>
void winograd_untile_grad_kernel(const T* v, int64_t n, int64_t h, int64_t w, int64_t channels, T* grad) {
  const int64_t tiles_h = h / 2, tiles_w = w / 2, tiles = n * tiles_h * tiles_w, padded_w = w + 2;
  // One image per task: tiles of different images never overlap, so each image's sums have one order.
  at::parallel_for(0, n, 1, [&](int64_t first, int64_t last) {
    std::vector<float> sums((h + 2) * padded_w * channels);  // the padded image's gradient, in float
    Lanes block[16], rows[16], patch[16];
    for (int64_t image = first; image < last; ++image) {
      std::fill(sums.begin(), sums.end(), 0.0f);
      for (int64_t tile = image * tiles_h * tiles_w; tile < (image + 1) * tiles_h * tiles_w; ++tile) {
        const TilePlace place(tile, tiles_h, tiles_w);
        for (int64_t c = 0; c < channels; c += kLanes) {
          const int width = static_cast<int>(std::min<int64_t>(kLanes, channels - c));
          for (int k = 0; k < 16; ++k) load_lanes(v + (k * tiles + tile) * channels + c, width, block[k]);
          input_transform_adjoint(block, 4, rows);  // B v
          input_transform_adjoint(rows, 1, patch);  // (B v) B^T
          for (int i = 0; i < 4; ++i) {
            for (int j = 0; j < 4; ++j) {
              float* s = sums.data() + ((2 * place.row + i) * padded_w + 2 * place.column + j) * channels + c;
              for (int k = 0; k < width; ++k) s[k] += patch[i * 4 + j][k];
            }
          }
        }
      }
      for (int64_t y = 0; y < h; ++y) {  // the image without its padding
        for (int64_t x_ = 0; x_ < w; ++x_) {
          const float* s = sums.data() + ((y + 1) * padded_w + x_ + 1) * channels;
          T* target = grad + ((image * h + y) * w + x_) * channels;
          for (int64_t c = 0; c < channels; c += kLanes) {
            store_lanes(target + c, static_cast<int>(std::min<int64_t>(kLanes, channels - c)), s + c);
          }
        }
      }
    }
  });
}

void check_tiles(const at::Tensor& t, int64_t n, int64_t h, int64_t w) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 3 && t.size(0) == 16 && t.size(1) == n * (h / 2) * (w / 2) &&
                  t.is_contiguous() && (t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat),
              "tiles must be a contiguous bfloat16 or float32 CPU tensor of shape (16, n * h/2 * w/2, channels)");
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0 && h > 0 && w > 0, "height and width must be even");
}

// Runs kernel(image, n, h, w, channels, tiles) from a (N, C, H, W) channels-last image to a new (16, N * H/2 * W/2, C).
template <typename Kernel>
at::Tensor image_to_tiles(const at::Tensor& image, const char* name, const Kernel& kernel) {
  check(image, name);
  const int64_t n = image.size(0), channels = image.size(1), h = image.size(2), w = image.size(3);
  TORCH_CHECK(h % 2 == 0 && w % 2 == 0, name, ": height and width must be even");
  auto tiles = at::empty({16, n * (h / 2) * (w / 2), channels}, image.options());
  with_element_type(image, [&](auto element) {
    using T = decltype(element);
    kernel(image.const_data_ptr<T>(), n, h, w, channels, tiles.mutable_data_ptr<T>());
  });
  return tiles;
}

// Runs kernel(tiles, n, h, w, channels, image) from (16, N * H/2 * W/2, C) to a new (N, C, H, W) channels-last image.
template <typename Kernel>
at::Tensor tiles_to_image(const at::Tensor& tiles, int64_t n, int64_t h, int64_t w, const Kernel& kernel) {
  check_tiles(tiles, n, h, w);
  const int64_t channels = tiles.size(2);
  auto image = at::empty({n, channels, h, w}, tiles.options(), at::MemoryFormat::ChannelsLast);
  with_element_type(tiles, [&](auto element) {
    using T = decltype(element);
    kernel(tiles.const_data_ptr<T>(), n, h, w, channels, image.mutable_data_ptr<T>());
  });
  return image;
}

// The transformed input tiles of an input image.
at::Tensor winograd_tiles(const at::Tensor& input) {
  return image_to_tiles(input, "input", [](const auto* x, int64_t n, int64_t h, int64_t w, int64_t c, auto* out) {
    winograd_tiles_kernel(x, n, h, w, c, out);
  });
}

// The output image from the products of transformed tiles and filters.
at::Tensor winograd_untile(const at::Tensor& products, int64_t n, int64_t h, int64_t w) {
  return tiles_to_image(products, n, h, w, [](const auto* m, int64_t n, int64_t h, int64_t w, int64_t c, auto* y) {
    winograd_untile_kernel(m, n, h, w, c, y);
  });
}

// The gradient of winograd_untile's input, from the output image's gradient.
at::Tensor winograd_grad_tiles(const at::Tensor& grad_output) {
  return image_to_tiles(grad_output, "grad_output",
                        [](const auto* g, int64_t n, int64_t h, int64_t w, int64_t c, auto* out) {
                          winograd_grad_tiles_kernel(g, n, h, w, c, out);
                        });
}

// The input image's gradient, from the gradient of winograd_tiles' output.
at::Tensor winograd_untile_grad(const at::Tensor& grad_tiles, int64_t n, int64_t h, int64_t w) {
  return tiles_to_image(grad_tiles, n, h, w, [](const auto* v, int64_t n, int64_t h, int64_t w, int64_t c, auto* x) {
    winograd_untile_grad_kernel(v, n, h, w, c, x);
  });
}

// The filter transform G g G^T of F(2x2, 3x3) along one dimension: 3 taps -> 4 values, G = [1 0 0; 1/2 1/2 1/2;
// 1/2 -1/2 1/2; 0 0 1]; and its adjoint G^T: 4 values -> 3 taps.
inline void filter_row(const float* g, float* out) {
  out[0] = g[0];
  out[1] = 0.5f * (g[0] + g[1] + g[2]);
  out[2] = 0.5f * (g[0] - g[1] + g[2]);
  out[3] = g[2];
}

inline void filter_row_adjoint(const float* u, float* out) {
  out[0] = u[0] + 0.5f * (u[1] + u[2]);
  out[1] = 0.5f * (u[1] - u[2]);
  out[2] = 0.5f * (u[1] + u[2]) + u[3];
}

// (out, in, 3, 3) float32 weights, any strides -> (16, in, out) transformed filters, in `dtype`.
at::Tensor winograd_filters(const at::Tensor& weight, at::ScalarType dtype) {
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == at::kFloat && weight.dim() == 4 &&
                  weight.size(2) == 3 && weight.size(3) == 3,
              "weight must be a float32 CPU tensor of shape (out, in, 3, 3)");
  TORCH_CHECK(dtype == at::kBFloat16 || dtype == at::kFloat, "dtype must be bfloat16 or float32");
  const int64_t out_channels = weight.size(0), in_channels = weight.size(1);
  const auto stride = weight.strides();
  const float* w = weight.const_data_ptr<float>();
  auto filters = at::empty({16, in_channels, out_channels}, weight.options().dtype(dtype));
  with_element_type(filters, [&](auto element) {
    using T = decltype(element);
    T* u = filters.mutable_data_ptr<T>();
    at::parallel_for(0, in_channels, 1, [&](int64_t first, int64_t last) {
      float g[9], rows[12], column[3], values[4];
      for (int64_t c = first; c < last; ++c) {
        for (int64_t o = 0; o < out_channels; ++o) {
          for (int k = 0; k < 9; ++k) {
            g[k] = w[o * stride[0] + c * stride[1] + (k / 3) * stride[2] + (k % 3) * stride[3]];
          }
          for (int j = 0; j < 3; ++j) {  // G g: each column of taps
            for (int i = 0; i < 3; ++i) column[i] = g[i * 3 + j];
            filter_row(column, values);
            for (int a = 0; a < 4; ++a) rows[a * 3 + j] = values[a];
          }
          for (int a = 0; a < 4; ++a) {  // (G g) G^T: each row
            filter_row(rows + a * 3, values);
            for (int b = 0; b < 4; ++b) store(u, ((a * 4 + b) * in_channels + c) * out_channels + o, values[b]);
          }
        }
      }
    });
  });
  return filters;
}

// (16, in, out) gradient of the transformed filters -> G^T (.) G written into `grad_weight` (out, in, 3, 3),
// float32 with any strides (the weight's own layout, so the optimizer gets the gradient it expects).
void winograd_filter_grad(const at::Tensor& grad_filters, at::Tensor& grad_weight) {
  const int64_t out_channels = grad_weight.size(0), in_channels = grad_weight.size(1);
  TORCH_CHECK(grad_weight.device().is_cpu() && grad_weight.scalar_type() == at::kFloat && grad_weight.dim() == 4 &&
                  grad_weight.size(2) == 3 && grad_weight.size(3) == 3,
              "grad_weight must be a float32 CPU tensor of shape (out, in, 3, 3)");
  TORCH_CHECK(grad_filters.device().is_cpu() && grad_filters.dim() == 3 && grad_filters.size(0) == 16 &&
                  grad_filters.size(1) == in_channels && grad_filters.size(2) == out_channels &&
                  grad_filters.is_contiguous() &&
                  (grad_filters.scalar_type() == at::kBFloat16 || grad_filters.scalar_type() == at::kFloat),
              "grad_filters must be contiguous bfloat16 or float32 of shape (16, in, out)");
  const auto stride = grad_weight.strides();
  float* dw = grad_weight.mutable_data_ptr<float>();
  with_element_type(grad_filters, [&](auto element) {
    using T = decltype(element);
    const T* du = grad_filters.const_data_ptr<T>();
    at::parallel_for(0, in_channels, 1, [&](int64_t first, int64_t last) {
      float u[16], rows[12], column[4], taps[3];
      for (int64_t c = first; c < last; ++c) {
        for (int64_t o = 0; o < out_channels; ++o) {
          for (int k = 0; k < 16; ++k) u[k] = load(du, (k * in_channels + c) * out_channels + o);
          for (int b = 0; b < 4; ++b) {  // G^T u: each column
            for (int a = 0; a < 4; ++a) column[a] = u[a * 4 + b];
            filter_row_adjoint(column, taps);
            for (int i = 0; i < 3; ++i) rows[i * 4 + b] = taps[i];
          }
          for (int i = 0; i < 3; ++i) {  // (G^T u) G: each row
            filter_row_adjoint(rows + i * 4, taps);
            for (int j = 0; j < 3; ++j) dw[o * stride[0] + c * stride[1] + i * stride[2] + j * stride[3]] = taps[j];
          }
        }
      }
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("batch_norm_relu", &forward, "batch norm (batch statistics) + ReLU, channels-last");
  m.def("batch_norm_relu_backward", &backward, "gradients of batch_norm_relu");
  m.def("max_window", &max_window, "2x2 max pooling with the window position of each maximum");
  m.def("scatter_window", &scatter_window, "2x2 unpooling to recorded window positions");
  m.def("gather_window", &gather_window, "the values at recorded window positions");
  m.def("winograd_filters", &winograd_filters, "Winograd F(2x2, 3x3): transformed filters");
  m.def("winograd_filter_grad", &winograd_filter_grad, "Winograd F(2x2, 3x3): weight gradient from its filters'");
  m.def("winograd_tiles", &winograd_tiles, "Winograd F(2x2, 3x3): transformed input tiles");
  m.def("winograd_untile", &winograd_untile, "Winograd F(2x2, 3x3): output from the transformed products");
  m.def("winograd_grad_tiles", &winograd_grad_tiles, "Winograd F(2x2, 3x3): transformed output gradient tiles");
  m.def("winograd_untile_grad", &winograd_untile_grad, "Winograd F(2x2, 3x3): input gradient from its tiles");
}
