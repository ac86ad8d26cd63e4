"""95% intervals for the study's numbers, and the only sentences the readouts may draw from them.

Two kinds. Per cell and per configuration (mean_interval, of runs or of per-block ratios): percentile bootstraps
(scipy.stats.bootstrap) stratified by prompt: the runs (repeats) of each prompt are resampled separately and the
statistic is the mean over prompts of a per-prompt number, so an interval says how much the result would move if
the repeats were run again on the same prompts. Over a prompt population (geomean_speedup): prompts are resampled
too, within their categories, so the interval says what other prompts of the same kinds would see. Speedups
are paired (specdec.study.pairing): each run is divided by the baseline's run of the same block, timed back to
back with it, and the intervals resample those per-block ratios (summary, population).
With 3 repeats per prompt a bootstrap interval is on the narrow side (it cannot see noise the runs did not
show); the readouts stay conservative by claiming a difference only when two intervals do not overlap, and
(versus_one) only outside the experiment's A/A control.
"""
from typing import NamedTuple

import numpy as np
from scipy.stats import bootstrap, norm, t as student_t

LEVEL = 0.95
RESAMPLES = 2000
NO_DIFFERENCE = "no clear difference"
# the words of a verdict an interval decided (the summary page counts them by these)
FASTER, SLOWER, BEATS = "faster than", "slower than", "beats"


class Estimate(NamedTuple):
    est: float
    lo: float
    hi: float


NAN = Estimate(np.nan, np.nan, np.nan)


# -- intervals --------------------------------------------------------------------------------------------

def _mean_of_means(*samples, axis=-1):
    return np.mean([s.mean(axis=axis) for s in samples], axis=0)


def _interval(samples, statistic, seed) -> Estimate:
    samples = [np.asarray(s, float) for s in samples]
    samples = [s[np.isfinite(s)] for s in samples]
    if not samples or any(len(s) == 0 for s in samples):
        return NAN
    est = float(statistic(*samples))
    if any(len(s) < 2 for s in samples):  # one run of a prompt: nothing to resample, no interval
        return Estimate(est, np.nan, np.nan)
    if all(np.ptp(s) == 0 for s in samples):  # identical runs (e.g. acceptance under greedy decoding)
        return Estimate(est, est, est)
    ci = bootstrap(samples, statistic, n_resamples=RESAMPLES, confidence_level=LEVEL, method="percentile",
                   vectorized=True, paired=False, rng=np.random.default_rng(seed)).confidence_interval
    return Estimate(est, float(ci.low), float(ci.high))


def mean_interval(strata, seed=0) -> Estimate:
    """Mean over strata (prompts) of each stratum's mean over its runs, with a 95% interval from resampling
    the runs within each stratum. `strata`: a list of arrays, or one array (a single prompt)."""
    strata = [strata] if np.ndim(strata[0]) == 0 else strata
    return _interval(strata, _mean_of_means, seed)


# -- readouts -----------------------------------------------------------------------------------------------

def separated(a, b) -> int:
    """+1 when a's interval lies wholly above b's, -1 when wholly below, 0 when they overlap or one is
    unknown (no interval means no claim)."""
    a, b = Estimate(*a), Estimate(*b)
    if a.lo > b.hi:
        return 1
    if a.hi < b.lo:
        return -1
    return 0


def fmt(e, digits=2, unit="") -> str:
    """'1.20x [1.10, 1.31]' (unit 'x'), or '4.2 [4.0, 4.4] tok/s'; no interval: '1.20x (no interval)'."""
    e = Estimate(*e)
    tight = unit == "x" or unit == "%"
    scale = 100 if unit == "%" else 1
    head = f"{e.est * scale:.{digits}f}{unit if tight else ''}"
    tail = "" if tight or not unit else f" {unit}"
    if not (np.isfinite(e.lo) and np.isfinite(e.hi)):
        return f"{head}{tail} (no interval)"
    return f"{head} [{e.lo * scale:.{digits}f}, {e.hi * scale:.{digits}f}]{tail}"


