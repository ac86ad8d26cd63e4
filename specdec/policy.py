"""How K is chosen: the one protocol every K policy follows, the three policies, and `resolve`, the only place
where the user's `k` (an int, "adaptive", "auto" or a policy object) becomes a policy.

    begin(target, drafter, batch) -> k    once per generation, before the timed run: the first round's K
    next_k(k, accepted) -> k              after each round; accepted[b]: drafts row b accepted, None if finished
    k_max                                 the largest K it may return (sizes the arenas)
    label                                 "fixed", "adaptive" or "auto": what results call it

FixedK is a constant K. AdaptiveK is Hugging Face's heuristic schedule. AutoK ("auto") picks the K of each
round from what a round costs on this machine and how well rows accept:

Model of one round at batch B with K drafts: it costs K * draft_s + verify_s[K+1] (a draft step, and a
target forward over K+1 tokens per row) and row b gains on average 1 + a_b + a_b^2 + ... + a_b^K tokens,
where a_b is the row's acceptance probability per draft. The round picks the K in 0..high maximising
(sum of expected tokens) / (round cost); K = 0 is the target alone for that round, chosen when no K pays.

Costs: measured once per (machine, model, dtype, batch, linear path) by timing a few cache-free forwards
(target over T = 1, 2, 3, 5, 9, ... tokens, interpolated between; draft over 1 token) and cached in JSON
under specdec.machine.cache_root(). Why not online from the rounds' wall time: a round only measures the
K it ran, so the curve for the other K's would need exploration rounds that cost real tokens; a one-off
calibration of ~15 forwards gives the whole curve before the first round, and the cache makes it cost
nothing on the next run. The calibration runs in begin(), outside the timed generation.

Acceptance: per row an exponentially weighted count of accepted drafts over drafts tried (a prior of
PRIOR worth PRIOR_WEIGHT drafts), updated from rounds where the row drafted. A batch at K=0 learns
nothing, so after PROBE_EVERY such rounds it drafts one token (a probe), unless no K could pay even
with every draft accepted.
"""
import torch

from . import calibration
from .linear import fast_linears, mode, plan_key
from .machine import read_cache, write_cache
from .profiler import time_forward

MAX_K = 64  # beyond this a draft is never worth it; a bigger k is almost surely a typo
PRIOR, PRIOR_WEIGHT = 0.6, 2.0  # a draft from the same family accepts roughly this often before any evidence
DECAY = 0.7                     # weight of past rounds per round: a row's acceptance moves within ~3 rounds
PROBE_EVERY = 8
COSTS = "autok-costs.json"  # under specdec.machine.cache_root()
# The loop's own host work per round (sampling, bookkeeping, the one device read), which the timed forwards leave
# out: ~1.5 ms measured on a 2-core EPYC with the tiny test models. Only `predict` adds it (it is a few ms against
# rounds of 100+ ms on real models, so it does not change which K auto picks).
ROUND_S = 0.002


def resolve(k, drafting=True):
    """The policy for `k`: an int 1..MAX_K, "adaptive", "auto", or an object that follows the protocol.
    Without a drafter (`drafting` False) K is 0 whatever `k` says: the target alone."""
    if not drafting:
        return FixedK(0)
    if k == "auto":
        return AutoK()
    if k == "adaptive":
        return AdaptiveK()
    if all(hasattr(k, name) for name in ("begin", "next_k", "k_max", "label")):
        return k
    if isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_K:
        return FixedK(k)
    raise ValueError(f"k={k!r} is out of range: use an int in 1..{MAX_K} (typical: 2..8), 'auto' (chosen per round "
                     f"from measured costs), 'adaptive' (HF's +2/-1 schedule), or a policy object (specdec.policy)")


class FixedK:
    """The same K every round."""
    label = "fixed"

    def __init__(self, k: int):
        self.k_max = k

    def begin(self, target, drafter, batch: int) -> int:
        return self.k_max

    def next_k(self, k: int, accepted: list) -> int:
        return self.k_max


class AdaptiveK:
    """Dynamic K, Hugging Face's heuristic schedule per batch: +2 after a round in which every
    unfinished row accepted all K drafts, -1 (not below `low`) after any other round."""
    label = "adaptive"

    def __init__(self, start: int = 4, low: int = 1, high: int = 16):
        if not 1 <= low <= start <= high <= MAX_K:
            raise ValueError(f"AdaptiveK needs 1 <= low <= start <= high <= {MAX_K}; got low={low}, start={start}, "
                             f"high={high}")
        self.start, self.low, self.k_max = start, low, high

    def begin(self, target, drafter, batch: int) -> int:
        return self.start

    def next_k(self, k: int, accepted: list) -> int:
        accepted = [a for a in accepted if a is not None]
        if accepted and all(a == k for a in accepted):
            return min(k + 2, self.k_max)
        return max(k - 1, self.low)


