"""specdec's own few-row quantized linear kernel (specdec/csrc/qlinear.cpp): how its weights are packed, how it is
built, and how to call it.

    codes, scales = pack(weight, bits=4, group_size=64)
    y = qlinear(x, codes, scales, bias, out_features=weight.shape[0], group_size=64, bits=4)

Weights: int4 (asymmetric, a float16 scale and min per group of `group_size` inputs) or int8 (symmetric, a
float16 scale per group). Activations: quantized to int8 per row and group inside the call. The output of a row
does not depend on which other rows share the call (bitwise; see the C++ file), which is what lets a
speculative verify over T tokens stay token-identical to the target alone at this precision.

Built once with torch.utils.cpp_extension into the cache folder (`scripts/setup.sh` does it; otherwise the first
quantized model does, saying so). Where it cannot be built (no C++ compiler) or run (not x86), `available()` is
False, `why_not()` says why, and specdec.quantize takes torch's own kernels instead.
"""
import functools
import hashlib
import math
import os
import platform
import shutil
import sys
from pathlib import Path

import torch
from torch.utils import cpp_extension

from . import calibration, hugepages, paired
from .machine import cache_root, fastest, machine_key, read_cache, write_cache

# the quantized linear, the elementwise layer ops and the whole decoder layer that specdec.lean calls: one extension
SOURCES = [Path(__file__).parent / "csrc" / name
           for name in ("qlinear.cpp", "qlinear_avx512.cpp", "qlinear_avx2.cpp", "fit.cpp", "layer.cpp", "decoder.cpp")]
HEADERS = [Path(__file__).parent / "csrc" / name for name in ("ops.h", "qlinear.h")]
PATH_NAMES = {3: "amx", 2: "avx512-vnni", 1: "avx2", 0: "scalar"}
TILE, BLOCK = 16, 4  # outputs per tile (one 512-bit register), tiles per block of the layout
ROWS = TILE * BLOCK  # a weight's output count must be a multiple of this
FIT_STEPS = 12  # candidate int4 grids per group besides min..max (pack)
TUNING_CACHE = "qkernel-tuning.json"  # per machine and kernel version: prefetch distances, the AMX crossover
TUNING_RULE = 5  # how tuning() measures; part of its cache key, so a cache measured by an older rule is not read
# how far ahead of its reads the kernel may ask for weights: (bytes into L1, bytes into L2), 0 none. Adding 4-8 KiB
# into L2 took whole int4 forwards 0.92-0.97x the time at 1-4 tokens on the Xeon (family 6 model 167), paired
PREFETCH = ((0, 0), (1024, 0), (2048, 0), (1024, 4096), (1024, 8192), (2048, 8192))
PREFETCH_ROWS = {1: (1, 2, 4), 2: (1, 2, 4), 3: (4, 8)}  # per code path, the call sizes a distance is judged on:
# AVX2's and VNNI's few-row calls, AMX's near its crossover (5 rows on the Xeon), where the prefetch decides which wins
RUNS = {3: (2, 3), 2: (2,), 1: (1,), 0: ()}  # per best path, the code paths a CPU runs (AMX: VNNI below its crossover)
AMX_ROWS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)  # the call sizes measured for the AMX crossover
# the weights tuning() times: one decoder layer's shapes of a 1.5B model ([out, in]: q/k/v, o, gate/up, down),
# distinct copies past the caches' reach, side by side on huge pages as a quantized model's weights are
# (specdec.hugepages), as a forward streams them: small calls of two input widths. On the Xeon
# (family 6 model 167) its AMX/VNNI ratios at 1-8 rows came within 0.06 of whole int4 forwards of Qwen2.5-Coder-1.5B
# (one 512 MiB weight's within 0.07)
TUNING_SHAPES = ((2048, 1536), (1536, 1536), (17920, 1536), (1536, 8960))
TUNING_BYTES = 2**28
NEVER = 1 << 30
_state = {}  # "loaded": bool, "why": str, "tuning": what tuning() set in the kernel (x86 CPUs with a vector path)


@functools.lru_cache(maxsize=1)
def digest() -> str:
    """The sources' hash: which version of the kernel this is (measured prices of its models are keyed by it)."""
    return hashlib.sha256(b"".join(source.read_bytes() for source in SOURCES + HEADERS)).hexdigest()[:12]