def compare(name_a, a, name_b, b, higher=BEATS) -> str:
    """'A beats B' only when the 95% intervals separate; otherwise 'no clear difference between A and B'."""
    s = separated(a, b)
    if s > 0:
        return f"{name_a} {higher} {name_b}"
    if s < 0:
        return f"{name_b} {higher} {name_a}"
    return f"{NO_DIFFERENCE} between {name_a} and {name_b}"


def within_floor(e, floor) -> bool:
    """Whether estimate `e` lies inside the interval of `floor`, an A/A control (the same work timed twice, paired):
    an effect that small is what the pairing's noise alone gives."""
    e, floor = Estimate(*e), Estimate(*(floor if floor is not None else NAN))
    return bool(np.isfinite(floor.lo) and floor.lo <= e.est <= floor.hi)


def beyond_floor(e, floor=None) -> int:
    """+1 / -1 when e's interval lies above / below 1 and its estimate outside the A/A control's interval (`floor`,
    None: not measured); 0, no clear difference, otherwise."""
    return 0 if within_floor(e, floor) else separated(e, (1.0, 1.0, 1.0))


def versus_one(name, e, reference="the target-only baseline", unit="x", floor=None) -> str:
    """A speedup against 1 in words, as beyond_floor judges it."""
    s = beyond_floor(e, floor)
    inside = s == 0 and separated(e, (1.0, 1.0, 1.0)) != 0
    verdict = {1: FASTER, -1: SLOWER, 0: f"{NO_DIFFERENCE} from"}[s]
    return f"{name} {fmt(e, unit=unit)}: {verdict} {reference}" + (" (inside the A/A noise floor)" if inside else "")


def a_a(e, unit="x") -> str:
    """The A/A control in words: never faster or slower, only the noise floor, or a bias the pairing carries."""
    e = Estimate(*e)
    if not np.isfinite(e.est):
        return "A/A control: not measured"
    said = f"A/A control (the target alone timed twice in each block) {fmt(e, unit=unit)}"
    if separated(e, (1.0, 1.0, 1.0)):
        return said + ": its interval excludes 1, a bias of that size sits in every pair of this experiment"
    return said + ": the noise floor of this experiment's pairs"


def best(names, estimates, unit="", higher=BEATS) -> str:
    """Which of several configurations is highest, claimed only as far as the intervals allow: the top
    estimate, and either 'beats every other' or the configurations it shows no clear difference from."""
    items = [(n, Estimate(*e)) for n, e in zip(names, estimates) if np.isfinite(Estimate(*e).est)]
    if not items:
        return "nothing was measured"
    items.sort(key=lambda x: -x[1].est)
    (top, e), rest = items[0], items[1:]
    head = f"highest: {top} {fmt(e, unit=unit)}"
    if not rest:
        return head
    tied = [n for n, r in rest if separated(e, r) <= 0]
    if not tied:
        return f"{head}; it {higher} every other configuration (intervals separate)"
    return f"{head}; {NO_DIFFERENCE} from {', '.join(tied)} (intervals overlap)"


# -- intervals over prompts ---------------------------------------------------------------------------------
# The intervals above are over repeats: they hold for the prompts that were run. A population study asks how
# the result would move with other prompts of the same kinds, so its interval resamples the prompts too.

def _padded(runs):
    """Runs of unequal count as one (prompts, most runs) array, zero-padded, and each prompt's count."""
    n = np.array([len(x) for x in runs])
    out = np.zeros((len(runs), n.max()))
    for i, x in enumerate(runs):
        out[i, :len(x)] = x
    return out, n


def _resampled_means(runs, n, picks, rng):
    """Per draw and prompt slot: the mean of len(runs) runs drawn with replacement from the picked prompt's."""
    m = n[picks][..., None]  # (draws, prompts, 1): each slot's own run count
    j = (rng.random(picks.shape + (runs.shape[1],)) * m).astype(int)  # run indices < that count
    used = np.arange(runs.shape[1]) < m  # draw as many runs as the prompt has, not as many as the longest
    return (runs[picks[..., None], j] * used).sum(-1) / m[..., 0]


