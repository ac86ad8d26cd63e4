"""The int4 target's cost of a forward over T tokens, on specdec's kernel and on torch's, and the draft's step at each
precision: what decides whether a verify over K + 1 tokens costs about one step.

    python benchmarks/forward_curve.py [--out data/cpu/int4_vs_llamacpp]

Whole forwards as a generation runs them (`profiler.Forwards`: through the KV arena after 64 cached tokens; a target's
over T tokens with the logits of all T, as a verify; a draft's with the last one's), the points of a model interleaved,
a warm-up pass then the min of 3 passes; every model timed in one process, one after another. Writes
forward_curve.csv: model, tokens, seconds, ratio (to T = 1).
"""
import argparse
from pathlib import Path

import pandas as pd
import torch

from specdec.models import load_pair
from specdec.profiler import Forwards
from specdec.quantize import copy_model, quantize


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/cpu/int4_vs_llamacpp")
    args = p.parse_args()
    pair = load_pair("qwen2.5-coder", draft_dtype="bfloat16")
    models = {"target int4-g64 specdec": quantize(copy_model(pair.target), "int4", 64, "specdec"),
              "target int4-g128 aten": quantize(copy_model(pair.target), "int4", 128, "aten"),
              "draft int4-g64 specdec": quantize(copy_model(pair.draft).float(), "int4", 64, "specdec"),
              "draft int8-g64 specdec": quantize(copy_model(pair.draft).float(), "int8", 64, "specdec"),
              "draft bfloat16": pair.draft}
    del pair
    rows = []
    with torch.inference_mode():
        for name, m in models.items():
            target = name.startswith("target")
            points = (1, 2, 3, 4, 5, 6, 8, 9, 16) if target else (1, 2)
            forward = Forwards(m, most=max(points))
            passes = [{t: forward(t, keep=0 if target else 1) for t in points} for _ in range(4)][1:]
            seconds = {t: min(p[t] for p in passes) for t in points}
            rows += [dict(model=name, tokens=t, seconds=s, ratio=s / seconds[1]) for t, s in seconds.items()]
            print(name, ", ".join(f"{t}: {s * 1e3:.1f} ms" for t, s in seconds.items()), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(Path(args.out) / "forward_curve.csv", index=False)


if __name__ == "__main__":
    main()
