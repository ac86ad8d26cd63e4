"""Run storage: where measurements live, and what run each one came from.

An experiment folder holds
    results.jsonl               one JSON row per measurement, appended and fsynced as it is measured
    provenance-<run_id>.json    one per process that wrote rows: commit, machine, versions, parameters
Every row names its run_id, so the provenance of a row is always the file of its own run, never that of
whoever last touched the folder. Resuming means: a row whose key is already recorded as ok is not measured
again. bench (sweeps), latency (verification timing) and the study runner all store runs through here.
"""
import datetime
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from ..linear import plan_ranges
from ..qkernel import NEVER
from .provenance import device_name, git_state, provenance

RESULTS = "results.jsonl"
AA_FILE = "aa_control.csv"  # an experiment's A/A control (notebook.aa_control), which the summary page collects
FINDING_FILE = "finding.md"  # an experiment's headline in one sentence (notebook.readout), for the summary page

# The row schema of a sweep (specdec.study.bench), read by the summaries. Metrics follow DESIGN.md section 3.
PHASES = ("prefill_s", "draft_s", "verify_s", "accept_s", "rollback_s")
# What makes a row unique: the measurement setting (model, device, sampling), the cell and the timed run. `k`,
# `policy` and `k_max`: see specdec.study.modes. `ignore_eos`: every row ran its full max_new_tokens (EOS never
# stopped it); `top_p`: nucleus sampling's p (None: off).
CELL = ("pair", "target", "draft", "device", "dtype", "draft_dtype", "temperature", "top_p", "seed", "ignore_eos",
        "mode", "k", "policy", "k_max", "batch_size", "max_new_tokens", "verify", "prompt_id", "prompt_ids")
KEY = CELL + ("iteration",)
# What makes two cells comparable (a mode against the baseline, or HF's defaults, on the same prompts), and a block
# of paired timing (specdec.study.pairing). Not the draft's dtype: the baseline does not use the draft, and HF
# assisted generation gets it in the target's dtype.
PAIRED_ON = ("pair", "target", "draft", "device", "dtype", "temperature", "top_p", "seed", "ignore_eos",
             "batch_size", "max_new_tokens", "prompt_id", "prompt_ids")
# CELL columns added after rows were first written, with the value every older row ran with (read_rows fills them
# in, so an old results.jsonl resumes and compares as before). top_p needs none: a missing value reads as None.
LATER_CELL = dict(ignore_eos=False)
METRICS = ("new_tokens", "seconds", "throughput", "proposed", "accepted", "acceptance_rate", "target_forwards",
           "draft_forwards", "iterations", "tokens_per_target_forward", "mean_k", *PHASES, "draft_step_s", "verify_iter_s",
           "peak_memory_mib")
# calibration_id: the linear plans and cost curves the row ran under (calibration-<id>.json beside the rows)
CALIBRATION = ("calibration_id", "calibration_suspect", "calibration_ratio", "predicted_decode_s", "decode_seconds")
# Per row, not per cell: the prompt's category (a batch's first prompt's) and the seed its sampling ran with (the
# sweep's seed + the iteration when sampling, so repeats differ; the sweep's seed when greedy). JSON strings like
# `tokens`, from the engine's stats: per verify round, its K (k_per_iteration) and the drafts each batch row accepted
# (accepted_per_iteration, None for a row already finished); null for HF references, which report no rounds.
ROUNDS = ("k_per_iteration", "accepted_per_iteration")
# `attempt`: which timing of its block the row comes from (1, or more where the block was timed again: pairing.py)
COLUMNS = ("run_id", *CELL, "category", "timing_only", "iteration", "attempt", "sampling_seed", "status", "error",
           *METRICS, *CALIBRATION, "matches_baseline", "tokens", *ROUNDS, "finished_utc")


def decode_throughput(rows):
    """Per row, (new tokens - one per batch row, which prefill produced) / the engine's decode_seconds (from the end
    of the target's prefill to the last token, the draft's prefill inside it: the one definition, specdec.engine);
    NaN where a row has no decode time (HF references)."""
    if "decode_seconds" not in rows:
        return rows["seconds"] * np.nan
    decode_s = rows["decode_seconds"].astype(float)
    return ((rows["new_tokens"] - rows["batch_size"]) / decode_s).where(decode_s > 0)


