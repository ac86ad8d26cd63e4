// Few-row quantized linears for x86 CPUs: y[T, N] = x[T, K] W^T (+ b), W stored as 4-bit (or 8-bit) codes in groups
// of G inputs, x quantized to int8 per row and group. Registered as torch.ops.specdec.qlinear; specdec/qkernel.py
// packs the weights, builds the extension and says when it cannot.
//
// Why a kernel of our own: ATen's int4 CPU kernel works on 4 rows at a time in float32, so a verify over 5..8
// tokens streams the weights twice from memory; this one streams each block of 64 outputs once per call and
// multiplies it with every row of the call (group by group, in passes of up to 4 rows on AVX-512 and 2 on AVX2:
// later passes find the group's codes in L1), with int8 dot products (AVX-512 VNNI vpdpbusd; AVX2 vpmaddubsw +
// vpmaddwd elsewhere; on CPUs with AMX, Intel's tile unit from a measured row count, up to 16 rows per pass). Every
// vector path asks for the weights a measured distance ahead of its reads (prefetch_ahead), into L1 and further
// ahead into L2.
//
// This file: the layout, the scalar definition, the choice of code path and the threads; the vector paths are in
// qlinear_avx512.cpp (AVX-512 VNNI, AMX) and qlinear_avx2.cpp, what they share in qlinear.h.
//
// Row-invariant by construction: a row's output is computed by the same sequence of operations whatever else shares
// the call. Per (row, output, group) the integer dot product is exact (int32); the float part is, in this order,
//     acc_f = float(dot);  y = fma(acc_f, scale * x_scale, y);  y = fma(min, x_term, y)
// and at the end y + bias. All four code paths (AMX, AVX-512, AVX2, scalar) do exactly that, so they agree bit for bit
// and a speculative verify over T tokens gives each token the logits a one-token forward gives it.
//
// Layout (specdec/qkernel.py makes it): outputs in tiles of 16 (one 512-bit register of int32 / float32), tiles in
// blocks of 4 stored interleaved, so that a block's weights are one sequential stream; inputs in groups of G.
//   codes [N/64, K/L, 4, 64] uint8, L = 8 inputs per 64 bytes for int4, 4 for int8: the 64 bytes of tile n of a
//     block at load index l hold, at byte 4c+j, for output 16n+c of the block:
//     int4: q[., 8l+j] (low nibble) and q[., 8l+4+j] (high nibble), codes 0..15; w = q * scale + min.
//     int8: q[., 4l+j] + 128 (symmetric codes -127..127 stored unsigned, as vpdpbusd wants); w = code * scale + min
//           with min = -128 * scale (exact in float16).
//   scales [N/64, K/G, 4, 2, 16] float16: per block, group and tile, 16 scales, then 16 mins.
// Activations: per row and group, x_scale = max|x| / 127, xq = round(x / x_scale) in -127..127, and
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

#include "ops.h"
#include "qlinear.h"