# -- auto: the cost model ------------------------------------------------------------------------------------

def expected_tokens(alpha: float, k: int) -> float:
    """Tokens a row gains in a round of K drafts, each accepted with probability alpha (the first
    rejection ends the row's round; the target's own token always comes)."""
    return sum(alpha**i for i in range(k + 1))


def best_k(alphas, verify_s, draft_s, high) -> int:
    """The K in 0..high with the most expected tokens per second over the rows' `alphas`."""
    rate = lambda k: sum(expected_tokens(a, k) for a in alphas) / (k * draft_s + verify_s[k + 1])
    return max(range(high + 1), key=rate)


def cost_points(high):
    points, t = [], 1
    while t < high + 1:
        points.append(t)
        t = 2 * t - 1 if t > 1 else 2  # 1, 2, 3, 5, 9, 17: dense where the curve bends
    return points + [high + 1]


def model_key(model) -> str:
    c = model.config.get_text_config()
    shape = [getattr(c, n, None) for n in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size")]
    return f"{type(model).__name__} {shape} {model.dtype} {model.device.type}"


def cost_prefix(target, draft, batch) -> str:
    """What a cost curve holds for (the start of its cache key): machine, models, batch size, linear path."""
    return f"{plan_key()} | {model_key(target)} | {None if draft is None else model_key(draft)} | " \
           f"batch {batch} | linear {mode()} |"


def measure_costs(target, draft, batch, high, fresh=False) -> dict:
    """{"verify_s": [unused, T=1, ...], "draft_s": s} for this batch size, from a cache file when present
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
    return curve(entry, high)


def curve(entry, high) -> dict:
    points = {int(t): s for t, s in entry["verify_s"].items()}
    # A forward over more tokens is never cheaper: a point above a later one is load noise (a spike), so
    # each point is lowered to the cheapest at or after it.
    points = {t: min(s for u, s in points.items() if u >= t) for t in points}
    return dict(verify_s=interpolate(points, high + 1), draft_s=entry["draft_s"])


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
        measure_costs(target, draft, batch, int(key.rsplit("high ", 1)[1]), fresh=True)


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


class AutoK:
    """The cost-based K policy (see the module docstring). `costs` skips the measurement (tests, or a
    caller that measured already): {"verify_s": [unused, T=1, T=2, ...], "draft_s": seconds}."""
    label = "auto"

    def __init__(self, high: int = 8, costs: dict | None = None):
        if not 1 <= high <= MAX_K:
            raise ValueError(f"AutoK needs 1 <= high <= {MAX_K} (the largest K it may pick); got high={high}")
        self.k_max, self.costs = high, costs

    def begin(self, target, drafter, batch: int) -> int:
        """Measure (or load) the costs and pick the first round's K from the prior."""
        if self.costs is None:
            self.costs = measure_costs(target, getattr(drafter, "model", None), batch, self.k_max)
        if len(self.costs["verify_s"]) < self.k_max + 2:
            raise ValueError(f"costs['verify_s'] needs entries for T = 1..{self.k_max + 1} (index 0 unused)")
        self.accepted = [PRIOR * PRIOR_WEIGHT] * batch
        self.tried = [PRIOR_WEIGHT] * batch
        self.idle_rounds = 0
        return self.pick(range(batch))

    def alpha(self, b) -> float:
        return self.accepted[b] / self.tried[b]

    def pick(self, rows, alpha=None) -> int:
        alphas = [self.alpha(b) if alpha is None else alpha for b in rows]
        return best_k(alphas, self.costs["verify_s"], self.costs["draft_s"], self.k_max) if alphas else 0

    def next_k(self, k: int, accepted: list) -> int:
        rows = [b for b, a in enumerate(accepted) if a is not None]
        if k:
            for b in rows:  # drafts tried: up to and including the first rejection
                self.accepted[b] = DECAY * self.accepted[b] + accepted[b]
                self.tried[b] = DECAY * self.tried[b] + min(accepted[b] + 1, k)
        choice = self.pick(rows)
        self.idle_rounds = self.idle_rounds + 1 if choice == 0 else 0
        if self.idle_rounds >= PROBE_EVERY and self.pick(rows, alpha=1.0) > 0:
            choice, self.idle_rounds = 1, 0  # probe: a row's acceptance may have recovered
        return choice
