// The elementwise parts of a Llama-family decoder layer as one call each, for specdec/lean.py: RMSNorm, the rotary
// embedding of the fused q/k/v output, and SiLU(gate) * up of the fused gate/up output. Registered beside the
// quantized linear (torch.ops.specdec.*; specdec/qkernel.py builds both files as one extension).
//
// Why: at 4 bits a decode step's products are fast enough that the framework around them shows. Profiled on a Zen 4
// EPYC (2 cores), Qwen2.5-1.5B's int4 step spent ~3.6 ms in 57 RMSNorms of one 1536-wide row (torch runs each as
// ~8 dispatched ops, ~60 us) and about as much in the rotary embedding's and the MLP's small ops; each is a few
// microseconds of arithmetic.
//
// Row-invariant like the kernel: every output element is computed from its own token's row by the same sequence of
// float operations whatever else shares the call, so a verify still gives each token its one-token values. The
// rotary embedding is bitwise transformers' own (q * cos + rotate_half(q) * sin, in that order); RMSNorm and SiLU
// round differently from torch's vectorised ones (in the last bits), the same way in every forward.
#include <torch/library.h>
#include <ATen/ATen.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <vector>

#include "ops.h"

namespace {

void check_float(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), name, ": float32 CPU tensors only");
}

// silu(gate) * up = gate / (1 + e^-gate) * up over n elements, e^x by specdec::exp_approx (ops.h): a loop the compiler
// vectorises, unlike std::exp's libm call per element (2.8 ns an element on a Zen 4, 0.7 ms of an int4 Qwen2.5-1.5B
// step per token). Built for AVX-512, AVX2 and baseline x86 (target_clones), the same IEEE operations per element in
// each (-ffp-contract=off), so every build computes the same bits.
__attribute__((target_clones("avx512f", "avx2", "default")))
void silu_mul_row(const float* gate, const float* up, int64_t n, float* out) {
  for (int64_t i = 0; i < n; ++i) out[i] = gate[i] / (1.f + specdec::exp_approx(-gate[i])) * up[i];
}

}  // namespace

namespace specdec {

// x [..., D] -> x * rsqrt(mean(x^2) + eps) * weight, per row (as transformers' RMSNorm in float32).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check_float(x, "rms_norm");
  check_float(weight, "rms_norm");
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous();
  const int64_t D = xc.size(-1), R = D ? xc.numel() / D : 0;
  TORCH_CHECK(wc.numel() == D, "rms_norm: weight has ", wc.numel(), " entries for rows of ", D);
  at::Tensor y = at::empty_like(xc);
  const float *px = xc.data_ptr<float>(), *w = wc.data_ptr<float>();
  float* py = y.data_ptr<float>();
  for (int64_t r = 0; r < R; ++r) {
    const float* xr = px + r * D;
    float* yr = py + r * D;
    float squares = 0.f;
    for (int64_t d = 0; d < D; ++d) squares += xr[d] * xr[d];
    const float inv = 1.f / std::sqrt(squares / static_cast<float>(D) + static_cast<float>(eps));
    for (int64_t d = 0; d < D; ++d) yr[d] = (xr[d] * inv) * w[d];
  }
  return y;
}

// gate_up [..., 2I] (gate, then up) -> silu(gate) * up [..., I], in chunks of rows x columns across the threads (each
// element alone: how the work is split changes no bit).
at::Tensor silu_mul(const at::Tensor& gate_up) {
  check_float(gate_up, "silu_mul");
  const at::Tensor g = gate_up.contiguous();
  const int64_t I = g.size(-1) / 2, R = I ? g.numel() / (2 * I) : 0;
  TORCH_CHECK(g.size(-1) == 2 * I, "silu_mul: the last dimension must be even (gate and up)");
  std::vector<int64_t> shape(g.sizes().begin(), g.sizes().end());
  shape.back() = I;
  at::Tensor y = at::empty(shape, g.options());
  const float* pg = g.data_ptr<float>();
  float* py = y.data_ptr<float>();
  constexpr int64_t CHUNK = 1024;
  const int64_t chunks = (I + CHUNK - 1) / CHUNK;
  at::parallel_for(0, R * chunks, 8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i / chunks, from = i % chunks * CHUNK;
      silu_mul_row(pg + r * 2 * I + from, pg + r * 2 * I + I + from, std::min(CHUNK, I - from), py + r * I + from);
    }
  });
  return y;
}

// qkv [B, T, (Hq + 2 Hkv) D] (q heads, k heads, v heads), cos and sin [B or 1, T, D] -> q [B, Hq, T, D] and
// k [B, Hkv, T, D] rotated, v [B, Hkv, T, D]: transformers' view + transpose + apply_rotary_pos_emb, as one call.
std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv(const at::Tensor& qkv, const at::Tensor& cos,
                                                        const at::Tensor& sin, int64_t q_heads, int64_t kv_heads) {
  check_float(qkv, "rope_qkv");
  check_float(cos, "rope_qkv");
  check_float(sin, "rope_qkv");
  const at::Tensor x = qkv.contiguous(), c = cos.contiguous(), s = sin.contiguous();
  const int64_t B = x.size(0), T = x.size(1), H = q_heads + 2 * kv_heads, D = x.size(2) / H, half = D / 2;
  TORCH_CHECK(x.dim() == 3 && x.size(2) == H * D && D % 2 == 0, "rope_qkv: qkv must be [B, T, heads * head_dim]");
  const int64_t rows = c.numel() / (T * D);  // B, or 1: one rotation for every batch row
  TORCH_CHECK(c.numel() == s.numel() && (rows == B || rows == 1) && c.numel() == rows * T * D,
              "rope_qkv: cos and sin must be [B or 1, T, head_dim]");
  at::Tensor q = at::empty({B, q_heads, T, D}, x.options());
  at::Tensor k = at::empty({B, kv_heads, T, D}, x.options());
  at::Tensor v = at::empty({B, kv_heads, T, D}, x.options());
  const float *px = x.data_ptr<float>(), *pc = c.data_ptr<float>(), *ps = s.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) {
      const int64_t at = ((rows == 1 ? 0 : b) * T + t) * D;
      const float *row = px + (b * T + t) * H * D, *cr = pc + at, *sr = ps + at;
      for (int64_t h = 0; h < H; ++h) {
        const float* in = row + h * D;
        const bool is_q = h < q_heads, is_k = !is_q && h < q_heads + kv_heads;
        at::Tensor& dst = is_q ? q : is_k ? k : v;
        const int64_t head = is_q ? h : is_k ? h - q_heads : h - q_heads - kv_heads;
        float* out = dst.data_ptr<float>() + ((b * dst.size(1) + head) * T + t) * D;
        if (!is_q && !is_k) {
          for (int64_t d = 0; d < D; ++d) out[d] = in[d];
          continue;
        }
        for (int64_t d = 0; d < D; ++d) {  // rotate_half(x) = cat(-x[half:], x[:half])
          const float rotated = d < half ? -in[d + half] : in[d - half];
          const float a = in[d] * cr[d], r = rotated * sr[d];
          out[d] = a + r;
        }
      }
    }
  }
  return {q, k, v};
}

}  // namespace specdec

TORCH_LIBRARY_FRAGMENT(specdec, m) {
  m.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor", &specdec::rms_norm);
  m.def("silu_mul(Tensor gate_up) -> Tensor", &specdec::silu_mul);
  m.def("rope_qkv(Tensor qkv, Tensor cos, Tensor sin, int q_heads, int kv_heads) -> (Tensor, Tensor, Tensor)", &specdec::rope_qkv);
}
