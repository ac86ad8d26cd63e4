"""The prompt-population experiment: how much auto K gains over the target alone across many prompts (categories
x prompts, 1-3 repeats each), which of that spread is prompts and which is repeats, what a fixed K or a per-prompt
oracle would have given, and how acceptance falls along the drafted positions.

Every function takes the rows (one per timed generation, specdec.study.results) and returns a DataFrame that the
notebook saves as CSV. Only ok rows count; speedups are paired by block (a mode's run on a prompt over the
reference's run on the same prompt, timed back to back: pairing.py) and default to greedy rows (temperature 0),
where acceptance is the same in every repeat and only timing varies. Intervals: stats.geomean_speedup (a t interval
over prompts of each prompt's paired ratio, stratified by category).
"""
import json

import numpy as np
import pandas as pd

from .modes import BASELINE, SPECULATIVE
from .results import decode_throughput
from .stats import NAN, geomean_speedup

AUTO = "auto"
OVERALL = "overall"  # the category line over all prompts (stratified by category)
DECODE = "decode_throughput"
ONE = np.ones(1)  # the reference side of a ratio already paired
GROUP = ["mode", "k", "category"]  # a configuration (k: the cell's fixed K, NaN for auto) and a category


# -- rows -------------------------------------------------------------------------------------------------------

def ok_rows(rows, temperature=0.0) -> pd.DataFrame:
    """The ok rows at `temperature` (None: every temperature), with decode_throughput (results.decode_throughput: the
    decode phase alone, the draft's prefill charged) where the rows lack it."""
    r = pd.DataFrame(rows)
    r = r[r["status"] == "ok"].copy()
    for col in ("seconds", "decode_seconds", "prefill_s", "new_tokens", "batch_size", "throughput", "temperature", "k"):
        if col in r:  # null-only columns load as object
            r[col] = pd.to_numeric(r[col], errors="coerce")
    if temperature is not None and "temperature" in r:
        r = r[np.isclose(r["temperature"], temperature)]
    if DECODE not in r:
        r[DECODE] = decode_throughput(r)
    return r


def select(r, mode, k=None) -> pd.DataFrame:
    """One configuration's rows; a mode with several fixed K (speculative) needs its `k`."""
    s = r[r["mode"] == mode]
    if k is not None:
        return s[s["k"] == k]
    if s["k"].nunique() > 1:
        raise ValueError(f"mode {mode!r} has rows at K {sorted(s['k'].dropna().unique())}: pass k=")
    return s


def blocks(r, mode, reference, metric, k=None) -> pd.DataFrame:
    """block_ratios of one configuration's rows over another's (`select`)."""
    return block_ratios(select(r, mode, k), select(r, reference), metric)


def block_ratios(m, ref, metric) -> pd.DataFrame:
    """Per prompt and iteration both sides ran (one block of pairing.py: timed back to back): prompt_id, iteration,
    category, m and ref (`metric` of each side: `m`'s and `ref`'s rows) and ratio = m / ref."""
    at = lambda s: s.groupby(["prompt_id", "iteration"])[metric].mean()
    both = pd.concat([at(m).rename("m"), at(ref).rename("ref")], axis=1).dropna()
    category = pd.concat([m, ref]).drop_duplicates("prompt_id").set_index("prompt_id")["category"]
    both = both.reset_index()
    return both.assign(category=both["prompt_id"].map(category), ratio=both["m"] / both["ref"])


def paired(r, mode, reference, metric, k=None) -> pd.DataFrame:
    """paired_runs of one configuration's rows over another's (`select`)."""
    return paired_runs(select(r, mode, k), select(r, reference), metric)


def paired_runs(m, ref, metric) -> pd.DataFrame:
    """Runs paired into speedups (the population tables' and llamacpp.summary's pairing): per prompt with a block
    of both sides (`m`'s and `ref`'s rows, with prompt_id, iteration, category): prompt_id, category, mode_runs and
    reference_runs (arrays of `metric`, aligned by iteration) and ratios (m's run / ref's run, block by block)."""
    b = block_ratios(m, ref, metric)
    # one dict per group, not groupby.agg: pandas 3.0 refuses an aggregation that returns an array
    return pd.DataFrame([dict(prompt_id=p, category=g["category"].iloc[0], mode_runs=g["m"].to_numpy(float),
                              reference_runs=g["ref"].to_numpy(float), ratios=g["ratio"].to_numpy(float))
                         for p, g in b.groupby("prompt_id", sort=True)],
                        columns=["prompt_id", "category", "mode_runs", "reference_runs", "ratios"])


