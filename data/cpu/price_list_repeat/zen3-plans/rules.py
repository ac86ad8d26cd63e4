"""The four idle calibrations' float32 choices recomputed from their recorded costs under other margin rules: how many
(shape, range) choices differ per pair of runs. Only the rule changes; the costs are what each run measured.

    python data/cpu/price_list_repeat/zen3-plans/rules.py
"""
import itertools
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
RUNS = ("burst-1", "burst-2", "spread-1", "spread-2")
PATHS = ("linear", "wxt", "xwt", "onednn", "packed")  # specdec.linear's order of preference
COPIES = ("xwt", "packed")


def costs(run):
    (table,) = json.loads((HERE / f"{run}-linear-plans.json").read_text()).values()
    return {shape: plan["costs"] for shape, plan in table.items() if shape.endswith("float32")}


def preferred(cost, order, gain, spread):
    """specdec.paired.preferred: the first in `order` that no other beats by gain + spread (spread capped at 0.25)."""
    clear = 1 - gain - min(spread, 0.25)
    return next(n for n in order if not any(cost[o] < clear * cost[n] for o in order))


def margins(cost, spread, in_place_gain=0.05, copy_gain=0.10):
    """specdec.linear.pick, with its gains as parameters."""
    in_place = preferred(cost, [p for p in PATHS if p in cost and p not in COPIES], in_place_gain, spread)
    return preferred(cost, [in_place] + [p for p in PATHS if p in cost and p in COPIES], copy_gain, spread)


def band(cost, spread, gain=0.05, width=0.25):
    """The default unless the cheapest path clearly beats it; then the most preferred path within `width` of it."""
    best = min(cost, key=cost.get)
    if cost[best] >= 1 - gain - min(spread, 0.25):
        return "linear"
    return next(p for p in PATHS if p in cost and p != "linear" and cost[p] <= cost[best] * (1 + width))


RULES = {  # name -> (rule(cost, spread), spread to use: "own" per range or "pooled" per run)
    "specdec's (5% / 10% + spread)": (margins, "own"),
    "spread fixed at 0.15": (lambda c, s: margins(c, 0.15), "own"),
    "gains 15% / 25%, no spread": (lambda c, s: margins(c, 0.0, 0.15, 0.25), "own"),
    "25% tie band": (band, "own"),
    "40% tie band": (lambda c, s: band(c, s, width=0.4), "own"),
    "25% tie band, 15% gain": (lambda c, s: band(c, s, gain=0.15), "own"),
    "specdec's, spread pooled per run": (margins, "pooled"),
    "25% tie band, 15% gain, pooled": (lambda c, s: band(c, s, gain=0.15), "pooled"),
}


def choices(run_costs, rule, which):
    pooled = float(np.median([r["spread"] for ranges in run_costs.values() for r in ranges.values()]))
    return {(shape, span): rule({p: v for p, v in r.items() if p != "spread"},
                                r["spread"] if which == "own" else pooled)
            for shape, ranges in run_costs.items() for span, r in ranges.items()}


if __name__ == "__main__":
    recorded = {run: costs(run) for run in RUNS}
    for name, (rule, which) in RULES.items():
        made = {run: choices(c, rule, which) for run, c in recorded.items()}
        pairs = [f"{a} / {b}: {sum(made[a][k] != made[b][k] for k in made[a])}"
                 for a, b in itertools.combinations(RUNS, 2)]
        print(f"{name}: " + ", ".join(pairs))
