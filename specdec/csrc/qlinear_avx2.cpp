// The quantized linear kernel on AVX2 (declared in qlinear.h; qlinear.cpp describes the layout and the bits every path
// computes, and dispatches).
#include "qlinear.h"

#ifdef SPECDEC_X86
#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace specdec::kernel {
namespace {

// -- AVX2: the same tile as two halves of 8 outputs; vpmaddubsw (u8 x s8 -> s16 pairs) then vpmaddwd by ones ------
// The int16 pairs cannot saturate for int4 (2 * 15 * 127); int8 codes up to 255 could (2 * 255 * 127), so they
// are split: code * x = (code - 128) * x + 128 * x, the first by the sign trick (|x| unsigned, x's sign moved onto
// the signed code), both within 2 * 128 * 127.

// The steps both AVX2 structures below share, always inlined (one definition of what the bits are):
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

// Those codes times one row's activations (`x`: its 4-byte words for them), summed per output: 8 exact int32.
template <int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
__m256i dot_avx2(__m256i a, __m256i b, const int32_t* x) {
  const __m256i ones = _mm256_set1_epi16(1);
  if (BITS == 4)
    return _mm256_madd_epi16(_mm256_add_epi16(_mm256_maddubs_epi16(a, _mm256_set1_epi32(x[0])),
                                              _mm256_maddubs_epi16(b, _mm256_set1_epi32(x[1]))), ones);
  const __m256i b128 = _mm256_set1_epi8(static_cast<char>(0x80)), xs = _mm256_set1_epi32(x[0]);
  const __m256i p = _mm256_maddubs_epi16(_mm256_abs_epi8(xs), _mm256_sign_epi8(a, xs));
  const __m256i p128 = _mm256_maddubs_epi16(b128, xs);  // 128 * x, pairwise
  return _mm256_add_epi32(_mm256_madd_epi16(p, ones), _mm256_madd_epi16(p128, ones));
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

template <int RB, int BITS>
__attribute__((target("avx2,fma,f16c")))
void tile_avx2(const Weights& w, const Acts& a, int64_t t, int64_t r0, float* y) {
  constexpr int per_load = BITS == 4 ? 8 : 4;
  const int64_t loads = w.G / per_load;
  for (int half = 0; half < 2; ++half) {
    __m256 facc[RB];
    for (int r = 0; r < RB; ++r) facc[r] = _mm256_setzero_ps();
    for (int64_t g = 0; g < a.groups; ++g) {
      __m256i acc[RB];
      for (int r = 0; r < RB; ++r) acc[r] = _mm256_setzero_si256();
      for (int64_t o = 0; o < loads; ++o) {
        __m256i ca, cb;
        unpack_avx2<BITS>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.load(t, g * loads + o) + half * 32)),
                          ca, cb);
        const int64_t q = (g * w.G + o * per_load) / 4;  // x's 4-byte word for these codes
        for (int r = 0; r < RB; ++r) {
          const int32_t* x = reinterpret_cast<const int32_t*>(a.q + (r0 + r) * a.K);
          acc[r] = _mm256_add_epi32(acc[r], dot_avx2<BITS>(ca, cb, x + q));
        }
      }
      __m256 s, m;
      scales_avx2(w.scale(t, g) + half * 8, s, m);
      for (int r = 0; r < RB; ++r) {
        const int64_t i = (r0 + r) * a.groups + g;
        facc[r] = step_avx2(facc[r], acc[r], s, m, a.scale[i], a.term[i]);
      }
    }
    for (int r = 0; r < RB; ++r) {
      __m256 out = w.bias ? _mm256_add_ps(facc[r], _mm256_loadu_ps(w.bias + t * TILE + half * 8)) : facc[r];
      _mm256_storeu_ps(y + (r0 + r) * w.N + t * TILE + half * 8, out);
    }
  }
}

