// ppadapt's fused float32 CPU kernels (model.layers: fused): GELU, softmax with a scale,
// LayerNorm, dropout (alone or after a ReLU), residual adds and the moves of q/k/v into heads,
// forward and backward, each one pass over memory on Paddle's OpenMP threads. Paddle's own
// CPU kernels for these run on one thread and in several passes. Results agree
// with Paddle's within float tolerance; reductions use a fixed partition of the rows, so they
// do not depend on the number of threads.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "paddle/extension.h"

namespace {

constexpr int kBlocks = 32;  // fixed row partition: reductions do not depend on the thread count

inline float exp_poly(float x) {  // |relative error| ~1e-7 over float's range
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float shifted = x * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer
  const float n = shifted - 12582912.0f;
  int32_t bits;
  std::memcpy(&bits, &shifted, 4);
  bits = (bits - 0x4B400000 + 127) << 23;  // 2^n
  float scale;
  std::memcpy(&scale, &bits, 4);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  return p * scale;
}

// The standard normal CDF, 0.5 * (1 + erf(v / sqrt(2))), with erfc by Abramowitz & Stegun
// 7.1.26 (|error| < 1.5e-7); the tail is computed directly, not as 1 - erf.
// ``gauss`` gets exp(-v^2 / 2), which the GELU gradient's density needs too.
inline float normal_cdf(float v, float& gauss) {
  const float z = v * 0.70710678118654752f;
  const float a = std::fabs(z);
  const float t = 1.0f / (1.0f + 0.3275911f * a);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  gauss = exp_poly(-a * a);
  const float half_erfc = 0.5f * p * t * gauss;
  return z < 0.0f ? half_erfc : 1.0f - half_erfc;
}

// Runs fn(begin, end) over [0, n) in kBlocks fixed pieces, spread over the OpenMP threads.
template <class Fn>
void for_blocks(int64_t n, Fn fn) {
  const int64_t per = (n + kBlocks - 1) / kBlocks;
#pragma omp parallel for schedule(static) if (n >= 4096)
  for (int blk = 0; blk < kBlocks; ++blk) {
    const int64_t begin = blk * per, end = std::min(n, begin + per);
    if (begin < end) fn(blk, begin, end);
  }
}

void check(const paddle::Tensor& t, const char* what) {
  PD_CHECK(t.is_cpu(), what, " must be on the CPU");
  PD_CHECK(t.dtype() == paddle::DataType::FLOAT32, what, " must be float32");
}

}  // namespace

std::vector<paddle::Tensor> GeluForward(const paddle::Tensor& x) {
  check(x, "x");
  auto y = paddle::empty_like(x);
  const float* xs = x.data<float>();
  float* ys = y.data<float>();
  const int64_t n = x.numel();
  for_blocks(n, [=](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = xs[i];
      float gauss;
      ys[i] = v * normal_cdf(v, gauss);
    }
  });
  return {y};
}

std::vector<paddle::Tensor> GeluBackward(const paddle::Tensor& x, const paddle::Tensor& dy) {
  check(x, "x");
  auto dx = paddle::empty_like(x);
  const float* xs = x.data<float>();
  const float* gs = dy.data<float>();
  float* out = dx.data<float>();
  const int64_t n = x.numel();
  for_blocks(n, [=](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float v = xs[i];
      float gauss;
      const float cdf = normal_cdf(v, gauss);
      out[i] = gs[i] * (cdf + v * 0.39894228040143268f * gauss);  // Phi(v) + v * phi(v)
    }
  });
  return {dx};
}

