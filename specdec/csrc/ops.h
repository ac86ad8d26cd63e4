// The ops of specdec's extension that one C++ file calls from another (decoder.cpp runs a whole layer from them).
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
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

}  // namespace specdec
