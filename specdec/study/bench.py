"""Benchmark sweeps: (mode, K, batch, max_new_tokens, verify, prompt) cells -> one tidy row per timed run.

    python -m specdec.study.bench --pair tiny-llama --k 1,2,4 --batch 1,2 --max-new-tokens 64 --out runs/x

Rows go to <out>/results.jsonl as they are produced (one write + fsync per row), so a killed sweep loses
nothing finished, and rerunning the same command skips every block (pairing.py: one prompt group's cells at one
iteration, timed back to back) whose runs are all recorded as ok.
Each run's provenance is <out>/provenance-<run_id>.json; every row names its run_id.
Metrics follow DESIGN.md section 3.
"""
import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import calibration
from ..engine import generate
from ..inputs import VERIFY_MODES
from ..models import PAIRS, load_pair
from ..profiler import peak_memory_mib, reset_peak_memory
from ..quantize import precision_label
from .controls import JunkDrafter
from .modes import BASELINE, DEFAULT_SWEEP, MODES, NAMES, cells_for
from . import pairing
from .pairing import MAX_ATTEMPTS, blocks_in_order, config_of, disturbed, key_of, run_order
from .prompts import PROMPTS_FILE, encode, load_prompts
from .references import run_hf
from .results import (COLUMNS, LATER_CELL, PHASES, RESULTS, ROUNDS, append_row, now, record_calibrations,
                      start_run)
from .summary import summarize

# Tests only: the sweep kills itself (SIGKILL, as a crash would) right after this many rows are on disk, so a
# kill-and-resume test never races the model's speed.
KILL_AFTER_ROWS = "SPECDEC_TEST_KILL_AFTER_ROWS"


