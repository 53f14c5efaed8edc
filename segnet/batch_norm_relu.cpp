// Training-mode batch norm followed by ReLU, forward and backward, in one pass each over channels-last
// CPU tensors (bfloat16 or float32). PyTorch runs them as separate kernels (statistics, normalisation,
// ReLU; then ReLU's backward and batch norm's backward), each reading and writing the whole activation,
// and its bfloat16 channels-last batch norm is several times slower than the memory traffic it needs.
// Built on first use by segnet/batch_norm_relu.py; every sum is accumulated in float within fixed
// blocks of rows and the blocks added in double in a fixed order, so results do not depend on the
// number of threads.

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
// them; per-block float sums go to `partial` (blocks x channels) and are added in double afterwards.

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
void block_normalise(const T* __restrict x, const float* __restrict scale, const float* __restrict shift,
                     int64_t rows, int64_t channels, T* __restrict y) {
  for (int64_t i = 0; i < rows * channels; i += channels) {
    for (int64_t c = 0; c < channels; ++c) store(y, i + c, std::max(load(x, i + c) * scale[c] + shift[c], 0.0f));
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
  std::vector<float> scale(channels), shift(channels);
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
    shift[c] = b[c] - mean * scale[c];
  }
  for_blocks(rows, [&](int64_t row, int64_t count, int64_t) {
    block_normalise(x + row * channels, scale.data(), shift.data(), count, channels, y + row * channels);
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

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.dim() == 4 && t.is_contiguous(at::MemoryFormat::ChannelsLast), name,
              " must be a 4-d channels-last contiguous tensor");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat, name,
              " must be bfloat16 or float32");
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
  if (input.scalar_type() == at::kBFloat16) {
    forward_kernel<at::BFloat16>(input, weight, bias, eps, output, mean, var, invstd);
  } else {
    forward_kernel<float>(input, weight, bias, eps, output, mean, var, invstd);
  }
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
  if (input.scalar_type() == at::kBFloat16) {
    backward_kernel<at::BFloat16>(grad_output, input, output, weight, mean, invstd, grad_input, grad_weight,
                                  grad_bias);
  } else {
    backward_kernel<float>(grad_output, input, output, weight, mean, invstd, grad_input, grad_weight, grad_bias);
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "batch norm (batch statistics) + ReLU, channels-last");
  m.def("backward", &backward, "gradients of forward");
}