// softmax(scale * x) over the last axis.
std::vector<paddle::Tensor> SoftmaxForward(const paddle::Tensor& x, float scale) {
  check(x, "x");
  auto y = paddle::empty_like(x);
  const int64_t c = x.shape().back();
  const int64_t rows = x.numel() / c;
  const float* xs = x.data<float>();
  float* ys = y.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = xs + r * c;
    float* out = ys + r * c;
    float m = in[0];
#pragma omp simd reduction(max : m)
    for (int64_t j = 1; j < c; ++j) m = in[j] > m ? in[j] : m;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < c; ++j) {
      out[j] = exp_poly((in[j] - m) * scale);
      s += out[j];
    }
    const float inv = 1.0f / s;
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) out[j] *= inv;
  }
  return {y};
}

std::vector<paddle::Tensor> SoftmaxBackward(const paddle::Tensor& y, const paddle::Tensor& dy, float scale) {
  check(y, "y");
  auto dx = paddle::empty_like(y);
  const int64_t c = y.shape().back();
  const int64_t rows = y.numel() / c;
  const float* ys = y.data<float>();
  const float* gs = dy.data<float>();
  float* out = dx.data<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* yr = ys + r * c;
    const float* gr = gs + r * c;
    float* o = out + r * c;
    float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
    for (int64_t j = 0; j < c; ++j) dot += yr[j] * gr[j];
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) o[j] = scale * yr[j] * (gr[j] - dot);
  }
  return {dx};
}

// LayerNorm over the last axis; also returns each row's mean and 1/std for the backward.
std::vector<paddle::Tensor> LayerNormForward(const paddle::Tensor& x, const paddle::Tensor& w,
                                             const paddle::Tensor& b, float eps) {
  check(x, "x");
  const int64_t c = x.shape().back();
  const int64_t rows = x.numel() / c;
  auto y = paddle::empty_like(x);
  auto mean = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  auto rstd = paddle::empty({rows}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const float* xs = x.data<float>();
  const float* ws = w.data<float>();
  const float* bs = b.data<float>();
  float* ys = y.data<float>();
  float* ms = mean.data<float>();
  float* rs = rstd.data<float>();
  const float inv_c = 1.0f / static_cast<float>(c);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* in = xs + r * c;
    float* out = ys + r * c;
    float s = 0.0f;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < c; ++j) s += in[j];
    const float m = s * inv_c;
    float v = 0.0f;
#pragma omp simd reduction(+ : v)
    for (int64_t j = 0; j < c; ++j) v += (in[j] - m) * (in[j] - m);
    const float rinv = 1.0f / std::sqrt(v * inv_c + eps);
#pragma omp simd
    for (int64_t j = 0; j < c; ++j) out[j] = (in[j] - m) * rinv * ws[j] + bs[j];
    ms[r] = m;
    rs[r] = rinv;
  }
  return {y, mean, rstd};
}

