"""llama.cpp as an outside reference for notebook 06, as HF assisted generation is for the others: llama.cpp's
target alone and its own speculative decoding with the pair's draft, on the offline pair's GGUF files read natively
(their Q4_K_M quantization, llama.cpp's own kernels), the notebook's prompts, greedy, a fixed number of new tokens
(EOS ignored), on as many threads as torch uses.

Optional, never a dependency: specdec.study.llamacpp_run finds its binaries (or its Python package), runs them and
reads the decode rate each reports, which is what is compared. Rows go to <folder>/results.jsonl
(specdec.study.results), each fsynced as it is measured.

Paired with specdec: given a specdec pair (notebook 06 passes its int4 one), the sweep also times specdec's own target
alone (twice: an A/A control) and its speculation (k="auto") in every prompt's block, back to back with llama.cpp's
runs of that prompt, so specdec and llama.cpp are compared inside one machine state (specdec.study.pairing), on the
same decode definition (from the end of the prompt's forward to the last token).

OpenVINO GenAI, where scripts/setup_openvino.sh set it up (specdec.study.openvino_run), joins the same blocks as a
second outside reference: its int4 target alone and its own speculation at each fixed K it is given (its
num_assistant_tokens), compared with llama.cpp's target alone and with its own target alone.
"""
import contextlib
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .. import weights
from ..engine import generate
from ..models import PAIRS
from ..quantize import precision_label
from . import pairing, results, stats
from .openvino_run import OPENVINO, Worker
from .openvino_run import describe as describe_openvino
from .llamacpp_run import (HUGE_PAGES, PYTHON, SPECULATIVE_BIN, completion_command, describe, parse_completion,
                           parse_speculative, plan, prompt_file, python_target_alone, run_binary, speculative_command)
from .population import estimate, geomean, paired_runs
from .prompts import encode

SPECDEC = "specdec"  # specdec's own target alone (twice: the A/A control) and speculation (k="auto"), timed in each
                     # block beside llama.cpp's
ALONE = ("target_alone", "target_again")  # specdec's modes without a draft
OTHERS = (SPECDEC, OPENVINO)  # the engines timed in llama.cpp's blocks, each also read against its own target alone
KEY = ("tool", "mode", "draft_max", "p_min", "prompt_id", "iteration")
FAILURES = (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired)  # a run that fails: its row says why
COLUMNS = KEY + ("category", "run_id", "version", "threads", "max_new_tokens", "prompt_tokens", "hf_prompt_tokens",
                 "new_tokens", "decode_tokens", "prefill_s", "decode_s", "decode_tok_s", "drafted", "accepted", "text", "status",
                 "error", "measured_utc")
SUMMARY_COLUMNS = ("tool", "mode", "draft_max", "p_min", "prompts", "decode_tok_s", "speedup", "speedup_lo",
                   "speedup_hi", "own_speedup", "own_lo", "own_hi", "acceptance", "identical", "version")


def pair_ggufs(pair) -> tuple[Path, Path] | None:
    """The GGUF files of a named pair's target and draft where both are offline GGUF models, else None."""
    spec = PAIRS.get(pair, {})
    names = (spec.get("target"), spec.get("draft"))
    if not all(name in weights.OFFLINE for name in names):
        return None
    return weights.gguf_file(names[0]), weights.gguf_file(names[1])


def version(tool, found, specdec=None) -> str:
    """What built `tool`: a binary's `--version` (llama.cpp's version and commit), the Python package's, or for
    specdec its target's precision."""
    if tool == SPECDEC:
        return f"{SPECDEC} {precision_label(specdec.target)}"
    if tool == PYTHON:
        return f"{PYTHON} {found['python']}"
    out = subprocess.run([str(found["binaries"][tool]), "--version"], capture_output=True, text=True, timeout=60)
    line = re.search(r"version: (.+)", out.stdout + out.stderr)
    return line.group(1).strip() if line else "unknown"


def prompt_inputs(tokenizer, prompts) -> list[dict]:
    """The notebook's prompts as llama.cpp gets them: id, category, the HF tokenizer's ids (chat template
    included) and their text with the special tokens written out, which llama.cpp tokenizes (specials parsed)."""
    out = []
    for q in prompts:
        ids = encode(tokenizer, q)
        out.append(dict(id=q["id"], category=q["category"], ids=ids,
                        text=tokenizer.decode(ids, skip_special_tokens=False)))
    return out


