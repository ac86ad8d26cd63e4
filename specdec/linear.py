"""Few-row linears on CPU, by measurement: the path that makes verification near-constant in K.

On CPU the default float32 GEMM behind `F.linear` can cost ~rows x the 1-row cost for 2..8 rows, while the
same product computed another way hits a kernel whose cost stays flat. The candidates, all exact products
in the weight's dtype (float32, or bfloat16 for a draft loaded in it):
  linear  F.linear (PyTorch's default; MKL on x86)
  wxt     W @ x.T
  xwt     x @ Wt, against a weight transposed once (a copy)
  onednn  oneDNN's matmul on the weight as it is (torch.ops.mkldnn._linear_pointwise, what Inductor calls)
  packed  the same, against a weight reordered once into oneDNN's blocked layout (a copy)
Which path wins differs from CPU to CPU (DESIGN.md section 6), so nothing is fixed in code: for each
(out, in) shape and dtype the paths are timed at a dozen row counts, in passes spread over the whole measurement
of a model's shapes (measure_shapes), and the plan is cached per machine (CPU model, torch version, threads) under
specdec.machine.measurement_root(). A plan is one path per range of row counts (RANGES), not per row count, and a
path replaces the default only when it wins by more than the measurement's own spread: on a shared machine whose
speed drifts, a path per row count was noise recorded as a decision (two calibrations minutes apart disagreed on 8
of 10 shapes).

A copy costs the weight's memory again (kept on the module for the next generations). A copy path must beat
the best in-place path by 10%, and a copy is made only while the machine keeps MEMORY_FLOOR of its RAM
free; past that a module takes its best in-place path (the plan's "lean" half).

    with fast_linears([target, draft]):   # entered by engine.generate(); restores every module on exit
        ...

Switch: SPECDEC_LINEAR=off (default path), =auto (measured, the default), or one of PATHS (force one path:
tests use this so tiny models exercise every path). CPU float32 and bfloat16 only; other devices and dtypes,
and calls with more than MAX_ROWS rows, take the default `F.linear`.

`python -m specdec.linear` prints the per-path timings (torch.utils.benchmark) for Qwen2.5-1.5B's shapes.
"""
import argparse
import contextlib
import functools
import os
import random
import time

import psutil
import torch
import torch.nn.functional as F
from torch.utils.benchmark import Timer

from . import calibration, paired
from .machine import machine_key, read_cache, write_cache

MAX_ROWS = 64                 # a verify over K+1 <= 9 tokens at batch <= 4 (and then some)
PACK_ROWS = 16                # the row count oneDNN lays a packed weight out for
COPIES = ("xwt", "packed")    # paths that keep a second copy of the weight
IN_PLACE_GAIN = 0.05          # another in-place path must beat the default by 5% (plus the noise: specdec.paired)
COPY_GAIN = 0.10              # a copy must beat the best in-place path by 10% (plus the noise)
# Row counts that share one path: few, since every range is a decision the noise can flip (a verify at batch 1 runs
# 1-9 rows, at batch 4 up to 36). Larger gains do not buy agreement: at 20% and 25% two calibrations still
# disagreed, and the plans' mostly default paths made the bfloat16 draft's step 92 ms against 77-79 (DESIGN.md 6).
RANGES = ((1, 1), (2, 4), (5, 8), (9, 16), (17, 64))
SAMPLE_BYTES = 80e6           # weight bytes one timed sample reads (~4 ms at 20 GB/s): small products repeat
MEMORY_FLOOR = 0.2            # make no copy that would leave less than this share of RAM available
# A path whose single call takes SCREEN x the fastest's is not timed further for that weight: it cannot win (a path
# must win by 5-10%), and timing it costs: an AVX2-only CPU (AMD EPYC Zen 1) runs bfloat16 x @ W.T at 17x the
# default at 1 row and 30x at 64, and would spend minutes on one LM head.
SCREEN = 3.0
DTYPES = (torch.float32, torch.bfloat16)


