"""How good is auto's choice of K, and what would make 4-bit speculation pay more? Greedy rounds replayed exactly.

    python benchmarks/policy_replay.py [--tokens 128] [--out data/cpu/policy_replay]

Greedy speculation is deterministic given where each round starts: a round at position p with K drafts accepts
min(K, L(p)) of them, where L(p) is how many of the draft's next tokens, fed the target's own output, equal the
target's. The draft's proposals from p see exactly the target's prefix while they keep matching, so one
teacher-forced draft forward over prompt + the target's greedy tokens gives L(p) at every p
(specdec.study.replay.agreement). This script records that agreement for the int4 pair on the 64 population prompts
(the target alone generates --tokens tokens, EOS ignored; the int4 draft with its 65536-id head reads them), then
replays any K policy over it (specdec.study.replay.replay, as the engine drives a policy) at given prices: int4
prices of a Zen 4 and of the Xeon, the same with a cheaper draft step or a flat verify curve, and the Xeon's float32
prices (the float32 pair accepts differently: there the int4 pair's agreement stands in for it). No timing: the
replay prices each round (K draft steps, a verify over K + 1 tokens, the engine's per-round overhead), so it measures
the policy and the prices, not this machine's noise. Left out: the draft's prefill, and what a round costs beyond its
price, which the real runs pay.

Writes agreement.json (the recorded agreement), replay.csv (per prices and policy: the geometric-mean speedup over
the target alone, and against the best single fixed K and the in-sample per-prompt best K) and provenance.json.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from specdec import policy
from specdec.engine import generate
from specdec.machine import cpu_identity
from specdec.models import load_pair
from specdec.study.population import geomean
from specdec.study.prompts import encode, load_prompts
from specdec.study.provenance import git_state
from specdec.study.replay import agreement, speedups

POPULATION = "data/prompts/population.jsonl"
# The int4 prices of a cpu run on the Zen 4 (family 25) at 6811c06 (a commit lost before it landed; its code is
# 5d9283d; its calibration file was not committed): the target's forward over T = 1..9 tokens and the int4 draft's
# step (head 65536), in ms. Another machine's prices go here by hand (its precision/calibration-*.json).
INT4_CURVE_MS = [19.3, 21.2, 22.4, 25.6, 36.6, 38.8, 44.3, 46.9, 53.3]
INT4_DRAFT_MS = 7.1
FLAT_CURVE_MS = INT4_CURVE_MS[:4] + [25.6 + t for t in range(1, 6)]  # hypothetical: 1 ms a token past 4 tokens
# The committed run's, at 04d0cca on an Intel Xeon (family 6 model 167; AMX from 8 rows), from
# data/cpu/precision/calibration-e0732342e58a.json.
XEON_CURVE_MS = [41.3, 46.9, 50.6, 53.9, 64.1, 67.3, 72.6, 64.1, 65.7]
XEON_DRAFT_MS = 14.2
# The Xeon's float32 prices (target float32, draft bfloat16) in the cpu run at b68aa9c (its
# k_sweep/calibration-8a9f619305d1.json), about which auto's Beta posterior and DECAY 0.9 were chosen (specdec/policy.py).
XEON_F32_CURVE_MS = [242.9, 262.7, 268.6, 445.8, 461.6, 466.1, 473.9, 474.6, 481.3]
XEON_F32_DRAFT_MS = 70.2
# The same in the cpu run at 82ca84f (k_sweep/calibration-a2ac3550e974.json), the machine in a slower state: the
# draft's step 1.74x, the target's 1.31x.
XEON_F32_SLOW_CURVE_MS = [317.4, 328.5, 341.0, 559.8, 564.0, 576.0, 586.2, 600.9, 627.1]
XEON_F32_SLOW_DRAFT_MS = 122.2
PRICES = {"6811c06 int4 prices": (INT4_CURVE_MS, INT4_DRAFT_MS),
          "the same, draft step 0.75x": (INT4_CURVE_MS, 0.75 * INT4_DRAFT_MS),
          "the same, draft step 0.5x": (INT4_CURVE_MS, 0.5 * INT4_DRAFT_MS),
          "the same, verify flat to 9 tokens": (FLAT_CURVE_MS, INT4_DRAFT_MS),
          "04d0cca int4 prices (Xeon)": (XEON_CURVE_MS, XEON_DRAFT_MS),
          "04d0cca int4 prices (Xeon), draft step 0.5x": (XEON_CURVE_MS, 0.5 * XEON_DRAFT_MS),
          "b68aa9c float32 prices (Xeon)": (XEON_F32_CURVE_MS, XEON_F32_DRAFT_MS),
          "82ca84f float32 prices (Xeon)": (XEON_F32_SLOW_CURVE_MS, XEON_F32_SLOW_DRAFT_MS)}
FIXED = range(1, 9)


def record(tokens: int) -> list[dict]:
    """Per population prompt: the int4 target's greedy tokens and, per position, whether the draft's argmax (fed the
    target's prefix) is the target's token."""
    pair = load_pair("qwen2.5-coder", precision="int4", group_size=128)
    out = []
    for i, prompt in enumerate(load_prompts(POPULATION)):
        ids = encode(pair.tokenizer, prompt)
        made = generate(pair.target, torch.tensor([ids]), max_new_tokens=tokens, eos_token_id=[]).tokens[0]
        agree = agreement(pair.draft, ids, made)
        out.append(dict(id=prompt["id"], category=prompt["category"], tokens=made, agree=agree))
        print(f"{i + 1}/64 {prompt['id']}: draft agrees at {sum(agree) / len(agree):.0%} of positions", flush=True)
    return out


def table(prompts) -> pd.DataFrame:
    traces = [dict(prompt_id=p["id"], category=p["category"], prompt_tokens=0, match=p["agree"]) for p in prompts]
    policies = {k: (lambda k=k: policy.FixedK(k)) for k in FIXED} | {"auto": policy.AutoK}
    rows = []
    for name, (curve_ms, draft_ms) in PRICES.items():
        costs = dict(verify_s=[None] + [ms / 1e3 for ms in curve_ms], draft_s=draft_ms / 1e3, draft_prefill_s=0.0)
        # per policy, its speedup over the target alone on each prompt, in the prompts' order
        per = {k: g["speedup"].to_numpy() for k, g in speedups(traces, costs, policies).groupby("policy", sort=False)}
        fixed = {k: per[k] for k in FIXED}
        best = max(fixed, key=lambda k: geomean(fixed[k]))
        oracle = np.max(list(fixed.values()), axis=0)
        for label, values in [*((f"fixed K={k}", v) for k, v in fixed.items()), ("auto", per["auto"]),
                              ("per-prompt best K (in sample)", oracle)]:
            rows.append(dict(prices=name, policy=label, prompts=len(prompts), speedup=geomean(values),
                             vs_best_fixed=geomean(values) / geomean(fixed[best]), best_fixed_k=best,
                             vs_oracle=geomean(values) / geomean(oracle)))
    return pd.DataFrame(rows)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--out", default="data/cpu/policy_replay")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "agreement.json").is_file():
        (out / "agreement.json").write_text(json.dumps(record(args.tokens)))
    prompts = json.loads((out / "agreement.json").read_text())
    frame = table(prompts)
    frame.to_csv(out / "replay.csv", index=False)
    print(frame[frame.policy.isin(["auto", "per-prompt best K (in sample)"]) | (frame.policy == "fixed K=2")]
          .round(3).to_string(index=False))
    meta = dict(git_state(), machine=cpu_identity(), tokens=args.tokens, torch=torch.__version__)
    (out / "provenance.json").write_text(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