def build_dir() -> Path:
    """One folder per source and torch version: a changed kernel or torch builds anew, never loads a stale .so."""
    return cache_root() / "kernels" / f"qlinear-{digest()}-torch{torch.__version__.split('+')[0]}"


def load(verbose=False) -> bool:
    """Build (once) and load the kernel; False, with the reason in why_not(), where that cannot be done."""
    if "loaded" in _state:
        return _state["loaded"]
    if os.environ.get("SPECDEC_QKERNEL", "on").lower() == "off":
        return _fail("SPECDEC_QKERNEL=off")
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return _fail(f"the kernel is written for x86 (this CPU is {platform.machine()})")
    if shutil.which("ninja") is None:  # pip's ninja lives beside this interpreter, off PATH in an unactivated venv
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    built = any(folder.glob("*.so"))
    if not built:
        print(f"specdec: building the quantized linear kernel into {folder} (once; about a minute)", file=sys.stderr)
    try:
        cpp_extension.load(name="specdec_qlinear", sources=[str(source) for source in SOURCES], build_directory=str(folder),
                           extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"], is_python_module=False, verbose=verbose)
    except Exception as e:  # no compiler, no ninja, a failed build: torch's kernels serve
        return _fail(f"the kernel could not be built here ({type(e).__name__}: {str(e).strip().splitlines()[-1][:200]})")
    _state.update(loaded=True, why="")
    if torch.ops.specdec.qlinear_best_path() >= 1:
        _state["tuning"] = tuning()
    return True


def tuning() -> dict:
    """The kernel's settings for this machine, measured once per machine and kernel version (about 20 s) and kept in
    TUNING_CACHE (measured again, not kept, while the machine is busy), and set in the kernel (the bits never
    depend on them): "prefetch", per code path, how far ahead of its reads a call asks for the weights (bytes into
    L1, bytes into L2); "amx_from", from how many rows a call runs the AMX code (fewer: the AVX-512 VNNI code),
    NEVER without AMX."""
    key = f"{machine_key()} | {digest()} | rule {TUNING_RULE}"
    found = read_cache(TUNING_CACHE).get(key)
    measured = not found
    if measured:
        found = calibration.stamp(_measure_tuning())
        if not found["busy"]:
            write_cache(TUNING_CACHE, key, found)
    calibration.note("kernel", key, found, measured)  # every calibration snapshot (and so every row) names it
    for path, ahead in found["prefetch"].items():
        set_prefetch(int(path), ahead)
    if torch.ops.specdec.qlinear_best_path() == 3:
        torch.ops.specdec.qlinear_amx_from(found["amx_from"])
    return found


def _measure_tuning() -> dict:
    print("specdec: tuning the quantized linear kernel to this machine (once per machine, ~20 s)", file=sys.stderr)
    weights = _layer_stack()
    xs = {(rows, K): torch.randn(rows, K) for rows in AMX_ROWS for K in {K for _, K in TUNING_SHAPES}}  # made once, untimed

    def call(rows, path, ahead=None):
        def run():
            if ahead is not None:
                set_prefetch(path, ahead)
            for codes, scales, N, K in weights:
                torch.ops.specdec.qlinear(xs[rows, K], codes, scales, None, N, 64, 4, path)
        return run

    paths = RUNS[torch.ops.specdec.qlinear_best_path()]
    found = {"prefetch": {}, "amx_from": NEVER}
    for path in paths:  # the distance with the least time over the call sizes the path serves
        samples = [paired.interleaved({d: call(rows, path, d) for d in PREFETCH}, passes=5) for rows in PREFETCH_ROWS[path]]
        # least cost, with no default to beat: a distance never changes a bit, and keeping "none" unless another
        # won by more than the noise kept the AMX code without prefetch on a noisy pass, 1.1-1.2x slower at 3-8 rows
        cost = paired.ratios(samples, PREFETCH[0])[0]
        found["prefetch"][str(path)] = list(min(PREFETCH, key=cost.get))
        set_prefetch(path, found["prefetch"][str(path)])
    if 3 in paths:  # AMX's cost over VNNI's per call size, each path at its own distance
        ratios = {rows: paired.ratios([paired.interleaved({"vnni": call(rows, 2), "amx": call(rows, 3)}, passes=5)],
                                      "vnni")[0]["amx"] for rows in AMX_ROWS}
        found["amx_from"] = crossover(ratios)
        found["amx_ratios"] = {str(rows): round(r, 4) for rows, r in ratios.items()}
    return found


def set_prefetch(path, ahead) -> tuple:
    """Set how far ahead path `path` (1: AVX2, 2: AVX-512 VNNI, 3: AMX) asks for weights, `ahead` = (bytes into L1,
    bytes into L2); returns the pair it replaces."""
    return tuple(torch.ops.specdec.qlinear_prefetch(path, int(bytes_), level) for level, bytes_ in enumerate(ahead, 1))


def _layer_stack() -> list:
    """[(codes, scales, out, in)]: TUNING_SHAPES over and over, distinct random int4 weights, TUNING_BYTES in all, in
    one buffer (specdec.hugepages)."""
    layer = sum(N * K // 2 for N, K in TUNING_SHAPES)
    shapes = [(N, K) for _ in range(max(1, TUNING_BYTES // layer)) for N, K in TUNING_SHAPES]
    placed = iter(hugepages.gather([t for N, K in shapes for t in synthetic_int4(N, K, 64)]))
    return [(next(placed), next(placed), N, K) for N, K in shapes]


def synthetic_int4(out_f, in_f, group_size) -> tuple:
    """(codes, scales) of a random int4 weight [out_f, in_f] in the kernel's layout, for timing: what a call reads
    and how fast never depends on the values."""
    codes = torch.randint(0, 256, (out_f * in_f // 2,), dtype=torch.uint8)
    return codes, torch.full((out_f // TILE * (in_f // group_size) * 2 * TILE,), 0.01, dtype=torch.half)


def crossover(ratios: dict) -> int:
    """From how many rows to run the AMX code, given {rows: its cost over VNNI's} at the sizes measured: the split
    that makes the calls the least costly over all those sizes together (the least sum of log ratios from it on),
    NEVER where none saves anything. Near the crossover the two cost about the same, and one size measured on the
    wrong side of 1 (a disturbed pass) moves this split little, where "the fewest rows from which AMX wins at every
    larger size" jumped: 5 on the Xeon, then 12 from a fresh cache when 10 rows measured 1.01."""
    sizes = sorted(ratios)
    saved = {rows: sum(math.log(ratios[r]) for r in sizes[i:]) for i, rows in enumerate(sizes)}
    best = min(saved, key=lambda rows: (saved[rows], -rows))  # equal savings: the larger split, fewer AMX calls
    return best if saved[best] < 0 else NEVER


def _fail(why) -> bool:
    _state.update(loaded=False, why=why)
    return False


def available() -> bool:
    return load()


def why_not() -> str:
    load()
    return _state["why"]


def best_path() -> str:
    """The code path this CPU runs: amx (from tuning()'s row count; AVX-512 VNNI below), avx512-vnni, avx2 or scalar."""
    return PATH_NAMES[torch.ops.specdec.qlinear_best_path()]


def path_words() -> str:
    """The code path this CPU runs, in words, with what tuning() set: prefetch distances, the AMX crossover."""
    path, tuned = best_path(), _state.get("tuning")  # what load() measured and set, not measured again
    if not tuned:
        return f"{path} path"
    ahead = lambda p: prefetch_words(*tuned["prefetch"][str(p)])
    if path != "amx":
        return f"{path} path ({ahead(RUNS[torch.ops.specdec.qlinear_best_path()][0])})"
    if tuned["amx_from"] >= NEVER:
        return f"avx512-vnni path ({ahead(2)}; amx measured slower)"
    return f"amx path from {tuned['amx_from']} rows ({ahead(3)}), avx512-vnni below ({ahead(2)})"


def prefetch_words(near, far) -> str:
    said = [f"{n} bytes ahead into {level}" for n, level in ((near, "L1"), (far, "L2")) if n]
    return "prefetch " + " and ".join(said) if said else "no prefetch"


def pack(weight, bits=4, group_size=64, steps=None):
    """(codes uint8 [out/64, ...], scales float16 [out/64, in/group, 4, 2, 16]) in the kernel's layout (see the C++
    file), from a float weight [out, in]. int4: w ~ q * scale + min, q in 0..15, each group's scale and min the
    least-squares fit of `steps` (default FIT_STEPS; 0: none) + 1 candidate grids (the C++ file's fit_int4: a grid
    spanning the group's min..max and tighter ones that clip outliers); int8: w ~ (q - 128) * scale, q - 128 in -127..127, scale = max|w| / 127
    (min = -128 * scale).
    The codes are rounded against the float16 scale and min the kernel reads, so the stored values are the ones the
    codes were chosen for."""
    w = weight.detach().float()
    out_f, in_f = w.shape
    if not fits(out_f, in_f, group_size):
        raise ValueError(f"qkernel.pack: shape {out_f}x{in_f} with groups of {group_size} needs out % {ROWS} == 0 "
                         f"and in % group == 0")
    g = w.reshape(out_f, in_f // group_size, group_size)
    blocks = out_f // ROWS
    if bits == 4:
        if not load():
            raise RuntimeError(f"qkernel.pack fits int4 grids with the kernel's own code, not available: {why_not()}")
        fitted = torch.ops.specdec.fit_int4(g.reshape(-1, group_size).contiguous(),
                                            FIT_STEPS if steps is None else steps)
        scale, mins = fitted.half().reshape(out_f, in_f // group_size, 2).unbind(-1)
        q = torch.round((g - mins.float()[..., None]) / scale.float()[..., None]).clamp(0, 15).to(torch.uint8)
        q = q.reshape(blocks, BLOCK, TILE, in_f // 8, 2, 4)  # block, tile, column, load index, nibble, byte
        codes = (q[..., 0, :] | (q[..., 1, :] << 4)).permute(0, 3, 1, 2, 4)  # block, load index, tile, column, byte
    elif bits == 8:
        scale = (g.abs().amax(-1) / 127).clamp(min=1e-6).half()
        q = torch.round(g / scale.float()[..., None]).clamp(-127, 127) + 128  # stored unsigned, as vpdpbusd wants
        codes = q.to(torch.uint8).reshape(blocks, BLOCK, TILE, in_f // 4, 4).permute(0, 3, 1, 2, 4)
        mins = -128 * scale  # exact in float16
    else:
        raise ValueError(f"qkernel.pack: bits must be 4 or 8, not {bits}")
    per_tile = lambda t: t.reshape(blocks, BLOCK, TILE, in_f // group_size).permute(0, 3, 1, 2)
    scales = torch.stack([per_tile(scale), per_tile(mins)], dim=3).contiguous()
    return codes.reshape(blocks, -1).contiguous(), scales


def fits(out_features, in_features, group_size) -> bool:
    """Whether the kernel takes this shape: outputs in whole blocks of 64, inputs in whole groups."""
    return out_features % ROWS == 0 and in_features % group_size == 0 and group_size % 8 == 0


def readers(gib=1.0) -> dict:
    """Ways to read `gib` GiB from memory, far past any cache, as {name: (call, bytes read)}: torch summing a float32
    tensor on its threads, and where the kernel loads, this kernel streaming a synthetic int4 weight (4096 inputs)
    with one row. On a 2-core Zen 4, alone, torch's sums read 30-36 GB/s where this kernel streamed 48-58. Both read
    memory on huge pages, as a quantized model's weights are (specdec.hugepages): the fastest reads the machine
    does (the Zen 4 in a fast state, medians of 7 passes: the kernel 46.2 GB/s on 4 KiB pages, 61.9 on huge pages;
    torch's sum 54.7 and 62.3)."""
    x = hugepages.buffer(int(gib * 2**30) // 4 * 4).view(torch.float32).fill_(1.0)
    found = {"torch sum": (x.sum, x.numel() * 4)}
    if load():
        K, G = 4096, 128
        N = int(gib * 2**30) * 2 // K // ROWS * ROWS
        codes, scales = hugepages.gather(synthetic_int4(N, K, G))
        row = torch.randn(1, K)
        found["kernel"] = (lambda: torch.ops.specdec.qlinear(row, codes, scales, None, N, G, 4),
                           codes.numel() + scales.numel() * 2)
    return found


def read_rate(gib=1.0, passes=7, found=None) -> float:
    """Bytes a second this machine reads from memory now, the bandwidth floor's denominator: each reader's fastest
    of `passes` adjacent passes, the faster reader (`found`: readers() made before, else made here)."""
    return max(n / fastest(call, passes) for call, n in (found or readers(gib)).values())


def dequantize(codes, scales, bits, group_size, in_features):
    """The float32 weight [out, in] the kernel multiplies by (before its activation quantization)."""
    blocks = codes.shape[0]
    out_f = blocks * ROWS
    if bits == 4:
        b = codes.reshape(blocks, in_features // 8, BLOCK, TILE, 4)
        q = torch.stack([b & 15, b >> 4], dim=4)  # block, load index, tile, column, nibble, byte
        q = q.permute(0, 2, 3, 1, 4, 5)
    else:
        q = codes.reshape(blocks, in_features // 4, BLOCK, TILE, 4).permute(0, 2, 3, 1, 4)
    q = q.reshape(out_f, in_features).float()
    per_col = lambda i: scales[:, :, :, i, :].permute(0, 2, 3, 1).reshape(out_f, -1).float().repeat_interleave(
        group_size, 1)
    return q * per_col(0) + per_col(1)


def qlinear(x, codes, scales, bias, out_features, group_size, bits, path=-1):
    """x [..., in] (any float dtype) -> [..., out] in x's dtype. `path`: -1 the best this CPU runs, else 3 (AMX),
    2 (AVX-512 VNNI), 1 (AVX2), 0 (scalar): tests force each."""
    return torch.ops.specdec.qlinear(x, codes, scales, bias, out_features, group_size, bits, path)


# Sibling linears that read the same input, run as one kernel call: fewer calls (each has a fixed cost of some
# microseconds, 7 per decoder layer otherwise) and more outputs per call to share between the threads.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


class Fused:
    """Member linears whose codes and scales are views of one fused weight. The first member called with an input
    computes every member's output; each other member, called next with that same tensor (as q/k/v and gate/up are in
    transformers' Llama-family forwards), takes its part. Called with any other input, a member computes the fused
    product anew, so the result is always the product of its own input (the same tensor object: nothing writes into
    a layer's input between its sibling projections, and inference tensors keep no version counter to check it).
    Each output column is computed the same way fused or not (the kernel works per 16 outputs): fusing changes no
    bit."""

    def __init__(self, members):
        self.members = members
        self.codes = torch.cat([m.qweight for m in members])
        self.scales = torch.cat([m.scales for m in members])
        self.bias = None if members[0].bias is None else torch.cat([m.bias.detach() for m in members])
        self.sizes = [m.out_features for m in members]
        for m in members:
            m.group = self
        self.share()
        self.pending, self.input = {}, None

    def share(self):
        """Point each member's codes and scales at its rows of the fused ones (views: no second copy)."""
        start = 0
        for m, size in zip(self.members, self.sizes):
            m.qweight = self.codes[start // ROWS:(start + size) // ROWS]
            m.scales = self.scales[start // ROWS:(start + size) // ROWS]
            start += size

    def whole(self, x):
        """The fused product for `x`: every member's output side by side, from one kernel call (specdec.lean)."""
        m = self.members[0]
        return qlinear(x, self.codes, self.scales, self.bias, sum(self.sizes), m.group_size, m.bits)

    def full(self, x) -> tuple:
        """Every member's output for `x`, from one kernel call."""
        return self.whole(x).split(self.sizes, dim=-1)

    def __call__(self, member, x):
        if self.input is x and member in self.pending:
            return self.pending.pop(member)
        parts = dict(zip(self.members, self.full(x)))
        self.input = x
        mine = parts.pop(member)
        self.pending = parts
        return mine


def fuse_siblings(model, kernel_modules):
    """Fuse each SIBLINGS set of `kernel_modules` (specdec-kernel linears) that share a parent, input size, format and
    bias presence. Returns how many sets were fused."""
    fused = 0
    for parent in model.modules():
        for names in SIBLINGS:
            members = [getattr(parent, n, None) for n in names]
            if not all(m in kernel_modules for m in members):
                continue
            formats = {(m.in_features, m.group_size, m.bits, m.bias is None) for m in members}
            if len(formats) == 1:
                Fused(members)
                fused += 1
    return fused


def report(verbose=False) -> str:
    """Build the kernel now (`python -m specdec kernel`, which scripts/setup.sh runs) and say what serves here."""
    if load(verbose=verbose):
        return f"specdec quantized linear kernel: built in {build_dir()}; this CPU runs its {path_words()}"
    return f"specdec quantized linear kernel: not available ({why_not()}); torch's int4/int8 kernels serve"
