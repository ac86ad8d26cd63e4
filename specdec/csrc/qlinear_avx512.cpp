// The quantized linear kernel on AVX-512 VNNI and on AMX (declared in qlinear.h; qlinear.cpp describes the layout and
// the bits every path computes, and dispatches).
#include "qlinear.h"

#ifdef SPECDEC_X86
#include <immintrin.h>

#include <cstring>

namespace specdec::kernel {
namespace {

// -- AVX-512 VNNI: 16 outputs per register, RB rows per pass ------------------------------------------------------

// The steps the AVX-512 and AMX blocks share, always inlined (one definition of what the bits are):
// tile t's 16 scales and 16 mins of group g, as float;
__attribute__((target("avx512f,f16c"), always_inline)) inline
void scales_avx512(const Weights& w, int64_t t, int64_t g, __m512& s, __m512& m) {
  const c10::Half* sc = w.scale(t, g);
  s = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc)));
  m = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(sc + TILE)));
}

// a group's float step for 16 outputs of one row, in the scalar code's order.
__attribute__((target("avx512f,fma"), always_inline)) inline
__m512 step_avx512(__m512 y, __m512i dot, __m512 s, __m512 m, __m512 x_scale, __m512 x_term) {
  y = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(s, x_scale), y);
  return _mm512_fmadd_ps(m, x_term, y);
}

// One group of one block (4 tiles, 64 outputs) by RB rows from row r: the group's integer dot products, then its
// float step into `part`. Each broadcast of 4 bytes of x feeds 4 products: a broadcast per product (or folded into
// vpdpbusd's memory operand) runs at a third of vpdpbusd's throughput (measured on Zen 5), which is what bounds a
// few-row call. The int4 low and high nibbles are multiplied in two sweeps (the second load hits L1), so the
// registers hold only the RB x 4 integer accumulators and 4 weights; the float partial sums live in `part` (L1: rows
// r.. of the block's outputs, 64 floats a row), updated once per group. `stream`: this is the group's
// first pass, the one that asks for the weights ahead.
template <int RB, int BITS>
__attribute__((target("avx512f,avx512bw,avx512vnni,f16c,fma"), always_inline)) inline
void group_avx512(const Weights& w, const Acts& a, int64_t t0, int64_t g, int64_t r, float* part, bool stream) {
  const __m512i low4 = _mm512_set1_epi8(0x0F);
  constexpr int PER_LOAD = BITS == 4 ? 8 : 4;
  constexpr int HALVES = BITS == 4 ? 2 : 1;
  const int64_t loads = w.G / PER_LOAD;
  const int32_t* xq[RB];  // each row's x from the group's first input, 4 bytes a word
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) xq[i] = reinterpret_cast<const int32_t*>(a.q + (r + i) * a.K + g * w.G);
  __m512i acc[RB][BLOCK];
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i)
#pragma GCC unroll 4
    for (int n = 0; n < BLOCK; ++n) acc[i][n] = _mm512_setzero_si512();
  const uint8_t* src = w.load(t0, g * loads);  // the block's 4 tiles: 256 consecutive bytes per load index
  const int64_t near = stream ? prefetch_ahead[2][0].load(std::memory_order_relaxed) : 0;
  const int64_t far = stream ? prefetch_ahead[2][1].load(std::memory_order_relaxed) : 0;
  for (int64_t o = 0; o < loads; ++o, src += BLOCK * 64) {
    prefetch(src, BLOCK, near, far);
#pragma GCC unroll 2
    for (int h = 0; h < HALVES; ++h) {
      __m512i wv[BLOCK];
#pragma GCC unroll 4
      for (int n = 0; n < BLOCK; ++n) {
        __m512i v = _mm512_loadu_si512(src + n * 64);
        wv[n] = BITS == 8 ? v : h == 0 ? _mm512_and_si512(v, low4) : _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);
      }
#pragma GCC unroll 8
      for (int i = 0; i < RB; ++i) {
        const __m512i xb = _mm512_set1_epi32(xq[i][o * (PER_LOAD / 4) + h]);  // x's 4-byte word for these codes
#pragma GCC unroll 4
        for (int n = 0; n < BLOCK; ++n) acc[i][n] = _mm512_dpbusd_epi32(acc[i][n], wv[n], xb);
      }
    }
  }
  // The group's float part, rows outer: each row's two scalars are broadcast once, the 4 tiles' scales and mins
  // converted once (part is float* like a.scale, so the compiler cannot hoist those loads past its stores itself).
  __m512 s[BLOCK], m[BLOCK];
#pragma GCC unroll 4
  for (int n = 0; n < BLOCK; ++n) scales_avx512(w, t0 + n, g, s[n], m[n]);
