"""Do the paths' costs relative to F.linear move within a process over a minute? Four of Qwen2.5-1.5B's weight shapes
at 1 and 24 rows, read four times ~17 s apart, each reading 6 interleaved passes of every path (specdec.linear's own
timing; at commit 5407845, where one call did what `time_paths(..., passes=6, screen=True)` does now), each path's
cost relative to F.linear and the reading's spread (specdec.paired.ratios). drift.out: two processes in a row.

    python data/cpu/price_list_repeat/zen3-plans/drift.py
"""
import time

import torch

from specdec import linear, paired

torch.manual_seed(0)
weights = {shape: torch.randn(*shape) for shape in ((1536, 1536), (8960, 1536), (4864, 896), (896, 896))}
for reading in range(4):
    lines = []
    for (out_f, in_f), w in weights.items():
        operands = {p: linear.prepare(p, w) for p in linear.paths_for(w.dtype)}
        for rows in (1, 24):
            cost, spread = paired.ratios([linear.time_paths(operands, rows, passes=6, screen=True)], "linear")
            lines.append(f"{out_f}x{in_f}@{rows}: " + " ".join(f"{p}={c:.2f}" for p, c in cost.items() if p != "linear")
                         + f" sp={spread:.2f}")
    print(time.strftime("%H:%M:%S"), *lines, sep="\n  ", flush=True)
    time.sleep(15)