#ifdef SPECDEC_X86
#include <cpuid.h>
#endif
#ifdef __linux__
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace specdec::kernel {

std::atomic<int64_t> prefetch_ahead[4][2] = {};  // per path and cache level (qlinear.h says why)

namespace {

// -- scalar: the definition the vector paths reproduce bit for bit ------------------------------------------------

int32_t code(const Weights& w, int64_t t, int64_t k, int c) {
  const uint8_t byte = w.load(t, k / w.per_load())[4 * c + (k % w.per_load()) % 4];
  if (w.bits == 8) return byte;
  return (k % 8) < 4 ? (byte & 15) : (byte >> 4);
}

void tile_scalar(const Weights& w, const Acts& a, int64_t t, int64_t r0, int64_t rows, float* y) {
  for (int64_t r = r0; r < r0 + rows; ++r) {
    const int8_t* xq = a.q + r * a.K;
    for (int c = 0; c < TILE; ++c) {
      float acc = 0.f;
      for (int64_t g = 0; g < a.groups; ++g) {
        int32_t dot = 0;
        for (int64_t k = g * w.G; k < (g + 1) * w.G; ++k) dot += code(w, t, k, c) * int32_t(xq[k]);
        const c10::Half* sc = w.scale(t, g);
        float s = static_cast<float>(sc[c]), m = static_cast<float>(sc[TILE + c]);
        acc = std::fma(static_cast<float>(dot), s * a.scale[r * a.groups + g], acc);
        acc = std::fma(m, a.term[r * a.groups + g], acc);
      }
      if (w.bias) acc = acc + w.bias[t * TILE + c];
      y[r * w.N + t * TILE + c] = acc;
    }
  }
}

// AMX is usable when the CPU has it (CPUID leaf 7: AMX-TILE, AMX-INT8) and Linux lets this process use its tile
// state (asked once per process: arch_prctl ARCH_REQ_XCOMP_PERM for XFEATURE_XTILEDATA, as oneDNN does).
bool amx_usable() {
#if defined(SPECDEC_X86) && defined(__linux__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) || !(edx & (1u << 24)) || !(edx & (1u << 25))) return false;
  return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
#else
  return false;
#endif
}

// Which code path this CPU takes: 3 = AMX (with AVX-512 VNNI), 2 = AVX-512 VNNI, 1 = AVX2, 0 = scalar (asked once:
// every call checks it).
int64_t detect_path() {
#ifdef SPECDEC_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("f16c"))
    return amx_usable() ? 3 : 2;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) return 1;
#endif
  return 0;
}

int64_t best_path() {
  static const int64_t path = detect_path();
  return path;
}

// On the AMX path, calls of fewer rows than this run the AVX-512 VNNI code (a tile op's fixed costs can lose to it
// at few rows); set per machine from measurements (specdec.qkernel.tuning), 1 until then. The bits are the same.
std::atomic<int64_t> amx_from_rows{1};

int64_t set_prefetch(int64_t path, int64_t bytes, int64_t level) {
  TORCH_CHECK(path >= 1 && path <= 3, "qlinear_prefetch: paths 1 (AVX2), 2 (VNNI), 3 (AMX) prefetch, not ", path);
  TORCH_CHECK(bytes >= 0, "qlinear_prefetch: bytes ahead must be at least 0");
  TORCH_CHECK(level == 1 || level == 2, "qlinear_prefetch: the cache level is 1 (L1) or 2 (L2), not ", level);
  return prefetch_ahead[path][level - 1].exchange(bytes);
}

int64_t amx_from(int64_t rows) {
  TORCH_CHECK(rows >= 1, "qlinear_amx_from: rows must be at least 1");
  return amx_from_rows.exchange(rows);
}

// Quantize each row's activations per group: x_scale = max|x| / 127 (1 for an all-zero group), xq = round(x / s)
// to nearest even, clamped to -127..127, and term = x_scale * sum(xq). The scalar function is the definition; the
// vector ones (qlinear_avx512.cpp, qlinear_avx2.cpp) make the same IEEE operations per element (abs, max, divide,
// round, clamp: none rounds differently in a vector), so every path quantizes to the same bits. Vectorised because
// the scalar loop's rounding is a libm call per element: ~3.7 ns an activation (Zen 4), about 1.4 ms of an int4 step
// of Qwen2.5-1.5B per token.
void quantize_group(const float* src, int64_t G, int8_t* dst, float* scale, float* term) {
  float amax = 0.f;
  for (int64_t k = 0; k < G; ++k) amax = std::fmax(amax, std::fabs(src[k]));
  const float s = amax > 0.f ? amax / 127.f : 1.f;
  int32_t sum = 0;
  for (int64_t k = 0; k < G; ++k) {
    int32_t q = static_cast<int32_t>(std::nearbyint(src[k] / s));
    q = q > 127 ? 127 : (q < -127 ? -127 : q);
    dst[k] = static_cast<int8_t>(q);
    sum += q;
  }
  *scale = s;
  *term = s * static_cast<float>(sum);
}

void quantize_rows(const float* x, int64_t T, int64_t K, int64_t G, int8_t* xq, float* scale, float* term,
                   int64_t path) {
  QuantizeFn fn = quantize_group;
#ifdef SPECDEC_X86
  if (path >= 2 && G % 16 == 0) fn = quantize_group_avx512;
  else if (path >= 1) fn = quantize_group_avx2;  // G % 8 == 0 always (qlinear checks it)
#endif
  // row r = i / groups, group g = i % groups: contiguous since K = groups * G
  at::parallel_for(0, T * (K / G), 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(x + i * G, G, xq + i * G, scale + i, term + i);
  });
}

}  // namespace
}  // namespace specdec::kernel

