"""How K is chosen: the one protocol every K policy follows, the three policies, and `resolve`, the only place
where the user's `k` (an int, "adaptive", "auto" or a policy object) becomes a policy.

    begin(batch, prices) -> k             once per generation, before the timed run: the first round's K;
                                          prices(high) is the machine's price list for rounds of K <= high
    observe(k, seconds)                   optional, after each round, before next_k: the round's wall time
    next_k(k, accepted) -> k              after each round; accepted[b]: drafts row b accepted, None if finished
    k_max                                 the largest K it may return (sizes the arenas)
    label                                 "fixed", "adaptive" or "auto": what results call it
    drafts(prompt_tokens, new_tokens)     optional, after begin: False to run this generation without the draft
                                          (its prefill included); a policy without it always drafts

FixedK is a constant K. AdaptiveK is Hugging Face's heuristic schedule. AutoK ("auto") picks the K of each
round from what a round costs on this machine and how well rows accept:

Model of one round at batch B with K drafts: it costs K * draft_s + verify_s[K+1] (a draft step, and a
target forward over K+1 tokens per row) and row b gains on average 1 + a_b + a_b^2 + ... + a_b^K tokens,
where a_b is the row's acceptance probability per draft. The round picks the K in 0..high maximising
(sum of expected tokens) / (round cost); K = 0 is the target alone for that round, chosen when no K pays.
a_b is known only from a few rounds, so the expectation is taken over what those rounds allow (a Beta posterior of
the row's decayed counts), not at their mean: tokens are convex in a_b, so an uncertain row is worth drafting a
little deeper than its mean says. Why: with the mean alone and a faster DECAY (0.7), two rejected drafts at float32
prices (K=2 pays from a = 0.6, a forward over 5 tokens costs 1.7x one over 3) dropped well-accepting rows to K=1 and
K=0, and runs of acceptances lifted them to K=8. Replayed (specdec.study.replay) on the 64 prompts' greedy traces of
the int4 pair, 32-96 tokens: at the committed float32 prices auto ran 0.956-0.964x the best fixed K before, 0.974-0.978x
with the posterior and DECAY 0.9; at the int4 prices 0.979-0.986x before, 0.991-0.997x now.

Costs: the machine's price list (specdec.costs: the target curve, every T at its padded forward, and the draft
step), handed to begin() by the engine outside the timed generation; auto never measures a forward itself. The
list gives the whole curve before the first round, but its shape drifts with the machine's state by more than a
calibration's noise (data/cpu/price_list_repeat), and a round costs a little more than its forwards (proposing,
accepting, rolling back). So each round's wall time, which the engine reports (observe), scales its K's price: per
K, a decaying mean of measured over priced seconds; a K not run yet takes the mean of those run (drafting K's apart
from K=0). A round only measures the K it ran, so while drafting, every CHECK_EVERY-th round runs at K=0 (cheap: a
round of the target alone), and drafting is judged against the target alone as it runs now, not as it was priced.

Whether to draft at all: the draft's prefill is a cost only speculation pays, and with few new tokens after a long
prompt, or a draft barely cheaper than the target, rounds cannot win it back. Before the prefill, the most K drafts
could save over the generation (every draft accepted) is weighed against the prefill's price; when even that does
not cover it, the generation is the target alone, K = 0 in every round, and no draft work at all. Not the prior:
rows accept in bursts, and on long prompts (RAG, summarization: 450-600 tokens) the prior's expected saving falls
short of the prefill's price where the committed float32 study measured auto 1.2-1.3x faster, prefill charged.

Acceptance: per row an exponentially weighted count of accepted drafts over drafts tried (a prior of PRIOR worth
PRIOR_WEIGHT drafts), updated from rounds where the row drafted. A round at K=0 gives no evidence, so it moves the
estimate back toward the row's rate over the whole generation so far: rows accept in bursts, and two rejected
rounds would otherwise hold the target alone until the next probe (seen at int4 on a Zen 4: auto at mean K 1.05
where a fixed K=2 ran 1.14x the target alone). That drift cannot lift an estimate past what the row has shown, so
the first round, where the prior alone would pick K=0, drafts one token (a probe), and so does the FIRST_PROBE-th
round in a row that would run at K=0, then the one twice as far, up to every PROBE_EVERY-th (each probe the
estimate does not follow doubles the wait; a round that drafts on its own merit resets it), unless no K could pay
even with every draft accepted. Why back off rather than wait PROBE_EVERY from the start: one rejected first draft
put the estimate under break-even, and at int4 on a Zen 4 generations whose drafts then accepted 87% sat 6-7 rounds
at K=0 (a tenth of a 64-token generation) before probing.
"""
MAX_K = 64  # beyond this a draft is never worth it; a bigger k is almost surely a typo
PRIOR, PRIOR_WEIGHT = 0.6, 2.0  # a draft from the same family accepts roughly this often before any evidence
DECAY = 0.9                     # weight of past rounds per round: a row's estimate rests on its last ~10 rounds
FIRST_PROBE, PROBE_EVERY = 2, 8  # the FIRST_PROBE-th round in a row at K=0 probes; each probe doubles it, to PROBE_EVERY
COST_DECAY = 0.8                # weight of a K's earlier rounds in its measured / priced ratio
CHECK_EVERY = 16                # while drafting, a round at K=0 this often: the target alone measured now


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

    def begin(self, batch: int, prices) -> int:
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

    def begin(self, batch: int, prices) -> int:
        return self.start

    def next_k(self, k: int, accepted: list) -> int:
        accepted = [a for a in accepted if a is not None]
        if accepted and all(a == k for a in accepted):
            return min(k + 2, self.k_max)
        return max(k - 1, self.low)


