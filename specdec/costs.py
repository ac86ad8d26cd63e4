"""What a target forward costs on this machine, and the cheapest way to run one: the measured cost curves that
auto's K model and the engine's padding both read.

A curve is measured once per (machine, model, dtype, batch, linear path) by timing whole cache-free forwards
(target over T = 1..9 tokens, then 17, 33, ...; draft over 1 token), the min of 3 interleaved passes, and cached
in JSON under specdec.machine.cache_root(). Why whole forwards: on CPU the packed few-row kernels make a forward
over a few tokens cost LESS than one over a single token on some machines (oneDNN's 4-row kernel beats its 1-row
one), which no per-op microbenchmark predicts reliably.

Padding: a forward over T new tokens may run over `rows(T)` >= T tokens, the cheapest measured forward that holds
them. The extra tokens are copies of the last one; their keys and values land beyond the row's length (the arena
overwrites them with the next write) and nobody reads their logits, so the T real positions get exactly what a
T-token forward gives them (causal attention: a position never sees later ones). The target alone is then one
padded forward per token: the baseline every speedup is measured against takes the engine's cheapest exact path,
and auto's cost model prices every T at the same padded forward.
"""
import torch

from . import calibration
from .linear import fast_linears, mode, plan_key
from .machine import read_cache, write_cache
from .profiler import time_forward

COSTS = "autok-costs.json"  # under specdec.machine.cache_root()
DENSE = 9   # every T up to here is measured (padding chooses among them); sparser beyond
PAD_GAIN = 0.02  # pad to more tokens only when that forward is at least this much cheaper (not on timing noise)
# The loop's own host work per round (sampling, bookkeeping, the one device read), which the timed forwards leave
# out: ~1.5 ms measured on a 2-core EPYC with the tiny test models. Only `predict` adds it (it is a few ms against
# rounds of 100+ ms on real models, so it does not change which K auto picks).
ROUND_S = 0.002


def cost_points(high):
    """The token counts T a curve up to K = high (T = high + 1) measures: dense to DENSE, then doubling."""
    points = list(range(1, min(high + 1, DENSE) + 1))
    t = DENSE
    while 2 * t - 1 < high + 1:
        t = 2 * t - 1  # 17, 33, ...
        points.append(t)
    return sorted(set(points + [high + 1]))


