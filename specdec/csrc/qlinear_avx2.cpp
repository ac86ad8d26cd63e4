// The quantized linear kernel on AVX2 (declared in qlinear.h; qlinear.cpp describes the layout and the bits every path
// computes, and dispatches).
#include "qlinear.h"

#ifdef SPECDEC_X86
#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace specdec::kernel {
namespace {

// -- AVX2: a block at a time, group by group, its weights read in order ---------------------------------------------
// Outputs in halves of 8 (one 256-bit register); vpmaddubsw (u8 x s8 -> s16 pairs), then vpmaddwd by ones to int32.
// The int16 pairs cannot saturate for int4 (2 * 15 * 127); int8 codes up to 255 could (2 * 255 * 127), so they
// are split: code * x = (code - 128) * x + 128 * x, the first by the sign trick (|x| unsigned, x's sign moved onto
// the signed code), both within 2 * 128 * 127.
//
// The structure: a block's 4 tiles are interleaved per load index, so its weights are one in-order stream of 256 bytes
// per load index; 16 registers cannot hold a block's 8 accumulators for more than one row, so the code goes group by
// group, per group in passes of 2 rows x 4 halves (then an odd row x 8), the first pass bringing the group's weights
// into L1 (asking for them `near` / `far` bytes ahead, qlinear.h says why) and the rest finding them there, the float
// partial sums in y (L1), in the scalar code's order. Why not a tile at a time with up to 8 rows' sums in registers
// (the structure before): it reads every 4th cache line of the stream. On an AVX2-only Zen 3 (family 25 model 1),
// over 257 MB of Qwen2.5-1.5B's layer shapes, paired: this structure without prefetch took 0.43x the tile
// structure's time at 1 row, 0.55x at 2, 0.84x at 4, 0.91x at 8; asking 1 KiB ahead into L1 and 8 KiB into L2 then
// took 0.83x no prefetch at 1 row and 0.64-0.74x at 2-8; the whole (with the int16 sums below), in two runs against
// the kernel before (benchmarks/kernel_ab.py, data/cpu/kernel_ab/): 0.87-0.95x its time at 1 row, 0.82-0.89x at 2,
// 0.88-0.89x at 3, 0.66-0.69x at 4, 0.91-0.97x at 8.

// 32 bytes of codes unpacked for the multiply: int4 -> low and high nibbles; int8 -> code - 128 as int8 (b unused).
template <int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
void unpack_avx2(__m256i v, __m256i& a, __m256i& b) {
  if (BITS == 4) {
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    a = _mm256_and_si256(v, low4);
    b = _mm256_and_si256(_mm256_srli_epi16(v, 4), low4);
  } else {
    a = b = _mm256_xor_si256(v, _mm256_set1_epi8(static_cast<char>(0x80)));
  }
}

// Those codes times one row's activations (`x`: its 4-byte words for them), added to a running sum per output:
// int4, int16 pair sums (widen_avx2 makes them int32 every few loads); int8, the exact int32 dot.
template <int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
__m256i add_avx2(__m256i sum, __m256i a, __m256i b, const int32_t* x) {
  if (BITS == 4)
    return _mm256_add_epi16(sum, _mm256_add_epi16(_mm256_maddubs_epi16(a, _mm256_set1_epi32(x[0])),
                                                  _mm256_maddubs_epi16(b, _mm256_set1_epi32(x[1]))));
  const __m256i ones = _mm256_set1_epi16(1), b128 = _mm256_set1_epi8(static_cast<char>(0x80));
  const __m256i xs = _mm256_set1_epi32(x[0]);
  const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xs), _mm256_sign_epi8(a, xs));
  const __m256i p128 = _mm256_maddubs_epi16(b128, xs);  // 128 * x, pairwise
  return _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_madd_epi16(p, ones), _mm256_madd_epi16(p128, ones)));
}

template <int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
__m256i widen_avx2(__m256i sum) {
  return BITS == 8 ? sum : _mm256_madd_epi16(sum, _mm256_set1_epi16(1));
}

// 8 outputs' scales and mins of a group (sc: the tile's scales of that group, plus 8 for its second half).
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
void scales_avx2(const c10::Half* sc, __m256& s, __m256& m) {
  s = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc)));
  m = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(sc + TILE)));
}

// A group's float step for 8 outputs of one row, in the scalar code's order.
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
__m256 step_avx2(__m256 y, __m256i dot, __m256 s, __m256 m, float x_scale, float x_term) {
  y = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(s, _mm256_set1_ps(x_scale)), y);
  return _mm256_fmadd_ps(m, _mm256_set1_ps(x_term), y);
}

