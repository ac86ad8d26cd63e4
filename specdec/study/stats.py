"""95% intervals for the study's numbers, and the only sentences the readouts may draw from them.

Two kinds, both Student t intervals on means of per-prompt numbers (a prompt is the unit the study samples; its
repeats are the noise in each prompt's number). Per cell and per configuration (mean_interval, of runs or of
per-block ratios): the mean over prompts of each prompt's mean over its repeats, with the repeats' variance within
each prompt, so an interval says how much the result would move if the repeats were run again on the same prompts.
Over a prompt population (geomean_speedup): the geometric mean over prompts of each prompt's ratio, with the
variance of those ratios within categories, so the interval says what other prompts of the same kinds would see.
Speedups are paired (specdec.study.pairing): each run is divided by the baseline's run of the same block, timed
back to back with it. Why t and not a bootstrap: the study's designs have 2-4 repeats and 3-16 prompts, where a
percentile bootstrap cannot reach past the sample's own range (of 3 values, the truth lies outside their range a
quarter of the time): its 95% interval held the truth in 51-93% of simulated A/A comparisons at those designs,
the t intervals in 94-96% (benchmarks/interval_coverage.py). The readouts stay conservative on top: a difference
is claimed only when two intervals do not overlap, and (versus_one) only outside the experiment's A/A control.
Leviathan's prediction, a nonlinear function of five calibrated quantities (3 runs each on cpu), takes its
standard error from a bootstrap and its width from t (bootstrap_interval).
"""
from typing import NamedTuple

import numpy as np
from scipy.stats import bootstrap, t as student_t

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

def _around(est, variance, df) -> Estimate:
    """est -/+ the 95% t quantile at `df` degrees of freedom times sqrt(variance): every interval here."""
    half = float(student_t.ppf((1 + LEVEL) / 2, df) * np.sqrt(variance))
    return Estimate(est, est - half, est + half)


def bootstrap_interval(samples, statistic, seed) -> Estimate:
    """`statistic` of independent `samples` with a 95% interval est -/+ t_{n-1} sqrt(n / (n-1)) SE: SE the
    bootstrap's standard error (each sample resampled on its own), n the fewest values of any sample. With few runs
    a percentile bootstrap is too narrow twice: its spread is the plug-in (n-1)/n of the variance, and it has
    normal tails where t's belong."""
    samples = [np.asarray(x, float) for x in samples]
    samples = [x[np.isfinite(x)] for x in samples]
    if not samples or any(len(x) == 0 for x in samples):
        return NAN
    est = float(statistic(*samples))
    if any(len(x) < 2 for x in samples):  # one run: nothing to resample, no interval
        return Estimate(est, np.nan, np.nan)
    se = bootstrap(samples, statistic, n_resamples=RESAMPLES, vectorized=True, paired=False,
                   rng=np.random.default_rng(seed)).standard_error
    n = min(len(x) for x in samples)
    return _around(est, n / (n - 1) * se ** 2, n - 1)


def stratified_t(groups, weights) -> Estimate:
    """sum_h w_h mean(groups[h]) with a 95% t interval from the groups' pooled variance s^2 (variance
    s^2 sum_h w_h^2 / n_h, sum_h (n_h - 1) degrees of freedom): exact for normal values of one spread. A per-group
    variance with Welch-Satterthwaite's degrees of freedom is not: with 2 values a group its own spread estimates
    are so noisy that its intervals cover 99%, not 95%. Every group needs 2 or more values (else no interval:
    NaN); no spread in any group: a zero-width interval."""
    groups = [np.asarray(g, float) for g in groups]
    w, n = np.asarray(weights, float), np.array([len(g) for g in groups])
    est = float(sum(wh * g.mean() for wh, g in zip(w, groups)))
    if n.min() < 2:
        return Estimate(est, np.nan, np.nan)
    df = int((n - 1).sum())
    pooled = sum(((g - g.mean()) ** 2).sum() for g in groups) / df
    if pooled == 0:
        return Estimate(est, est, est)
    return _around(est, pooled * (w ** 2 / n).sum(), df)


