"""Do the 1-row path ratios move within a process over a minute, or between processes?"""
import time, torch, numpy as np
from specdec import linear, paired
torch.manual_seed(0)
shapes = [(1536, 1536), (8960, 1536), (4864, 896), (896, 896)]
ws = {s: torch.randn(*s) for s in shapes}
for rep in range(4):
    line = []
    for s, w in ws.items():
        for rows in (1, 24):
            t = linear.time_paths(w, rows, 6)
            cost, spread = paired.ratios([t], "linear")
            line.append(f"{s[0]}x{s[1]}@{rows}: " + " ".join(f"{p}={c:.2f}" for p, c in cost.items() if p != "linear") + f" sp={spread:.2f}")
    print(time.strftime("%H:%M:%S"), *line, sep="\n  ", flush=True)
    time.sleep(15)
