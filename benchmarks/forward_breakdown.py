"""Where a 4-bit forward's time goes: the whole forward over T tokens against its linears alone and its LM head alone,
on specdec's kernel, for the int4 target and the int4 draft.

    python benchmarks/forward_breakdown.py [--out data/cpu/int4_vs_llamacpp]

Whole forwards as a generation runs them (`profiler.Forwards`: through the KV arena after 64 cached tokens; the
target keeps the logits of all T tokens, as a verify; the draft the last one's). "linears": the same kernel calls
the decoder layers make (fused q/k/v, o, fused gate/up, down), on the model's own weights in layer order, so they
stream from memory as in a forward, on random activations of the same shape; "head": the LM head over the rows the
forward keeps. What is left (norms, rotary embedding, attention, the arena's write, the framework around the
layers) is the forward less both. Every job of a model is timed in 12 shuffled interleaved passes
(specdec.paired.interleaved); each is priced by its median. Writes forward_breakdown.csv: model, tokens, part,
seconds, share (of the whole forward).
"""
import argparse
import random
import statistics
from pathlib import Path

import pandas as pd
import torch

from specdec import paired
from specdec.models import load_pair
from specdec.profiler import Forwards
from specdec.quantize import at_precision

PASSES = 12
POINTS = (1, 2, 4, 8)


def linears(model, rows):
    """A call running every decoder layer's kernel products once over `rows` random rows, in layer order."""
    layers = model.model.layers
    hidden, inner = model.config.hidden_size, model.config.intermediate_size
    x, h = torch.randn(rows, hidden), torch.randn(rows, inner)

    def run():
        for layer in layers:
            attn, mlp = layer.self_attn, layer.mlp
            attn.q_proj.group.whole(x)
            attn.o_proj(x)
            mlp.gate_proj.group.whole(x)
            mlp.down_proj(h)
    return run


def breakdown(name, model, keep_all):
    forward = Forwards(model, most=max(POINTS))
    jobs = {}
    for t in POINTS:
        keep = t if keep_all else 1
        jobs[(t, "forward")] = lambda t=t, keep=keep: forward(t, keep=keep)
        jobs[(t, "linears")] = linears(model, t)
        jobs[(t, "head")] = lambda x=torch.randn(keep, model.config.hidden_size): model.lm_head(x)
    times = paired.interleaved(jobs, PASSES, shuffle=random.Random(0))
    rows = []
    for t in POINTS:
        price = {part: statistics.median(times[(t, part)]) for part in ("forward", "linears", "head")}
        price["rest"] = price["forward"] - price["linears"] - price["head"]
        rows += [dict(model=name, tokens=t, part=part, seconds=s, share=s / price["forward"]) for part, s in price.items()]
        print(name, f"T={t}:", ", ".join(f"{part} {s * 1e3:.1f} ms" for part, s in price.items()), flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="data/cpu/int4_vs_llamacpp")
    args = p.parse_args()
    pair = at_precision(load_pair("qwen2.5-coder"), "int4", 64, draft_precision="int4")
    with torch.inference_mode():
        rows = breakdown("target int4-g64 specdec", pair.target, keep_all=True)
        rows += breakdown("draft int4-g64 specdec", pair.draft, keep_all=False)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(Path(args.out) / "forward_breakdown.csv", index=False)


if __name__ == "__main__":
    main()
