"""The machine's price list: what a target forward over T tokens, a draft step and the draft's prefill cost here,
measured once and read by everything that prices a round (the engine's padding, auto's K model and its choice to
draft at all, the calibration check's prediction, `python -m specdec calibrate`, notebook 06's curve).

Two kinds of entry, each cached per machine in one JSON file under specdec.machine.measurement_root() and held in memory
after the first read (a generation reads the file at most once):
  target curve  per (machine, target, precision, batch, linear path): whole forwards over T = 1..DENSE tokens,
                then 17, 33, ... as far as a policy's K needs, through the KV arena after profiler.CONTEXT cached
                tokens, as generations run them
  draft prices  per (machine, draft, precision, batch, linear path): its one-token step, and its prefill per token
                (a forward over PREFILL new tokens)
The draft does not key the target's curve: with or without a draft, a target runs the same forwards.

How, on a machine whose speed drifts by ~25% within minutes (and by more within seconds): every forward is timed
in the same interleaved passes, in a shuffled order per pass (the draft's with the target's, so their ratio comes
from one machine state), and priced by its median ratio to its pass's level (the geometric mean of the pass's
target forwards) times the median level: a pass slowed as a whole moves no price against another. Then the two
halves of the passes are priced apart; while they pad differently, PASSES more passes run (up to MOST_PASSES),
and the entry records how many ran and whether its halves agreed.

Why whole forwards: on CPU the packed few-row kernels make a forward over a few tokens cost LESS than one over a
single token on some machines (oneDNN's 4-row kernel beats its 1-row one), which no per-op microbenchmark predicts.

Padding: a forward over T <= DENSE new tokens may run over `rows(T)` >= T tokens, the cheapest measured forward up
to DENSE that holds them, when clearly cheaper (by PAD_GAIN plus three times the curve's noise). The extra tokens
are copies of the last one; their keys and values land beyond the row's length (the arena overwrites them with the
next write) and nobody reads their logits, so the T real positions get exactly what a T-token forward gives them
(causal attention: a position never sees later ones). The target alone is then one padded forward per token (the
baseline every speedup is measured against takes the engine's cheapest exact path), and `prices` charges every T
what the engine will run for it.
"""
import functools
import random

import numpy as np
import torch

from . import calibration, paired, qkernel
from .linear import fast_linears, mode, plan_key
from .machine import measurement_root, read_cache, write_cache
from .policy import round_price
from .profiler import CONTEXT, Forwards

COSTS = "prices.json"  # under specdec.machine.measurement_root()
DENSE = 9   # every T up to here is measured (padding chooses among them); sparser beyond
PAD_GAIN = 0.02  # pad to more tokens only when that forward is at least this much (plus noise) cheaper
PASSES = 8       # interleaved timing passes per round of measurement ...
MOST_PASSES = 24  # ... and rounds of PASSES more while the two halves of the passes pad differently, up to this
PREFILL = CONTEXT  # the draft's prefill is priced per token from one forward over this many new tokens
# The loop's own host work per round (sampling, bookkeeping, the one device read), which the timed forwards leave
# out: ~1.5 ms measured on a 2-core EPYC with the tiny test models. Only `predict` adds it (it is a few ms against
# rounds of 100+ ms on real models, so it does not change which K auto picks).
ROUND_S = 0.002
_tables = {}  # cache folder -> the price list read from it, kept up to date by this process's measurements


def table() -> dict:
    root = str(measurement_root())
    if root not in _tables:
        _tables[root] = read_cache(COSTS)
    return _tables[root]


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
    precision = getattr(model, "specdec_precision", None) or ""  # quantized: own curves, and per kernel version
    kernel = f" kernel {qkernel.digest()}" if precision.endswith("specdec") else ""
    named = f"{type(model).__name__} {shape} {model.dtype} {model.device.type}"
    return named + (f" {precision}" if precision else "") + kernel


def entry_key(role, model, batch) -> str:
    """Where one price is kept: machine, the model and its role ("target" or "draft"), batch size, linear path, and
    how it was timed (forwards through the arena after CONTEXT cached tokens)."""
    return (f"{plan_key()} | {role} {model_key(model)} | batch {batch} | linear {mode()} | after {CONTEXT} cached"
            f" | median of paired passes")


