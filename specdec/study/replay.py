"""K policies replayed on recorded greedy generations at the machine's price list: what every fixed K and auto would
cost on the same prompts, with no timing noise.

Under greedy decoding a generation's tokens are the target's alone, whatever K ran, so one teacher-forced forward of
the draft over prompt + output says, for every new position, whether the draft's greedy token there is the target's
(`agreement`). A round that starts at new position i and drafts K accepts the run of agreements from i, up to K, as
the engine would (up to the draft's near ties: a forward over the whole sequence rounds differently from the engine's
cached steps), and costs what the price list says (specdec.costs: K draft steps, a target forward over K + 1 tokens,
the engine's per-round overhead), plus the draft's prefill once when a generation drafts. `replay` plays any K policy
(specdec.policy) over such a trace, the way the engine drives it; `compare` tabulates every fixed K and auto against
the target alone, and auto against the best fixed K and against each prompt's best, on the same prompts.

Why: the timed comparison of auto with fixed K (notebook 01's oracle) needs every K timed twice on the same prompts,
so it runs on a handful of them and carries the machine's noise; a replay covers every headline prompt and every K,
at the cost of one draft forward per prompt. What it leaves out: what a round costs beyond its price (the machine's
drift, the drafter's own work), which the timed comparisons carry and auto's observe() corrects for.
"""
import numpy as np
import pandas as pd
import torch

from .. import costs
from ..policy import AutoK, FixedK, round_price
from .population import geomean, parsed
from .prompts import encode
from .stats import geomean_speedup


def agreement(draft, prompt: list, output: list) -> list:
    """Per token of `output`: 1 where the draft's greedy token at that position, given the prompt and the output
    before it, is that token, else 0."""
    with torch.inference_mode():
        logits = draft(torch.tensor([prompt + output], device=draft.device)).logits[0]
    guess = logits[len(prompt) - 1: len(prompt) + len(output) - 1].argmax(-1).tolist()
    return [int(g == t) for g, t in zip(guess, output)]


def traces(pair, prompts, rows, max_new_tokens) -> list:
    """One trace per prompt that has an ok greedy generation of `max_new_tokens` in `rows` (any mode: greedy output
    is the target's): prompt_id, category, prompt_tokens, match (agreement of pair.draft with that output)."""
    ok = rows[(rows["status"] == "ok") & (rows["temperature"] == 0) & (rows["batch_size"] == 1)
              & (rows["max_new_tokens"] == max_new_tokens)]
    out = []
    for q in prompts:
        done = ok[ok["prompt_id"] == q["id"]]
        if len(done):
            ids, output = encode(pair.tokenizer, q), parsed(done["tokens"].iloc[0])[0]
            out.append(dict(prompt_id=q["id"], category=q["category"], prompt_tokens=len(ids),
                            match=agreement(pair.draft, ids, output)))
    return out


def replay(policy, match, prompt_tokens, prices) -> tuple:
    """(seconds, K of every round) of the decode phase when `policy` generates len(match) tokens whose agreement
    with the draft is `match`, at `prices` (specdec.costs.prices). As the engine: the first token comes from the
    target's prefill, FixedK(0) or a policy whose drafts() says no runs the target alone (no draft prefill either),
    and no round drafts past the last token."""
    k = policy.begin(1, lambda high: prices)
    drafting = policy.k_max > 0 and getattr(policy, "drafts", lambda *_: True)(prompt_tokens, len(match))
    seconds, made, ks = prices["draft_prefill_s"] * prompt_tokens if drafting else 0.0, 1, []
    while made < len(match):
        k = min(k if drafting else 0, len(match) - made - 1)
        accepted = next((i for i in range(k) if not match[made + i]), k)
        cost = round_price(prices, k) + costs.ROUND_S
        seconds, made = seconds + cost, made + accepted + 1
        ks.append(k)
        if drafting:
            if hasattr(policy, "observe"):
                policy.observe(k, cost)
            k = policy.next_k(k, [accepted])
    return seconds, ks


def speedups(traces, prices, policies: dict) -> pd.DataFrame:
    """Per trace and policy (name: a function making a fresh one): the target alone's seconds over the policy's,
    and its mean K."""
    lines = []
    for t in traces:
        alone, _ = replay(FixedK(0), t["match"], t["prompt_tokens"], prices)
        for name, make in policies.items():
            seconds, ks = replay(make(), t["match"], t["prompt_tokens"], prices)
            lines.append(dict(prompt_id=t["prompt_id"], category=t["category"], policy=name,
                              speedup=alone / seconds, mean_k=np.mean(ks) if ks else 0.0))
    return pd.DataFrame(lines)


FIXED, AUTO, VS_BEST, VS_OWN = "fixed", "auto", "auto vs best fixed K", "auto vs per-prompt best K"
COLUMNS = ["policy", "k", "prompts", "speedup", "speedup_lo", "speedup_hi", "mean_k"]


def compare(traces, prices, high=8) -> pd.DataFrame:
    """Every policy replayed on `traces` at `prices`, one line each (COLUMNS): FIXED at k = 1..high and AUTO, with
    speedup / speedup_lo / speedup_hi over the target alone (geometric mean over prompts; the interval is over
    prompts within categories) and mean_k; then VS_BEST (auto over the one K best over all prompts, which is k: auto's
    strictest single-K rival) and VS_OWN (auto over each prompt's best K, known only in hindsight), both per prompt."""
    if not traces:  # no greedy generation finished: nothing to replay
        return pd.DataFrame(columns=COLUMNS)
    policies = {k: (lambda k=k: FixedK(k)) for k in range(1, high + 1)} | {AUTO: lambda: AutoK(high)}
    s = speedups(traces, prices, policies).pivot(index=["prompt_id", "category"], columns="policy")
    cats = s.index.get_level_values("category")
    est = lambda ratios: geomean_speedup([(np.array([r]), np.ones(1)) for r in ratios], cats)
    line = lambda policy, k, ratios, mean_k=np.nan: dict(zip(COLUMNS, (policy, k, len(s), *est(ratios), mean_k)))
    fixed = s["speedup"].drop(columns=AUTO)
    best = max(fixed, key=lambda k: geomean(fixed[k]))
    auto = s["speedup"][AUTO]
    return pd.DataFrame([line(FIXED, k, fixed[k], s["mean_k"][k].mean()) for k in fixed]
                        + [line(AUTO, np.nan, auto, s["mean_k"][AUTO].mean()),
                           line(VS_BEST, best, auto / fixed[best]), line(VS_OWN, np.nan, auto / fixed.max(axis=1))])


def on_pair(pair, prompts, rows, max_new_tokens, high=8) -> pd.DataFrame:
    """compare() on the pair's recorded greedy generations of `prompts` (traces), at this machine's price list for
    the pair at batch 1 (the one auto reads)."""
    return compare(traces(pair, prompts, rows, max_new_tokens), costs.prices(pair.target, pair.draft, 1, high), high)