def new_run_id() -> str:
    """UTC time + a random suffix: sorts by start time, unique across machines."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def start_run(out_dir, **params) -> str:
    """A new run id, with its provenance written to <out_dir>/provenance-<run_id>.json."""
    run_id = new_run_id()
    path = Path(out_dir) / f"provenance-{run_id}.json"
    path.write_text(json.dumps(provenance(run_id=run_id, **params), indent=1))
    return run_id


def record_calibrations(out_dir, run_id, ids):
    """Name in the run's provenance file the calibrations (their ids) its rows ran under, once it has run."""
    path = Path(out_dir) / f"provenance-{run_id}.json"
    record = json.loads(path.read_text())
    record["calibrations"] = sorted(set(record.get("calibrations", [])) | set(ids))
    path.write_text(json.dumps(record, indent=1))


def describe_calibrations(folder, rows) -> list[str]:
    """Markdown lines naming the calibrations the rows ran under (their calibration-<id>.json): where each
    entry came from, whether the machine was busy when it was measured, and each linear shape's plan."""
    ids = sorted({r.get("calibration_id") for r in rows if r.get("calibration_id")})
    lines = []
    for cid in ids:
        path = Path(folder) / f"calibration-{cid}.json"
        if not path.is_file():
            lines.append(f"- calibration {cid}: its file is missing")
            continue
        snap = json.loads(path.read_text())
        entries = [e for kind in ("linear", "costs", "kernel") for e in snap.get(kind, {}).values()]
        sources = sorted({f"{e['source']}" + (f" (measured {e['measured_utc']})" if e.get("measured_utc") else "")
                          for e in entries})
        busy = sum(bool(e.get("busy")) for e in entries)
        plans = "; ".join(f"{shape}: {plan_ranges(e['entry']['fast'])}" for shape, e in snap.get("linear", {}).items())
        kernel = "; ".join(tuning_words(e["entry"]) for e in snap.get("kernel", {}).values())
        lines.append(f"- calibration [{cid}]({path.name}) on `{snap['machine_key']}`: {len(snap.get('linear', {}))} "
                     f"linear plans, {len(snap.get('costs', {}))} cost curves; {'; '.join(sources) or 'nothing'}"
                     f"{f'; {busy} measured while the machine was busy' if busy else ''}. Plans: {plans or 'none'}"
                     + (f". Quantized kernel's tuning: {kernel}" if kernel else ""))
    return lines


def tuning_words(tuning) -> str:
    """specdec.qkernel.tuning()'s entry in words: prefetch distances per code path, the AMX crossover."""
    paths = {"2": "AVX-512 VNNI", "3": "AMX"}
    ahead = ", ".join(f"{paths.get(p, p)} {l1} B into L1" + (f" and {l2} B into L2" if l2 else "")
                      for p, (l1, l2) in sorted(tuning.get("prefetch", {}).items()))
    amx = tuning.get("amx_from")
    return f"prefetch {ahead or 'none'}" + ("" if amx is None else "; no AMX" if amx >= NEVER else f"; AMX from {amx} rows")


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def read_rows(path, defaults=None) -> list[dict]:
    """Every complete row of a results.jsonl; a torn line (a writer killed mid-line) is skipped. `defaults`
    ({column: value}, e.g. LATER_CELL for sweep rows) fills columns that older rows lack."""
    rows = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                rows.append({**(defaults or {}), **json.loads(line)})
            except json.JSONDecodeError:
                continue
    return rows


def end_torn_line(path):
    """After a kill mid-write the file may end inside a line: end it, so new rows start on their own."""
    path = Path(path)
    if path.is_file() and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        with open(path, "ab") as f:
            f.write(b"\n")


def append_row(path, row, columns):
    """One row = one write() of one whole line, then fsync: a crash leaves either the line or a torn tail."""
    null = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # JSON has no NaN
    line = json.dumps({c: null(row.get(c)) for c in columns}) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


# -- which runs a table was drawn from ----------------------------------------------------------------------

def run_records(folder, run_ids) -> dict:
    """{run_id: provenance dict} for the given ids, read from <folder>/provenance-<run_id>.json."""
    records = {}
    for run_id in sorted({r for r in run_ids if r}):
        path = Path(folder) / f"provenance-{run_id}.json"
        records[run_id] = json.loads(path.read_text()) if path.is_file() else None
    return records


def describe_runs(folder, rows) -> str:
    """One line naming the machine, threads, dtype, commit and date of the runs that produced `rows`
    (a DataFrame or list of dicts with run_id): what every table and figure caption states."""
    ids = list(rows["run_id"]) if hasattr(rows, "columns") else [r.get("run_id") for r in rows]
    records = run_records(folder, ids)
    if not records:
        return "no measurements"
    parts = []
    for key in ("device_name", "commit", "date"):
        values = []
        for run_id, rec in records.items():
            if rec is None:
                value = f"run {run_id} (provenance file missing)"
            elif key == "device_name":  # on a CPU the thread count shapes every timing
                on_cpu = str(rec.get("params", {}).get("device", "cpu")).startswith("cpu")
                threads = rec["torch_threads"]
                value = rec["device_name"] + (f" ({threads} thread{'s' * (threads != 1)})" if on_cpu else "")
            elif key == "commit":
                value = f"commit {(rec.get('git_commit') or 'unknown')[:10]}" + (" (uncommitted changes)"
                                                                                   if rec.get("git_dirty") else "")
            else:
                value = rec["started_utc"][:10]
            values.append(value)
        parts.append(" / ".join(dict.fromkeys(values)))  # one entry when every run agrees
    return f"measured on {parts[0]}, {parts[1]}, {parts[2]}"


