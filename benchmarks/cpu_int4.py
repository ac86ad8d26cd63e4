"""specdec at 4-bit against llama.cpp on this CPU: decode tok/s of every configuration, paired per prompt.

    SPECDEC_LLAMA_CPP=~/.cache/specdec/llama.cpp/build/bin python benchmarks/cpu_int4.py [--prompts 16] [--new 64]

Configurations: specdec's int4 target (its own kernel, groups of 64) alone, with auto K and with K = 1, 2 and 3, its draft
at the precision specdec.quantize.fastest_draft measured here, and with prompt lookup (no draft model: no draft step,
no draft prefill) at auto K; llama.cpp's Q4_K_M target alone (llama-completion)
and its speculation (llama-speculative-simple, the committed study's best setting: up to 16 drafts, p-min 0.75).
Per prompt every configuration runs once, back to back, in a seeded random order (the machine's speed drifts by
~25% within minutes: a comparison is made inside one prompt's block). Decode: from the end of the target's prefill
to the last token, the draft's prefill inside it (specdec's `decode_seconds`; llama.cpp's own decode timings).
Quality beside speed: the share of each configuration's greedy tokens equal to the float32 target's before their
first difference (llama.cpp's text tokenized with the same tokenizer).

Writes rows.csv (one row per run) and summary.csv (geometric mean over prompts of the speed ratio against
llama.cpp's faster configuration, 95% interval over prompts, stratified by category: stats.geomean_speedup) to
--out; --summarize recomputes summary.csv from a committed rows.csv.
"""
import argparse
import json
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import specdec
from specdec import qkernel
from specdec.machine import cpu_identity, machine_key
from specdec.models import load_pair
from specdec.quantize import at_precision, precision_label, step_bytes
from specdec.study import llamacpp, llamacpp_run
from specdec.study.quality import agreement
from specdec.study.population import geomean
from specdec.study.stats import geomean_speedup

POPULATION = Path(__file__).parent.parent / "data" / "prompts" / "population.jsonl"
CATEGORIES = ("code", "chat", "qa", "translation")
LLAMA_SPEC = (16, 0.75)
CONFIGS = {"specdec int4 alone": ("specdec", None), "specdec int4 auto": ("specdec", "auto"),
           **{f"specdec int4 K={k}": ("specdec", k) for k in (1, 2, 3)},
           "specdec int4 prompt lookup auto": ("specdec", ("prompt_lookup", "auto")),
           "llama.cpp Q4_K_M alone": ("llama", "target_alone"),
           f"llama.cpp Q4_K_M speculative ({LLAMA_SPEC[0]} drafts, p-min {LLAMA_SPEC[1]})": ("llama", "speculative")}


def pick_prompts(n):
    rows = [json.loads(line) for line in POPULATION.read_text().splitlines()]
    per = n // len(CATEGORIES)
    return [r for c in CATEGORIES for r in [r for r in rows if r["category"] == c][:per]]


def run_specdec(pair, ids, how, new):
    """`how`: None (the target alone), K or "auto" with the draft model, or ("prompt_lookup", K)."""
    drafter, k = how if isinstance(how, tuple) else (None if how is None else pair.draft, how)
    r = specdec.generate(pair.target, [ids], draft=drafter, k=k or 1, max_new_tokens=new, eos_token_id=[],
                         same_tokenizer=True)
    return dict(decode_tok_s=(new - 1) / r.stats["decode_seconds"], tokens=r.tokens[0],
                acceptance=r.stats.get("acceptance_rate"), mean_k=r.stats.get("mean_k"))


def run_llama(found, ggufs, prompt, mode, new, folder, tokenizer):
    draft_max, p_min = LLAMA_SPEC if mode == "speculative" else (None, None)
    tool = llamacpp_run.COMPLETION_BIN if mode == "target_alone" else llamacpp_run.SPECULATIVE_BIN
    timing, text = llamacpp.measure(tool, mode, found, ggufs, prompt, new, torch.get_num_threads(),
                                    draft_max, p_min, folder)
    return dict(decode_tok_s=timing["decode_tokens"] / timing["decode_s"],
                tokens=tokenizer.encode(text, add_special_tokens=False),
                acceptance=timing["accepted"] / timing["drafted"] if timing.get("drafted") else None)