namespace specdec {

using namespace kernel;

at::Tensor qlinear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                   const std::optional<at::Tensor>& bias, int64_t out_features, int64_t group_size, int64_t bits,
                   int64_t path) {
  // x [..., in] in any float dtype: computed in float32 (one call, so a module's forward is this op alone).
  TORCH_CHECK(input.dim() >= 1 && at::isFloatingType(input.scalar_type()), "qlinear: x must be a float tensor [..., in]");
  const at::Tensor x = input.reshape({-1, input.size(-1)}).to(at::kFloat).contiguous();
  TORCH_CHECK(bits == 4 || bits == 8, "qlinear: bits must be 4 or 8");
  const int64_t T = x.size(0), K = x.size(1), N = out_features, G = group_size;
  TORCH_CHECK(N % (TILE * BLOCK) == 0 && K % G == 0 && G % 8 == 0,
              "qlinear: needs out % 64 == 0, in % group == 0, group % 8 == 0");
  TORCH_CHECK(codes.numel() == N * K * bits / 8 && codes.is_contiguous(), "qlinear: codes do not match the shape");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.numel() == N / TILE * (K / G) * 2 * TILE,
              "qlinear: scales must be float16 [out/64, in/group, 4, 2, 16]");
  const bool chosen = path < 0;  // the best path, rather than one a caller (a test, a measurement) forces
  if (chosen) path = best_path();
  TORCH_CHECK(path <= best_path(), "qlinear: this CPU cannot run code path ", path);
  at::Tensor b;
  if (bias.has_value() && bias->defined()) b = bias->to(at::kFloat).contiguous();
  auto shape = input.sizes().vec();
  shape.back() = N;
  auto y = at::empty({T, N}, x.options());
  auto xq = at::empty({T, K}, x.options().dtype(at::kChar));
  auto xs = at::empty({T, K / G}, x.options());
  auto xt = at::empty({T, K / G}, x.options());
  quantize_rows(x.data_ptr<float>(), T, K, G, xq.data_ptr<int8_t>(), xs.data_ptr<float>(), xt.data_ptr<float>(), path);
  Weights w{codes.data_ptr<uint8_t>(), scales.data_ptr<c10::Half>(), b.defined() ? b.data_ptr<float>() : nullptr,
            N, K, G, bits};
  Acts a{xq.data_ptr<int8_t>(), xs.data_ptr<float>(), xt.data_ptr<float>(), K, K / G};
  float* out = y.data_ptr<float>();
  // Blocks of 4 tiles handed to the threads in chunks that shrink as the work runs out (OpenMP's "guided" rule: each
  // chunk is what is left over the thread count), each thread taking the next chunk when done with its last. Why not
  // an even static split: on a shared virtual machine one core often runs slower than the other for a while, and the
  // faster one waited at the end of every call (libgomp's spin was ~23% of a 4-bit step's samples). Why not many
  // equal chunks (8 a thread, the rule before): each jump to a new chunk restarts the memory stream, and on the Zen 4
  // (family 25) guided chunks took 0.91-0.92x the time of 8 a thread for the int4 target's step and 0.87x for its int4
  // draft's, paired, while the machine ran fast; 0.94-1.0x while it ran slow. Which thread computes a block
  // changes no bit.
  // In each block, the rows in passes of near-equal size (at most 16 on AMX and AVX-512, 8 on AVX2: 17 rows are
  // 9 + 8, not 16 + 1). Every pass after a block's first finds its weights in L1/L2; AVX-512 and AVX2 split a pass
  // into 4 or 2 rows at a time group by group (a group's codes in L1).
  const int64_t blocks = N / (TILE * BLOCK);
  // a tile op takes 64 inputs of one group; below amx_from rows the AVX-512 code measured faster
  if (path == 3 && (G % 64 != 0 || (chosen && T < amx_from_rows.load()))) path = 2;
  const int64_t rb_max = path == 3 ? AMX_ROWS : path == 2 ? AVX512_ROWS : 8;
  const int64_t passes = (T + rb_max - 1) / rb_max;
  const int64_t threads = at::get_num_threads();
  std::vector<int64_t> starts{0};  // chunk i is blocks starts[i] .. starts[i + 1]
  for (int64_t done = 0; done < blocks;) {
    done += (blocks - done + threads - 1) / threads;
    starts.push_back(done);
  }
  const int64_t chunks = static_cast<int64_t>(starts.size()) - 1;
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
#ifdef SPECDEC_X86
    int64_t amx_rows = 0;  // the row count this thread's tile registers are shaped for
#endif
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      for (int64_t b = starts[i], end = starts[i + 1]; b < end; ++b) {
        const int64_t t0 = b * BLOCK;
        for (int64_t p = 0, r0 = 0; p < passes; ++p) {
          const int64_t rows = (T - r0) / (passes - p);
#ifdef SPECDEC_X86
          if (path == 3) {
            if (rows != amx_rows) amx_configure(amx_rows = rows);
            amx_for(bits)(w, a, t0, r0, rows, out);
          } else if (path == 2) {
            avx512_for(bits)(w, a, t0, r0, rows, out);
          } else if (path == 1) {
            avx2_for(bits)(w, a, t0, r0, rows, out);
          } else
#endif
          for (int64_t t = t0; t < t0 + BLOCK; ++t) tile_scalar(w, a, t, r0, rows, out);
          r0 += rows;
        }
      }
    }
#ifdef SPECDEC_X86
    if (amx_rows) amx_release();  // a thread holding tile state costs every context switch an 8 KB save
#endif
  });
  return y.view(shape).to(input.scalar_type());
}

}  // namespace specdec

TORCH_LIBRARY(specdec, m) {
  m.def("qlinear(Tensor x, Tensor codes, Tensor scales, Tensor? bias, int out_features, int group_size, int bits, "
        "int path=-1) -> Tensor");
  m.def("qlinear_best_path() -> int", &specdec::kernel::best_path);
  m.def("qlinear_amx_from(int rows) -> int", &specdec::kernel::amx_from);
  m.def("qlinear_prefetch(int path, int bytes, int level=1) -> int", &specdec::kernel::set_prefetch);
}

TORCH_LIBRARY_IMPL(specdec, CPU, m) { m.impl("qlinear", &specdec::qlinear); }