# -- auto: the K model ------------------------------------------------------------------------------------

def expected_tokens(alpha: float, k: int, weight: float | None = None) -> float:
    """Tokens a row gains in a round of K drafts, each accepted with probability alpha (the first rejection ends
    the row's round; the target's own token always comes). With `weight` (the drafts alpha was measured on), the
    mean over alpha ~ Beta(alpha * weight, (1 - alpha) * weight), whose i-th moment is
    prod_{j<i} (alpha * weight + j) / (weight + j)."""
    total, moment = 1.0, 1.0
    for j in range(k):
        moment *= alpha if weight is None else (alpha * weight + j) / (weight + j)
        total += moment
    return total


def round_price(costs: dict, k: int) -> float:
    """Seconds a round of K drafts is priced at: K draft steps and a target forward over K + 1 tokens."""
    return k * costs["draft_s"] + costs["verify_s"][k + 1]


def best_k(alphas, verify_s, draft_s, high, scales=None, weights=None) -> int:
    """The K in 0..high with the most expected tokens per second over the rows' `alphas` (each measured on
    weights[b] drafts; exact without `weights`), a round of K at its price (round_price) times scales[K] (1
    without)."""
    costs, scales = dict(verify_s=verify_s, draft_s=draft_s), scales or [1.0] * (high + 1)
    weights = weights or [None] * len(alphas)
    tokens = lambda k: sum(expected_tokens(a, k, w) for a, w in zip(alphas, weights))
    rate = lambda k: tokens(k) / (round_price(costs, k) * scales[k])
    return max(range(high + 1), key=rate)


