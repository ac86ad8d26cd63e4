"""Benchmark sweeps: (mode, K, batch, max_new_tokens, verify, prompt) cells -> one tidy row per timed run.

    python -m specdec.bench --pair tiny-llama --k 1,2,4 --batch 1,2 --max-new-tokens 64 --out runs/x

Rows go to <out>/results.jsonl as they are produced (one write + fsync per row), so a killed sweep loses
nothing finished, and rerunning the same command skips every (cell, iteration) already recorded as ok.
Each run's provenance is <out>/provenance-<run_id>.json; every row names its run_id.
Metrics follow DESIGN.md section 3.
"""
import argparse
import json
import os
import re
import resource
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import iqr
from tqdm.auto import tqdm

from .engine import eos_ids, generate
from .profiler import synchronize
from .provenance import PACKAGE_DIR, start_run

MODES = ("baseline", "speculative", "adaptive", "prompt_lookup", "hf_generate", "hf_assisted")
DRAFTED = ("speculative", "adaptive", "prompt_lookup", "hf_assisted")  # modes with a speedup over baseline
NEEDS_DRAFT = ("speculative", "adaptive", "hf_assisted")
ADAPTIVE_START = 4  # k recorded for `adaptive` cells: AdaptiveK's default start (it moves within 1..16)
VERIFY_MODES = ("parallel", "naive")
NO_VERIFY = "-"  # verify column of modes where our verify setting does not apply
PROMPTS_FILE = PACKAGE_DIR.parent / "data" / "prompts" / "prompts.jsonl"
PHASES = ("prefill_s", "draft_s", "verify_s", "accept_s", "rollback_s")
# What makes a row unique: the measurement setting (model, device, sampling), the cell and the timed run.
CELL = ("pair", "target", "draft", "device", "dtype", "draft_dtype", "temperature", "seed",
        "mode", "k", "batch_size", "max_new_tokens", "verify", "prompt_id", "prompt_ids")
KEY = CELL + ("iteration",)
METRICS = ("new_tokens", "seconds", "throughput", "proposed", "accepted", "acceptance_rate", "target_forwards",
           "draft_forwards", "iterations", "tokens_per_target_forward", "mean_k", *PHASES, "draft_step_s", "verify_iter_s",
           "peak_memory_mib")
COLUMNS = ("run_id", *CELL, "timing_only", "iteration", "status", "error", *METRICS, "matches_baseline",
           "tokens", "finished_utc")


# -- prompts -------------------------------------------------------------------------------------------

def load_prompts(path=None, categories=None, ids=None) -> list[dict]:
    """The fixed prompt set ({"id", "category", "text"} per line), optionally filtered by category or id
    (ids keep the order given). The file lives in the repository checkout, not inside the package."""
    path = Path(path or PROMPTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"prompt set not found at {path}: run from a source checkout of specdec "
                                f"(data/prompts/prompts.jsonl), or pass path=")
    prompts = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if categories is not None:
        unknown = set(categories) - {p["category"] for p in prompts}
        if unknown:
            raise ValueError(f"unknown prompt categories {sorted(unknown)}; choose from "
                             f"{sorted({p['category'] for p in prompts})}")
        prompts = [p for p in prompts if p["category"] in categories]
    if ids is not None:
        by_id = {p["id"]: p for p in prompts}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"unknown prompt ids {unknown}; choose from {sorted(by_id)}")
        prompts = [by_id[i] for i in ids]
    if not prompts:
        raise ValueError(f"no prompts left after filtering {path} (categories={categories}, ids={ids})")
    return prompts


def plan_cells(modes, ks, batch_sizes, max_new_tokens, verify, prompts) -> list[dict]:
    """Every cell of the sweep. The modes of one (batch, max_new, prompt) run back to back, baseline first,
    so that a machine whose load drifts affects a speculative cell and its baseline alike, and so that the
    baseline's tokens are known when the other modes' rows are written (matches_baseline)."""
    modes = sorted(set(modes), key=MODES.index)
    cells = []
    for b in batch_sizes:
        for n in max_new_tokens:
            for i in range(len(prompts)):
                group = [prompts[(i + j) % len(prompts)]["id"] for j in range(b)]  # cyclic, so lengths differ
                base = dict(batch_size=b, max_new_tokens=n, prompt_id=group[0], prompt_ids=",".join(group))
                for mode in modes:
                    if mode in ("baseline", "hf_generate"):
                        cells.append(dict(base, mode=mode, k=0, verify=NO_VERIFY))
                    elif mode == "hf_assisted" and b == 1:  # HF assisted generation is batch 1 only
                        cells += [dict(base, mode=mode, k=k, verify=NO_VERIFY) for k in ks]
                    elif mode in ("speculative", "prompt_lookup"):
                        cells += [dict(base, mode=mode, k=k, verify=v) for k in ks for v in verify]
                    elif mode == "adaptive":
                        cells += [dict(base, mode=mode, k=ADAPTIVE_START, verify=v) for v in verify]
    return cells