// Gradients of LayerNormForward; an unneeded gradient comes back as an empty tensor.
std::vector<paddle::Tensor> LayerNormBackward(const paddle::Tensor& x, const paddle::Tensor& w,
                                              const paddle::Tensor& mean, const paddle::Tensor& rstd,
                                              const paddle::Tensor& dy, bool need_x, bool need_w, bool need_b) {
  check(x, "x");
  const int64_t c = x.shape().back();
  const int64_t rows = x.numel() / c;
  auto dx = need_x ? paddle::empty_like(x) : paddle::empty({0}, paddle::DataType::FLOAT32, paddle::CPUPlace());
  const bool need_params = need_w || need_b;
  std::vector<float> part_w(need_params ? kBlocks * c : 0, 0.0f), part_b(need_params ? kBlocks * c : 0, 0.0f);
  const float* xs = x.data<float>();
  const float* ws = w.data<float>();
  const float* ms = mean.data<float>();
  const float* rs = rstd.data<float>();
  const float* gs = dy.data<float>();
  float* dxs = need_x ? dx.data<float>() : nullptr;
  const float inv_c = 1.0f / static_cast<float>(c);
  const int64_t per_block = (rows + kBlocks - 1) / kBlocks;
#pragma omp parallel for schedule(static)
  for (int blk = 0; blk < kBlocks; ++blk) {
    std::vector<float> xhat(c);
    float* pw = need_params ? part_w.data() + blk * c : nullptr;
    float* pb = need_params ? part_b.data() + blk * c : nullptr;
    const int64_t end = std::min(rows, (blk + 1) * per_block);
    for (int64_t r = blk * per_block; r < end; ++r) {
      const float* in = xs + r * c;
      const float* g = gs + r * c;
      const float m = ms[r], rinv = rs[r];
      float* xh = xhat.data();
#pragma omp simd
      for (int64_t j = 0; j < c; ++j) xh[j] = (in[j] - m) * rinv;
      if (need_params) {
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) {
          pw[j] += g[j] * xh[j];
          pb[j] += g[j];
        }
      }
      if (need_x) {
        float s1 = 0.0f, s2 = 0.0f;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t j = 0; j < c; ++j) {
          const float gw = g[j] * ws[j];
          s1 += gw;
          s2 += gw * xh[j];
        }
        s1 *= inv_c;
        s2 *= inv_c;
        float* o = dxs + r * c;
#pragma omp simd
        for (int64_t j = 0; j < c; ++j) o[j] = (g[j] * ws[j] - s1 - xh[j] * s2) * rinv;
      }
    }
  }
  auto empty = [] { return paddle::empty({0}, paddle::DataType::FLOAT32, paddle::CPUPlace()); };
  paddle::Tensor dw = empty(), db = empty();
  if (need_params) {
    auto full_w = paddle::empty({c}, paddle::DataType::FLOAT32, paddle::CPUPlace());
    auto full_b = paddle::empty({c}, paddle::DataType::FLOAT32, paddle::CPUPlace());
    float* fw = full_w.data<float>();
    float* fb = full_b.data<float>();
    for (int64_t j = 0; j < c; ++j) { fw[j] = 0.0f; fb[j] = 0.0f; }
    for (int blk = 0; blk < kBlocks; ++blk)
      for (int64_t j = 0; j < c; ++j) {
        fw[j] += part_w[blk * c + j];
        fb[j] += part_b[blk * c + j];
      }
    if (need_w) dw = full_w;
    if (need_b) db = full_b;
  }
  return {dx, dw, db};
}

namespace {

inline uint32_t mix32(uint32_t h) {  // a 32-bit integer finaliser with good avalanche
  h ^= h >> 16;
  h *= 0x7feb352du;
  h ^= h >> 15;
  h *= 0x846ca68bu;
  h ^= h >> 16;
  return h;
}

// Inverted dropout whose mask is a hash of (seed, element index): the backward rebuilds the
// mask instead of storing it, any thread split gives the same mask, and the seed is drawn from
// Paddle's generator, so paddle.seed and recompute's saved RNG state reproduce it. With
// ``relu_of`` (the forward's input) the element also needs relu_of > 0: ReLU and dropout in one
// pass (forward: in == relu_of; backward: in is the output's gradient).
void dropout_apply(const float* in, const float* relu_of, float* out, int64_t n, int64_t seed, float p) {
  const uint32_t threshold = static_cast<uint32_t>(static_cast<double>(p) * 4294967296.0);
  const uint32_t s1 = static_cast<uint32_t>(seed), s2 = static_cast<uint32_t>(static_cast<uint64_t>(seed) >> 32);
  const float keep_scale = 1.0f / (1.0f - p);
  for_blocks(n, [=](int, int64_t begin, int64_t end) {
    // two loops without a branch on relu_of inside, so that both vectorise
    if (relu_of == nullptr) {
      for (int64_t i = begin; i < end; ++i) {
        const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ s1) + s2 + static_cast<uint32_t>(i >> 32));
        const float v = in[i] * keep_scale;  // read unconditionally: a conditional load does not vectorise
        out[i] = h >= threshold ? v : 0.0f;
      }
    } else {
      for (int64_t i = begin; i < end; ++i) {
        const uint32_t h = mix32(mix32(static_cast<uint32_t>(i) ^ s1) + s2 + static_cast<uint32_t>(i >> 32));
        const float v = in[i] * keep_scale;
        out[i] = (h >= threshold) & (relu_of[i] > 0.0f) ? v : 0.0f;
      }
    }
  });
}

