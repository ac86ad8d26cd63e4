"""One pair, one dtype: verification latency and speculative-vs-baseline timings, for scripts/gpu_check.sh.

    python scripts/gpu_timings.py --pair llama-3.2-random --device cuda --dtype bfloat16 --out OUT/llama-bf16
    python scripts/gpu_timings.py --pair tiny-llama --device cpu --dtype float16 --out OUT/x --tiny

The pair is loaded once; then specdec.study.latency.measure (one (K+1)-token forward vs K+1 one-token forwards)
and specdec.study.bench.sweep (target alone vs speculative) write their raw rows and provenance under --out, and
this script adds latency.csv and sweep.csv (the summaries) and prints both. Random-weight pairs are
timing only: acceptance means nothing there, forward times and memory are real.
"""
import argparse
import time
from pathlib import Path

import torch

from specdec.study import bench, latency, summary

# (latency ks, context, repeats), (sweep ks, batch sizes, max new tokens, iterations)
SIZES = dict(full=(dict(ks=[1, 2, 4, 8, 16], context=256, repeats=10),
                   dict(ks=[2, 4, 8], batch_sizes=[1, 4], max_new_tokens=[64], iterations=1)),
             tiny=(dict(ks=[1, 2, 4], context=16, repeats=2),
                   dict(ks=[2], batch_sizes=[1, 2], max_new_tokens=[8], iterations=1)))
PROMPTS = ["code-quicksort", "prose-lighthouse", "qa-photosynthesis", "code-csv-parse"]  # batch 4: 4 prompts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pair", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="a few tokens and repeats (the --cpu check)")
    args = p.parse_args(argv)
    lat_sizes, sweep_sizes = SIZES["tiny" if args.tiny else "full"]
    out = Path(args.out)
    start = time.perf_counter()
    # --tiny: one thread, so that a CI machine's other work does not oversubscribe its cores
    pair = bench.load_warm(args.pair, device=args.device, dtype=args.dtype, threads=1 if args.tiny else None)
    params = dict(check="gpu_check", tiny=args.tiny)

    rows = latency.measure(pair, out / "latency", progress=False, params=params, **lat_sizes)
    table = latency.summarize(rows)
    table.to_csv(out / "latency.csv", index=False)
    print(bench.show(table[["mode", "k", "median_ms", "q25_ms", "q75_ms", "vs_smallest_k"]]), flush=True)
    print(f"latency verdict: {latency.verdict(table)}\n", flush=True)

    rows = bench.sweep(pair, out / "sweep", prompts=bench.load_prompts(ids=PROMPTS), progress=False,
                       params=params, **sweep_sizes)
    by = ["mode", "k", "batch_size", "max_new_tokens"]
    table = summary.summarize(rows, by=by)
    table.to_csv(out / "sweep.csv", index=False)
    shown = [c for c in by + ["success_rate", "throughput", "speedup", "peak_memory_mib"] if c in table]
    print(bench.show(table[shown]))
    failed = int((rows["status"] != "ok").sum())
    peak = torch.cuda.max_memory_allocated() / 2**20 if pair.device.type == "cuda" else 0
    print(f"\n{args.pair} {args.dtype} on {pair.device}: {len(rows)} sweep rows ({failed} failed), "
          f"peak cuda memory {peak:.0f} MiB, {time.perf_counter() - start:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