def measure(target, draft, batch, top, quiet=paired.at_once) -> tuple:
    """Time the target's forwards over cost_points(top - 1) tokens and, with a draft, its step and prefill, in
    interleaved passes (the module docstring; `quiet`: how each pass runs, specdec.paired.interleaved); returns
    (target entry, draft entry or None), unstamped."""
    forward = Forwards(target, batch, top)
    jobs = {t: functools.partial(forward, t, keep=0) for t in cost_points(top - 1)}
    if draft is not None:
        step = Forwards(draft, batch, PREFILL)
        jobs.update(step=functools.partial(step, 1), prefill=functools.partial(step, PREFILL))
    order = random.Random(0)
    times = paired.interleaved(jobs, PASSES, shuffle=order, quiet=quiet)
    settled = agree(times)
    while not settled and len(times[1]) < MOST_PASSES:
        more = paired.interleaved(jobs, PASSES, shuffle=order, warm_up=False, quiet=quiet)
        times = {name: times[name] + more[name] for name in jobs}
        settled = agree(times)
    price, noise = estimate(times)
    curve = dict(verify_s=forwards_of(price), noise=noise, passes=len(times[1]), halves_agree=settled)
    steps = None if draft is None else dict(step_s=price["step"], prefill_s=price["prefill"] / PREFILL)
    return curve, steps


def estimate(times: dict) -> tuple:
    """({name: seconds}, noise) from {name: [seconds per pass]} (int names: the target's forwards): a name's price
    is the median over passes of its time over the pass's level, times the median level. noise: the relative
    standard error of those medians (1.25 x 1.4826 x MAD of the log ratios / sqrt(passes)), median over names."""
    forwards = np.log(list(forwards_of(times).values()))
    level = forwards.mean(0)  # per pass, the log of its geometric mean
    logs = {name: np.log(seconds) - level for name, seconds in times.items()}
    price = {name: float(np.exp(np.median(r) + np.median(level))) for name, r in logs.items()}
    errors = [1.25 * 1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(len(r)) for r in logs.values()]
    return price, float(np.median(errors))


def agree(times: dict) -> bool:
    """Whether the even and the odd passes, priced apart, pad every T alike (at the noise of all of them)."""
    gain = pad_gain(estimate(times)[1])
    halves = [estimate({name: seconds[half::2] for name, seconds in times.items()})[0] for half in (0, 1)]
    return len(set(str(padding(forwards_of(h), gain)) for h in halves)) == 1


def forwards_of(named: dict) -> dict:
    """The target's forwards among a measurement's names (ints: token counts; the draft's are strings)."""
    return {t: v for t, v in named.items() if isinstance(t, int)}


def pad_gain(noise: float) -> float:
    """How much cheaper a forward over more tokens must be to pad to it: PAD_GAIN, plus three standard errors
    (the difference of two prices each known to `noise`, at about two of its own standard errors)."""
    return PAD_GAIN + 3 * noise


def price_list(target, draft, batch, need=DENSE, fresh=False, quiet=paired.at_once) -> tuple:
    """(target entry, draft entry or None) of these models at `batch`, the curve reaching at least T = `need`:
    from the cache, or measured together (`quiet` as in measure) when either is absent, too short, or `fresh`."""
    keys = [entry_key("target", target, batch)] + ([entry_key("draft", draft, batch)] if draft is not None else [])
    cached = [table().get(key) for key in keys]
    measured = fresh or any(e is None for e in cached) or reach(cached[0]) < need
    if measured:
        top = max(need, DENSE, reach(cached[0]) if cached[0] else 0)  # measured again, a curve keeps its reach
        # On the path the generation will run (re-entering is a no-op inside generate): a price measured on
        # torch's default path would be stored under `linear auto` and mislead every later run.
        with torch.inference_mode(), fast_linears([target, draft]):
            cached = [calibration.stamp(e) for e in measure(target, draft, batch, top, quiet) if e is not None]
        for key, entry in zip(keys, cached):
            table()[key] = entry
            write_cache(COSTS, key, entry)
    for key, entry in zip(keys, cached):
        calibration.note("costs", key, entry, measured)
    return cached[0], (cached[1] if draft is not None else None)