// [B, N, 3, H, D] (a qkv projection's output) <-> three [B, H, N, D]; forward: split, else merge.
void qkv_heads(float* qkv, float* q, float* k, float* v, int64_t b, int64_t n, int64_t h, int64_t d, bool split) {
  float* parts[3] = {q, k, v};
  const int64_t c = h * d;
  for_blocks(b * n, [=](int, int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t bi = bn / n, ni = bn % n;
      for (int part = 0; part < 3; ++part)
        for (int64_t hi = 0; hi < h; ++hi) {
          float* token = qkv + bn * 3 * c + part * c + hi * d;
          float* head = parts[part] + ((bi * h + hi) * n + ni) * d;
          if (split) std::memcpy(head, token, d * sizeof(float));
          else std::memcpy(token, head, d * sizeof(float));
        }
    }
  });
}

// [B, H, N, D] <-> [B, N, H * D]; forward: heads to tokens, else back.
void heads_tokens(float* heads, float* tokens, int64_t b, int64_t h, int64_t n, int64_t d, bool to_tokens) {
  for_blocks(b * n, [=](int, int64_t begin, int64_t end) {
    for (int64_t bn = begin; bn < end; ++bn) {
      const int64_t bi = bn / n, ni = bn % n;
      for (int64_t hi = 0; hi < h; ++hi) {
        float* token = tokens + bn * h * d + hi * d;
        float* head = heads + ((bi * h + hi) * n + ni) * d;
        if (to_tokens) std::memcpy(token, head, d * sizeof(float));
        else std::memcpy(head, token, d * sizeof(float));
      }
    }
  });
}

paddle::Tensor cpu_empty(const std::vector<int64_t>& shape) {
  return paddle::empty(shape, paddle::DataType::FLOAT32, paddle::CPUPlace());
}

}  // namespace

std::vector<paddle::Tensor> DropoutForward(const paddle::Tensor& x, int64_t seed, float p) {
  check(x, "x");
  auto y = paddle::empty_like(x);
  dropout_apply(x.data<float>(), nullptr, y.data<float>(), x.numel(), seed, p);
  return {y};
}

std::vector<paddle::Tensor> DropoutBackward(const paddle::Tensor& dy, int64_t seed, float p) {
  check(dy, "dy");
  auto dx = paddle::empty_like(dy);
  dropout_apply(dy.data<float>(), nullptr, dx.data<float>(), dy.numel(), seed, p);
  return {dx};
}

std::vector<paddle::Tensor> ReluDropoutForward(const paddle::Tensor& x, int64_t seed, float p) {
  check(x, "x");
  auto y = paddle::empty_like(x);
  dropout_apply(x.data<float>(), x.data<float>(), y.data<float>(), x.numel(), seed, p);
  return {y};
}

std::vector<paddle::Tensor> ReluDropoutBackward(const paddle::Tensor& x, const paddle::Tensor& dy, int64_t seed,
                                                float p) {
  check(dy, "dy");
  auto dx = paddle::empty_like(dy);
  dropout_apply(dy.data<float>(), x.data<float>(), dx.data<float>(), dy.numel(), seed, p);
  return {dx};
}

// a + b of one shape (a residual connection): the same values as Paddle's add, on all threads.
std::vector<paddle::Tensor> AddForward(const paddle::Tensor& a, const paddle::Tensor& b) {
  check(a, "a");
  check(b, "b");
  PD_CHECK(a.numel() == b.numel(), "a and b must have one shape");
  auto out = paddle::empty_like(a);
  const float* as = a.data<float>();
  const float* bs = b.data<float>();
  float* os = out.data<float>();
  for_blocks(a.numel(), [=](int, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) os[i] = as[i] + bs[i];
  });
  return {out};
}

