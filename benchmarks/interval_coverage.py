"""How often does the study's 95% interval contain the truth at its own small designs? A/A comparisons simulated.

    python benchmarks/interval_coverage.py [--draws 1000] [--out data/cpu/interval_coverage]

An A/A comparison (the same work timed twice, paired) has a true speedup of exactly 1. Per prompt, each side's runs
are drawn as independent lognormal times (sigma 0.1 in log, about the run-to-run spread these machines show), and
the speedup over prompts is estimated with the study's own interval (specdec.study.stats.geomean_speedup: a t
interval on the per-prompt log ratios, stratified by category) at the designs the cpu notebooks use; per cell
(stats.ratio_interval: the geometric mean over prompts of per-block ratios, a t interval on the logs of the runs
within prompts) at the batch sweep's designs. Beside each, a percentile bootstrap of the same numbers
(scipy.stats.bootstrap, over prompts; per cell, over runs within prompts), what the study used before: with few
values it cannot reach past their own range. Coverage is the share of draws whose interval contains 1; a 95%
interval should reach about 0.95. No timing and no model: this measures the statistics, not the machine.

Writes coverage.csv: per design and interval, prompts, categories, runs per side, draws and coverage (with its
binomial standard error), and the commit whose statistics it measured (provenance.git_state).
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from specdec.study import stats
from specdec.study.provenance import git_state

SIGMA = 0.1  # log-scale spread of one run: these machines' back-to-back runs of the same work differ by ~10-30%
STUDY, PERCENTILE = "study", "percentile bootstrap"
# (name, each prompt's category, runs per side, statistic): the designs of the cpu target's notebooks
# (specdec/study/targets): over prompts (geomean_speedup) and, for the batch sweep, per cell (mean_interval)
DESIGNS = (
    ("3 prompts, 1 per category (04)", list("abc"), 1, "geomean"),
    ("4 prompts, 2 per category (05)", list("aabb"), 1, "geomean"),
    ("4 prompts, 1 per category (06's sweep)", list("abcd"), 1, "geomean"),
    ("4 prompts, 2 per category, 2 runs", list("aabb"), 2, "geomean"),
    ("16 prompts, 2 per category (01's headline)", [c for c in "abcdefgh" for _ in range(2)], 1, "geomean"),
    ("per cell: 4 groups, 2 runs (02 at batch 1)", list("abcd"), 2, "cell"),
    ("per cell: 2 groups, 2 runs (02 at batch 2)", list("ab"), 2, "cell"),
    ("per cell: 1 group, 2 runs (02 at batch 4)", list("a"), 2, "cell"),
)


def draw(rng, categories, runs):
    """One A/A comparison: per prompt, (mode runs, reference runs) of the same work."""
    return [(np.exp(rng.normal(0, SIGMA, runs)), np.exp(rng.normal(0, SIGMA, runs))) for _ in categories]


def percentile(samples, statistic, seed):
    """scipy's percentile bootstrap of `statistic` over `samples` (each resampled on its own)."""
    ci = scipy_stats.bootstrap(samples, statistic, n_resamples=1000, method="percentile", vectorized=True,
                               paired=False, rng=np.random.default_rng(seed)).confidence_interval
    return ci.low, ci.high


def intervals(per_prompt, categories, kind, seed) -> dict:
    """The study's interval and a percentile bootstrap of the same numbers, each as (lo, hi) of the speedup."""
    if kind == "cell":  # per-block ratios of each group (prompt), their mean over groups
        ratios = [m / r for m, r in per_prompt]
        e = stats.ratio_interval(ratios)
        mean_of_means = lambda *x, axis=-1: np.mean([y.mean(axis=axis) for y in x], axis=0)
        return {STUDY: (e.lo, e.hi), PERCENTILE: percentile(ratios, mean_of_means, seed)}
    e = stats.geomean_speedup(per_prompt, categories)
    logs = np.log([m.mean() / r.mean() for m, r in per_prompt])
    return {STUDY: (e.lo, e.hi), PERCENTILE: tuple(np.exp(percentile((logs,), np.mean, seed)))}


def coverage(categories, runs, kind, draws, seed) -> dict:
    """The share of `draws` A/A comparisons whose interval contains 1, for the study's and the percentile one."""
    rng = np.random.default_rng(seed)
    hits = {STUDY: 0, PERCENTILE: 0}
    for i in range(draws):
        for name, (lo, hi) in intervals(draw(rng, categories, runs), categories, kind, i).items():
            hits[name] += lo <= 1 <= hi
    return {name: n / draws for name, n in hits.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=1000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="data/cpu/interval_coverage")
    args = p.parse_args()
    source = git_state()  # the commit whose statistics were measured, and whether its code was changed
    lines = []
    for name, categories, runs, kind in DESIGNS:
        for interval, share in coverage(categories, runs, kind, args.draws, args.seed).items():
            lines.append(dict(design=name, interval=interval, prompts=len(categories),
                              categories=len(set(categories)), runs=runs, sigma=SIGMA, draws=args.draws,
                              coverage=share, coverage_se=np.sqrt(share * (1 - share) / args.draws),
                              git_commit=source["git_commit"], git_dirty=source["git_dirty"]))
            print(f"{name:44s} {interval:22s} coverage {share:.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(lines).to_csv(Path(args.out) / "coverage.csv", index=False)


if __name__ == "__main__":
    main()
