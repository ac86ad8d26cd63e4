// A whole Llama-family decoder layer on specdec's kernel as one call, for forwards over a few tokens (decode steps,
// verifies, short prefills) that write specdec's KV arena. Registered as torch.ops.specdec.decoder_layer beside the
// kernel; specdec/lean.py calls it.
//
// Why: at 4 bits a step's products are fast enough that dispatching the ~15 ops of a layer from Python shows (tens of
// microseconds each, 24-28 layers a step, the draft's step most of all), and a verify's row-invariant attention
// took one SDPA call per row and layer (~30-70 us each, most of it the call). Here the ops run back to back from C++
// and attention is a short loop of its own (attend_row).
//
// Row-invariant like every op it calls: the products, norms, rotary embedding and SiLU are per row, and a query row at
// position p attends over exactly the arena slots 0..p (those a one-token forward at p sees) by a fixed sequence of
// operations, so a verify over T tokens gives each token its one-token output, bit for bit.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <vector>

#include "ops.h"

namespace {

// weights: the two norms' weights, then per linear (q/k/v fused, o, gate/up fused, down) its codes, scales and bias
// (an empty tensor for none); ints: the q and kv head counts, then per linear its outputs, group size and bits.
constexpr int64_t LINEARS = 4;

at::Tensor apply(at::TensorList w, at::IntArrayRef ints, int64_t i, const at::Tensor& x) {
  const at::Tensor& bias = w[2 + 3 * i + 2];
  return specdec::qlinear(x, w[2 + 3 * i], w[2 + 3 * i + 1],
                          bias.numel() ? std::optional<at::Tensor>(bias) : std::nullopt, ints[2 + 3 * i],
                          ints[2 + 3 * i + 1], ints[2 + 3 * i + 2], -1);
}

// positions [B, T] (rows = B * T) as int64, each a slot of the arena (0 .. capacity - 1): checked once, before any
// work, for every op that writes or reads the arena at them.
at::Tensor checked_positions(const char* op, const at::Tensor& positions, int64_t rows, int64_t capacity) {
  const at::Tensor pos = positions.to(at::kLong).contiguous();
  TORCH_CHECK(pos.numel() == rows, op, ": positions must be [B, T]");
  const int64_t* p = pos.data_ptr<int64_t>();
  for (int64_t i = 0; i < rows; ++i)
    TORCH_CHECK(p[i] >= 0 && p[i] < capacity, op, ": position ", p[i], " outside the arena");
  return pos;
}

// k, v [B, Hkv, T, D] into keys, values [B, Hkv, capacity, D] at slot positions[b, t] of row b.
void write_cache(const at::Tensor& k, const at::Tensor& v, at::Tensor& keys, at::Tensor& values,
                 const int64_t* positions) {
  const int64_t B = k.size(0), H = k.size(1), T = k.size(2), D = k.size(3), capacity = keys.size(2);
  const float *pk = k.data_ptr<float>(), *pv = v.data_ptr<float>();
  float *dk = keys.data_ptr<float>(), *dv = values.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t slot = positions[b * T + t];  // inside the arena: checked_positions
      for (int64_t h = 0; h < H; ++h) {
        const int64_t src = ((b * H + h) * T + t) * D, dst = ((b * H + h) * capacity + slot) * D;
        std::memcpy(dk + dst, pk + src, D * sizeof(float));
        std::memcpy(dv + dst, pv + src, D * sizeof(float));
      }
    }
}

// One query row of one head over keys[0..n) [n, D] (D a multiple of 16): out = softmax(q . k * scale) v.
// Each dot product keeps 16 partial sums (lane l takes d = l, l + 16, ...) added in a fixed order at the end, and
// everything else runs in one fixed order too, so a row's result depends only on its query and the keys it sees. Built
// for AVX-512, AVX2 and baseline x86 (target_clones): the lanes are independent IEEE products and sums, unfused (the
// extension builds with -ffp-contract=off), so every build computes the same bits.
__attribute__((target_clones("avx512f", "avx2", "default")))
void attend_row(const float* q, const float* keys, const float* values, int64_t n, int64_t D, float scale,
                float* scores, float* out) {
  constexpr int L = 16;
  float top = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float* k = keys + j * D;
    float lanes[L] = {0.f};
    for (int64_t d = 0; d < D; d += L)
      for (int l = 0; l < L; ++l) lanes[l] += q[d + l] * k[d + l];
    float s = 0.f;
    for (int l = 0; l < L; ++l) s += lanes[l];
    scores[j] = s * scale;
    top = std::fmax(top, scores[j]);
  }
  for (int64_t j = 0; j < n; ++j) scores[j] = specdec::exp_approx(scores[j] - top);  // vectorised (ops.h)
  float total = 0.f;
  for (int64_t j = 0; j < n; ++j) total += scores[j];  // in order: a sum the compiler may not reorder
  for (int64_t d = 0; d < D; ++d) out[d] = 0.f;
  for (int64_t j = 0; j < n; ++j) {
    const float* v = values + j * D;
    const float p = scores[j];
    for (int64_t d = 0; d < D; ++d) out[d] += p * v[d];
  }
  const float inv = 1.f / total;
  for (int64_t d = 0; d < D; ++d) out[d] *= inv;
}