def mean_interval(strata) -> Estimate:
    """Mean over strata (prompts) of each stratum's mean over its runs, with a 95% t interval from the runs'
    variance within each stratum (stratified_t). `strata`: a list of arrays, or one array (a single prompt)."""
    strata = [strata] if np.ndim(strata[0]) == 0 else strata
    strata = [np.asarray(x, float) for x in strata]
    strata = [x[np.isfinite(x)] for x in strata]
    if not strata or any(len(x) == 0 for x in strata):
        return NAN
    return stratified_t(strata, np.full(len(strata), 1 / len(strata)))


def ratio_interval(strata) -> Estimate:
    """A ratio's mean_interval on the log scale: the geometric mean over strata of each stratum's geometric mean
    over its runs, the t interval taken on the logs and mapped back. Why not on the ratios themselves: with two
    runs far apart a symmetric interval on a ratio reaches below zero (a rerun's batch-4 cell read 1.02x [-0.56,
    2.59]), which no ratio can; on the logs every interval is positive and a ratio and its inverse get inverse
    intervals."""
    strata = [strata] if np.ndim(strata[0]) == 0 else strata
    logs = [np.log(np.asarray(x, float)) for x in strata]
    return Estimate(*(float(np.exp(v)) for v in mean_interval(logs)))


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
# the result would move with other prompts of the same kinds, so its interval is over the prompts' own ratios.

def _log_ratio_of_one_prompt(mode, ref) -> Estimate:
    """One prompt: log(mean(mode) / mean(ref)), its variance by the delta method (each side's squared coefficient
    of variation over its run count; a side with one run adds none), t degrees of freedom by Welch-Satterthwaite."""
    est = float(np.log(mode.mean() / ref.mean()))
    sides = [x for x in (mode, ref) if len(x) > 1]
    v = np.array([x.var(ddof=1) / (len(x) * x.mean() ** 2) for x in sides])
    if not sides:
        return Estimate(est, np.nan, np.nan)  # one number: nothing says how it would move
    if not v.any():
        return Estimate(est, est, est)
    df = v.sum() ** 2 / sum(vh ** 2 / (len(x) - 1) for vh, x in zip(v, sides))
    return _around(est, v.sum(), df)


def geomean_speedup(per_prompt_runs, categories=None) -> Estimate:
    """Geometric mean over prompts of mean(mode runs) / mean(reference runs) of the same prompt, with a 95%
    interval for other prompts of the same categories. `per_prompt_runs`: one (mode runs, reference runs)
    per prompt (any counts >= 1); `categories`: each prompt's category (None: one category).

    A t interval on the per-prompt log ratios (each already carries its repeats' noise), stratified by category
    (the study fixes how many prompts each category has: stratified_t with weights n_h / n). If some category has
    a single prompt, its spread is unknown, so the prompts are taken as one group (n - 1 degrees of freedom): the
    differences between categories then count as noise, wider, never narrower. One prompt: its runs' spread
    (_log_ratio_of_one_prompt); one run a side: no interval (NaN). No spread anywhere: (est, est, est)."""
    pairs = [(np.asarray(m, float), np.asarray(r, float)) for m, r in per_prompt_runs]
    cats = np.asarray(["all"] * len(pairs) if categories is None else list(categories), dtype=object)
    pairs = [(m[np.isfinite(m) & (m > 0)], r[np.isfinite(r) & (r > 0)]) for m, r in pairs]
    keep = np.array([len(m) > 0 and len(r) > 0 for m, r in pairs], bool)
    if not keep.any():
        return NAN
    pairs, cats = [p for p, k in zip(pairs, keep) if k], cats[keep].astype(str)
    ratios = np.array([m.mean() / r.mean() for m, r in pairs])
    if len(pairs) == 1:
        e = _log_ratio_of_one_prompt(*pairs[0])
        return Estimate(float(ratios[0]), float(np.exp(e.lo)), float(np.exp(e.hi)))
    logs = np.log(ratios)
    groups = [logs[cats == c] for c in np.unique(cats)]
    if min(len(g) for g in groups) < 2:
        groups = [logs]
    e = stratified_t(groups, [len(g) / len(logs) for g in groups])
    est = float(ratios[0] if np.ptp(ratios) == 0 else np.exp(e.est))  # equal ratios: themselves, not exp(log(r))
    if e.lo == e.hi:
        return Estimate(est, est, est)
    return Estimate(est, float(np.exp(e.lo)), float(np.exp(e.hi)))