def summarize(frame) -> pd.DataFrame:
    """One line per configuration: its decode tok/s (geometric mean over prompts), its speed against llama.cpp's
    faster configuration of the same prompt and against specdec's int4 target alone of the same prompt (geometric
    mean of per-prompt ratios, 95% interval over prompts stratified by category: stats.geomean_speedup), and the
    means of acceptance, K and agreement with the float32 target."""
    wide = frame.pivot(index="prompt_id", columns="config", values="decode_tok_s")
    cats = frame.groupby("prompt_id")["category"].first()[wide.index]
    configs = [c for c in CONFIGS if c in set(frame["config"])]
    llama_best = wide[[c for c in configs if c.startswith("llama")]].max(axis=1)  # per prompt: its faster mode
    alone = wide["specdec int4 alone"]
    lines = []
    for name in configs:
        vs_llama = geomean_speedup([([wide[name][p]], [llama_best[p]]) for p in wide.index], cats)
        vs_alone = geomean_speedup([([wide[name][p]], [alone[p]]) for p in wide.index], cats)
        sub = frame[frame["config"] == name]
        lines.append(dict(config=name, prompts=len(wide), decode_tok_s=geomean(wide[name]),
                          vs_llama_best=vs_llama.est, vs_llama_best_lo=vs_llama.lo, vs_llama_best_hi=vs_llama.hi,
                          vs_specdec_alone=vs_alone.est, vs_specdec_alone_lo=vs_alone.lo,
                          vs_specdec_alone_hi=vs_alone.hi, acceptance=sub["acceptance"].mean(),
                          mean_k=sub["mean_k"].mean(), agreement_with_float32=sub["agreement_with_float32"].mean()))
    return pd.DataFrame(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="data/cpu/int4_vs_llamacpp")
    p.add_argument("--summarize", action="store_true", help="only recompute summary.csv from --out's rows.csv")
    args = p.parse_args()
    out = Path(args.out)
    if args.summarize:
        summarize(pd.read_csv(out / "rows.csv")).to_csv(out / "summary.csv", index=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True).stdout
    source = dict(commit=git("rev-parse", "HEAD").strip(), dirty=bool(git("status", "--porcelain")))  # before writing
    found = llamacpp_run.find()
    ggufs = llamacpp.pair_ggufs("qwen2.5-coder")
    if llamacpp_run.COMPLETION_BIN not in found["binaries"]:
        raise SystemExit("llama.cpp's binaries not found: bash scripts/build_llama_cpp.sh, then set SPECDEC_LLAMA_CPP")
    base = load_pair("qwen2.5-coder")
    float_tok = base.tokenizer
    prompts = llamacpp.prompt_inputs(float_tok, pick_prompts(args.prompts))
    # The float32 target's greedy tokens: the quality reference (timed nowhere).
    reference = {q["id"]: specdec.generate(base.target, [q["ids"]], max_new_tokens=args.new, eos_token_id=[]).tokens[0]
                 for q in prompts}
    pair = at_precision(base, "int4", 64)
    del base
    configs = CONFIGS
    rng = np.random.default_rng(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (engine, how) in configs.items():  # warm-up: page-in, calibration (auto's costs, padding)
            (run_specdec(pair, prompts[0]["ids"], how, 8) if engine == "specdec"
             else run_llama(found, ggufs, prompts[0], how, 8, tmp, float_tok))
        start = time.perf_counter()
        for qi, q in enumerate(prompts):
            for ci in rng.permutation(len(configs)):
                name, (engine, how) = list(configs.items())[ci]
                r = (run_specdec(pair, q["ids"], how, args.new) if engine == "specdec"
                     else run_llama(found, ggufs, q, how, args.new, tmp, float_tok))
                rows.append(dict(prompt_id=q["id"], category=q["category"], config=name, block=qi,
                                 decode_tok_s=r["decode_tok_s"], acceptance=r["acceptance"], mean_k=r.get("mean_k"),
                                 agreement_with_float32=agreement(r["tokens"], reference[q["id"]])))
            print(f"prompt {qi + 1}/{len(prompts)} ({time.perf_counter() - start:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "rows.csv", index=False)
    summary = summarize(frame)
    summary.to_csv(out / "summary.csv", index=False)
    meta = dict(machine=machine_key(), cpu=cpu_identity(), platform=platform.platform(),
                kernel_path=qkernel.best_path() if qkernel.available() else f"none ({qkernel.why_not()})",
                target=precision_label(pair.target), draft=precision_label(pair.draft),
                target_gb_per_step=step_bytes(pair.target) / 1e9, draft_gb_per_step=step_bytes(pair.draft) / 1e9,
                llama_cpp=llamacpp.version(llamacpp_run.COMPLETION_BIN, found), new_tokens=args.new, seed=args.seed,
                **source)
    (out / "provenance.json").write_text(json.dumps(meta, indent=1) + "\n")
    pd.set_option("display.width", 250)
    print(summary.round(3).to_string(index=False))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