# -- loading ---------------------------------------------------------------------------------------------

def load_warm(pair, device="auto", dtype="auto", draft_dtype=None, threads=None, tokens=4, draft=None):
    """load_pair, then one short throwaway generation, so that page-in of freshly mapped weights and
    one-off kernel setup (20 s per model for the 1.5B pair on CPU) land here and not in the first cell."""
    from .models import load_pair

    if threads:
        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    p = load_pair(pair, draft, device=device, dtype=dtype, draft_dtype=draft_dtype)
    loaded = time.perf_counter() - start
    ids = p.tokenizer.encode("def add(a, b):\n    return")
    generate(p.target, [ids], draft=p.draft, k=2, max_new_tokens=tokens)
    print(f"{pair}: loaded in {loaded:.1f} s, warmed up in {time.perf_counter() - start - loaded:.1f} s "
          f"({p.device}, {str(p.dtype).removeprefix('torch.')}, timing_only={p.timing_only})")
    return p


# -- running one generation ------------------------------------------------------------------------------

def run_specdec(pair, cell, rows, temperature, seed, profile=False) -> tuple[list, dict]:
    mode = cell["mode"]
    draft = {"speculative": pair.draft, "adaptive": pair.draft, "prompt_lookup": "prompt_lookup"}.get(mode)
    k = "adaptive" if mode == "adaptive" else cell["k"]
    verify = cell["verify"] if draft is not None else "parallel"
    r = generate(pair.target, rows, draft=draft, k=k, max_new_tokens=cell["max_new_tokens"],
                 temperature=temperature, seed=seed, verify=verify, profile=profile)
    return r.tokens, r.stats


def run_hf(pair, cell, rows, temperature, seed) -> tuple[list, dict]:
    """Hugging Face generate (or assisted generation) on left-padded rows, timed end to end."""
    tok, device, n = pair.tokenizer, pair.device, cell["max_new_tokens"]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    kw = dict(max_new_tokens=n, pad_token_id=tok.pad_token_id, do_sample=temperature > 0)
    if temperature > 0:  # plain temperature sampling, like specdec's (HF's default top_k=50 switched off)
        kw.update(temperature=temperature, top_k=0, top_p=1.0)
        torch.manual_seed(seed or 0)
    assistant = pair.draft if cell["mode"] == "hf_assisted" else None
    if assistant is not None:
        # HF reads K from the assistant's generation_config (and, by default, adapts it from call to call):
        # set it before every call, with no schedule and no confidence-based early stop, so K is fixed.
        assistant.generation_config.update(num_assistant_tokens=cell["k"], num_assistant_tokens_schedule="constant",
                                           assistant_confidence_threshold=0)
    synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = pair.target.generate(ids, attention_mask=mask, assistant_model=assistant, **kw)
    synchronize(device)
    seconds = time.perf_counter() - start
    eos = eos_ids(pair.target, None)
    tokens = [cut_at_eos(row, eos) for row in out[:, width:].tolist()]
    new = sum(map(len, tokens))
    stats = dict(new_tokens=new, seconds=seconds, throughput=new / seconds)
    if assistant is None:  # plain greedy/sampled decoding: one forward per step, the prefill gives the first token
        stats.update(target_forwards=max(map(len, tokens)), tokens_per_target_forward=new / max(map(len, tokens)))
    return tokens, stats