def specdec_run(pair, ids, n, mode) -> tuple[dict, str]:
    """specdec on the exact token ids, its target alone (mode "target_alone", or "target_again": the A/A control's
    second run) or its speculation with the pair's draft at k="auto" (mode "auto"), in llama.cpp's timing terms:
    decode is every token after the one the prompt's forward gave (specdec's decode_seconds: from the end of the
    target's prefill to the last token, the draft's prefill inside it)."""
    draft = pair.draft if mode == "auto" else None
    r = generate(pair.target, [ids], draft=draft, k="auto", max_new_tokens=n, eos_token_id=[],
                 same_tokenizer=pair.same_tokenizer)
    decode = r.stats["decode_seconds"]
    timing = dict(prompt_tokens=len(ids), prefill_s=r.stats["seconds"] - decode, new_tokens=n, decode_tokens=n - 1,
                  decode_s=decode)
    if draft is not None:
        timing.update(drafted=r.stats["proposed"], accepted=r.stats["accepted"])
    return timing, pair.tokenizer.decode(r.tokens[0])


def measure(tool, mode, found, ggufs, prompt, n, threads, draft_max=None, p_min=None, folder=None,
            specdec=None, openvino=None) -> tuple[dict, str]:
    """One timed run: (timings, generated text). `prompt`: dict with id, ids (the HF tokenizer's) and text;
    `specdec`: the specdec pair the SPECDEC tool runs; `openvino`: the openvino_run.Worker the OPENVINO tool runs."""
    target, draft = ggufs
    if tool == SPECDEC:
        return specdec_run(specdec, prompt["ids"], n, mode)
    if tool == OPENVINO:
        return openvino.run(mode, prompt["ids"], n, draft_max)
    if tool == PYTHON:
        return python_target_alone(target, prompt["ids"], n, threads)
    file = prompt_file(folder, prompt["id"], prompt["text"])
    if mode == "target_alone":
        return run_binary(completion_command(found["binaries"][tool], target, file, n, threads), parse_completion)
    timing, out = run_binary(speculative_command(found["binaries"][tool], target, draft, file, n, threads, draft_max,
                                                 p_min), parse_speculative)
    return timing, out.split(prompt["text"], 1)[-1]  # it echoes the prompt before the new text


def cells(found, drafts, specdec=False, openvino_ks=None) -> list[dict]:
    """What to time: the target alone, and speculation at each (draft_max, p_min) of `drafts`, where it can be;
    with `specdec`, specdec's target alone (twice: the A/A control) and its speculation beside them; with
    `openvino_ks`, OpenVINO's target alone and its speculation at each of those K (both only where llama.cpp's target
    alone is timed)."""
    modes = plan(found)
    out = [dict(tool=modes["target_alone"], mode="target_alone")] if "target_alone" in modes else []
    if "speculative" in modes:
        out += [dict(tool=SPECULATIVE_BIN, mode="speculative", draft_max=int(m), p_min=float(p)) for m, p in drafts]
    if specdec and out:
        out += [dict(tool=SPECDEC, mode=m) for m in ALONE + ("auto",)]
    if openvino_ks is not None and out:
        out += [dict(tool=OPENVINO, mode="target_alone")]
        out += [dict(tool=OPENVINO, mode="speculative", draft_max=int(k), p_min=0.0) for k in openvino_ks]
    return out


def block_of(row):
    """A run's block in this sweep: its prompt (every cell of a prompt, specdec's target alone included, is timed back to
    back; pairing.not_consecutive(rows, block=block_of) checks it)."""
    return row["prompt_id"]