def geomean(x) -> float:
    x = np.asarray(list(x), float)
    return float(np.exp(np.log(x).mean())) if len(x) else np.nan


def estimate(d):
    """geomean_speedup of a `paired` frame's per-block ratios, stratified by its categories: the geometric mean
    over prompts of each prompt's mean ratio; the interval is over prompts (each prompt's ratio
    carries its pairs' noise)."""
    return geomean_speedup([(x, ONE) for x in d["ratios"]], d["category"])


def categories_then_overall(cats):
    return sorted(set(cats) - {OVERALL}) + [OVERALL]


# -- 1. speedup over the target alone -------------------------------------------------------------------------

def speedup_table(rows, mode=AUTO, reference=BASELINE, metric=DECODE, k=None, temperature=0.0) -> pd.DataFrame:
    """One line per category and an 'overall' one (all prompts, stratified by category): metric, prompts, runs_min /
    runs_max (runs per prompt, either configuration), speedup / speedup_lo / speedup_hi (geometric mean over
    prompts of `metric`, 95%), e2e_speedup / e2e_lo / e2e_hi (the same for end-to-end throughput, prefill
    included), and mode_decode_tok_s / reference_decode_tok_s (geometric means over prompts of each prompt's
    mean decode tok/s)."""
    r = ok_rows(rows, temperature)
    d, e2e = paired(r, mode, reference, metric, k), paired(r, mode, reference, "throughput", k)
    tok = d if metric == DECODE else paired(r, mode, reference, DECODE, k)
    lines = []
    for cat in categories_then_overall(d["category"]) if len(d) else []:
        c = d if cat == OVERALL else d[d["category"] == cat]
        same = lambda f: f[f["prompt_id"].isin(c["prompt_id"])]  # the other metrics on the same prompts
        e, t = same(e2e), same(tok)
        s, ee = estimate(c), estimate(e)
        runs = np.concatenate([c["mode_runs"].map(len), c["reference_runs"].map(len)])
        lines.append(dict(category=cat, mode=mode, k=k, reference=reference, metric=metric, prompts=len(c),
                          runs_min=runs.min(), runs_max=runs.max(), speedup=s.est, speedup_lo=s.lo, speedup_hi=s.hi,
                          e2e_speedup=ee.est, e2e_lo=ee.lo, e2e_hi=ee.hi,
                          mode_decode_tok_s=geomean(t["mode_runs"].map(np.mean)),
                          reference_decode_tok_s=geomean(t["reference_runs"].map(np.mean))))
    return pd.DataFrame(lines)


def per_prompt(rows, mode=AUTO, reference=BASELINE, metric=DECODE, k=None, temperature=0.0) -> pd.DataFrame:
    """Per prompt: prompt_id, category, runs (the mode's), speedup (the mean of its per-block ratios),
    and repeat_min / repeat_max: the extremes of the ratios paired by iteration (NaN with fewer than 2)."""
    r = ok_rows(rows, temperature)
    d = paired(r, mode, reference, metric, k)
    several = d["ratios"].map(len) >= 2
    return pd.DataFrame(dict(prompt_id=d["prompt_id"], category=d["category"], runs=d["mode_runs"].map(len),
                             speedup=d["ratios"].map(np.mean), repeat_min=d["ratios"].map(np.min).where(several),
                             repeat_max=d["ratios"].map(np.max).where(several)))