def onednn_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and callable(torch.ops.mkldnn._linear_pointwise)
    except (AttributeError, RuntimeError):
        return False


PATHS = ("linear", "wxt", "xwt", *(("onednn", "packed") if onednn_available() else ()))


def prepare(path, weight):
    """The weight operand `path` multiplies by: the weight itself, or its copy made once."""
    if path == "xwt":
        return weight.T.contiguous()
    if path == "packed":  # the blocked layout oneDNN picks for PACK_ROWS rows (measured: as good up to 64)
        return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)
    return weight


def run_path(path, x2, weight, bias):
    """x2 [rows, in] -> [rows, out] by one of PATHS, `weight` as prepare(path, W) made it."""
    if path == "linear":
        return F.linear(x2, weight, bias)
    if path in ("onednn", "packed"):
        return torch.ops.mkldnn._linear_pointwise(x2, weight, bias, "none", [], "")
    out = (weight @ x2.T).T if path == "wxt" else x2 @ weight
    return (out if bias is None else out + bias).contiguous()  # callers .view() it


@functools.cache
def paths_for(dtype) -> tuple:
    """The PATHS this CPU runs in `dtype`, each tried once on a small product: oneDNN's packed bfloat16 layout
    needs AVX-512 (or AVX-NE-CONVERT) and raises on an AVX2-only CPU (seen on an AMD EPYC Zen 1, family 23)."""
    weight, x = torch.randn(16, 16, dtype=dtype, device="cpu"), torch.randn(2, 16, dtype=dtype, device="cpu")
    runs = []
    for path in PATHS:
        try:
            run_path(path, x, prepare(path, weight), None)
            runs.append(path)
        except RuntimeError:
            pass
    return tuple(runs)