#pragma GCC unroll 8
  for (int i = 0; i < RB; ++i) {
    const int64_t j = (r + i) * a.groups + g;
    const __m512 xs = _mm512_set1_ps(a.scale[j]), xt = _mm512_set1_ps(a.term[j]);
    float* out = part + i * BLOCK * TILE;
#pragma GCC unroll 4
    for (int n = 0; n < BLOCK; ++n)
      _mm512_storeu_ps(out + n * TILE, step_avx512(_mm512_loadu_ps(out + n * TILE), acc[i][n], s[n], m[n], xs, xt));
  }
}

// One block by `rows` rows (at most AVX512_ROWS) from r0: group by group, the rows in passes of near-equal size (at
// most 4: 4 x 4 accumulators, 4 weights and a broadcast fill 21 of the 32 registers). Why the passes inside the group
// loop, not a pass over the whole block per 4 rows: a group's codes are 2-4 KB, so every pass after its first reads
// them from L1 while the weights keep streaming from memory; passes over the whole block read it back from L2 with the
// stream stopped, which made 5 rows cost 1.4x one row (committed int4 curve, Zen 4). The partial sums live in a
// contiguous block-local buffer, copied to y at the end: y's rows are N floats apart, and 16 rows of them at 6 KB
// strides fall into the same few L1 sets, which made 12-16 rows 1.2x slower than passes over the whole block. The
// bits are the same either way: a row's groups run in the same order.
template <int BITS>
__attribute__((target("avx512f,avx512bw,avx512vnni,f16c,fma")))
void rows_avx512(const Weights& w, const Acts& a, int64_t t0, int64_t r0, int64_t rows, float* y) {
  alignas(64) float part[AVX512_ROWS][BLOCK * TILE];
  std::memset(part, 0, rows * sizeof(part[0]));
  const int64_t passes = (rows + 3) / 4;
  for (int64_t g = 0; g < a.groups; ++g) {
    for (int64_t p = 0, i = 0; p < passes; ++p) {
      const int64_t n = (rows - i) / (passes - p);
      switch (n) {
        case 1: group_avx512<1, BITS>(w, a, t0, g, r0 + i, part[i], p == 0); break;
        case 2: group_avx512<2, BITS>(w, a, t0, g, r0 + i, part[i], p == 0); break;
        case 3: group_avx512<3, BITS>(w, a, t0, g, r0 + i, part[i], p == 0); break;
        default: group_avx512<4, BITS>(w, a, t0, g, r0 + i, part[i], p == 0); break;
      }
      i += n;
    }
  }
  for (int64_t i = 0; i < rows; ++i)
#pragma GCC unroll 4
    for (int n = 0; n < BLOCK; ++n) {
      __m512 v = _mm512_load_ps(part[i] + n * TILE);
      if (w.bias) v = _mm512_add_ps(v, _mm512_loadu_ps(w.bias + (t0 + n) * TILE));
      _mm512_storeu_ps(y + (r0 + i) * w.N + (t0 + n) * TILE, v);
    }
}

// -- AMX (Intel's tile unit, Sapphire Rapids on): one instruction multiplies up to 16 rows by 16 outputs x 64 inputs -
// The call's rows of x are tile A (signed bytes, rows x 64), a tile's codes tile B (unsigned bytes, 16 rows of 64:
// row kk holds the codes of inputs 4kk..4kk+3 for each of its 16 outputs, which is the layout above once the int4
// nibbles are split: a load index's low nibbles are one row, its high nibbles the next). So a group's exact int32
// dot products for every row of the call come from G / 64 tdpbsud per tile, where the AVX-512 path spends G / 4
// vpdpbusd per tile and row; then the same float part as block_avx512, in the same order, so the bits are those of
// every other path. Tile registers: 0-3 the block's 4 accumulators, 4 x, 5-6 the codes (two, so one unpacks while
// the other multiplies).
struct TileConfig {
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};


// Where tile t's codes for inputs k .. k + 63 are as tile B (16 rows, `stride` bytes apart): int8, in the stored
// layout itself (its load indices are 256 bytes apart); int4, unpacked into buf. (The tile intrinsics take their
// register numbers as literals, so the callers spell them out.)
template <int BITS>
__attribute__((target("avx512f,avx512bw"), always_inline)) inline
const uint8_t* amx_codes(const Weights& w, int64_t t, int64_t k, uint8_t* buf, int64_t& stride) {
  if (BITS == 8) {
    stride = BLOCK * 64;
    return w.load(t, k / 4);
  }
  const __m512i low4 = _mm512_set1_epi8(0x0F);
#pragma GCC unroll 8
  for (int o = 0; o < 8; ++o) {
    const __m512i v = _mm512_loadu_si512(w.load(t, k / 8 + o));
    _mm512_store_si512(buf + 128 * o, _mm512_and_si512(v, low4));
    _mm512_store_si512(buf + 128 * o + 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), low4));
  }
  stride = 64;
  return buf;
}

