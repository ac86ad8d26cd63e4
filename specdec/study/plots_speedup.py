"""The speculative-vs-baseline figure (notebook 04): per configuration, the measured speedup over the target alone
with its 95% interval, Leviathan's prediction from a calibration pass, and HF assisted generation, each in its
configuration's row; HF generate below, an outside reference. In plots.py's look (plots.finish adds title, legend
and caption)."""
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .modes import BASELINE, MODES, SPECULATIVE, label as mode_label
from .plots import BASE_COLOR, MAX_HEIGHT_IN, describe, distinguish, finish, timing_only

def config_label(row) -> str:
    """A row of the speedup figure: a fixed K (bars: specdec, the prediction, HF at that K), else the mode in words
    (modes.label: auto's mean K and cap, HF's defaults, HF generate); batch, length. HF generate's rows say they
    are an outside reference by their hatch, place and the caption, so their tick labels stay short enough not to
    run into each other."""
    head = f"K={int(row['k'])}" if MODES[row["mode"]].policy == "fixed" else mode_label(row)
    return f"{head}, b={row['batch_size']}, {row['max_new_tokens']} tok"


def outside(mode) -> bool:
    """HF's own loop over the target alone (modes.HF_GENERATE and kin): a reference from outside, not the baseline."""
    return MODES[mode].hf and MODES[mode].policy == "none"


PREDICTED = "predicted, decode phase only (Leviathan, calibration pass)"
# Every mode but the baseline (it is the line at 1), the prediction right beside the speculative bars.
SPEEDUP_SERIES = {SPECULATIVE: MODES[SPECULATIVE].label, "predicted": PREDICTED,
                  **{m: mode.label for m, mode in MODES.items() if m not in (BASELINE, SPECULATIVE)}}
RANK = {v: i for i, v in enumerate(SPEEDUP_SERIES.values())}


def speedup_bars(ax, p, palette) -> tuple[list, float]:
    """One pair's bars, configuration after configuration, HF generate's last in a block of its own; returns the
    ticks [(y, label)] and the y where that outside-reference block starts."""
    p = p.assign(outside=p["mode"].map(outside)).sort_values(["outside", "batch_size", "max_new_tokens", "k"])
    y, ticks, outside_y = 0.0, [], None
    for config, present in p.groupby("config", sort=False):
        if present["outside"].all() and outside_y is None:
            outside_y = y
            y += 0.6  # a wider gap: the outside reference is not one of the configurations it sits beside
        start = y
        for _, r in present.sort_values("series", key=lambda s: s.map(RANK)).iterrows():
            err = np.nan_to_num(np.clip([[r["value"] - r["lo"]], [r["hi"] - r["value"]]], 0, None))
            has_interval = bool(np.isfinite(float(r["lo"])) and np.isfinite(float(r["hi"])))  # else: no cap at all
            ax.barh(y, r["value"], 0.8, color=palette[r["series"]], label=r["series"],
                    xerr=err if has_interval else None, capsize=2, hatch="//" if r["outside"] else None,
                    edgecolor="white")
            ax.text(r["value"] + err[1, 0] + 0.02, y, f"{r['value']:.2f}", va="center", fontsize=7)
            y += 1
        ticks.append(((start + y - 1) / 2, textwrap.fill(config, 66)))
        y += 0.6  # gap between configurations
    return ticks, y - 0.6 if outside_y is None else outside_y


def speedup(table, target=""):
    """Per configuration (one row each): measured speedup over the target-only baseline with its 95% interval,
    the prediction from a separate calibration pass (with its interval) and HF assisted generation, each in its
    configuration's row; HF generate (the target alone, HF's loop) below, an outside reference off the line at 1."""
    pairs = list(dict.fromkeys(table["pair"]))
    t = table[table["mode"].isin(list(SPEEDUP_SERIES))].copy()
    t["config"] = t.apply(config_label, axis=1)
    t["config"] = distinguish(t, "config")  # e.g. specdec's K=2 (k_sweep's prompts) vs HF's K=2 (other prompts)
    long = [t.assign(series=t["mode"].map(SPEEDUP_SERIES), value=t["vs_baseline"], lo=t["vs_baseline_lo"],
                     hi=t["vs_baseline_hi"])]
    if "predicted_lo" in t:
        s = t[(t["mode"] == SPECULATIVE) & t["predicted_speedup"].notna()]
        long.append(s.assign(series=SPEEDUP_SERIES["predicted"], value=s["predicted_speedup"], lo=s["predicted_lo"],
                             hi=s["predicted_hi"]))
    long = pd.concat(long, ignore_index=True).dropna(subset=["value"])
    shown = sorted(set(long["series"]), key=RANK.get)  # colours for the series present only: no two alike
    palette = dict(zip(shown, sns.color_palette("deep", len(shown))))
    bars = len(long)
    row_in = min(0.4, (MAX_HEIGHT_IN - 1.5 - 1.0 * len(pairs)) / max(1, bars))  # inches per bar, capped
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, min(MAX_HEIGHT_IN, row_in * bars + 1.0 * len(pairs) + 1.5)),
                             squeeze=False, gridspec_kw=dict(height_ratios=[max(1, (long["pair"] == p).sum())
                                                                             for p in pairs]))
    for ax, pair in zip(axes[:, 0], pairs):
        p = long[long["pair"] == pair]
        ticks, outside_y = speedup_bars(ax, p, palette)
        ax.set_yticks([a for a, _ in ticks], [b for _, b in ticks], fontsize=8)
        # the baseline's line runs past specdec's and HF assisted's rows only, not past the outside reference
        ax.plot([1.0, 1.0], [-0.6, outside_y - 0.1], color=BASE_COLOR, ls="--", lw=1,
                label="specdec target-only baseline (= 1)")
        if p["mode"].map(outside).any():
            ax.axhline(outside_y + 0.2, color="0.6", lw=0.8)
        ax.set_ylim(max(y for y, _ in ticks) + 0.7, -0.7)  # top to bottom in the order drawn
        ax.set_xlabel("speedup over target only (x)")
        ax.set_title(textwrap.fill(describe(table[table["pair"] == pair], target), 110), fontsize=10)
        ax.set_xlim(0, max(1.1, np.nanmax(p[["value", "hi"]].to_numpy(float)) * 1.15))
    notes = ["Speedup = throughput / specdec target-only throughput in the same block (the same prompts, timed back "
             "to back), end to end (prefill included); error bars: 95% intervals over prompts, only where there is one. "
             "The prediction uses a, c and v from a separate calibration pass on other prompts and models the decode "
             "phase alone, so it estimates no bar beside it: the readout compares it with the measured decode-phase "
             "speedup."]
    refs = [MODES[m].label for m in dict.fromkeys(long["mode"]) if outside(m)]
    if refs:
        notes.append(f"Hatched, below the line: {'; '.join(refs)}: Hugging Face's own decoding loop over the target "
                     "alone, on the same prompts; an outside reference, not the baseline.")
    if timing_only(table):
        notes.append("Random-weight (timing-only) pairs get no prediction: it needs a real acceptance rate.")
    return finish(fig, "Speculative vs target-only decoding: measured and predicted speedup", "", notes, ncol=2)