def time_paths(operands, rows, passes=1, screen=False, warm_up=True, shuffle=None) -> dict:
    """{path: [seconds per call in each of `passes` interleaved passes]} for products over `rows` rows
    (specdec.paired), of every path in `operands` ({path: prepare(path, W)}). `screen`: a first call of each
    screens out the paths over SCREEN x the fastest (the default path is always timed: it is what the others are
    compared with). A pass times each path over ~SAMPLE_BYTES of weight reads (up to 16 calls in a row): one call
    of a small product takes microseconds, where the jitter of a single call decides nothing. `warm_up`: one
    untimed pass first, always taken for such small products (other shapes' passes left them out of the caches)."""
    weight = operands["linear"]
    x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    if screen:
        first = {}
        for path, w in operands.items():
            run_path(path, x, w, None)  # untimed: oneDNN builds its kernel for a new shape on the first call
            start = time.perf_counter()
            run_path(path, x, w, None)
            first[path] = time.perf_counter() - start
        operands = {p: w for p, w in operands.items() if p == "linear" or first[p] <= SCREEN * min(first.values())}
    calls = int(min(max(SAMPLE_BYTES // (weight.numel() * weight.element_size()), 1), 16))
    return paired.interleaved({p: functools.partial(run_path, p, x, w, None) for p, w in operands.items()}, passes,
                              calls, shuffle, warm_up=warm_up or calls > 1)


def pick(times, lean=False, spread=0.0) -> str:
    """The in-place path (in PATHS order, the default first) that no other clearly beats (specdec.paired: by
    IN_PLACE_GAIN plus the noise); then a copy instead only when it clearly beats that one, by COPY_GAIN plus the
    noise. `lean`: in-place paths only. `times`: each path's cost relative to the default's, or seconds."""
    in_place = paired.preferred(times, [p for p in PATHS if p in times and p not in COPIES], IN_PLACE_GAIN, spread)
    copies = [p for p in PATHS if p in times and p in COPIES]
    return in_place if lean else paired.preferred(times, [in_place, *copies], COPY_GAIN, spread)


def sampling(weight) -> tuple:
    """(row counts, passes) one weight is timed at."""
    big = weight.numel() >= 2**25  # an LM head: ~0.1 s per call, so fewer points (2 passes flipped its plan)
    points = (1, 2, 4, 8, 16, 32, 64) if big else (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
    # Small products take well under a millisecond, where single calls are noisy: give them more passes (the
    # whole measurement stays within a second or so per shape).
    return points, 4 if big else 3 if weight.numel() >= 2**23 else 6


def measure_shapes(weights: dict, max_rows=MAX_ROWS, quiet=paired.at_once) -> dict:
    """{key: {"fast": {rows: path}, "lean": {rows: path}, "costs"}} for `weights` ({key: weight [out, in]}), timed
    in rounds: each round gives every weight still due a pass one interleaved pass of its paths (in an order drawn
    anew each time) at each of its row counts, so a weight's passes spread over the whole measurement. Why: on a shared
    machine the paths' costs relative to each other move within seconds (on a Zen 3, a 1536x1536 product over 1 row on
    oneDNN took 0.64-1.17x the default's time in readings 17-18 s apart, each reading's spread 0.04-0.10), so passes
    taken in one burst record one moment's noise as a decision. `quiet(what, run)`: how one shape's pass of a round
    runs (specdec.calibrate waits for a quiet moment and runs again a pass that load overlapped). Nothing is kept
    until every shape is measured (an interrupted measurement is measured again)."""
    order = random.Random(0)
    shapes = {key: (w.detach(), *sampling(w)) for key, w in weights.items()}
    samples = {key: {} for key in weights}  # key -> {rows: {path: [seconds per pass]}}
    for round_ in range(max((passes for _, _, passes in shapes.values()), default=0)):
        for key, (weight, points, passes) in shapes.items():
            if round_ < passes:
                new = quiet(f"linear {key}, pass {round_ + 1} of {passes}", lambda again: time_round(
                    weight, [r for r in points if r <= max_rows], samples[key], order))
                for r, times in new.items():
                    for path, seconds in times.items():
                        samples[key].setdefault(r, {}).setdefault(path, []).extend(seconds)
    return {key: plan_from(samples[key], max_rows) for key in weights}


def time_round(weight, points, kept, order) -> dict:
    """{rows: {path: [seconds]}}: one interleaved pass at each row count of `points`. The first round (nothing
    `kept` yet) screens the paths and warms every kernel up; the next ones time the paths kept at each row count,
    after one untimed pass at the first (making the copies just now left part of them in the caches)."""
    paths = [p for p in paths_for(weight.dtype) if not kept or any(p in times for times in kept.values())]
    operands = {path: prepare(path, weight) for path in paths}  # made once a round: a copy of an LM head is 1 GB
    new = {}
    for r in points:
        if kept:
            new[r] = time_paths({p: operands[p] for p in kept[r]}, r, warm_up=r == points[0], shuffle=order)
        else:
            new[r] = time_paths(operands, r, screen=True, shuffle=order)
            operands = {p: w for p, w in operands.items() if p in new[r]}
    return new


def plan_from(samples, max_rows) -> dict:
    """A path per range of RANGES, compared paired over the row counts measured inside it (specdec.paired);
    "costs": per range, each path's cost relative to the default's and their spread (what the choice was made
    on, kept for the reader)."""
    plan = {"fast": {}, "lean": {}, "costs": {}}
    for lo, hi in RANGES:
        inside = {r: t for r, t in samples.items() if lo <= r <= hi}
        if not inside:
            continue
        cost, spread = paired.ratios(list(inside.values()), "linear")
        for half in ("fast", "lean"):
            plan[half].update(dict.fromkeys(range(lo, min(hi, max_rows) + 1), pick(cost, half == "lean", spread)))
        plan["costs"][f"{lo}-{hi}"] = dict({p: round(c, 3) for p, c in cost.items()}, spread=round(spread, 3))
    return plan


def plan_key() -> str:
    """Where a measured plan or cost holds: this CPU, torch and thread count, and the candidate paths."""
    return f"{machine_key()} | {'/'.join(PATHS)}"


CACHE = "linear-plans.json"


def shape_key(weight) -> str:
    return "{}x{} {}".format(*weight.shape, str(weight.dtype).removeprefix("torch."))


class Plans:
    """Per-machine plans, measured on first use of a shape and kept in a JSON file."""

    def __init__(self):
        self.table = None

    def load(self):
        if self.table is None:
            self.table = read_cache(CACHE).get(plan_key(), {})
        return self.table

    def get(self, weight, fresh=False) -> dict:
        """{"fast": {rows: path}, "lean": {rows: path}} for this weight's shape and dtype; `fresh`: measured
        again even if cached."""
        return self.measure({shape_key(weight): weight}, fresh)[shape_key(weight)]

    def due(self, weights: dict, fresh=False, busy_again=False) -> dict:
        """The `weights` to time: not cached, all of them (`fresh`), or (`busy_again`: calibrate's rule, never a
        generation's) also those measured on a machine that was busy and is idle now."""
        table = self.load()
        return {key: w for key, w in weights.items()
                if fresh or key not in table or (busy_again and calibration.measured_busy(table[key]))}

    def measure(self, weights: dict, fresh=False, quiet=paired.at_once) -> dict:
        """{key: {"fast", "lean"}} for `weights` ({shape key: weight}): the ones due (`due`) measured together
        (measure_shapes, `quiet` as there), the rest read from the cache."""
        table = self.load()
        todo = self.due(weights, fresh)
        if todo:
            for key, plan in measure_shapes(todo, quiet=quiet).items():
                table[key] = calibration.stamp(plan)
            write_cache(CACHE, plan_key(), {key: table[key] for key in todo})
        for key in weights:
            calibration.note("linear", key, table[key], key in todo)
        return {key: {half: {int(r): p for r, p in table[key][half].items()} for half in ("fast", "lean")}
                for key in weights}


PLANS = Plans()


def mode() -> str:
    value = os.environ.get("SPECDEC_LINEAR", "auto").lower()
    if value not in ("auto", "off", *PATHS):
        raise ValueError(f"SPECDEC_LINEAR={value!r} is unknown; use auto, off, or one of {', '.join(PATHS)}")
    return value


def planned_forward(module, plan):
    """A forward for one nn.Linear that follows `plan` ({rows: path}) for CPU calls in the weight's dtype."""
    weight, bias = module.weight, module.bias
    operands = {path: prepared(module, path) for path in set(plan.values())}

    def forward(x):
        rows = x.numel() // x.shape[-1] if x.dim() else 0
        path = plan.get(rows)
        if path is None or x.dtype != weight.dtype or x.device.type != "cpu":
            return F.linear(x, weight, bias)
        out = run_path(path, x.reshape(rows, x.shape[-1]), operands[path], bias)
        return out.reshape(*x.shape[:-1], weight.shape[0])
    return forward


def prepared(module, path):
    """prepare(path, weight), made once and kept on the module (not a parameter or buffer, so not in its
    state_dict) for the next generations; remade if the weight was changed in place or replaced."""
    if path not in COPIES:
        return module.weight
    weight, copies = module.weight, module.__dict__.setdefault("_specdec_weights", {})
    stamp = (weight.data_ptr(), weight._version)
    if copies.get(path, (None,))[0] != stamp:
        copies[path] = (stamp, prepare(path, weight.detach()))
    return copies[path][1]


def room_for_copy(module) -> bool:
    """A copy exists already, or making one leaves MEMORY_FLOOR of the RAM available."""
    if module.__dict__.get("_specdec_weights"):
        return True
    memory = psutil.virtual_memory()
    return memory.available - module.weight.nbytes > MEMORY_FLOOR * memory.total


def plan_ranges(plan: dict) -> str:
    """{rows: path} as runs of row counts: '1-3 packed, 4-64 onednn'."""
    runs, rows = [], sorted(plan, key=int)
    for r in rows:
        if runs and runs[-1][2] == plan[r]:
            runs[-1][1] = r
        else:
            runs.append([r, r, plan[r]])
    return ", ".join(f"{a}-{b} {p}" if a != b else f"{a} {p}" for a, b, p in runs)


def weights_by_shape(models) -> dict:
    """{shape key: one weight of that shape and dtype} over the linears `fast_linears` plans for these models."""
    return dict(sorted({shape_key(m.weight): m.weight for m in linears(models)}.items()))


def plans_in_use(models) -> list:
    """[("linear", shape key)] of every plan `fast_linears` uses for these models."""
    return [("linear", key) for key in weights_by_shape(models)]


def remeasure(models):
    """Measure the plans of these models' linears again (outside any timed run)."""
    PLANS.measure(weights_by_shape(models), fresh=True)


def linears(models):
    for model in models:
        if isinstance(model, torch.nn.Module):
            for module in model.modules():
                if type(module) is torch.nn.Linear and module.weight.dtype in DTYPES \
                        and module.weight.device.type == "cpu":
                    yield module


@contextlib.contextmanager
def fast_linears(models):
    """Within the block, every CPU float32/bfloat16 nn.Linear of `models` takes its measured path per row count.
    Restores the modules' own forward on exit, so code outside (an HF reference in the same process)
    is not changed."""
    choice = mode()
    patched = []
    try:
        if choice != "off":
            plans = PLANS.measure(weights_by_shape(models)) if choice == "auto" else {}  # missing ones together
            for module in linears(models):
                if "forward" in module.__dict__:
                    continue  # already patched (the target is also the draft) or patched by someone else
                if choice == "auto":
                    halves = plans[shape_key(module.weight)]
                    copies = set(halves["fast"].values()) & set(COPIES)
                    plan = halves["fast"] if not copies or room_for_copy(module) else halves["lean"]
                elif choice in paths_for(module.weight.dtype):
                    plan = {r: choice for r in range(1, MAX_ROWS + 1)}
                else:  # a forced path this CPU cannot run in this dtype: the module keeps its own forward
                    continue
                module.forward = planned_forward(module, plan)
                patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward


# -- the measurement table ------------------------------------------------------------------------------------

QWEN_1_5B_SHAPES = ((1536, 1536), (256, 1536), (8960, 1536), (1536, 8960), (151936, 1536))


def table(shapes=QWEN_1_5B_SHAPES, rows=(1, 2, 4, 8), min_run_time=0.3):
    print(f"{plan_key()}\nms per call (median, torch.utils.benchmark); plan = what fast_linears picks")
    print(f"| shape (out x in) | rows | {' | '.join(PATHS)} | bf16 F.linear | plan |")
    print("|---|---|" + "---|" * (len(PATHS) + 2))
    for out_f, in_f in shapes:
        weight = torch.randn(out_f, in_f, device="cpu")
        operands = {path: prepare(path, weight) for path in PATHS}
        w16 = weight.to(torch.bfloat16)
        plan = PLANS.get(weight)["fast"]
        for r in rows:
            x = torch.randn(r, in_f, device="cpu")
            env = dict(run_path=run_path, x=x, w=operands, w16=w16, x16=x.to(torch.bfloat16), F=F)
            ms = lambda stmt: 1e3 * Timer(stmt, globals=env, num_threads=torch.get_num_threads()).blocked_autorange(
                min_run_time=min_run_time).median
            t = [ms(f"run_path('{p}', x, w['{p}'], None)") for p in PATHS] + [ms("F.linear(x16, w16)")]
            print(f"| {out_f}x{in_f} | {r} | " + " | ".join(f"{v:.2f}" for v in t) + f" | {plan[r]} |")
        del weight, operands, w16


if __name__ == "__main__":
    argparse.ArgumentParser(prog="python -m specdec.linear",
                            description="Time every linear path on Qwen2.5-1.5B's shapes on this machine "
                                        "(the plan column is what fast_linears picks; measured on first use "
                                        "and cached). Run it on an idle machine.").parse_args()
    table()