def repeat_vs_prompt_variance(rows, mode=AUTO, reference=BASELINE, metric=DECODE, k=None,
                              temperature=0.0) -> pd.DataFrame:
    """One line, on the prompts with >= 2 iterations, in log speedup: repeat_var (between the repeats of a
    prompt, pooled), prompt_var (between prompts' true speedups: the variance of the prompt means less what
    their repeats add, floored at 0; includes differences between categories) and prompt_var_within_category
    (the same around each category's mean), their square roots (repeat_sd, prompt_sd, ~ relative spreads),
    and dominant: whichever of repeats and prompts moves a speedup more."""
    r = ok_rows(rows, temperature)
    it = blocks(r, mode, reference, metric, k).assign(log=lambda f: np.log(f["ratio"]))
    it = it[it.groupby("prompt_id")["log"].transform("size") >= 2]
    g = it.groupby("prompt_id")["log"]
    n, means = g.size(), g.mean()
    repeat_var = float(((n - 1) * g.var(ddof=1)).sum() / (n - 1).sum()) if len(n) else np.nan
    per_mean = repeat_var / float(np.mean(n)) if len(n) else np.nan  # what repeats add to a prompt's mean
    category = it.drop_duplicates("prompt_id").set_index("prompt_id")["category"].reindex(means.index)
    centred = means - means.groupby(category).transform("mean")
    within_df = len(means) - category.nunique()
    prompt_var = max(0.0, means.var(ddof=1) - per_mean) if len(means) >= 2 else np.nan
    within = max(0.0, (centred ** 2).sum() / within_df - per_mean) if within_df >= 1 else np.nan
    dominant = "unknown" if np.isnan(prompt_var) else "repeats" if repeat_var > prompt_var else "prompts"
    return pd.DataFrame([dict(mode=mode, k=k, reference=reference, prompts=len(n), iterations_min=n.min(),
                              iterations_max=n.max(), repeat_var=repeat_var, prompt_var=prompt_var,
                              prompt_var_within_category=within, repeat_sd=np.sqrt(repeat_var),
                              prompt_sd=np.sqrt(prompt_var), dominant=dominant)])


# -- 2. auto against the best fixed K and a per-prompt oracle ----------------------------------------------------

def fits(s, auto, prompts, choose, measure):
    """Per prompt, measured on iteration `measure`: the single K with the best geometric-mean speedup on `choose`,
    each prompt's own best K on `choose` (the oracle), and auto. `s`: (prompt, iteration) x K speedups."""
    at = lambda i: s.xs(i, level="iteration").reindex(prompts)
    chosen, measured = at(choose), at(measure)
    best = np.log(chosen).mean().idxmax()
    own = chosen.idxmax(axis=1)
    oracle = measured.to_numpy()[np.arange(len(prompts)), measured.columns.get_indexer(own)]
    auto = (auto.xs(measure, level="iteration").reindex(prompts).to_numpy() if len(auto)
            else np.full(len(prompts), np.nan))  # auto did not run: its columns stay NaN
    return dict(best=best, own=own, fixed=measured[best].to_numpy(), oracle=oracle, auto=auto)