// x + bias[c] over [B, C, S] (a convolution's bias on NCHW): Paddle's broadcast add along axis 1
// is several times slower on the CPU than this one pass.
std::vector<paddle::Tensor> ChannelBias(const paddle::Tensor& x, const paddle::Tensor& bias) {
  check(x, "x");
  check(bias, "bias");
  const auto shape = x.shape();
  PD_CHECK(shape.size() >= 2 && bias.numel() == shape[1], "bias must have one value per channel (axis 1)");
  const int64_t c = shape[1], rows = shape[0] * c, inner = x.numel() / rows;
  auto out = paddle::empty_like(x);
  const float* xs = x.data<float>();
  const float* bs = bias.data<float>();
  float* os = out.data<float>();
#pragma omp parallel for schedule(static) if (x.numel() >= 4096)
  for (int64_t r = 0; r < rows; ++r) {
    const float v = bs[r % c];
    const float* in = xs + r * inner;
    float* o = os + r * inner;
#pragma omp simd
    for (int64_t i = 0; i < inner; ++i) o[i] = in[i] + v;
  }
  return {out};
}

// The bias gradient of ChannelBias: dy summed over every axis but 1 (float64 accumulation).
std::vector<paddle::Tensor> ChannelSum(const paddle::Tensor& dy) {
  check(dy, "dy");
  const auto shape = dy.shape();
  const int64_t b = shape[0], c = shape[1], inner = dy.numel() / (b * c);
  auto out = cpu_empty({c});
  const float* ds = dy.data<float>();
  float* os = out.data<float>();
#pragma omp parallel for schedule(static) if (dy.numel() >= 4096)
  for (int64_t ch = 0; ch < c; ++ch) {
    double total = 0.0;
    for (int64_t n = 0; n < b; ++n) {
      const float* row = ds + (n * c + ch) * inner;
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < inner; ++i) s += row[i];
      total += s;
    }
    os[ch] = static_cast<float>(total);
  }
  return {out};
}

std::vector<paddle::Tensor> SplitHeads(const paddle::Tensor& qkv, int64_t heads) {
  check(qkv, "qkv");
  const auto shape = qkv.shape();  // [B, N, 3 * C]
  const int64_t b = shape[0], n = shape[1], d = shape[2] / 3 / heads;
  auto q = cpu_empty({b, heads, n, d}), k = cpu_empty({b, heads, n, d}), v = cpu_empty({b, heads, n, d});
  qkv_heads(const_cast<float*>(qkv.data<float>()), q.data<float>(), k.data<float>(), v.data<float>(), b, n, heads, d, true);
  return {q, k, v};
}

std::vector<paddle::Tensor> MergeHeads(const paddle::Tensor& q, const paddle::Tensor& k, const paddle::Tensor& v) {
  check(q, "q");
  const auto shape = q.shape();  // [B, H, N, D]
  const int64_t b = shape[0], h = shape[1], n = shape[2], d = shape[3];
  auto qkv = cpu_empty({b, n, 3 * h * d});
  qkv_heads(qkv.data<float>(), const_cast<float*>(q.data<float>()), const_cast<float*>(k.data<float>()),
            const_cast<float*>(v.data<float>()), b, n, h, d, false);
  return {qkv};
}

std::vector<paddle::Tensor> HeadsToTokens(const paddle::Tensor& x) {
  check(x, "x");
  const auto shape = x.shape();  // [B, H, N, D]
  auto out = cpu_empty({shape[0], shape[2], shape[1] * shape[3]});
  heads_tokens(const_cast<float*>(x.data<float>()), out.data<float>(), shape[0], shape[1], shape[2], shape[3], true);
  return {out};
}