def sweep(folder, found, ggufs, prompts, drafts, n, threads, iterations=1, seed=0, params=None,
          specdec=None, openvino=None, openvino_ks=(3,)) -> pd.DataFrame:
    """Time every cell on every prompt, `iterations` times, each prompt's cells back to back (its target alone and
    its speculation in one machine state), prompts and cells in a seeded shuffled order, after one untimed run of
    each tool (page-in). Resumable by block (pairing.sweep, the study's one sweep loop): a prompt's block whose
    latest rows are ok and were timed in one run is kept; any other is timed whole again, so a retried cell never
    pairs with a run of another machine state (a cell failing in two sweeps is left as it is). A run with nothing
    left to time leaves no trace. A failing run is recorded with its error and the sweep goes on. `prompts`: dicts
    with id, category, ids, text; `specdec`: a specdec pair whose target alone and speculation are timed in every
    block too (None: llama.cpp only); `openvino`: what openvino_run.find returned (None: not timed), timed at each K
    of `openvino_ks`. Returns each (cell, prompt, iteration)'s latest row."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    plan = cells(found, drafts, specdec is not None, openvino_ks if openvino is not None else None)
    rng = np.random.default_rng([seed, 19])
    blocks = []  # paired timing: a prompt's cells back to back in a random order, prompts in a random order
    for iteration in range(iterations):
        blocks += [[(dict(plan[c], draft_max=plan[c].get("draft_max"), p_min=plan[c].get("p_min"),
                          prompt_id=prompts[q]["id"]), iteration) for c in rng.permutation(len(plan))]
                   for q in rng.permutation(len(prompts))]
    params = dict(params or {}, ggufs=[Path(g).name for g in ggufs], threads=threads, max_new_tokens=n, drafts=drafts,
                  iterations=iterations, seed=seed,
                  openvino=None if openvino is None else dict(models=[openvino[m].name for m in ("target", "draft")],
                                                              ks=list(openvino_ks)))
    begin = lambda todo: timing(folder, todo, found, ggufs, {p["id"]: p for p in prompts}, n, threads, specdec,
                                openvino, params)
    return pd.DataFrame(pairing.sweep(folder / results.RESULTS, blocks, begin, key=KEY))


@contextlib.contextmanager
def timing(folder, todo, found, ggufs, prompts, n, threads, specdec, openvino, params):
    """Start a run (`params`: its provenance), run each tool once untimed, then yield a function that times a
    block's runs and writes one fsynced row per run. OpenVINO's worker (where it is timed) lives for the run."""
    path = folder / results.RESULTS
    tools = {c["tool"] for b in todo for c, _ in b}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        worker = stack.enter_context(Worker(openvino, threads, folder / "openvino.log")) if OPENVINO in tools else None
        versions = {t: worker.version if t == OPENVINO else version(t, found, specdec) for t in tools}
        run_id = results.start_run(folder, **params, llama_cpp=versions)
        first = next(iter(prompts.values()))  # the sweep's first prompt, as in every run of it
        # warm-up, each tool once (OpenVINO's each mode: each is a pipeline it compiles on its first run): the GGUF
        # files into the page cache; one that fails is left to its timed runs, which record why
        warm = {(c["tool"], c["mode"] if c["tool"] == OPENVINO else None): c for b in todo for c, _ in b}
        for cell in warm.values():
            with contextlib.suppress(*FAILURES):
                measure(**mode_of(cell), found=found, ggufs=ggufs, prompt=first, n=4, threads=threads, folder=tmp,
                        specdec=specdec, openvino=worker)

        def time_block(block):
            for cell, iteration in block:
                q = prompts[cell["prompt_id"]]
                row = dict(cell, iteration=iteration, category=q["category"], run_id=run_id,
                           version=versions[cell["tool"]], threads=threads, max_new_tokens=n,
                           hf_prompt_tokens=len(q["ids"]), measured_utc=results.now())
                try:
                    measured, text = measure(**mode_of(cell), found=found, ggufs=ggufs, prompt=q, n=n, threads=threads,
                                             folder=tmp, specdec=specdec, openvino=worker)
                    row.update(measured, text=text, status="ok",
                               decode_tok_s=measured["decode_tokens"] / measured["decode_s"])
                except FAILURES as e:
                    row.update(status="failed", error=f"{type(e).__name__}: {e}"[:2000])
                results.append_row(path, row, COLUMNS)
        yield time_block


def mode_of(cell) -> dict:
    """What `measure` takes of a cell: its tool and mode, and speculation's draft_max and p_min (None otherwise)."""
    return {c: cell.get(c) for c in ("tool", "mode", "draft_max", "p_min")}


