"""The machine's price list: what a target forward over T tokens and a draft step cost here, measured once and read
by everything that prices a round (the engine's padding, auto's K model, the calibration check's prediction,
`python -m specdec calibrate`).

Two kinds of entry, each cached per machine in one JSON file under specdec.machine.cache_root() and held in memory
after the first read (a generation reads the file at most once):
  target curve  per (machine, target, precision, batch, linear path): whole forwards over T = 1..DENSE tokens,
                then 17, 33, ... as far as a policy's K needs, through the KV arena after profiler.CONTEXT cached
                tokens, as generations run them; the min of 3 interleaved passes
  draft step    per (machine, draft, precision, batch, linear path): a one-token forward, the min of 5
The draft does not key the target's curve: with or without a draft, a target runs the same forwards.

Why whole forwards: on CPU the packed few-row kernels make a forward over a few tokens cost LESS than one over a
single token on some machines (oneDNN's 4-row kernel beats its 1-row one), which no per-op microbenchmark predicts.

Padding: a forward over T <= DENSE new tokens may run over `rows(T)` >= T tokens, the cheapest measured forward up
to DENSE that holds them. The extra tokens are copies of the last one; their keys and values land beyond the row's
length (the arena overwrites them with the next write) and nobody reads their logits, so the T real positions get
exactly what a T-token forward gives them (causal attention: a position never sees later ones). The target alone
is then one padded forward per token (the baseline every speedup is measured against takes the engine's cheapest
exact path), and `prices` charges every T what the engine will run for it.
"""
import torch

from . import calibration, qkernel
from .linear import fast_linears, mode, plan_key
from .machine import measurement_root, read_cache, write_cache
from .profiler import CONTEXT, Forwards

COSTS = "prices.json"  # under specdec.machine.cache_root()
DENSE = 9   # every T up to here is measured (padding chooses among them); sparser beyond
PAD_GAIN = 0.02  # pad to more tokens only when that forward is at least this much cheaper (not on timing noise)
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
    return f"{plan_key()} | {role} {model_key(model)} | batch {batch} | linear {mode()} | after {CONTEXT} cached"


def price_entry(role, model, batch, measure, fresh=False, enough=lambda entry: True) -> dict:
    """The cached entry of `model` in `role`; measured (`measure()` -> dict) when absent, not `enough`, or `fresh`."""
    key = entry_key(role, model, batch)
    entry = table().get(key)
    measured = fresh or entry is None or not enough(entry)
    if measured:
        # On the path the generation will run (re-entering is a no-op inside generate): a price measured on
        # torch's default path would be stored under `linear auto` and mislead every later run.
        with torch.inference_mode(), fast_linears([model]):
            entry = calibration.stamp(measure())
        table()[key] = entry
        write_cache(COSTS, key, entry)
    calibration.note("costs", key, entry, measured)
    return entry


def target_curve(target, batch, need=DENSE, fresh=False) -> dict:
    """{T: seconds} of the target's forward over T tokens, for every cost_points T up to at least `need`."""
    cached = table().get(entry_key("target", target, batch))
    top = max(need, DENSE, reach(cached) if cached else 0)  # measured again, a curve keeps its reach

    def measure():
        points = dict.fromkeys(cost_points(top - 1), float("inf"))
        forward = Forwards(target, batch, max(points))
        for _ in range(3):  # interleaved, min of 3: a load spike on a shared machine hits all points alike
            for t in points:
                points[t] = min(points[t], forward(t, keep=0))
        return dict(verify_s=points)
    entry = price_entry("target", target, batch, measure, fresh, lambda e: reach(e) >= need)
    return {int(t): s for t, s in entry["verify_s"].items()}


def draft_step(draft, batch, fresh=False) -> float:
    """Seconds of the draft's one-token forward (0 without a draft model: prompt lookup is priced as free)."""
    if draft is None:
        return 0.0
    def measure():
        forward = Forwards(draft, batch)
        return dict(step_s=min(forward(1) for _ in range(5)))
    return price_entry("draft", draft, batch, measure, fresh)["step_s"]


def reach(entry) -> int:
    return max(map(int, entry["verify_s"]))


def padding(points: dict) -> dict:
    """{T: rows}: the forward each T <= DENSE runs as, among the measured DENSE >= T' >= T: the smallest whose cost
    is within PAD_GAIN of the cheapest of them (a forward over more tokens is worth it only when clearly cheaper)."""
    points = {int(t): s for t, s in points.items() if int(t) <= DENSE}
    rows = {}
    for t in points:
        later = {u: s for u, s in points.items() if u >= t}
        cheapest = min(later.values())
        rows[t] = min(u for u, s in later.items() if s <= cheapest * (1 + PAD_GAIN))
    return rows


def priced(points: dict, draft_s: float, high: int) -> dict:
    """{"verify_s": [unused, T=1, ..., T=high+1], "draft_s": s}: every T at the forward the engine runs for it
    (padded up to DENSE; beyond, linear between measured points), what auto's model reads."""
    points = {int(t): s for t, s in points.items()}
    rows = padding(points)  # also absorbs load noise: a point above a later one is priced at the later one
    return dict(verify_s=interpolate({t: points[rows.get(t, t)] for t in points}, high + 1), draft_s=draft_s)


def prices(target, draft, batch, high) -> dict:
    """The price list for rounds of K <= high of (target, draft model or None) at `batch`, measured when absent."""
    return priced(target_curve(target, batch, high + 1), draft_step(draft, batch), high)


def padded_rows(target, batch, fresh=False) -> dict:
    """{T: rows} for the engine's target forwards over T <= DENSE tokens (the same for every generation of this
    target, with or without a draft). Off the measured linear path (SPECDEC_LINEAR=off, or not a CPU) every T runs
    as itself."""
    if mode() == "off" or target.device.type != "cpu":
        return {}
    return padding(target_curve(target, batch, DENSE, fresh))


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
    step = 0.0 if draft is None else table().get(entry_key("draft", draft, batch), {}).get("step_s")
    high = max(ks, default=0)
    if curve is None or step is None or reach(curve) < high + 1:
        return None
    costs = priced(curve["verify_s"], step, high)
    return sum(k * costs["draft_s"] + costs["verify_s"][k + 1] + ROUND_S for k in ks)


def remeasure(target, draft, batch):
    """Measure again the cached prices of these models and batch (outside any timed run)."""
    if entry_key("target", target, batch) in table():
        target_curve(target, batch, fresh=True)
    if draft is not None and entry_key("draft", draft, batch) in table():
        draft_step(draft, batch, fresh=True)


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