def target_curve(target, batch, need=DENSE, fresh=False) -> dict:
    """{T: seconds} of the target's forward over T tokens, for every cost_points T up to at least `need`."""
    return {int(t): s for t, s in price_list(target, None, batch, need, fresh)[0]["verify_s"].items()}


def reach(entry) -> int:
    return max(map(int, entry["verify_s"]))


def padding(points: dict, gain=PAD_GAIN) -> dict:
    """{T: rows}: the forward each T <= DENSE runs as, among the measured DENSE >= T' >= T: the smallest whose cost
    is within `gain` of the cheapest of them (a forward over more tokens is worth it only when clearly cheaper)."""
    points = {int(t): s for t, s in points.items() if int(t) <= DENSE}
    rows = {}
    for t in points:
        later = {u: s for u, s in points.items() if u >= t}
        cheapest = min(later.values())
        rows[t] = min(u for u, s in later.items() if s <= cheapest * (1 + gain))
    return rows


def priced(points: dict, draft_s: float, high: int, gain=PAD_GAIN, prefill_s=0.0) -> dict:
    """{"verify_s": [unused, T=1, ..., T=high+1], "draft_s": s, "draft_prefill_s": s per prompt token}: every T at
    the forward the engine runs for it (padded up to DENSE; beyond, linear between measured points), what auto's
    model reads."""
    points = {int(t): s for t, s in points.items()}
    rows = padding(points, gain)  # also absorbs load noise: a point above a later one is priced at the later one
    return dict(verify_s=interpolate({t: points[rows.get(t, t)] for t in points}, high + 1), draft_s=draft_s,
                draft_prefill_s=prefill_s)


def priced_entries(curve: dict, steps, high: int) -> dict:
    """priced() of a cached target curve and draft entry (None: no draft model, its work priced as free)."""
    steps = steps or dict(step_s=0.0, prefill_s=0.0)
    return priced(curve["verify_s"], steps["step_s"], high, pad_gain(curve.get("noise", 0.0)), steps["prefill_s"])


def prices(target, draft, batch, high) -> dict:
    """The price list for rounds of K <= high of (target, draft model or None) at `batch`, measured when absent."""
    return priced_entries(*price_list(target, draft, batch, high + 1), high)


def padded_rows(target, batch, fresh=False) -> dict:
    """{T: rows} for the engine's target forwards over T <= DENSE tokens (the same for every generation of this
    target, with or without a draft). Off the measured linear path (SPECDEC_LINEAR=off, or not a CPU) every T runs
    as itself."""
    if mode() == "off" or target.device.type != "cpu":
        return {}
    curve = price_list(target, None, batch, DENSE, fresh)[0]
    return padding(curve["verify_s"], pad_gain(curve.get("noise", 0.0)))


def pair_key(target, draft, batch) -> str:
    """What the calibration check judges (specdec.calibration): these models at this batch, machine and path."""
    return entry_key("target", target, batch) + ("" if draft is None else f" + draft {model_key(draft)}")


def in_use(target, draft, batch) -> list:
    """[("costs", key)] of the cached prices a generation of these models reads (for the calibration ledger)."""
    keys = [entry_key("target", target, batch)] + ([entry_key("draft", draft, batch)] if draft is not None else [])
    return [("costs", k) for k in keys if k in table()]


def predict(target, draft, batch, ks):
    """Seconds the price list predicts for rounds of K = `ks`; None when a price is not cached (never measures)."""
    curve = table().get(entry_key("target", target, batch))
    steps = None if draft is None else table().get(entry_key("draft", draft, batch))
    high = max(ks, default=0)
    if curve is None or (draft is not None and steps is None) or reach(curve) < high + 1:
        return None
    costs = priced_entries(curve, steps, high)
    return sum(round_price(costs, k) + ROUND_S for k in ks)


def remeasure(target, draft, batch):
    """Measure again the cached prices of these models and batch (outside any timed run)."""
    if entry_key("target", target, batch) in table():
        price_list(target, draft, batch, fresh=True)


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