// -- AVX2 for 1..3 rows: a block at a time, its weights read in order -------------------------------------------
// The tile path above takes every 4th cache line of a block's stream (its 4 tiles are interleaved per load index),
// which ran a one-row call at a third of the bandwidth. This path sweeps a block's 256 bytes per load index in
// order. 16 registers cannot hold a block's 8 accumulators for more than one row, so it goes group by group: per
// group, passes of 2 rows x 4 halves or 1 row x 8 (the first brings the group's weights into L1, the rest find them
// there), the float partial sums in y (L1), in the scalar code's order. Whole int4 forwards of Qwen2.5-Coder-1.5B on a
// Zen 1 (AVX2 only), paired against the tile path alone: 0.56-0.64x its time at 1 token, 0.69-0.74x at 2, 0.81-0.85x
// at 3. From 4 rows the tile path is kept: this structure, run in passes of 4 rows there, measured slower (it
// unpacks the weights once per pass and updates the float sums in memory; the tile path keeps up to 8 rows' sums in
// registers and unpacks once for all of them).

// One group g of one block: rows r0..r0+RB, halves h0..h0+HB (8 outputs each).
template <int RB, int HB, int BITS>
__attribute__((target("avx2,fma,f16c"), always_inline)) inline
void group_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t g, int64_t r0, int h0, float* y) {
  constexpr int per_load = BITS == 4 ? 8 : 4;
  const int64_t loads = w.G / per_load;
  __m256i acc[RB][HB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) acc[r][h] = _mm256_setzero_si256();
  const uint8_t* src = w.load(t0, g * loads) + h0 * 32;  // the block's 256 bytes per load index, half h at 32 * h
  const int32_t* x = reinterpret_cast<const int32_t*>(a.q + r0 * a.K) + g * w.G / 4;
  for (int64_t o = 0; o < loads; ++o) {
    const int64_t q = o * per_load / 4;  // x's 4-byte word for these codes, within the group
#pragma GCC unroll 8
    for (int h = 0; h < HB; ++h) {
      __m256i ca, cb;
      unpack_avx2<BITS>(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + o * 256 + h * 32)), ca, cb);
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) acc[r][h] = _mm256_add_epi32(acc[r][h], dot_avx2<BITS>(ca, cb, x + r * a.K / 4 + q));
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < HB; ++h) {
    const int hh = h0 + h;
    __m256 s, m;
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
void pass_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t g, int64_t r, float* y) {
  for (int h0 = 0; h0 < 8; h0 += 8 / RB) group_avx2<RB, 8 / RB, BITS>(w, a, t0, g, r, h0, y);
}

// A whole block for rows r0..r0+rows (1..3): zeroed, every group in order, then the bias.
template <int BITS>
__attribute__((target("avx2,fma,f16c")))
void block_avx2(const Weights& w, const Acts& a, int64_t t0, int64_t r0, int64_t rows, float* y) {
  for (int64_t r = r0; r < r0 + rows; ++r)
    std::memset(y + r * w.N + t0 * TILE, 0, BLOCK * TILE * sizeof(float));
  for (int64_t g = 0; g < a.groups; ++g) {
    if (rows >= 2) pass_avx2<2, BITS>(w, a, t0, g, r0, y);  // 2 rows x 4 halves, then the odd row x 8 halves
    if (rows % 2) pass_avx2<1, BITS>(w, a, t0, g, r0 + rows - 1, y);
  }
  if (w.bias)
    for (int64_t r = r0; r < r0 + rows; ++r)
      for (int h = 0; h < 8; ++h) {
        float* out = y + r * w.N + t0 * TILE + h * 8;
        _mm256_storeu_ps(out, _mm256_add_ps(_mm256_loadu_ps(out), _mm256_loadu_ps(w.bias + t0 * TILE + h * 8)));
      }
}

}  // namespace

BlockFn avx2_for(int bits, int rows) {
  switch (rows) {
    case 1: return bits == 4 ? tile_avx2<1, 4> : tile_avx2<1, 8>;
    case 2: return bits == 4 ? tile_avx2<2, 4> : tile_avx2<2, 8>;
    case 3: return bits == 4 ? tile_avx2<3, 4> : tile_avx2<3, 8>;
    case 4: return bits == 4 ? tile_avx2<4, 4> : tile_avx2<4, 8>;
    case 5: return bits == 4 ? tile_avx2<5, 4> : tile_avx2<5, 8>;
    case 6: return bits == 4 ? tile_avx2<6, 4> : tile_avx2<6, 8>;
    case 7: return bits == 4 ? tile_avx2<7, 4> : tile_avx2<7, 8>;
    default: return bits == 4 ? tile_avx2<8, 4> : tile_avx2<8, 8>;
  }
}

RowsFn avx2_rows_for(int bits) { return bits == 4 ? block_avx2<4> : block_avx2<8>; }

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