def summary(rows) -> pd.DataFrame:
    """One line per cell, on the prompts llama.cpp's target alone ran in the cell's blocks: decode tok/s (geometric
    mean over prompts of each prompt's mean); for speculation and for specdec's cells, its speed over llama.cpp's
    target alone, run over run in the same block (population.paired_runs), with a 95% interval over prompts (their
    pairs inside each prompt's ratio: population.estimate); for speculation and specdec's second target alone, its
    speed over its own engine's target alone the same way (own_speedup: for llama.cpp the speedup again; for
    specdec's target_again the A/A control); for speculation (llama.cpp's and specdec's) also acceptance (accepted / drafted), and on how
    many prompts its text is its own engine's target alone's (one a prefix of the other: speculation may run past
    n). OpenVINO's cells are read as specdec's: against llama.cpp's target alone and against its own."""
    ok = rows[rows["status"] == "ok"]
    alone = ok[ok["mode"] == "target_alone"]
    base = llama_cells(alone)
    own = {"llama.cpp": base, **{t: alone[alone["tool"] == t] for t in OTHERS}}  # each engine's own target alone
    ref_text = {tool: t.groupby("prompt_id")["text"].first() for tool, t in own.items()}
    lines = []
    for (tool, mode, dmax, pmin), g in ok.groupby(["tool", "mode", "draft_max", "p_min"], dropna=False, sort=False):
        d = paired_runs(g, base, "decode_tok_s")
        if d.empty:  # no prompt of this cell has a target alone in its block to compare with
            continue
        line = dict(tool=tool, mode=mode, draft_max=dmax, p_min=pmin, prompts=len(d),
                    decode_tok_s=geomean(d["mode_runs"].map(np.mean)), speedup=np.nan,
                    speedup_lo=np.nan, speedup_hi=np.nan, own_speedup=np.nan, own_lo=np.nan, own_hi=np.nan,
                    acceptance=np.nan, identical=np.nan, version=g["version"].iloc[0])
        engine = tool if tool in OTHERS else "llama.cpp"
        if mode != "target_alone" or engine != "llama.cpp":  # the reference itself has none of these
            e = estimate(d)
            line.update(speedup=e.est, speedup_lo=e.lo, speedup_hi=e.hi)
        if mode != "target_alone":  # llama.cpp's own target alone is `base`: its speedup again, not re-estimated
            mine = d if engine == "llama.cpp" else paired_runs(g, own[engine], "decode_tok_s")
            if not mine.empty:
                o = e if engine == "llama.cpp" else estimate(mine)
                line.update(own_speedup=o.est, own_lo=o.lo, own_hi=o.hi)
        if mode not in ALONE:
            g = g[g["prompt_id"].isin(d["prompt_id"])]
            ref = ref_text[engine]
            drafted = g["drafted"].sum()  # OpenVINO's pipeline does not report its drafts: NaN
            line.update(acceptance=g["accepted"].sum() / drafted if drafted else np.nan,
                        identical=sum(p in ref and _same_text(r["text"].iloc[0], ref[p])
                                      for p, r in g.groupby("prompt_id")))
        lines.append(line)
    return pd.DataFrame(lines, columns=SUMMARY_COLUMNS)


def _same_text(a, b) -> bool:
    a, b = str(a).rstrip(), str(b).rstrip()
    return a.startswith(b) or b.startswith(a)


def llama_cells(table) -> pd.DataFrame:
    """llama.cpp's own rows or cells of a table: neither specdec's nor OpenVINO's."""
    return table[~table["tool"].isin(OTHERS)]


def cell_label(r) -> str:
    """A speculative cell's name: K=3 for a fixed K (p-min 0), else its draft maximum and p-min."""
    return f"K={r.draft_max:.0f}" if not r.p_min else f"up to {r.draft_max:.0f} drafts, p-min {r.p_min:g}"


def readout(found, ggufs, table, device_type, specdec_table) -> str:
    """The notebook's sentences on llama.cpp: what was timed and how it compares, or why nothing was."""
    if found is None or not (found["binaries"] or found["python"]):
        return describe(found or dict(binaries={}, python=None)) + " "
    if device_type != "cpu":
        return f"{describe(found)} Not timed on a {device_type} target (llama.cpp's builds here are CPU builds). "
    if ggufs is None:
        return f"{describe(found)} Not timed: this pair has no GGUF files (the offline pair, qwen2.5-coder, has). "
    if "target_alone" not in plan(found):
        return describe(found) + " "
    if table is None or not (table["mode"] == "target_alone").any():
        return f"{describe(found)} Nothing could be timed: its runs failed (see llama_cpp/results.jsonl). "
    llama = llama_cells(table)
    alone = llama[llama["mode"] == "target_alone"].iloc[0]
    best = specdec_table.loc[specdec_table["target_alone_tok_s"].idxmax()]
    pages = "" if alone["tool"] == PYTHON else f", its memory on huge pages ({HUGE_PAGES})"
    text = (f"{describe(found)} Timed ({alone['version']}{pages}) on {ggufs[0].name} + {ggufs[1].name}, "
            f"{alone['step_gb']:.3g} GB read per target step: its target alone {alone['decode_tok_s']:.2f} tok/s "
            f"(specdec's fastest target alone in its own sweep: {best['precision']}, {best['target_alone_tok_s']:.2f} tok/s). ")
    mine = table[table["tool"] == SPECDEC].set_index("mode")
    floor = None  # specdec's A/A control in these blocks: its target alone timed twice
    if "target_again" in mine.index:
        floor = tuple(mine.loc["target_again", ["own_speedup", "own_lo", "own_hi"]])
    for mode, r in mine.drop(index="target_again", errors="ignore").iterrows():
        what = "target alone" if mode == "target_alone" else "speculation (k=\"auto\", the pair's draft)"
        text += (f"Paired with it (timed in the same blocks, {r.prompts} prompts): {r.version}'s {what} "
                 f"{r.decode_tok_s:.2f} tok/s, " + stats.versus_one("specdec", (r.speedup, r.speedup_lo, r.speedup_hi),
                                                                 "llama.cpp's target alone"))
        if mode == "target_alone":
            text += ". "
            continue
        text += (f", {100 * r.acceptance:.0f}% of drafts accepted, its text the same as specdec's target alone's on "
                 f"{r.identical:.0f} of {r.prompts} prompts; against specdec's own target alone in the same blocks, "
                 + stats.versus_one("its speculation", (r.own_speedup, r.own_lo, r.own_hi), "it", floor=floor)
                 + (f" ({stats.a_a(floor)})" if floor else "") + ". ")
    for r in llama[llama["mode"] == "speculative"].itertuples():
        text += (f"Its speculation, {cell_label(r)}: {r.decode_tok_s:.2f} tok/s, "
                 + stats.versus_one("it", (r.speedup, r.speedup_lo, r.speedup_hi), "its target alone")
                 + f", {100 * r.acceptance:.0f}% of drafts accepted, its text the same as its target alone's on "
                 f"{r.identical:.0f} of {r.prompts} prompts. ")
    return text