def model_key(model) -> str:
    c = model.config.get_text_config()
    shape = [getattr(c, n, None) for n in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")]
    return f"{type(model).__name__} {shape} {model.dtype} {model.device.type}" + (  # quantized: own curves
        f" {model.specdec_precision}" if getattr(model, "specdec_precision", None) else "")


def cost_prefix(target, draft, batch) -> str:
    """What a cost curve holds for (the start of its cache key): machine, models, batch size, linear path."""
    return f"{plan_key()} | {model_key(target)} | {None if draft is None else model_key(draft)} | " \
           f"batch {batch} | linear {mode()} |"


def measured_entry(target, draft, batch, high, fresh=False) -> dict:
    """The cached entry {"verify_s": {T: s}, "draft_s": s} for these models and batch, measured when absent
    (`fresh`: measured again even so)."""
    key = f"{cost_prefix(target, draft, batch)} high {high}"
    entry = None if fresh else read_cache(COSTS).get(key)
    measured = entry is None
    if measured:
        # On the path the generation will run (re-entering is a no-op inside generate): a curve measured on
        # torch's default path would be stored under `linear auto` and mislead every later run.
        with torch.inference_mode(), fast_linears([target, draft]):
            time_forward(target, 1, batch, 1, reps=0)  # warm-up only: page-in, kernel selection
            draft_s, points = float("inf"), dict.fromkeys(cost_points(high), float("inf"))
            for _ in range(3):  # interleaved, min of 3: a load spike on a shared machine hits all points alike
                for t in points:
                    points[t] = min(points[t], time_forward(target, t, batch, 0, reps=1, warmup=False))
                draft_s = 0.0 if draft is None else min(draft_s, time_forward(draft, 1, batch, 1, reps=2, warmup=False))
        entry = calibration.stamp(dict(verify_s=points, draft_s=draft_s))
        write_cache(COSTS, key, entry)
    calibration.note("costs", key, entry, measured)
    return entry


def measure_costs(target, draft, batch, high, fresh=False) -> dict:
    """{"verify_s": [unused, T=1, ..., T=high+1], "draft_s": s}: what auto's model reads (every T at its padded
    forward), from the cache when present."""
    return curve(measured_entry(target, draft, batch, high, fresh), high)


def padding(points: dict) -> dict:
    """{T: rows}: the forward each T runs as, among the measured T' >= T: the smallest whose cost is within
    PAD_GAIN of the cheapest of them (a forward over more tokens is worth it only when clearly cheaper)."""
    points = {int(t): s for t, s in points.items()}
    rows = {}
    for t in points:
        later = {u: s for u, s in points.items() if u >= t}
        cheapest = min(later.values())
        rows[t] = min(u for u, s in later.items() if s <= cheapest * (1 + PAD_GAIN))
    return rows


def curve(entry, high) -> dict:
    points = {int(t): s for t, s in entry["verify_s"].items()}
    rows = padding(points)  # also absorbs load noise: a point above a later one is priced at the later one
    return dict(verify_s=interpolate({t: points[rows[t]] for t in points}, high + 1), draft_s=entry["draft_s"])


def padded_rows(target, batch, fresh=False) -> dict:
    """{T: rows} for the engine's target forwards over T <= DENSE tokens, from this target's own curve (measured
    without a draft, so that every generation of it, with or without one, pads alike; cached like every curve).
    Off the measured linear path (SPECDEC_LINEAR=off, or not a CPU) every T runs as itself."""
    if mode() == "off" or target.device.type != "cpu":
        return {}
    return padding(measured_entry(target, None, batch, DENSE - 1, fresh)["verify_s"])


def cached_costs(target, draft, batch, need=1):
    """[(key, entry)] of the cached cost curves for these models and batch whose verify curve reaches `need`
    tokens. With `need` 1 (rounds of the target alone) a curve measured with any draft serves: only its target
    steps are read."""
    exact = cost_prefix(target, draft, batch)
    same_target = lambda k: k.startswith(f"{plan_key()} | {model_key(target)} | ") \
        and f" | batch {batch} | linear {mode()} |" in k
    return [(k, e) for k, e in read_cache(COSTS).items()
            if (k.startswith(exact) or need == 1 and same_target(k)) and max(map(int, e["verify_s"])) >= need]


def predict(target, draft, batch, ks):
    """Seconds the cost curve predicts for rounds of K = `ks` (None without a cached curve for these models)."""
    found = cached_costs(target, draft, batch, max(ks, default=0) + 1)
    if not found:
        return None
    key, entry = found[0]
    costs = curve(entry, int(key.rsplit("high ", 1)[1]))
    return sum(k * costs["draft_s"] + costs["verify_s"][k + 1] + ROUND_S for k in ks)


def remeasure_costs(target, draft, batch):
    """Measure again every cached cost curve of exactly these models and batch (outside any timed run)."""
    for key, _ in cached_costs(target, draft, batch, need=2):
        measured_entry(target, draft, batch, int(key.rsplit("high ", 1)[1]), fresh=True)


def interpolate(points: dict, last: int) -> list:
    """verify_s[T] for T = 0..last (index 0 unused), linear between measured points."""
    xs = sorted(points)
    out = [0.0]
    for t in range(1, last + 1):
        lo = max(x for x in xs if x <= t)
        hi = min(x for x in xs if x >= t)
        w = 0 if hi == lo else (t - lo) / (hi - lo)
        out.append(points[lo] * (1 - w) + points[hi] * w)
    return out