def oracle(rows, fixed_mode=SPECULATIVE, auto=AUTO, reference=BASELINE, choose=0, measure=1, metric=DECODE,
           temperature=0.0) -> pd.DataFrame:
    """Auto against what a fixed K could have done, on the prompts with every fixed K (and auto, if it ran) on
    both iterations; every speedup is against the reference on the same prompt and iteration. Lines (strategy):
    'best fixed K' (the one K best on `choose`, measured on `measure`), 'per-prompt oracle' (each prompt's best K
    on `choose`, measured on `measure`), and each 'cross-fitted' (chosen on either iteration, measured on the
    other, per-prompt geometric mean of the two). Columns: chosen_on, measured_on, prompts, k (the K, or the
    oracle's mean K), speedup_*, auto_speedup / auto_lo / auto_hi (auto measured the same way) and auto_vs /
    auto_vs_lo / auto_vs_hi (auto / that strategy, per prompt, then geometric mean: > 1 means auto did better).
    Intervals are over prompts (stratified by category) given the choices: they leave out the luck of choosing."""
    r = ok_rows(rows, temperature)
    r = r[r["iteration"].isin([choose, measure])]
    mean = lambda f, keys: f.groupby(keys)[metric].mean()
    ref = mean(select(r, reference), ["prompt_id", "iteration"])
    fixed = r[r["mode"] == fixed_mode]
    s = mean(fixed, ["prompt_id", "iteration", "k"]).unstack("k").div(ref, axis=0).dropna()
    a = (mean(select(r, auto), ["prompt_id", "iteration"]) / ref).dropna()
    both = s.reset_index().groupby("prompt_id")["iteration"].nunique()
    prompts = [p for p in both.index[both == 2] if a.empty or ((p, choose) in a.index and (p, measure) in a.index)]
    if not prompts or choose == measure:
        return pd.DataFrame()
    category = r.drop_duplicates("prompt_id").set_index("prompt_id")["category"].reindex(prompts).to_numpy()
    # one value per prompt and side: the interval is over prompts only (a ratio num / den per prompt)
    interval = lambda num, den: geomean_speedup([([x], [y]) for x, y in zip(num, den)], category)
    ones = np.ones(len(prompts))
    f, g = fits(s, a, prompts, choose, measure), fits(s, a, prompts, measure, choose)
    cross = lambda key: np.sqrt(f[key] * g[key])  # the per-prompt geometric mean of both directions
    auto_here = interval(f["auto"], ones) if not a.empty else NAN
    auto_cross = interval(cross("auto"), ones) if not a.empty else NAN
    mean_k = lambda own: f"per prompt (mean {np.mean(own.to_numpy(float)):.1f})"
    lines = [("best fixed K", choose, measure, str(int(f["best"])), f["fixed"], f["auto"], auto_here),
             ("per-prompt oracle", choose, measure, mean_k(f["own"]), f["oracle"], f["auto"], auto_here),
             ("best fixed K, cross-fitted", "both", "both", f"{int(f['best'])} / {int(g['best'])}", cross("fixed"),
              cross("auto"), auto_cross),
             ("per-prompt oracle, cross-fitted", "both", "both", mean_k(pd.concat([f["own"], g["own"]])),
              cross("oracle"), cross("auto"), auto_cross)]
    out = []
    for strategy, chosen_on, measured_on, k, values, auto_values, auto_est in lines:
        e = interval(values, ones)
        vs = interval(auto_values, values) if not a.empty else NAN
        out.append(dict(strategy=strategy, chosen_on=chosen_on, measured_on=measured_on, prompts=len(prompts), k=k,
                        speedup=e.est, speedup_lo=e.lo, speedup_hi=e.hi, auto_speedup=auto_est.est,
                        auto_lo=auto_est.lo, auto_hi=auto_est.hi, auto_vs=vs.est, auto_vs_lo=vs.lo, auto_vs_hi=vs.hi))
    return pd.DataFrame(out)


# -- 3. acceptance along the drafted positions, and the K auto chose ---------------------------------------------

def parsed(value) -> list:
    """A per-round list as stored (a JSON string) or as read back (a list); missing: no rounds."""
    if isinstance(value, str):
        return json.loads(value)
    return [] if value is None or (isinstance(value, float) and np.isnan(value)) else list(value)


def rounds(rows, modes=(AUTO, SPECULATIVE), temperature=0.0) -> pd.DataFrame:
    """One line per verify round of the ok rows of `modes`: mode, k (the cell's), category, prompt_id,
    max_new_tokens, round_k (the K that round proposed), accepted (drafts it accepted; batch 1: the first row's)
    and start (new tokens the row had before the round: 1 from prefill, then accepted + 1 per round). Rounds
    after the row had finished (null) are dropped."""
    r = ok_rows(rows, temperature)
    r = r[r["mode"].isin(modes)]
    out = []
    lengths = r["max_new_tokens"] if "max_new_tokens" in r else [None] * len(r)
    for mode, k, cat, prompt, n, ks, acc in zip(r["mode"], r["k"], r["category"], r["prompt_id"], lengths,
                                                r["k_per_iteration"], r["accepted_per_iteration"]):
        start = 1
        for round_k, a in zip(parsed(ks), parsed(acc)):
            a = a[0] if isinstance(a, list) else a
            if a is not None:
                out.append((mode, k, cat, prompt, n, int(round_k), int(a), start))
                start += int(a) + 1
    return pd.DataFrame(out, columns=["mode", "k", "category", "prompt_id", "max_new_tokens", "round_k", "accepted",
                                      "start"])


