// The ops of specdec's extension that one C++ file calls from another (decoder.cpp runs a whole layer from them).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>

namespace specdec {

at::Tensor qlinear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                   const std::optional<at::Tensor>& bias, int64_t out_features, int64_t group_size, int64_t bits,
                   int64_t path);
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor silu_mul(const at::Tensor& gate_up);
std::tuple<at::Tensor, at::Tensor, at::Tensor> rope_qkv(const at::Tensor& qkv, const at::Tensor& cos,
                                                        const at::Tensor& sin, int64_t q_heads, int64_t kv_heads);

// e^x within 2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, a degree-6 polynomial in r, times 2^n), for x in
// [-87, 88] (clamped there: e^-87 is 1.6e-38, the smallest normal float's order; e^88 is 1.7e38). Plain float
// arithmetic with no library call and no branch, so a loop over it vectorises; the same bits in every build.
inline float exp_approx(float x) {
  x = x < -87.f ? -87.f : (x > 88.f ? 88.f : x);
  const float shifter = 12582912.f;  // 1.5 * 2^23: adding it rounds |v| < 2^22 to an integer, to nearest even
  const float n = (x * 1.44269504088896341f + shifter) - shifter;
  float r = x - n * 0.693359375f;  // ln2 in two parts: n * 0.693359375 is exact for |n| <= 127
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n in -126..127
  float scale;
  std::memcpy(&scale, &bits, 4);
  return p * scale;
}

}  // namespace specdec