// q [B, Hq, T, D] -> [B, T, Hq * D]: the query row at position p over slots 0..p of its kv head (grouped-query: q head
// h reads kv head h / (Hq / Hkv)).
at::Tensor attend(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const int64_t* positions,
                  double scale) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3), Hkv = keys.size(1), capacity = keys.size(2);
  TORCH_CHECK(D % 16 == 0 && H % Hkv == 0, "decoder_layer: head size must be a multiple of 16, heads of kv heads");
  at::Tensor out = at::empty({B, T, H, D}, q.options());
  const float *pq = q.data_ptr<float>(), *pk = keys.data_ptr<float>(), *pv = values.data_ptr<float>();
  float* po = out.data_ptr<float>();
  at::parallel_for(0, B * T * H, 4, [&](int64_t begin, int64_t end) {
    std::vector<float> scores(capacity);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / (T * H), t = i / H % T, h = i % H;
      const int64_t kv = (b * Hkv + h / (H / Hkv)) * capacity * D;
      attend_row(pq + ((b * H + h) * T + t) * D, pk + kv, pv + kv, positions[b * T + t] + 1, D,
                 static_cast<float>(scale), scores.data(), po + ((b * T + t) * H + h) * D);
    }
  });
  return out.view({B, T, H * D});
}

// attend as an op of its own, for the test that pins its order of operations (tests/test_decoder_op.py): q [B, Hq,
// T, D], keys and values [B, Hkv, capacity, D], positions [B, T] -> [B, T, Hq * D].
at::Tensor attend_op(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values, const at::Tensor& positions,
                     double scale) {
  for (const at::Tensor* t : {&q, &keys, &values})
    TORCH_CHECK(t->dim() == 4 && t->scalar_type() == at::kFloat && t->device().is_cpu() && t->is_contiguous(),
                "attend: q, keys and values must be contiguous float32 CPU tensors [B, heads, rows, D]");
  const at::Tensor pos = checked_positions("attend", positions, q.size(0) * q.size(2), keys.size(2));
  return attend(q, keys, values, pos.data_ptr<int64_t>(), scale);
}

at::Tensor decoder_layer(const at::Tensor& hidden, at::TensorList w, at::IntArrayRef ints, at::ArrayRef<double> floats,
                         const at::Tensor& cos, const at::Tensor& sin, at::Tensor keys, at::Tensor values,
                         const at::Tensor& positions) {
  TORCH_CHECK(w.size() == 2 + 3 * LINEARS && ints.size() == 2 + 3 * LINEARS && floats.size() == 3,
              "decoder_layer: expects 2 norms and 4 linears (q/k/v, o, gate/up, down), and eps, eps, scale");
  TORCH_CHECK(hidden.dim() == 3 && hidden.scalar_type() == at::kFloat && hidden.device().is_cpu(),
              "decoder_layer: hidden must be a float32 CPU tensor [B, T, C]");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous() && keys.scalar_type() == at::kFloat &&
              keys.device().is_cpu() && values.device().is_cpu() && positions.device().is_cpu(),
              "decoder_layer: the arena's keys and values must be contiguous float32 CPU [B, Hkv, capacity, D]");
  const at::Tensor pos = checked_positions("decoder_layer", positions, hidden.size(0) * hidden.size(1), keys.size(2));
  auto [q, k, v] = specdec::rope_qkv(apply(w, ints, 0, specdec::rms_norm(hidden, w[0], floats[0])), cos, sin,
                                     ints[0], ints[1]);
  write_cache(k, v, keys, values, pos.data_ptr<int64_t>());
  const at::Tensor h = hidden + apply(w, ints, 1, attend(q, keys, values, pos.data_ptr<int64_t>(), floats[2]));
  return h + apply(w, ints, 3, specdec::silu_mul(apply(w, ints, 2, specdec::rms_norm(h, w[1], floats[1]))));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(specdec, m) {
  m.def("decoder_layer(Tensor hidden, Tensor[] weights, int[] ints, float[] floats, Tensor cos, Tensor sin, "
        "Tensor(a!) keys, Tensor(b!) values, Tensor positions) -> Tensor", &decoder_layer);
  m.def("attend(Tensor q, Tensor keys, Tensor values, Tensor positions, float scale) -> Tensor", &attend_op);
}
