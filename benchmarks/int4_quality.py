"""What int4 costs in quality: each quantized target's next-token distribution against the float32 target's, teacher
forced on the study's prompts (no generation, so one early difference does not decide the rest).

    python benchmarks/int4_quality.py [--prompts 16] [--out data/cpu/int4_quality]

Formats: specdec's kernel at int4 in groups of 64 and 128, each with its fitted grids (qkernel.pack: the min..max
grid and FIT_STEPS tighter ones, least squares) and with the min..max grid alone, and at int8. Per format, over every
prompt position: the mean KL divergence from the float32 target's distribution to the quantized one's, and the share
of positions whose most likely token is the float32 target's. Writes quality.csv and provenance.json to --out.
"""
import argparse
import json
import platform
from pathlib import Path

import pandas as pd
import torch

from specdec import qkernel
from specdec.machine import cpu_identity
from specdec.models import load_pair
from specdec.quantize import copy_model, quantize
from specdec.study.llamacpp import prompt_inputs
from specdec.study.provenance import git_state

from cpu_int4 import pick_prompts

FORMATS = {"int4-g64 fitted": ("int4", 64, qkernel.FIT_STEPS), "int4-g64 min..max": ("int4", 64, 0),
           "int4-g128 fitted": ("int4", 128, qkernel.FIT_STEPS), "int4-g128 min..max": ("int4", 128, 0),
           "int8-g64": ("int8", 64, qkernel.FIT_STEPS)}


def log_probs(model, prompts) -> list:
    with torch.inference_mode():
        return [model(input_ids=torch.tensor([q["ids"]])).logits[0].float().log_softmax(-1) for q in prompts]


def compare(reference, quantized) -> dict:
    kl = agree = positions = 0
    for ref, out in zip(reference, quantized):
        kl += (ref.exp() * (ref - out)).sum().item()
        agree += (ref.argmax(-1) == out.argmax(-1)).sum().item()
        positions += ref.shape[0]
    return dict(positions=positions, kl=kl / positions, top1_agreement=agree / positions)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--out", default="data/cpu/int4_quality")
    args = p.parse_args()
    source = git_state()  # the commit, and whether its code was changed (the study's output folders aside)
    pair = load_pair("qwen2.5-coder")
    prompts = prompt_inputs(pair.tokenizer, pick_prompts(args.prompts))
    reference = log_probs(pair.target, prompts)
    rows = []
    for name, (precision, group, steps) in FORMATS.items():
        qkernel.FIT_STEPS = steps  # pack reads it at each call
        model = quantize(copy_model(pair.target), precision, group, "specdec")
        rows.append(dict(format=name, prompts=len(prompts), **compare(reference, log_probs(model, prompts))))
        print(rows[-1], flush=True)
        del model
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "quality.csv", index=False)
    meta = dict(cpu=cpu_identity(), platform=platform.platform(), torch=torch.__version__,
                model="qwen2.5-coder-1.5b (float32 reference)", **source)
    (out / "provenance.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