# -- a study run: fresh by default, resumed only on purpose ----------------------------------------------------

STATE = "study-run.json"  # in data/<target>/: the run there, its status, and what resuming it requires


def fingerprint(device, params) -> dict:
    """What must be equal for an interrupted run to be continued automatically: the machine (device name and
    thread count), the code (commit and uncommitted diff) and every parameter."""
    git = git_state()
    blob = json.dumps(params, sort_keys=True, default=str).encode()
    return dict(machine=f"{device_name(device)} ({torch.get_num_threads()} threads)", commit=git["git_commit"],
                diff=git["git_diff_sha256"], params_sha256=hashlib.sha256(blob).hexdigest())


def open_study_run(data_dir, figures_dir, sections, fingerprint_now, resume=False) -> tuple[dict, str]:
    """Decide between a new run and continuing the one in data_dir; returns (state, what was decided).

    New run: the outputs of `sections` (data folders and figures) are removed, so every cell is measured
    anew. Continue: nothing is removed; sweeps measure only the cells their results.jsonl lacks. An unfinished
    run that may not be continued (another machine, other code or parameters) is moved aside, never deleted."""
    data_dir, figures_dir = Path(data_dir), Path(figures_dir)
    path = data_dir / STATE
    old = json.loads(path.read_text()) if path.is_file() else None
    unfinished = old is not None and old.get("status") != "complete"
    changed = [k for k in fingerprint_now if old and old.get("fingerprint", {}).get(k) != fingerprint_now[k]]
    same = unfinished and not changed
    if old is not None and (resume or same):
        why = "--resume" if resume else "same machine, code and parameters"
        note = f"; differs in {', '.join(changed)}: rows keep their own run ids and provenance" if changed else ""
        state = dict(old, status="running", resumed_utc=now())
        message = (f"resuming run {old['run_id']} (started {old['started_utc']}, {old.get('status')}; {why}{note}): "
                   f"finished cells are kept, only missing ones are measured")
    else:
        message = "new run: every cell is measured anew" + (" (--resume: nothing to resume here)" if resume else "")
        if unfinished:  # finished cells of a run we may not continue are kept, aside
            aside = data_dir.with_name(f"{data_dir.name}.interrupted-{old['run_id']}")
            shutil.move(str(data_dir), str(aside))
            message += (f"; the unfinished run {old['run_id']} (other {', '.join(changed)}) was moved to {aside} "
                        f"with its finished cells")
        for sec in sections:
            shutil.rmtree(data_dir / sec, ignore_errors=True)
            for fig in section_figures(figures_dir, sec):
                fig.unlink()
        state = dict(run_id=new_run_id(), started_utc=now(), status="running", fingerprint=fingerprint_now)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=1))
    return state, message


def of_section(stem, sec) -> bool:
    """Whether a figure named `stem` is section `sec`'s: <sec> or <sec>_<what>, e.g. k_sweep_length."""
    return stem == sec or stem.startswith(sec + "_")


def section_figures(figures_dir, sec) -> list[Path]:
    """The figures a section's notebook draws: <sec>.png and <sec>_<what>.png (and .svg); a figure a notebook no
    longer draws is removed with the rest, not left beside the new run's."""
    return [f for f in Path(figures_dir).glob(f"{sec}*") if of_section(f.stem, sec)]


def close_study_run(data_dir, state, status):
    state = dict(state, status=status, finished_utc=now())
    (Path(data_dir) / STATE).write_text(json.dumps(state, indent=1))
    return state


def scrub_paths(files, replacements):
    """Replace machine-specific absolute paths (the output root, the checkout, the venv, the home folder) in
    text files about to be published, longest first so a path inside another is replaced whole."""
    pairs = sorted(((str(a), b) for a, b in replacements.items() if str(a) not in ("", "/")), key=lambda p: -len(p[0]))
    for f in files:
        text = Path(f).read_text()
        new = text
        for old, repl in pairs:
            new = new.replace(old, repl)
        if new != text:
            Path(f).write_text(new)