def cut_at_eos(tokens, eos) -> list:
    """A row's new tokens up to and including the first EOS (after it HF writes padding)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens


def phase_stats(stats) -> dict:
    """Phase totals of a profiled run, and the per-step means the predicted speedup needs."""
    out = {p: stats.get(p, 0.0) for p in PHASES}
    rounds, k = stats["iterations"], stats["mean_k"]
    out["draft_step_s"] = out["draft_s"] / (rounds * k) if rounds and k else None  # K draft steps per round
    out["verify_iter_s"] = out["verify_s"] / rounds if rounds else None
    return out


# -- peak memory (DESIGN.md section 3) --------------------------------------------------------------------

def reset_peak_memory(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        try:  # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # then ru_maxrss below is the peak since process start


def peak_memory_mib(device) -> float:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# -- the results file -------------------------------------------------------------------------------------

def read_rows(path) -> list[dict]:
    """Every complete row of a results.jsonl; a torn line (a writer killed mid-line) is skipped."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def append_row(path, row, columns=COLUMNS):
    """One row = one write() of one whole line, then fsync: a crash leaves either the line or a torn tail."""
    null = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # JSON has no NaN
    line = json.dumps({c: null(row.get(c)) for c in columns}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def key_of(row) -> tuple:
    return tuple(row.get(c) for c in KEY)


def latest_by_key(rows) -> dict:
    """One row per key: an ok row if there is one (failed attempts are retried), else the last failure."""
    best = {}
    for row in rows:
        k = key_of(row)
        if k not in best or best[k]["status"] != "ok":
            best[k] = row
    return best


# -- the sweep ------------------------------------------------------------------------------------------------

def model_names(pair) -> tuple:
    from .models import PAIRS
    if pair.name in PAIRS:
        return PAIRS[pair.name]["target"], PAIRS[pair.name]["draft"]
    name = lambda m: None if m is None else (getattr(m, "name_or_path", "") or type(m).__name__)
    return name(pair.target), name(pair.draft)


def sweep(pair, out_dir, *, modes=("baseline", "speculative"), ks=(1, 2, 4), batch_sizes=(1,), max_new_tokens=(64,),
          verify=("parallel",), prompts=None, iterations=3, warmup=True, temperature=0.0, seed=0, progress=True,
          params=None) -> pd.DataFrame:
    """Run every cell not yet complete in out_dir; return the rows of all of this sweep's cells (old and new)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    prompts = load_prompts() if prompts is None else prompts
    target_name, draft_name = model_names(pair)
    dtype_name = lambda d: None if d is None else str(d).removeprefix("torch.")
    context = dict(pair=pair.name, target=target_name, draft=draft_name, device=str(pair.device),
                   dtype=dtype_name(pair.dtype), draft_dtype=dtype_name(getattr(pair, "draft_dtype", None)),
                   temperature=float(temperature), seed=seed)
    cells = [dict(context, **c) for c in plan_cells(modes, ks, batch_sizes, max_new_tokens, verify, prompts)]
    if pair.draft is None and any(c["mode"] in NEEDS_DRAFT for c in cells):
        raise ValueError(f"modes {NEEDS_DRAFT} need a draft model; this pair has none")

    if results.is_file() and results.stat().st_size and not results.read_bytes().endswith(b"\n"):
        with open(results, "ab") as f:  # end a torn last line (a kill mid-write) so new rows start on their own
            f.write(b"\n")
    old = read_rows(results)
    done = {k for k, r in latest_by_key(old).items() if r["status"] == "ok"}
    # the baseline's tokens per (batch, max_new, prompt_ids), to set matches_baseline on the other modes' rows
    baseline_tokens = {(r["batch_size"], r["max_new_tokens"], r["prompt_ids"]): r["tokens"] for r in old
                       if r["status"] == "ok" and r["mode"] == "baseline" and all(r[c] == context[c] for c in context)}
    todo = [(c, [i for i in range(iterations) if key_of(dict(c, iteration=i)) not in done]) for c in cells]
    todo = [(c, its) for c, its in todo if its]

    if todo:  # a run that has nothing left to do leaves no trace
        run_id = start_run(out, **context, timing_only=pair.timing_only, modes=modes, ks=ks, batch_sizes=batch_sizes,
                           max_new_tokens=max_new_tokens, verify=verify, iterations=iterations, warmup=warmup,
                           prompts=prompts, **(params or {}))
        tokenized = {p["id"]: pair.tokenizer.encode(p["text"]) for p in prompts}
        bar = tqdm(todo, disable=not progress, unit="cell", total=len(cells), initial=len(cells) - len(todo))
        for cell, its in bar:
            bar.set_description(f"{cell['mode']} k={cell['k']} b={cell['batch_size']} n={cell['max_new_tokens']} "
                                f"{cell['verify']} {cell['prompt_id']}")
            run_cell(pair, cell, its, [tokenized[i] for i in cell["prompt_ids"].split(",")], results,
                     dict(run_id=run_id, timing_only=pair.timing_only), warmup, baseline_tokens)
    mine = {key_of(dict(c, iteration=i)) for c in cells for i in range(iterations)}
    rows = [r for k, r in latest_by_key(read_rows(results)).items() if k in mine]
    return pd.DataFrame(rows, columns=list(COLUMNS))


def run_cell(pair, cell, todo, rows, results, extra, warmup, baseline_tokens):
    """Warm-up, one profiled run (specdec modes: the phase times), then the timed runs, each written at once.
    On CPU profiling costs nothing (no device to synchronise), so the timed runs are profiled themselves.
    Any exception marks the cell's remaining runs failed; the sweep goes on."""
    temperature, seed = cell["temperature"], cell["seed"]
    specdec = cell["mode"] in ("baseline", "speculative", "adaptive", "prompt_lookup")
    profile_timed = specdec and pair.device.type == "cpu"
    run = (lambda: run_specdec(pair, cell, rows, temperature, seed, profile=profile_timed)) if specdec else (
        lambda: run_hf(pair, cell, rows, temperature, seed))
    written = []
    try:
        reset_peak_memory(pair.device)
        if warmup:
            run()
        phases = {}
        if specdec and not profile_timed:
            phases = phase_stats(run_specdec(pair, cell, rows, temperature, seed, profile=True)[1])
        for i in todo:
            tokens, stats = run()
            if profile_timed:
                phases = phase_stats(stats)
            row = {**stats, **phases, **cell, **extra, "iteration": i, "status": "ok", "error": "",  # the cell's k wins
                   "tokens": json.dumps(tokens), "peak_memory_mib": peak_memory_mib(pair.device)}
            group = (cell["batch_size"], cell["max_new_tokens"], cell["prompt_ids"])
            if cell["mode"] == "baseline":
                baseline_tokens[group] = row["tokens"]
            elif temperature == 0 and group in baseline_tokens:  # only greedy output must be identical
                row["matches_baseline"] = row["tokens"] == baseline_tokens[group]
            append_row(results, dict(row, finished_utc=now()))
            written.append(i)
    except Exception as e:  # noqa: BLE001 -- one bad cell (OOM, a model bug) must not end the sweep
        if isinstance(e, torch.cuda.OutOfMemoryError):
            torch.cuda.empty_cache()
        error = f"{type(e).__name__}: {e}"[:2000]
        for i in todo:
            if i not in written:
                append_row(results, dict(cell, **extra, iteration=i, status="failed", error=error, finished_utc=now()))


def now():
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- summary ------------------------------------------------------------------------------------------------

MATCH = ("pair", "target", "draft", "device", "dtype", "draft_dtype", "temperature", "seed",
         "batch_size", "max_new_tokens", "prompt_id", "prompt_ids")


def predicted_speedup(a, k, c, v):
    """Leviathan et al.: expected tokens per round (1 - a^(K+1)) / (1 - a) over the round's cost K c + v,
    in target steps; at a == 1 the first factor's limit is K + 1."""
    a, k = np.asarray(a, float), np.asarray(k, float)
    perfect = np.isclose(a, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(perfect, k + 1, (1 - a ** (k + 1)) / np.where(perfect, 1.0, 1 - a))
        return tokens / (k * np.asarray(c, float) + np.asarray(v, float))


def summarize(rows, by=None) -> pd.DataFrame:
    """One row per cell (metrics over its ok runs) with speedup, speedup_vs_hf and predicted_speedup;
    with `by` (e.g. ("mode", "k", "batch_size", "max_new_tokens", "verify")), the mean over prompts of
    those per-cell numbers."""
    rows = pd.DataFrame(rows)
    cell = [c for c in CELL if c in rows]
    success = rows.groupby(cell, dropna=False, sort=False)["status"].agg(lambda s: (s == "ok").mean())
    ok = rows[rows["status"] == "ok"].copy()
    for col in METRICS:  # null-only columns load as object; make every metric numeric
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    matches = lambda s: bool(s.dropna().astype(bool).all()) if s.notna().any() else None
    agg = dict(runs=("throughput", "size"), throughput=("throughput", "median"),
               throughput_iqr=("throughput", iqr), throughput_min=("throughput", "min"),
               throughput_max=("throughput", "max"), seconds=("seconds", "median"),
               new_tokens=("new_tokens", "median"), acceptance_rate=("acceptance_rate", "mean"),
               tokens_per_target_forward=("tokens_per_target_forward", "mean"),
               **{p: (p, "median") for p in (*PHASES, "draft_step_s", "verify_iter_s")},
               peak_memory_mib=("peak_memory_mib", "max"), timing_only=("timing_only", "first"),
               matches_baseline=("matches_baseline", matches))
    metrics = ok.groupby(cell, dropna=False, sort=False).agg(**agg)
    cells = success.rename("success_rate").to_frame().join(metrics).reset_index()
    cells["runs"] = cells["runs"].fillna(0).astype(int)

    match = [c for c in MATCH if c in cells]
    base = cells[cells["mode"] == "baseline"][match + ["throughput", "verify_iter_s"]]
    cells = cells.merge(base.rename(columns={"throughput": "baseline_throughput", "verify_iter_s": "target_step_s"}),
                        on=match, how="left")
    drafted = cells["mode"].isin(DRAFTED)
    cells["speedup"] = np.where(drafted, cells["throughput"] / cells["baseline_throughput"], np.nan)
    hf = cells[cells["mode"] == "hf_assisted"][match + ["k", "throughput"]]
    cells = cells.merge(hf.rename(columns={"throughput": "hf_assisted_throughput"}), on=match + ["k"], how="left")
    spec = cells["mode"] == "speculative"
    cells["speedup_vs_hf"] = np.where(spec, cells["throughput"] / cells["hf_assisted_throughput"], np.nan)
    predicted = predicted_speedup(cells["acceptance_rate"], cells["k"], cells["draft_step_s"] / cells["target_step_s"],
                                  cells["verify_iter_s"] / cells["target_step_s"])
    cells["predicted_speedup"] = np.where(spec, predicted, np.nan)
    if by is None:
        return cells
    grouped = cells.groupby(list(by), dropna=False, sort=False)
    return grouped.mean(numeric_only=True).join(grouped["prompt_id"].nunique().rename("prompts")).reset_index()


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
    p = argparse.ArgumentParser(prog="python -m specdec.bench", description=__doc__.split("\n")[0])
    p.add_argument("--pair", help="a named pair (python -m specdec.models list)")
    p.add_argument("--target", help="instead of --pair: a target model spec (hub name, directory, .gguf)")
    p.add_argument("--draft", help="the draft model spec, with --target")
    p.add_argument("--k", type=csv_list(int), default=[1, 2, 4], help="draft lengths, e.g. 1,2,4")
    p.add_argument("--batch", type=csv_list(int), default=[1], help="batch sizes, e.g. 1,2")
    p.add_argument("--max-new-tokens", type=csv_list(int), default=[64])
    p.add_argument("--iterations", type=int, default=3, help="timed runs per cell")
    p.add_argument("--modes", type=csv_list(choices=MODES), default=["baseline", "speculative"])
    p.add_argument("--verify", type=csv_list(choices=VERIFY_MODES), default=["parallel"])
    which = p.add_mutually_exclusive_group()
    which.add_argument("--prompts", type=csv_list(), help="prompt categories, e.g. code,prose,qa")
    which.add_argument("--prompt-ids", type=csv_list(), help="prompt ids, e.g. code-quicksort")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--draft-dtype", default=None, help="default: the pair's, else the target's")
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
    from .models import PAIRS

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
        prompts = load_prompts(categories=args.prompts, ids=args.prompt_ids)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    # Warmed once here, so that with --no-warmup the first cell does not pay the weights' page-in.
    pair = load_warm(args.pair or args.target, device=args.device, dtype=args.dtype, draft_dtype=args.draft_dtype,
                     draft=None if args.pair else args.draft)
    if pair.draft is None and set(NEEDS_DRAFT) & set(args.modes):
        p.error(f"modes {NEEDS_DRAFT} need a draft model: pass --draft or a --pair")
    rows = sweep(pair, args.out, modes=args.modes, ks=args.k, batch_sizes=args.batch,
                 max_new_tokens=args.max_new_tokens, verify=args.verify, prompts=prompts,
                 iterations=args.iterations, warmup=not args.no_warmup, temperature=args.temperature,
                 seed=args.seed, progress=not args.no_progress, params=dict(argv=sys.argv[1:] if argv is None else argv))
    shown = ["mode", "k", "batch_size", "max_new_tokens", "verify"]
    columns = ["success_rate", "throughput", "throughput_iqr", "acceptance_rate", "tokens_per_target_forward",
               "speedup", "speedup_vs_hf", "predicted_speedup", "peak_memory_mib"]
    cells = summarize(rows)
    print(show(cells[shown + ["prompt_id"] + columns + ["matches_baseline"]]))
    print(f"\nmean over prompts:\n{show(summarize(rows, by=shown)[shown + ['prompts'] + columns])}")
    print(f"\n{len(rows)} rows ({(rows['status'] != 'ok').sum()} failed) in {Path(args.out) / 'results.jsonl'}")


if __name__ == "__main__":
    main()