def geomean_speedup(per_prompt_runs, categories=None, seed=0, resamples=RESAMPLES) -> Estimate:
    """Geometric mean over prompts of mean(mode runs) / mean(reference runs) of the same prompt, with a 95%
    interval for other prompts of the same categories. `per_prompt_runs`: one (mode runs, reference runs)
    per prompt (any counts >= 1); `categories`: each prompt's category (None: one category).

    Two-stage bootstrap: prompts are drawn with replacement within each category (the study fixes how many
    prompts each category has), then each drawn prompt's mode and reference runs are drawn with replacement,
    independently. If some category has a single prompt, stratifying would freeze it (every draw would be that
    prompt, and how it differs from the others would never show), so prompts are then drawn across all
    categories; that is wider, never narrower. A percentile interval from few prompts is too narrow (the
    bootstrap spread is the plug-in (n-1)/n of the variance, and normal tails stand in for t tails), so the
    percentiles are Hesterberg's expanded ones: alpha/2 becomes Phi(sqrt(n/df) * t_{alpha/2, df}), df = n
    prompts - strata. One prompt with one run each: no interval (NaN). Every prompt's ratio and runs
    identical: the interval collapses to the estimate (est, est, est), with nothing to resample. Prompts that
    differ always give a nonzero width, unless every category's prompts agree exactly among themselves."""
    pairs = [(np.asarray(m, float), np.asarray(r, float)) for m, r in per_prompt_runs]
    cats = np.asarray(["all"] * len(pairs) if categories is None else list(categories), dtype=object)
    pairs = [(m[np.isfinite(m) & (m > 0)], r[np.isfinite(r) & (r > 0)]) for m, r in pairs]
    keep = np.array([len(m) > 0 and len(r) > 0 for m, r in pairs], bool)
    if not keep.any():
        return NAN
    mode, nm = _padded([m for (m, _), k in zip(pairs, keep) if k])
    ref, nr = _padded([r for (_, r), k in zip(pairs, keep) if k])
    ratios = (mode.sum(1) / nm) / (ref.sum(1) / nr)
    logs = np.log(ratios)
    est = float(ratios[0] if np.ptp(ratios) == 0 else np.exp(logs.mean()))  # one ratio: itself, not exp(log(r))
    if len(logs) == 1 and nm[0] == 1 and nr[0] == 1:
        return Estimate(est, np.nan, np.nan)  # one number: nothing says how it would move
    spread = lambda x, n: np.any(x.max(1) - np.where(np.arange(x.shape[1]) < n[:, None], x, np.inf).min(1) > 0)
    if np.ptp(logs) == 0 and not spread(mode, nm) and not spread(ref, nr):
        return Estimate(est, est, est)
    _, strata = np.unique(cats[keep].astype(str), return_inverse=True)
    strata = [np.flatnonzero(strata == s) for s in range(strata.max() + 1)]
    if min(len(s) for s in strata) < 2:
        strata = [np.arange(len(logs))]
    rng = np.random.default_rng(seed)
    picks = np.concatenate([s[rng.integers(0, len(s), (resamples, len(s)))] for s in strata], axis=1)
    boot = (np.log(_resampled_means(mode, nm, picks, rng)) - np.log(_resampled_means(ref, nr, picks, rng))).mean(1)
    n, df = len(logs), len(logs) - len(strata)
    tail = (1 - LEVEL) / 2
    if df >= 1:  # one prompt (several runs): its repeats alone vary, a plain percentile interval
        tail = norm.cdf(np.sqrt(n / df) * student_t.ppf(tail, df))
    lo, hi = np.quantile(boot, [tail, 1 - tail])
    return Estimate(est, float(np.exp(lo)), float(np.exp(hi)))