def openvino_readout(found, table) -> str:
    """The notebook's sentences on OpenVINO GenAI, timed in llama.cpp's blocks: how its cells compare, or why none
    was timed."""
    if found is None:
        return describe_openvino(None) + " "
    if table is None:
        return f"{describe_openvino(found)} Not timed: it runs in llama.cpp's blocks, which did not run here. "
    mine = table[table["tool"] == OPENVINO]
    if mine.empty and not (llama_cells(table)["mode"] == "target_alone").any():
        return (f"{describe_openvino(found)} Not compared: llama.cpp's target alone, the baseline of these blocks, has "
                "no run that succeeded. ")
    if mine.empty:
        return (f"{describe_openvino(found)} Nothing of it could be timed: its runs failed (see llama_cpp/results.jsonl "
                "and llama_cpp/openvino.log). ")
    text = f"{describe_openvino(found)} "
    for r in mine.itertuples():
        versus_llama = stats.versus_one("it", (r.speedup, r.speedup_lo, r.speedup_hi), "llama.cpp's target alone")
        if r.mode == "target_alone":
            text += (f"Its int4 target alone ({r.version}, timed in llama.cpp's blocks, {r.prompts} prompts): "
                     f"{r.decode_tok_s:.2f} tok/s, {versus_llama}. ")
        else:
            text += (f"Its speculation, {cell_label(r)}: {r.decode_tok_s:.2f} tok/s, "
                     + stats.versus_one("it", (r.own_speedup, r.own_lo, r.own_hi), "its own target alone")
                     + f"; {versus_llama}; its text the same as its target alone's on "
                     f"{r.identical:.0f} of {r.prompts} prompts. ")
    return text


def finding(table) -> str:
    """The summary page's line on llama.cpp: specdec's fastest cell in its blocks against llama.cpp's target alone,
    and llama.cpp's own speculation and OpenVINO's fastest cell against it ("" when nothing of specdec's was timed
    there)."""
    mine = table[(table["tool"] == SPECDEC) & (table["mode"] != "target_again")].dropna(subset=["speedup"])
    if mine.empty:
        return ""
    r = mine.loc[mine["speedup"].idxmax()]
    what = "target alone" if r["mode"] == "target_alone" else 'k="auto"'
    text = (f"; in llama.cpp's blocks ({int(r['prompts'])} prompts), "
            + stats.versus_one(f"specdec's {r['version'].split()[1]} {what}",
                               (r["speedup"], r["speedup_lo"], r["speedup_hi"]), "llama.cpp's target alone"))
    spec = llama_cells(table)
    spec = spec[spec["mode"] == "speculative"].dropna(subset=["speedup"])
    others = []
    if not spec.empty:
        s = spec.loc[spec["speedup"].idxmax()]
        others.append(f"llama.cpp's own speculation {stats.fmt((s['speedup'], s['speedup_lo'], s['speedup_hi']), unit='x')}")
    ov = table[table["tool"] == OPENVINO].dropna(subset=["speedup"])
    if not ov.empty:  # OpenVINO's fastest cell, its target alone or its speculation
        s = ov.loc[ov["speedup"].idxmax()]
        what = "target alone" if s["mode"] == "target_alone" else f"speculation ({cell_label(s)})"
        others.append(f"OpenVINO's int4 {what} {stats.fmt((s['speedup'], s['speedup_lo'], s['speedup_hi']), unit='x')}")
    return text + (f" ({'; '.join(others)} that)" if others else "")
