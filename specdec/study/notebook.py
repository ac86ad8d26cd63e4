"""The helpers every study notebook calls: load a pair warm, the seed's reference numbers, the notebook's tables
(from its rows, through specdec.study.summary) and its readout. Paths come from the notebook's parameters."""
from pathlib import Path

import pandas as pd
from IPython.display import Markdown, display

from . import population
from .bench import load_warm  # noqa: F401  (the notebooks call notebook.load_warm)
from .modes import A_A, BASELINE
from .results import AA_FILE, FINDING_FILE
from .stats import NAN, Estimate
from .summary import summarize


def seed_reference(experiment, devices, out_dir, reference_file):
    """The seed's reported numbers for `experiment` on `devices`, from `reference_file` (the checkout's
    data/reference/seed_results.csv), copied into out_dir (so the run's data folder holds everything its
    figures show); None when no device is asked for."""
    if not devices:
        return None
    ref = pd.read_csv(reference_file)
    ref = ref[(ref["experiment"] == experiment) & ref["device"].isin(list(devices))]
    path = Path(out_dir) / "seed_reference.csv"
    ref.to_csv(path, index=False)
    return pd.read_csv(path)


def save_tables(rows, out_dir, by=("mode", "k", "batch_size", "max_new_tokens", "verify"), columns=None,
                extra=None):
    """rows.csv (this configuration's runs), cells.csv (per cell) and summary.csv (the notebook's table,
    means over prompts); returns (cells, summary) read back from the files the figures are made from.
    vs_baseline = throughput / specdec target-only throughput in the same block (pairing.py), for every mode (HF
    ones included), with its paired 95% interval vs_baseline_lo/_hi (decode_speedup: the same in decode
    throughput); every listed column that has an interval (throughput, decode_throughput, vs_baseline) is followed
    by its _lo and _hi columns.
    Timing-only pairs (random weights) get no acceptance columns: their acceptance means nothing."""
    out = Path(out_dir)
    rows = pd.DataFrame(rows)
    rows.to_csv(out / "rows.csv", index=False)

    def with_ratio(t):  # vs_baseline: the speedup of every non-baseline mode, 1 for the baseline itself
        base = t["mode"] == BASELINE
        return t.assign(vs_baseline=t["speedup"].where(~base, 1.0), vs_baseline_lo=t["speedup_lo"].where(~base, 1.0),
                        vs_baseline_hi=t["speedup_hi"].where(~base, 1.0))
    cells = with_ratio(summarize(rows))
    if extra is not None:  # e.g. prompt categories
        cells = extra(cells)
    cells.to_csv(out / "cells.csv", index=False)
    summary = with_ratio(summarize(rows, by=list(by)))
    hidden = ("acceptance_rate", "predicted_speedup") if rows["timing_only"].fillna(False).astype(bool).any() else ()
    wanted = [c for c in (columns or summary.columns) if c in summary and c not in hidden]
    wanted = [x for c in wanted for x in ([c, f"{c}_lo", f"{c}_hi"] if f"{c}_lo" in summary and columns else [c])]
    summary = summary[list(dict.fromkeys(wanted))]
    summary.to_csv(out / "summary.csv", index=False)
    return pd.read_csv(out / "cells.csv"), pd.read_csv(out / "summary.csv")


def aa_control(rows, out_dir, metric=population.DECODE, by=None) -> dict:
    """The experiment's A/A control: the target alone timed twice in each block (modes.A_A), its paired ratio
    over prompts like every speedup of the experiment (geometric mean, 95% interval over prompts).
    Written to <out_dir>/aa_control.csv, one line per value of `by` (a column, e.g. batch_size) or one line
    'all'; returns {value: Estimate} (NAN where the control did not run)."""
    rows = pd.DataFrame(rows)
    groups = [("all", rows)] if by is None else list(rows.groupby(by))
    found, lines = {}, []
    for value, g in groups:
        t = population.speedup_table(g, A_A[0], A_A[1], metric=metric) if (g["mode"] == A_A[0]).any() \
            else pd.DataFrame()
        o = t.set_index("category").loc[population.OVERALL] if len(t) else None
        found[value] = NAN if o is None else Estimate(o["speedup"], o["speedup_lo"], o["speedup_hi"])
        lines.append(dict(group=value, by=by or "", metric=metric, prompts=0 if o is None else int(o["prompts"]),
                          speedup=found[value].est, speedup_lo=found[value].lo, speedup_hi=found[value].hi))
    pd.DataFrame(lines).to_csv(Path(out_dir) / AA_FILE, index=False)
    return found


def readout(out_dir, text, finding=""):
    """Show the notebook's reading of its result and keep it for the summary page; `finding`: its headline in one
    sentence (number, interval, population, figure), which the page's at-a-glance section lists."""
    Path(out_dir, "readout.md").write_text(text.strip() + "\n")
    Path(out_dir, FINDING_FILE).write_text(finding.strip() + "\n")
    display(Markdown(text))
