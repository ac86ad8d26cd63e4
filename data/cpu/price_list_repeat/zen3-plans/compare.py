"""Two calibrations' linear plans compared: how far a path's cost relative to the default moved between them, against
the spread each run measured, and how many (shape, range) choices differ. float32 shapes (the pair's own dtype).

    python data/cpu/price_list_repeat/zen3-plans/compare.py   # burst-1/2, spread-1/2, bursty-1 vs each spread run
"""
import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent


def plans(name):
    (table,) = json.loads((HERE / f"{name}-linear-plans.json").read_text()).values()
    return {shape: plan for shape, plan in table.items() if shape.endswith("float32")}


def compare(a, b):
    A, B = plans(a), plans(b)
    moved, spreads, choices, differ = [], [], 0, 0
    for shape in sorted(A):
        for span, costs_a in A[shape]["costs"].items():
            costs_b = B[shape]["costs"][span]
            moved += [abs(np.log(costs_a[p] / costs_b[p])) for p in costs_a
                      if p not in ("linear", "spread") and p in costs_b]
            spreads += [costs_a["spread"], costs_b["spread"]]
            lo = span.split("-")[0]
            choices += 1
            differ += A[shape]["fast"][lo] != B[shape]["fast"][lo]
    print(f"{a} vs {b}: a path's cost relative to the default moved by a median {np.median(moved):.3f} "
          f"(90th percentile {np.percentile(moved, 90):.3f}, |log ratio|, {len(moved)} costs); "
          f"within-run spread median {np.median(spreads):.3f}; {differ} of {choices} (shape, range) choices differ")


if __name__ == "__main__":
    compare("burst-1", "burst-2")
    compare("spread-1", "spread-2")
    compare("bursty-1", "spread-1")
    compare("bursty-1", "spread-2")