def plan_cells(modes, ks, batch_sizes, max_new_tokens, verify, prompts) -> list[dict]:
    """Every cell of the sweep. A batch of size b takes b different prompts, and the groups of one batch size
    are disjoint (prompts 1..b, b+1..2b, ...), so no row repeats a prompt and no group is a permutation of
    another; prompts beyond the last full group are left out at that batch size. The modes of one group are
    listed together, baseline first (pairing.run_order decides the order they are timed in). A cell's category
    is its first prompt's."""
    modes = sorted(set(modes), key=NAMES.index)
    short = [b for b in batch_sizes if b > len(prompts)]
    if short:
        raise ValueError(f"batch size {max(short)} needs at least {max(short)} distinct prompts, got {len(prompts)}: "
                         f"pass more prompts or a smaller batch size")
    cells = []
    for b in batch_sizes:
        for n in max_new_tokens:
            for i in range(len(prompts) // b):
                group = prompts[i * b:(i + 1) * b]
                base = dict(batch_size=b, max_new_tokens=n, prompt_id=group[0]["id"],
                            prompt_ids=",".join(p["id"] for p in group), category=group[0].get("category"))
                for mode in modes:
                    cells += cells_for(MODES[mode], base, ks, verify)
    return cells


# -- loading ---------------------------------------------------------------------------------------------

def load_warm(pair, device="auto", dtype="auto", draft_dtype=None, threads=None, tokens=4, draft=None):
    """load_pair, then one short throwaway generation, so that page-in of freshly mapped weights and
    one-off kernel setup (20 s per model for the 1.5B pair on CPU) land here and not in the first cell."""

    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    p = load_pair(pair, draft, device=device, dtype=dtype, draft_dtype=draft_dtype)
    loaded = time.perf_counter() - start
    ids = p.tokenizer.encode("def add(a, b):\n    return")
    generate(p.target, [ids], draft=p.draft, k=2, max_new_tokens=tokens, same_tokenizer=p.same_tokenizer)
    print(f"{pair}: loaded in {loaded:.1f} s, warmed up in {time.perf_counter() - start - loaded:.1f} s "
          f"({p.device}, {str(p.dtype).removeprefix('torch.')}, timing_only={p.timing_only})")
    return p


# -- running one generation ------------------------------------------------------------------------------

def drafter_of(pair, mode):
    """What specdec.generate gets as `draft` for a mode's drafter name (specdec.study.modes)."""
    if mode.drafter == "junk":
        return JunkDrafter(pair.target)
    return {"model": pair.draft, "prompt_lookup": "prompt_lookup", None: None}[mode.drafter]


def run_specdec(pair, cell, rows, temperature, seed, profile=False) -> tuple[list, dict]:
    mode = MODES[cell["mode"]]
    draft = drafter_of(pair, mode)
    k = mode.engine_k or cell["k"]
    verify = cell["verify"] if draft is not None else "parallel"
    r = generate(pair.target, rows, draft=draft, k=k, max_new_tokens=cell["max_new_tokens"], temperature=temperature,
                 top_p=cell["top_p"], seed=seed, verify=verify, profile=profile, same_tokenizer=pair.same_tokenizer,
                 eos_token_id=[] if cell["ignore_eos"] else None)  # []: no EOS, every row runs max_new_tokens
    return r.tokens, r.stats


def phase_stats(stats) -> dict:
    """Phase totals of a profiled run (draft_s: all the draft's work, its prefill included), and the per-step means
    the predicted speedup needs (draft_step_s: the draft's steps alone; its prefill is once per generation)."""
    out = {p: stats.get(p, 0.0) for p in PHASES}
    out["draft_s"] += stats.get("draft_prefill_s", 0.0)
    rounds, k = stats["iterations"], stats["mean_k"]
    out["draft_step_s"] = stats.get("draft_s", 0.0) / (rounds * k) if rounds and k else None  # K steps a round
    out["verify_iter_s"] = out["verify_s"] / rounds if rounds else None
    return out


# -- the sweep ------------------------------------------------------------------------------------------------

def model_names(pair) -> tuple:
    if pair.name in PAIRS:
        return PAIRS[pair.name]["target"], PAIRS[pair.name]["draft"]
    name = lambda m: None if m is None else (getattr(m, "name_or_path", "") or type(m).__name__)
    return name(pair.target), name(pair.draft)


def weights_of(pair) -> dict:
    """The weights records (models.weights_record) of the pair's models, for the run's provenance."""
    return {role: getattr(m, "specdec_source", None) for role, m in (("target", pair.target), ("draft", pair.draft))
            if m is not None}


def sweep(pair, out_dir, *, modes=DEFAULT_SWEEP, ks=(1, 2, 4), batch_sizes=(1,), max_new_tokens=(64,),
          verify=("parallel",), prompts=None, iterations=3, warmup=True, temperature=0.0, top_p=None, seed=0,
          ignore_eos=False, progress=True, params=None) -> pd.DataFrame:
    """Run every cell not yet complete in out_dir; return the rows of all of this sweep's cells (old and new).
    `ignore_eos`: fixed-length generations, every row exactly max_new_tokens (EOS stops neither specdec nor HF).
    Sampling (temperature > 0): iteration i of a cell samples with seed `seed + i`, so repeats differ."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    prompts = load_prompts() if prompts is None else prompts
    target_name, draft_name = model_names(pair)
    dtype_name = lambda d: None if d is None else str(d).removeprefix("torch.")
    context = dict(pair=pair.name, target=target_name, draft=draft_name, device=str(pair.device),
                   dtype=dtype_name(pair.dtype),
                   # a quantized draft is named by its precision (e.g. "int4-g64 specdec"), a float one by its dtype
                   draft_dtype=precision_label(pair.draft),
                   temperature=float(temperature), top_p=top_p, seed=seed, ignore_eos=bool(ignore_eos))
    cells = [dict(context, **c) for c in plan_cells(modes, ks, batch_sizes, max_new_tokens, verify, prompts)]
    for cell in cells:
        if MODES[cell["mode"]].assistant_in_target_dtype:  # HF assisted as its users run it (run_hf)
            cell["draft_dtype"] = context["dtype"]
    needs_draft = sorted({c["mode"] for c in cells if MODES[c["mode"]].needs_draft})
    if pair.draft is None and needs_draft:
        raise ValueError(f"modes {needs_draft} need a draft model; this pair has none")

    # Paired timing (pairing.py): each prompt group's cells back to back, blocks in a seeded shuffled order;
    # pairing.sweep times again only the blocks not yet timed together, so a resumed sweep, or a sweep adding cells
    # to another's prompts, keeps its pairs together.
    blocks = blocks_in_order(run_order(cells, iterations, seed))

    @contextlib.contextmanager
    def begin(todo):
        tokenized = {p["id"]: encode(pair.tokenizer, p) for p in prompts}  # refuses a prompt before any trace
        run_id = start_run(out, **context, weights=weights_of(pair), timing_only=pair.timing_only, modes=modes, ks=ks,
                           batch_sizes=batch_sizes, max_new_tokens=max_new_tokens, verify=verify,
                           iterations=iterations, warmup=warmup, prompts=prompts, order="pairing.run_order",
                           order_seed=seed, max_attempts=MAX_ATTEMPTS, **(params or {}))
        runner = CellRunner(pair, results, dict(run_id=run_id, timing_only=pair.timing_only), tokenized)
        if warmup:  # every code path pays its one-off costs (allocations, kernel choice) before any timed run
            for cell in warmup_cells([c for b in todo for c, _ in b]):
                runner.warm(cell)
        try:
            yield runner.run_block
        finally:  # an interrupted sweep's rows name their calibrations too
            record_calibrations(out, run_id, runner.calibrations)

    rows = pairing.sweep(results, blocks, begin, defaults=LATER_CELL, progress=progress)
    return mark_matches(pd.DataFrame(rows, columns=list(COLUMNS)))


def mark_matches(rows) -> pd.DataFrame:
    """matches_baseline: whether a greedy row's tokens equal the target-only baseline's on the same prompts
    (None where there is no baseline row, or when sampling: only greedy output must be identical)."""
    ok = rows[(rows["status"] == "ok") & (rows["mode"] == BASELINE)]
    group = ["batch_size", "max_new_tokens", "prompt_ids"]
    base = {tuple(g): t for g, t in zip(ok[group].itertuples(index=False), ok["tokens"])}
    def match(row):
        key = (row["batch_size"], row["max_new_tokens"], row["prompt_ids"])
        if row["status"] != "ok" or row["mode"] == BASELINE or row["temperature"] != 0 or key not in base:
            return None
        return row["tokens"] == base[key]
    rows["matches_baseline"] = rows.apply(match, axis=1) if len(rows) else None
    return rows


class CellRunner:
    """Times one (cell, iteration) at a time and writes its row at once. specdec modes are profiled in the timed
    run on CPU (no device to synchronise, so profiling costs nothing there); on a GPU one extra profiled run per
    cell gives the phase times. Any exception writes a failed row; the sweep goes on."""

    def __init__(self, pair, results, extra, tokenized):
        self.pair, self.results, self.extra, self.tokenized = pair, results, extra, tokenized
        self.phases = {}  # per cell, from the profiled run on GPUs
        self.written = 0
        self.ratios = {}  # per (mode, K), the calibration ratios of its runs so far (pairing.disturbed's typical)
        self.calibrations = set()  # ids of the calibrations its rows ran under

    def generate(self, cell, seed, profile=False):
        rows = [self.tokenized[i] for i in cell["prompt_ids"].split(",")]
        if not MODES[cell["mode"]].hf:
            return run_specdec(self.pair, cell, rows, cell["temperature"], seed, profile=profile)
        return run_hf(self.pair, cell, rows, cell["temperature"], seed, top_p=cell["top_p"],
                      ignore_eos=cell["ignore_eos"])

    def warm(self, cell):
        self.generate(dict(cell, max_new_tokens=min(cell["max_new_tokens"], 8)), cell["seed"])

    def run_block(self, block):
        """Time a block's (cell, iteration) runs back to back; time them all again while pairing.disturbed says
        they straddled a change of machine state, at most MAX_ATTEMPTS times in all."""
        for attempt in range(1, MAX_ATTEMPTS + 1):
            rows = [self.run(cell, iteration, attempt) for cell, iteration in block]
            why = disturbed(rows, {m: float(np.median(r)) for m, r in self.ratios.items() if len(r) >= 2})
            for r in rows:
                if r.get("status") == "ok" and r.get("calibration_ratio"):
                    self.ratios.setdefault(config_of(r), []).append(r["calibration_ratio"])
            if not why:
                return
            if attempt < MAX_ATTEMPTS:
                print(f"specdec.study: timing {block[0][0]['prompt_id']}'s block again ({why})", file=sys.stderr)

    def run(self, cell, iteration, attempt=1) -> dict:
        specdec, on_cpu = not MODES[cell["mode"]].hf, self.pair.device.type == "cpu"
        key = key_of(cell)
        seed = sampling_seed(cell, iteration)
        extra = dict(self.extra, iteration=iteration, attempt=attempt, sampling_seed=seed)
        try:
            if specdec and not on_cpu and key not in self.phases:
                self.phases[key] = phase_stats(self.generate(cell, seed, profile=True)[1])
            reset_peak_memory(self.pair.device)
            tokens, stats = self.generate(cell, seed, profile=specdec and on_cpu)
            phases = phase_stats(stats) if specdec and on_cpu else self.phases.get(key, {})
            if stats.get("calibration_id"):  # what it ran under, beside the rows (HF references: torch's own path)
                self.calibrations.add(calibration.save(self.results.parent, calibration.snapshot()))
            rounds = {c: json.dumps(stats[c]) if c in stats else None for c in ROUNDS}  # HF: none
            row = {**stats, **phases, **cell, **extra, **rounds, "status": "ok", "error": "",
                   "tokens": json.dumps(tokens), "peak_memory_mib": peak_memory_mib(self.pair.device)}
        except Exception as e:  # noqa: BLE001 -- one bad cell (OOM, a model bug) must not end the sweep
            if isinstance(e, torch.cuda.OutOfMemoryError):
                torch.cuda.empty_cache()
            row = dict(cell, **extra, status="failed", error=f"{type(e).__name__}: {e}"[:2000])
        row = dict(row, finished_utc=now())
        append_row(self.results, row, COLUMNS)  # the cell's k wins over the stats'
        self.written += 1
        if str(self.written) == os.environ.get(KILL_AFTER_ROWS):
            os.kill(os.getpid(), signal.SIGKILL)
        return row


def sampling_seed(cell, iteration) -> int:
    """The seed a (cell, iteration) samples with: the sweep's seed + the iteration when sampling, so that repeats
    are independent draws; greedy output needs no seed (the sweep's is recorded)."""
    return cell["seed"] + iteration if cell["temperature"] > 0 else cell["seed"]


# -- warm-up ---------------------------------------------------------------------------------------------

def warmup_cells(cells) -> list[dict]:
    """One cell per shape (mode, k, verify, batch size, new tokens): what to run once, untimed, before the
    first block of pairing.run_order, so every code path has paid its one-off costs before any timed run."""
    return list({(c["mode"], c["k"], c["verify"], c["batch_size"], c["max_new_tokens"]): c for c in cells}.values())


# -- command line ---------------------------------------------------------------------------------------

def csv_list(cast=str, choices=None):
    """An argparse type for comma-separated values: ints >= 1, or names (from `choices` if given)."""
    def parse(text):
        values = [v.strip() for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError("empty list; give comma-separated values, e.g. 1,2,4")
        try:
            values = [cast(v) for v in values]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
        unknown = [v for v in values if choices and v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        if cast is int and min(values) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: every value must be >= 1")
        return values
    return parse


def parser():
    p = argparse.ArgumentParser(prog="python -m specdec.study.bench", description=__doc__.split("\n")[0])
    p.add_argument("--pair", help="a named pair (python -m specdec.models list)")
    p.add_argument("--target", help="instead of --pair: a target model spec (hub name, directory, .gguf)")
    p.add_argument("--draft", help="the draft model spec, with --target")
    p.add_argument("--k", type=csv_list(int), default=[1, 2, 4], help="draft lengths, e.g. 1,2,4")
    p.add_argument("--batch", type=csv_list(int), default=[1], help="batch sizes, e.g. 1,2")
    p.add_argument("--max-new-tokens", type=csv_list(int), default=[64])
    p.add_argument("--iterations", type=int, default=3, help="timed runs per cell")
    p.add_argument("--modes", type=csv_list(choices=NAMES), default=list(DEFAULT_SWEEP))
    p.add_argument("--verify", type=csv_list(choices=VERIFY_MODES), default=["parallel"])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompts", type=csv_list(), help="prompt categories, e.g. code,prose,qa")
    which.add_argument("--prompt-ids", type=csv_list(), help="prompt ids, e.g. code-quicksort")
    p.add_argument("--prompts-file", default=str(PROMPTS_FILE),
                   help="the prompt set (default: %(default)s; also population.jsonl, smoke.jsonl for tiny models)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling's p (default: off)")
    p.add_argument("--ignore-eos", action="store_true", help="fixed-length generations: never stop at EOS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--draft-dtype", default=None, help="default: the pair's, else auto (the faster of float32/bfloat16 on a CPU float32 target)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--no-warmup", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True, help="output directory (rerun with the same arguments to resume)")
    return p


def show(table) -> str:
    try:
        return table.to_markdown(index=False, floatfmt=".4g")
    except ImportError:  # to_markdown needs the optional `tabulate`
        return table.to_string(index=False, float_format=lambda x: f"{x:.4g}")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    if (args.pair is None) == (args.target is None):
        p.error("give either --pair NAME or --target SPEC [--draft SPEC]")
    if args.pair is not None and args.pair not in PAIRS:
        p.error(f"unknown pair {args.pair!r}; choose from {', '.join(PAIRS)}")
    if args.draft is not None and args.target is None:
        p.error("--draft needs --target (a named --pair brings its own draft)")
    if args.iterations < 1:
        p.error("--iterations must be >= 1")
    if args.temperature < 0:
        p.error("--temperature must be >= 0 (0 is greedy)")
    if args.threads is not None:  # recorded in the provenance (torch_threads)
        torch.set_num_threads(args.threads)
    try:
        prompts = load_prompts(args.prompts_file, categories=args.prompts, ids=args.prompt_ids)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    # Warmed once here, so that with --no-warmup the first cell does not pay the weights' page-in.
    pair = load_warm(args.pair or args.target, device=args.device, dtype=args.dtype, draft_dtype=args.draft_dtype,
                     draft=None if args.pair else args.draft)
    needs_draft = [m for m in args.modes if MODES[m].needs_draft]
    if pair.draft is None and needs_draft:
        p.error(f"modes {needs_draft} need a draft model: pass --draft or a --pair")
    rows = sweep(pair, args.out, modes=args.modes, ks=args.k, batch_sizes=args.batch,
                 max_new_tokens=args.max_new_tokens, verify=args.verify, prompts=prompts,
                 iterations=args.iterations, warmup=not args.no_warmup, temperature=args.temperature,
                 top_p=args.top_p, seed=args.seed, ignore_eos=args.ignore_eos, progress=not args.no_progress,
                 params=dict(argv=sys.argv[1:] if argv is None else argv))
    shown = ["mode", "k", "batch_size", "max_new_tokens", "verify"]
    columns = ["success_rate", "throughput", "throughput_iqr", "acceptance_rate", "tokens_per_target_forward",
               "speedup", "speedup_vs_hf", "predicted_speedup", "peak_memory_mib"]
    cells = summarize(rows)
    print(show(cells[shown + ["prompt_id"] + columns + ["matches_baseline"]]))
    print(f"\nmean over prompts:\n{show(summarize(rows, by=shown)[shown + ['prompts'] + columns])}")
    print(f"\n{len(rows)} rows ({(rows['status'] != 'ok').sum()} failed) in {Path(args.out) / 'results.jsonl'}")


if __name__ == "__main__":
    main()
