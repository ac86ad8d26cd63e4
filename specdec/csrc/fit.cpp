// Packing int4 weights for specdec's kernel: each group's fitted scale and min. Registered as
// torch.ops.specdec.fit_int4 beside the kernel; specdec/qkernel.py calls it when it packs a weight.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>

namespace {

// The grid w ~ q * scale + min, q in 0..15, that spreads a group's min..max over the 16 codes wastes codes on rare
// outliers. For each group this tries that grid and `steps` others (the codes rounded at 14..16 codes per range, then
// scale and min refitted to them by least squares), and keeps the one with the least squared error, every candidate
// judged after rounding its scale and min to float16 (what the kernel reads). Measured on Qwen2.5-Coder-1.5B at
// groups of 64, 16 prompts teacher-forced: KL to the float32 model's next-token distribution 0.043 -> 0.031, top-1
// agreement 92.1% -> 92.8% (data/cpu/int4_quality). Deterministic: each group alone, in a fixed order.

float half_round(float v) { return static_cast<float>(c10::Half(v)); }

// std::fmin(std::fmax(std::nearbyint(v), 0), 15) without its three library calls (the build has no -ffast-math, so
// GCC calls libm for each: 75% of a 0.5B draft's packing time on a Zen 4): adding and subtracting 1.5 x 2^23 rounds
// half to even as nearbyint does for |v| < 2^22, and larger values clamp to 0 or 15 either way (NaN to 0, as fmax).
float code4(float v) {
  constexpr float shifter = 12582912.f;
  const float q = (v + shifter) - shifter;
  return q > 15.f ? 15.f : (q > 0.f ? q : 0.f);
}

float grid_error(const float* x, int64_t G, float s, float m) {
  float err = 0.f;
  for (int64_t k = 0; k < G; ++k) {
    float q = code4((x[k] - m) / s);
    float d = q * s + m - x[k];
    err += d * d;
  }
  return err;
}

at::Tensor fit_int4(const at::Tensor& groups, int64_t steps) {
  TORCH_CHECK(groups.dim() == 2 && groups.scalar_type() == at::kFloat && groups.is_contiguous() &&
              groups.device().is_cpu(), "fit_int4: groups must be a contiguous float32 CPU tensor [n, G]");
  TORCH_CHECK(steps == 0 || steps >= 2, "fit_int4: steps must be 0 (the min..max grid only) or at least 2");
  const int64_t n = groups.size(0), G = groups.size(1);
  auto out = at::empty({n, 2}, groups.options());
  const float* src = groups.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float* x = src + i * G;
      float lo = x[0], hi = x[0], sx = 0.f;
      for (int64_t k = 0; k < G; ++k) { lo = std::fmin(lo, x[k]); hi = std::fmax(hi, x[k]); sx += x[k]; }
      const float range = hi - lo;
      float best_s = half_round(std::fmax(range / 15.f, 1e-6f)), best_m = half_round(lo);
      float best = grid_error(x, G, best_s, best_m);
      for (int64_t j = 0; j < steps && range > 0.f; ++j) {
        const float iscale = (14.f + 2.f * static_cast<float>(j) / static_cast<float>(steps - 1)) / range;
        float sl = 0.f, sll = 0.f, slx = 0.f;
        for (int64_t k = 0; k < G; ++k) {
          float q = code4((x[k] - lo) * iscale);
          sl += q; sll += q * q; slx += q * x[k];
        }
        const float den = static_cast<float>(G) * sll - sl * sl;
        if (!(den > 0.f)) continue;
        const float s = half_round(std::fmax((static_cast<float>(G) * slx - sl * sx) / den, 1e-6f));
        const float m = half_round((sx - s * sl) / static_cast<float>(G));
        const float err = grid_error(x, G, s, m);
        if (err < best) { best = err; best_s = s; best_m = m; }
      }
      dst[2 * i] = best_s;
      dst[2 * i + 1] = best_m;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdec, m) { m.def("fit_int4(Tensor groups, int steps) -> Tensor", &fit_int4); }
