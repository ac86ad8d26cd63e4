// The quantized linear kernel's parts shared between its files: the weight layout (described in qlinear.cpp), one
// call's activations, the prefetch distances, and the x86 code paths (qlinear_avx512.cpp: AVX-512 VNNI and AMX;
// qlinear_avx2.cpp: AVX2), each a block of the layout by some rows of x, which qlinear.cpp dispatches.
#pragma once
#include <c10/util/Half.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__) || defined(_M_X64)
#define SPECDEC_X86 1
#endif

namespace specdec::kernel {

constexpr int TILE = 16;    // outputs per tile: one 512-bit register of int32 / float32

struct Acts {               // one call's activations, quantized per row and group
  const int8_t* q;          // [T, K]
  const float* scale;       // [T, K/G]
  const float* term;        // [T, K/G]
  int64_t K, groups;
};

constexpr int BLOCK = 4;    // tiles per block of the layout

struct Weights {
  const uint8_t* codes;     // [N/64, K/L, 4, 64]
  const c10::Half* scales;  // [N/64, K/G, 4, 2, 16]
  const float* bias;        // [N] or nullptr
  int64_t N, K, G, bits;
  int64_t loads, groups;    // K/L and K/G, divided once: the paths address weights in their inner loops
  Weights(const uint8_t* codes, const c10::Half* scales, const float* bias, int64_t N, int64_t K, int64_t G,
          int64_t bits)
      : codes(codes), scales(scales), bias(bias), N(N), K(K), G(G), bits(bits), loads(K / per_load()), groups(K / G) {}
  int64_t per_load() const { return bits == 4 ? 8 : 4; }
  // The 64 bytes of tile t at load index l (inputs l * per_load() onwards).
  const uint8_t* load(int64_t t, int64_t l) const {
    return codes + ((t / BLOCK * loads + l) * BLOCK + t % BLOCK) * 64;
  }
  // Tile t's 16 scales of group g (its 16 mins follow).
  const c10::Half* scale(int64_t t, int64_t g) const {
    return scales + ((t / BLOCK * groups + g) * BLOCK + t % BLOCK) * 2 * TILE;
  }
};

// How far ahead of its reads a call asks for the weights' cache lines, per code path (index: the path number, see
// best_path) and cache level ([0] into L1, prefetcht0; [1] into L2 only, prefetcht2), in bytes (0: none). Why: one
// core of these virtual machines streams at most ~12 GB/s however the reads are issued (torch's sum alone): a core
// has only so many L1 misses in flight, and a call that computes between its loads falls behind unless the next
// lines are already on their way. A request into L2 holds no L1 miss slot, so it can run further ahead. Measured
// on an Intel Xeon (family 6, model 167), whole int4 forwards of Qwen2.5-Coder-1.5B, paired: 2048 bytes ahead into
// L1 took 0.95x the time of none at 1 token, 0.84-0.86x at 2-4; adding 4-8 KiB ahead into L2 took 0.92-0.97x the
// time of L1 alone at 1-4 tokens (one core alone streamed 13.8 GB/s 8 KiB ahead into L2, 11.9 1 KiB ahead into L1).
// Set per machine from measurements (specdec.qkernel.tuning); a prefetch never changes a bit, and never faults past
// an array's end.
extern std::atomic<int64_t> prefetch_ahead[4][2];

// Ask for `lines` cache lines from p + near into L1 and from p + far into L2 (a distance of 0: not that one).
__attribute__((always_inline)) inline void prefetch(const uint8_t* p, int64_t lines, int64_t near, int64_t far) {
  if (near) {
#pragma GCC unroll 4
    for (int64_t l = 0; l < lines; ++l) __builtin_prefetch(p + near + 64 * l, 0, 3);
  }
  if (far) {
#pragma GCC unroll 4
    for (int64_t l = 0; l < lines; ++l) __builtin_prefetch(p + far + 64 * l, 0, 1);
  }
}

// One block (4 tiles) by `rows` rows from row r0, into y [T, N].
using RowsFn = void (*)(const Weights& w, const Acts& a, int64_t t0, int64_t r0, int64_t rows, float* y);
// One group of G inputs of one row quantized: its int8 codes, x_scale and x_term (see qlinear.cpp).
using QuantizeFn = void (*)(const float* src, int64_t G, int8_t* dst, float* scale, float* term);

#ifdef SPECDEC_X86
constexpr int AMX_ROWS = 16;  // rows of x per AMX pass: a tile's 16 rows

constexpr int AVX512_ROWS = 16;  // rows of x per AVX-512 call (4 a pass, group by group)
RowsFn avx512_for(int bits);      // AVX-512 VNNI, 1..AVX512_ROWS rows a call
RowsFn amx_for(int bits);                // AMX, 1..AMX_ROWS rows a pass, on tile registers amx_configure shaped
void amx_configure(int64_t rows);
void amx_release();
RowsFn avx2_for(int bits);               // AVX2, any rows a pass (up to 8 from qlinear), group by group
void quantize_group_avx512(const float* src, int64_t G, int8_t* dst, float* scale, float* term);  // G % 16 == 0
void quantize_group_avx2(const float* src, int64_t G, int8_t* dst, float* scale, float* term);    // G % 8 == 0
#endif

}  // namespace specdec::kernel
