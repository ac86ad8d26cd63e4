"""How often does the study's 95% interval contain the truth at its own small designs? A/A comparisons simulated.

    python benchmarks/interval_coverage.py [--draws 400] [--out data/cpu/interval_coverage]

An A/A comparison (the same work timed twice, paired) has a true speedup of exactly 1. Per prompt, each side's runs
are drawn as independent lognormal times (sigma 0.1 in log, about the run-to-run spread these machines show), and
the speedup over prompts is estimated with the study's own interval (specdec.study.stats.geomean_speedup: a
two-stage bootstrap stratified by category, Hesterberg's expanded percentiles) at the designs the cpu notebooks use;
beside it, a t interval on the per-prompt log ratios (n - 1 degrees of freedom), which ignores the categories.
Coverage is the share of draws whose interval contains 1; a 95% interval should reach about 0.95. No timing and no
model: this measures the statistics, not the machine.

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
# (name, each prompt's category, runs per side): the designs of the cpu target's notebooks (specdec/study/targets)
DESIGNS = (
    ("3 prompts, 1 per category (04)", list("abc"), 1),
    ("4 prompts, 2 per category (05)", list("aabb"), 1),
    ("4 prompts, 1 per category (06's sweep)", list("abcd"), 1),
    ("4 prompts, 2 per category, 2 runs", list("aabb"), 2),
    ("16 prompts, 2 per category (01's headline)", [c for c in "abcdefgh" for _ in range(2)], 1),
)


def draw(rng, categories, runs):
    """One A/A comparison: per prompt, (mode runs, reference runs) of the same work."""
    return [(np.exp(rng.normal(0, SIGMA, runs)), np.exp(rng.normal(0, SIGMA, runs))) for _ in categories]


def t_interval(per_prompt):
    """A 95% t interval for the geometric-mean speedup from the per-prompt log ratios of run means."""
    logs = np.log([m.mean() / r.mean() for m, r in per_prompt])
    return np.exp(scipy_stats.t.interval(0.95, len(logs) - 1, loc=logs.mean(), scale=scipy_stats.sem(logs)))


def coverage(categories, runs, draws, seed) -> dict:
    """The share of `draws` A/A comparisons whose interval contains 1, for the study's interval and the t one."""
    rng = np.random.default_rng(seed)
    hits = {"study (geomean_speedup)": 0, "t on per-prompt log ratios": 0}
    for i in range(draws):
        per_prompt = draw(rng, categories, runs)
        e = stats.geomean_speedup(per_prompt, categories, seed=i, resamples=1000)
        lo, hi = t_interval(per_prompt)
        hits["study (geomean_speedup)"] += e.lo <= 1 <= e.hi
        hits["t on per-prompt log ratios"] += lo <= 1 <= hi
    return {name: n / draws for name, n in hits.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--draws", type=int, default=400)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="data/cpu/interval_coverage")
    args = p.parse_args()
    source = git_state()  # the commit whose statistics were measured, and whether its code was changed
    lines = []
    for name, categories, runs in DESIGNS:
        for interval, share in coverage(categories, runs, args.draws, args.seed).items():
            lines.append(dict(design=name, interval=interval, prompts=len(categories),
                              categories=len(set(categories)), runs=runs, sigma=SIGMA, draws=args.draws,
                              coverage=share, coverage_se=np.sqrt(share * (1 - share) / args.draws),
                              git_commit=source["git_commit"], git_dirty=source["git_dirty"]))
            print(f"{name:44s} {interval:28s} coverage {share:.3f}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(lines).to_csv(Path(args.out) / "coverage.csv", index=False)


if __name__ == "__main__":
    main()