template <int BITS>
__attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,f16c,fma")))
void block_amx(const Weights& w, const Acts& a, int64_t t0, int64_t r0, int64_t rows, float* y) {
  alignas(64) uint8_t buf[2][16 * 64];
  alignas(64) int32_t dots[BLOCK][AMX_ROWS * TILE];
  for (int64_t r = r0; r < r0 + rows; ++r)
    std::memset(y + r * w.N + t0 * TILE, 0, BLOCK * TILE * sizeof(float));
  for (int64_t g = 0; g < a.groups; ++g) {
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    const int64_t near = prefetch_ahead[3][0].load(std::memory_order_relaxed);
    const int64_t far = prefetch_ahead[3][1].load(std::memory_order_relaxed);
    for (int64_t k = g * w.G; k < (g + 1) * w.G; k += 64) {  // the block's codes for k .. k + 63: 2 KB int4, 4 KB int8
      prefetch(w.load(t0, k / (BITS == 4 ? 8 : 4)), BITS == 4 ? 32 : 64, near, far);
      _tile_loadd(4, a.q + r0 * a.K + k, a.K);
      int64_t stride;
      _tile_loadd(5, amx_codes<BITS>(w, t0, k, buf[0], stride), stride);
      _tile_dpbsud(0, 4, 5);
      _tile_loadd(6, amx_codes<BITS>(w, t0 + 1, k, buf[1], stride), stride);
      _tile_dpbsud(1, 4, 6);
      _tile_loadd(5, amx_codes<BITS>(w, t0 + 2, k, buf[0], stride), stride);
      _tile_dpbsud(2, 4, 5);
      _tile_loadd(6, amx_codes<BITS>(w, t0 + 3, k, buf[1], stride), stride);
      _tile_dpbsud(3, 4, 6);
    }
    _tile_stored(0, dots[0], 64); _tile_stored(1, dots[1], 64);
    _tile_stored(2, dots[2], 64); _tile_stored(3, dots[3], 64);
    __m512 s[BLOCK], m[BLOCK];
    for (int n = 0; n < BLOCK; ++n) scales_avx512(w, t0 + n, g, s[n], m[n]);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = (r0 + r) * a.groups + g;
      const __m512 xs = _mm512_set1_ps(a.scale[i]), xt = _mm512_set1_ps(a.term[i]);
      float* out = y + (r0 + r) * w.N + t0 * TILE;
#pragma GCC unroll 4
      for (int n = 0; n < BLOCK; ++n)
        _mm512_storeu_ps(out + n * TILE, step_avx512(_mm512_loadu_ps(out + n * TILE),
                                                     _mm512_load_si512(dots[n] + r * TILE), s[n], m[n], xs, xt));
    }
  }
  if (w.bias)
    for (int64_t r = r0; r < r0 + rows; ++r)
      for (int n = 0; n < BLOCK; ++n) {
        float* out = y + r * w.N + (t0 + n) * TILE;
        _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), _mm512_loadu_ps(w.bias + (t0 + n) * TILE)));
      }
}

}  // namespace

RowsFn avx512_for(int bits) { return bits == 4 ? rows_avx512<4> : rows_avx512<8>; }

// Each thread's tile registers shaped for `rows` rows of x (a per-thread setting, loaded before the first tile op).
__attribute__((target("amx-tile")))
void amx_configure(int64_t rows) {
  TileConfig c;
  for (int t = 0; t < 5; ++t) { c.rows[t] = static_cast<uint8_t>(rows); c.colsb[t] = 64; }
  for (int t = 5; t < 7; ++t) { c.rows[t] = 16; c.colsb[t] = 64; }
  asm volatile("" : : "r"(&c) : "memory");  // GCC 12's ldtilecfg asm claims to read 16 bytes of c and drops the rest
  _tile_loadconfig(&c);
}

__attribute__((target("amx-tile"))) void amx_release() { _tile_release(); }

RowsFn amx_for(int bits) { return bits == 4 ? block_amx<4> : block_amx<8>; }

// G a multiple of 16. _mm512_max_ps(v, m) returns m where v is NaN, as std::fmax(m, v) does.
__attribute__((target("avx512f,avx512bw")))
void quantize_group_avx512(const float* src, int64_t G, int8_t* dst, float* scale, float* term) {
  __m512 top = _mm512_setzero_ps();
  for (int64_t k = 0; k < G; k += 16) top = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(src + k)), top);
  const float amax = _mm512_reduce_max_ps(top);
  const float s = amax > 0.f ? amax / 127.f : 1.f;
  const __m512 sv = _mm512_set1_ps(s), hi = _mm512_set1_ps(127.f), lo = _mm512_set1_ps(-127.f);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t k = 0; k < G; k += 16) {
    __m512 v = _mm512_roundscale_ps(_mm512_div_ps(_mm512_loadu_ps(src + k), sv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m512i q = _mm512_cvtps_epi32(_mm512_max_ps(_mm512_min_ps(v, hi), lo));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + k), _mm512_cvtsepi32_epi8(q));
    sum = _mm512_add_epi32(sum, q);
  }
  *scale = s;
  *term = s * static_cast<float>(_mm512_reduce_add_epi32(sum));
}

}  // namespace specdec::kernel
#endif