class AutoK:
    """The cost-based K policy (see the module docstring). `costs` replaces the machine's price list (tests, or
    a caller that priced rounds already): {"verify_s": [unused, T=1, T=2, ...], "draft_s": seconds}."""
    label = "auto"

    def __init__(self, high: int = 8, costs: dict | None = None):
        if not 1 <= high <= MAX_K:
            raise ValueError(f"AutoK needs 1 <= high <= {MAX_K} (the largest K it may pick); got high={high}")
        self.k_max, self.given = high, costs

    def begin(self, batch: int, prices) -> int:
        """Take this generation's prices (the given ones, else the machine's) and pick the first round's K from
        the prior."""
        self.costs = self.given or prices(self.k_max)
        if len(self.costs["verify_s"]) < self.k_max + 2:
            raise ValueError(f"costs['verify_s'] needs entries for T = 1..{self.k_max + 1} (index 0 unused)")
        self.accepted = [PRIOR * PRIOR_WEIGHT] * batch
        self.tried = [PRIOR_WEIGHT] * batch
        self.accepted_all, self.tried_all = list(self.accepted), list(self.tried)  # this generation's, undecayed
        self.idle_rounds, self.probe_wait = 0, FIRST_PROBE
        self.ratios = {}  # K: (weight, weighted sum) of its rounds' measured / priced seconds
        first = self.pick(range(batch))
        if first == 0 and self.pick(range(batch), alpha=1.0) > 0:
            first = 1  # the prior is a guess and a round at K=0 learns nothing: probe now, not PROBE_EVERY rounds in
        self.drafting_rounds = CHECK_EVERY - 1  # a first round that drafts is followed by a K=0 check
        return first

    def drafts(self, prompt_tokens: int, new_tokens: int) -> bool:
        """Whether K drafts, every one accepted, could save more over `new_tokens` than the draft's prefill over
        `prompt_tokens` (the batch's longest prompt) costs. A free prefill (prompt lookup, or no price for it) is
        always worth it: the rounds decide, probes included."""
        prefill = self.costs.get("draft_prefill_s", 0.0) * prompt_tokens
        verify, draft_s = self.costs["verify_s"], self.costs["draft_s"]
        k = best_k([1.0], verify, draft_s, self.k_max)
        saved = new_tokens * (verify[1] - round_price(self.costs, k) / expected_tokens(1.0, k))
        return prefill == 0 or saved > prefill

    def observe(self, k: int, seconds: float):
        """A round of K took `seconds` (the engine's wall time of the whole round)."""
        weight, total = self.ratios.get(k, (0.0, 0.0))
        self.ratios[k] = (COST_DECAY * weight + 1, COST_DECAY * total + seconds / round_price(self.costs, k))

    def scales(self) -> list:
        """Per K in 0..k_max, its measured / priced seconds. A K not run yet takes the mean over the K's run that
        draft as it does (K > 0 rounds pay the drafter's own overhead, K = 0 rounds do not), else over all run; 1
        before any."""
        seen = {j: total / weight for j, (weight, total) in self.ratios.items()}

        def of(k):
            alike = [r for j, r in seen.items() if (j > 0) == (k > 0)] or list(seen.values())
            return seen.get(k, sum(alike) / len(alike) if alike else 1.0)
        return [of(k) for k in range(self.k_max + 1)]

    def alpha(self, b) -> float:
        return self.accepted[b] / self.tried[b]

    def pick(self, rows, alpha=None) -> int:
        """The best K for `rows` at their estimates (over their posteriors), or all at `alpha` exactly."""
        rows = list(rows)
        alphas = [self.alpha(b) if alpha is None else alpha for b in rows]
        weights = [self.tried[b] for b in rows] if alpha is None else None
        return best_k(alphas, self.costs["verify_s"], self.costs["draft_s"], self.k_max, self.scales(),
                      weights) if alphas else 0

    def next_k(self, k: int, accepted: list) -> int:
        rows = [b for b, a in enumerate(accepted) if a is not None]
        for b in rows:
            if k:  # drafts tried: up to and including the first rejection
                tried = min(accepted[b] + 1, k)
                self.accepted[b] = DECAY * self.accepted[b] + accepted[b]
                self.tried[b] = DECAY * self.tried[b] + tried
                self.accepted_all[b] += accepted[b]
                self.tried_all[b] += tried
            else:  # no evidence: the estimate drifts back to the row's rate over this generation (one draft's weight)
                self.accepted[b] = DECAY * self.accepted[b] + self.accepted_all[b] / self.tried_all[b]
                self.tried[b] = DECAY * self.tried[b] + 1
        choice = self.pick(rows)
        self.idle_rounds = self.idle_rounds + 1 if choice == 0 else 0
        if choice:
            self.probe_wait = FIRST_PROBE  # drafting on the estimate's own merit: the next pause probes early again
        elif self.idle_rounds >= self.probe_wait and self.pick(rows, alpha=1.0) > 0:
            choice, self.idle_rounds = 1, 0  # probe: a row's acceptance may have recovered
            self.probe_wait = min(2 * self.probe_wait, PROBE_EVERY)
        self.drafting_rounds = self.drafting_rounds + 1 if choice else 0
        if self.drafting_rounds > CHECK_EVERY - 1 and self.ratios:  # only where rounds are timed (observe)
            choice, self.drafting_rounds = 0, 0  # check: the target alone's round as the machine runs it now
        return choice