def with_overall(rd):
    return pd.concat([rd, rd.assign(category=OVERALL)], ignore_index=True)


def acceptance_by_position(rows, modes=(AUTO, SPECULATIVE), temperature=0.0) -> pd.DataFrame:
    """Per configuration (mode, k), category (and 'overall') and drafted position i = 1..K: proposed (rounds
    with K >= i), reached (those that also accepted position i-1; all of them at i = 1), accepted (those that
    accepted position i), conditional = accepted / reached (the chance the draft gets token i right given it
    got the ones before) and unconditional = accepted / proposed."""
    rd = with_overall(rounds(rows, modes, temperature))
    lines = []
    for i in range(1, int(rd["round_k"].max()) + 1 if len(rd) else 1):
        proposed = rd["round_k"] >= i
        flags = rd[GROUP].assign(proposed=proposed, reached=proposed & (rd["accepted"] >= i - 1),
                                 accepted=proposed & (rd["accepted"] >= i))
        counts = flags.groupby(GROUP, dropna=False, sort=False).sum().reset_index()
        lines.append(counts[counts["proposed"] > 0].assign(position=i))
    if not lines:
        return pd.DataFrame(columns=GROUP + ["position", "proposed", "reached", "accepted", "conditional",
                                             "unconditional"])
    out = pd.concat(lines, ignore_index=True)
    out["conditional"] = (out["accepted"] / out["reached"]).where(out["reached"] > 0)
    out["unconditional"] = out["accepted"] / out["proposed"]
    return out.sort_values(["mode", "k", "category", "position"], ignore_index=True)[
        GROUP + ["position", "proposed", "reached", "accepted", "conditional", "unconditional"]]


def mean_accepted_length(rows, modes=(AUTO, SPECULATIVE), temperature=0.0) -> pd.DataFrame:
    """Per configuration and category (and 'overall'): rounds, mean_k (proposed per round) and
    mean_accepted_length = mean over rounds of (accepted + 1): new tokens per verify round, prefill excluded."""
    rd = with_overall(rounds(rows, modes, temperature))
    return (rd.assign(length=rd["accepted"] + 1).groupby(GROUP, dropna=False)
            .agg(rounds=("length", "size"), mean_k=("round_k", "mean"), mean_accepted_length=("length", "mean"))
            .reset_index())


def acceptance_by_window(rows, mode=AUTO, window=32, temperature=0.0) -> pd.DataFrame:
    """How acceptance moves along a generation: per generation length (max_new_tokens) and window of `window` new
    tokens (by where each verify round started), over `mode`'s rounds on every prompt: rounds, prompts, mean_k
    (drafts proposed per round), acceptance (accepted / proposed drafts) and tokens_per_round (accepted + 1)."""
    rd = rounds(rows, (mode,), temperature)
    rd = rd.assign(window_start=(rd["start"] // window) * window)
    g = rd.groupby(["max_new_tokens", "window_start"])
    out = g.agg(rounds=("accepted", "size"), prompts=("prompt_id", "nunique"), mean_k=("round_k", "mean"),
                proposed=("round_k", "sum"), accepted=("accepted", "sum")).reset_index()
    out["acceptance"] = (out["accepted"] / out["proposed"]).where(out["proposed"] > 0)
    out["tokens_per_round"] = 1 + out["accepted"] / out["rounds"]
    return out.assign(mode=mode, window=window)


def k_distribution(rows, mode=AUTO, temperature=0.0) -> pd.DataFrame:
    """Per category (and 'overall') and every K chosen anywhere (0 rounds where a category never chose it):
    rounds and share of that category's rounds in which `mode` chose that K."""
    rd = with_overall(rounds(rows, (mode,), temperature))
    counts = rd.groupby(["category", "round_k"]).size().unstack(fill_value=0)
    counts = counts.reindex(categories_then_overall(counts.index)) if len(counts) else counts
    out = counts.stack().rename("rounds").reset_index().rename(columns={"round_k": "k"})
    out["share"] = out["rounds"] / out.groupby("category")["rounds"].transform("sum")
    return out.assign(mode=mode)[["mode", "category", "k", "rounds", "share"]]