// One group g of one block: rows r0..r0+RB, halves h0..h0+HB (8 outputs each).
template <int RB, int HB, int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
void group_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t g, int64_t r0, int h0, float* y, int64_t near,
                int64_t far) {
  constexpr int per_load = BITS == 4 ? 8 : 4;
  // int4: the int16 pair sums of up to 4 loads added before widening (|sum| <= 4 * 2 * 2 * 15 * 127 < 2^15, exact):
  // one vpmaddwd per 4 loads, not per load (2 multiplies per load and row, not 3)
  constexpr int64_t chunk = BITS == 4 ? 4 : 1;
  const int64_t loads = w.G / per_load;
  __m256i acc[RB][HB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) acc[r][h] = _mm256_setzero_si256();
  const uint8_t* src = w.load(t0, g * loads) + h0 * 32;  // the block's 256 bytes per load index, half h at 32 * h
  const int32_t* x = reinterpret_cast<const int32_t*>(a.q + r0 * a.K) + g * w.G / 4;
  for (int64_t o0 = 0; o0 < loads; o0 += chunk) {
    __m256i sum[RB][HB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
      for (int h = 0; h < HB; ++h) sum[r][h] = _mm256_setzero_si256();
    for (int64_t o = o0; o < o0 + chunk && o < loads; ++o) {
      const int64_t q = o * per_load / 4;  // x's 4-byte word for these codes, within the group
      prefetch(src + o * 256, HB / 2, near, far);  // the lines this sweep reads, further on
#pragma GCC unroll 8
      for (int h = 0; h < HB; ++h) {
        __m256i ca, cb;
        unpack_avx2<BITS>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + o * 256 + h * 32)), ca, cb);
#pragma GCC unroll 8
        for (int r = 0; r < RB; ++r) sum[r][h] = add_avx2<BITS>(sum[r][h], ca, cb, x + r * a.K / 4 + q);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
      for (int h = 0; h < HB; ++h) acc[r][h] = _mm256_add_epi32(acc[r][h], widen_avx2<BITS>(sum[r][h]));
  }
#pragma GCC unroll 8
  for (int h = 0; h < HB; ++h) {
    const int hh = h0 + h;
    __m256 s, m;  // once for the RB rows
    scales_avx2(w.scale(t0 + hh / 2, g) + (hh % 2) * 8, s, m);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const int64_t i = (r0 + r) * a.groups + g;
      float* out = y + (r0 + r) * w.N + t0 * TILE + hh * 8;
      _mm256_storeu_ps(out, step_avx2(_mm256_loadu_ps(out), acc[r][h], s, m, a.scale[i], a.term[i]));
    }
  }
}

// One group of one block for rows r..r+RB, in sweeps of 8 / RB halves.
template <int RB, int BITS>
__attribute__((target("avx2,fma,f16c")))
void pass_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t g, int64_t r, float* y, int64_t near, int64_t far) {
  for (int h0 = 0; h0 < 8; h0 += 8 / RB) group_avx2<RB, 8 / RB, BITS>(w, a, t0, g, r, h0, y, near, far);
}

// A whole block for rows r0..r0+rows: zeroed, every group in order, then the bias.
template <int BITS>
__attribute__((target("avx2,fma,f16c")))
void block_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t r0, int64_t rows, float* y) {
  for (int64_t r = r0; r < r0 + rows; ++r)
    std::memset(y + r * w.N + t0 * TILE, 0, BLOCK * TILE * sizeof(float));
  const int64_t near = prefetch_ahead[1][0].load(std::memory_order_relaxed);
  const int64_t far = prefetch_ahead[1][1].load(std::memory_order_relaxed);
  for (int64_t g = 0; g < a.groups; ++g) {
    int64_t r = r0, n = near, f = far;  // only a group's first pass prefetches: the others find its weights in L1
    for (; r + 2 <= r0 + rows; r += 2, n = f = 0) pass_avx2<2, BITS>(w, a, t0, g, r, y, n, f);
    if (rows % 2) pass_avx2<1, BITS>(w, a, t0, g, r, y, n, f);
  }
  if (w.bias)
    for (int64_t r = r0; r < r0 + rows; ++r)
      for (int h = 0; h < 8; ++h) {
        float* out = y + r * w.N + t0 * TILE + h * 8;
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_loadu_ps(w.bias + t0 * TILE + h * 8)));
      }
}

}  // namespace

RowsFn avx2_for(int bits) { return bits == 4 ? block_avx2<4> : block_avx2<8>; }

// G a multiple of 8.
__attribute__((target("avx2")))
void quantize_group_avx2(const float* src, int64_t G, int8_t* dst, float* scale, float* term) {
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256 top = _mm256_setzero_ps();
  for (int64_t k = 0; k < G; k += 8) top = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(src + k)), top);
  float lanes[8];
  _mm256_storeu_ps(lanes, top);
  float amax = 0.f;
  for (float l : lanes) amax = std::fmax(amax, l);
  const float s = amax > 0.f ? amax / 127.f : 1.f;
  const __m256 sv = _mm256_set1_ps(s), hi = _mm256_set1_ps(127.f), lo = _mm256_set1_ps(-127.f);
  __m256i sum = _mm256_setzero_si256();
  for (int64_t k = 0; k < G; k += 8) {
    __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(src + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i q = _mm256_cvtps_epi32(_mm256_max_ps(_mm256_min_ps(v, hi), lo));
    const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(q, q), _mm256_setzero_si256());  // per 128-bit lane
    const int32_t a = _mm_cvtsi128_si32(_mm256_castsi256_si128(bytes)), b = _mm256_extract_epi32(bytes, 4);
    std::memcpy(dst + k, &a, 4);
    std::memcpy(dst + k + 4, &b, 4);
    sum = _mm256_add_epi32(sum, q);
  }
  int32_t parts[8];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(parts), sum);
  int32_t total = 0;
  for (int32_t part : parts) total += part;
  *scale = s;
  *term = s * static_cast<float>(total);
}

}  // namespace specdec::kernel
#endif