std::vector<paddle::Tensor> TokensToHeads(const paddle::Tensor& x, int64_t heads) {
  check(x, "x");
  const auto shape = x.shape();  // [B, N, H * D]
  const int64_t d = shape[2] / heads;
  auto out = cpu_empty({shape[0], heads, shape[1], d});
  heads_tokens(out.data<float>(), const_cast<float*>(x.data<float>()), shape[0], heads, shape[1], d, false);
  return {out};
}

PD_BUILD_OP(ppadapt_gelu_fwd).Inputs({"X"}).Outputs({"Y"}).SetKernelFn(PD_KERNEL(GeluForward));
PD_BUILD_OP(ppadapt_gelu_bwd).Inputs({"X", "DY"}).Outputs({"DX"}).SetKernelFn(PD_KERNEL(GeluBackward));
PD_BUILD_OP(ppadapt_softmax_fwd).Inputs({"X"}).Outputs({"Y"}).Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(SoftmaxForward));
PD_BUILD_OP(ppadapt_softmax_bwd).Inputs({"Y", "DY"}).Outputs({"DX"}).Attrs({"scale: float"})
    .SetKernelFn(PD_KERNEL(SoftmaxBackward));
PD_BUILD_OP(ppadapt_layer_norm_fwd).Inputs({"X", "W", "B"}).Outputs({"Y", "Mean", "Rstd"}).Attrs({"eps: float"})
    .SetKernelFn(PD_KERNEL(LayerNormForward));
PD_BUILD_OP(ppadapt_layer_norm_bwd).Inputs({"X", "W", "Mean", "Rstd", "DY"}).Outputs({"DX", "DW", "DB"})
    .Attrs({"need_x: bool", "need_w: bool", "need_b: bool"}).SetKernelFn(PD_KERNEL(LayerNormBackward));
PD_BUILD_OP(ppadapt_dropout_fwd).Inputs({"X"}).Outputs({"Y"}).Attrs({"seed: int64_t", "p: float"})
    .SetKernelFn(PD_KERNEL(DropoutForward));
PD_BUILD_OP(ppadapt_dropout_bwd).Inputs({"DY"}).Outputs({"DX"}).Attrs({"seed: int64_t", "p: float"})
    .SetKernelFn(PD_KERNEL(DropoutBackward));
PD_BUILD_OP(ppadapt_split_heads).Inputs({"QKV"}).Outputs({"Q", "K", "V"}).Attrs({"heads: int64_t"})
    .SetKernelFn(PD_KERNEL(SplitHeads));
PD_BUILD_OP(ppadapt_merge_heads).Inputs({"Q", "K", "V"}).Outputs({"QKV"}).SetKernelFn(PD_KERNEL(MergeHeads));
PD_BUILD_OP(ppadapt_heads_to_tokens).Inputs({"X"}).Outputs({"Y"}).SetKernelFn(PD_KERNEL(HeadsToTokens));
PD_BUILD_OP(ppadapt_tokens_to_heads).Inputs({"X"}).Outputs({"Y"}).Attrs({"heads: int64_t"})
    .SetKernelFn(PD_KERNEL(TokensToHeads));
PD_BUILD_OP(ppadapt_relu_dropout_fwd).Inputs({"X"}).Outputs({"Y"}).Attrs({"seed: int64_t", "p: float"})
    .SetKernelFn(PD_KERNEL(ReluDropoutForward));
PD_BUILD_OP(ppadapt_relu_dropout_bwd).Inputs({"X", "DY"}).Outputs({"DX"}).Attrs({"seed: int64_t", "p: float"})
    .SetKernelFn(PD_KERNEL(ReluDropoutBackward));
PD_BUILD_OP(ppadapt_add).Inputs({"A", "B"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(AddForward));
PD_BUILD_OP(ppadapt_channel_bias).Inputs({"X", "Bias"}).Outputs({"Out"}).SetKernelFn(PD_KERNEL(ChannelBias));
PD_BUILD_OP(ppadapt_channel_sum).Inputs({"DY"}).Outputs({"DB"}).SetKernelFn(PD_KERNEL(ChannelSum));
