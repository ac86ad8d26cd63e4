"""The study's figures and their shared look (the population, precision and speedup figures live in
plots_population, plots_precision and plots_speedup, on the helpers here). Each function takes a DataFrame read
back from a data file that the notebook wrote (and, where the seed made a claim, the seed's reported numbers as a
labelled reference series) and returns a matplotlib Figure; `save` writes it as PNG and SVG.

Figures must be readable on their own (they end up in the summary page without the notebook around
them): a title naming the experiment, the hardware target and the model pair; axes with units; a
legend; and a caption for anything a reader could misread (timing-only pairs, the seed's numbers).
"""
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")  # figures are files; no display needed (papermill kernels, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .modes import A_A, BASELINE, MODES, SPECULATIVE, label as mode_label  # noqa: E402
from .results import RESULTS, describe_runs, of_section, read_rows  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
SEED_COLOR, BASE_COLOR = "0.55", "0.15"
TIMING_ONLY_NOTE = ("Acceptance is not shown: this pair has random weights (timing-only), so only its forward "
                    "times are real.")
SEED_NOTE = ("Right-hand panel: numbers reported by the seed document (flawed implementation, other hardware "
             "and models), on their own axis; they were not measured here and are not comparable with ours.")
CI_NOTE = "Error bars and bands: 95% t intervals over the repeats of each prompt (stratified by prompt)."
NO_CI_NOTE = "No error bars: one timed run per prompt (the intervals over prompts are in the readout)."
MAX_HEIGHT_IN = 10.0  # at 150 dpi: 1,500 px, readable at 100% zoom on one screen


# -- shared pieces ----------------------------------------------------------------------------------------

def ci_note(t, y) -> str:
    """The caption's word on error bars: what they are where a bar of `y` has an interval, that there are none where
    no bar has one (one run per prompt), so a caption never promises bars it does not draw."""
    return CI_NOTE if t.get(f"{y}_lo", pd.Series(dtype=float)).notna().any() else NO_CI_NOTE


def describe(frame, target) -> str:
    """'<target> target: <target model> (<dtype>) + draft <draft model> (<draft dtype>), <device>' from the rows
    themselves: the draft's dtype is what its rows record (it may differ from the target's, and between rows)."""
    first = frame.iloc[0]
    draft = first.get("draft")
    draft = f" {draft}" if isinstance(draft, str) and draft else ""
    # of the rows that ran the draft model: the target-only rows record the pair's draft dtype too, but use none
    drafted = frame["mode"].map(lambda m: MODES[m].needs_draft)
    dtypes = sorted(frame.loc[drafted, "draft_dtype"].dropna().astype(str).unique()) if "draft_dtype" in frame else []
    if not (draft or dtypes):
        return f"{target} target: {first['target']} ({first['dtype']}, {first['device']})"
    dtype = f" ({dtypes[0]})" if len(dtypes) == 1 else f" (dtype differs by row: {', '.join(dtypes)})" if dtypes else ""
    return f"{target} target: {first['target']} ({first['dtype']}) + draft{draft}{dtype}, {first['device']}"


def distinguish(t, label, within=()) -> pd.Series:
    """t[label], with ', N prompts' and/or ', N tok' added where rows that share a label (and `within`) differ
    in their prompt count or length: two bars must never look alike when they measured different things."""
    out = t[label].astype(str)
    for col, unit in (("prompts", "prompts"), ("max_new_tokens", "tok")):
        if col in t:
            differs = t.groupby([label, *within], dropna=False)[col].transform("nunique") > 1
            out = out.where(~differs, out + ", " + t[col].astype("Int64").astype(str) + f" {unit}")
    return out


def timing_only(frame) -> bool:
    return "timing_only" in frame and frame["timing_only"].fillna(False).astype(bool).any()


def finish(fig, title, subtitle, notes=(), ncol=3, legend_title=None):
    """Title (experiment, then target and pair); one legend for all panels and a wrapped caption, both
    under the axes so that they never hide data."""
    fig.suptitle(f"{title}\n{subtitle}" if subtitle else title, fontsize=12)
    entries = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)  # panels share series: one entry each
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    height = fig.get_figheight()
    width = int(fig.get_figwidth() * 14)  # characters per caption line at fontsize 8
    lines = [line for n in notes if n for line in textwrap.wrap(n, width)]
    caption = 0.16 * len(lines)  # inches
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=8, va="bottom", color="0.25")
    legend = 0.0
    if entries:
        ncol = max(1, min(ncol, len(entries), int(fig.get_figwidth() / 3.2)))  # legend no wider than the figure
        legend = 0.24 * -(-len(entries) // ncol) + 0.1
        legend += 0.2 if legend_title else 0.0
        fig.legend(entries.values(), entries.keys(), loc="lower center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, (caption + 0.05) / height), title=legend_title, title_fontsize=8)
    fig.tight_layout(rect=(0, (caption + legend + 0.1) / height, 1, 1))
    return fig


def save(fig, figures_dir, name, data_dir=None) -> list[Path]:
    """<figures_dir>/<name>.png and .svg; returns the paths. The figure's last line names the machine, commit
    and date of the rows it was drawn from (their run ids), read from its section's folder under <data_dir>
    (default: the study's layout, data/<target>/ beside figures/<target>/): <name>/, or <sec>/ for a figure named
    <sec>_<what> (results.of_section)."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(data_dir or out.parent.parent / "data" / out.name)
    sections = [d.name for d in root.iterdir() if d.is_dir()] if root.is_dir() else []
    folder = root / max((sec for sec in sections if of_section(name, sec)), key=len, default=name)
    rows = read_rows(folder / RESULTS)
    if rows:
        fig.text(0.01, -0.02, f"Data: {describe_runs(folder, rows)}.", fontsize=8, color="0.35", va="top")
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def yerr(t, y):
    """Asymmetric error-bar lengths from the <y>_lo / <y>_hi interval columns (0 where there is none)."""
    lo, hi = t.get(f"{y}_lo"), t.get(f"{y}_hi")
    if lo is None or hi is None:
        return None
    return np.clip(np.vstack([(t[y] - lo).fillna(0), (hi - t[y]).fillna(0)]), 0, None)


def interval_line(ax, t, x, y, label, **kw):
    ax.errorbar(t[x], t[y], yerr=yerr(t, y), marker="o", capsize=4, label=label, **kw)


def seed_panel(ax, ref, x, y, scale=1.0, xlabel="", ylabel=""):
    """The seed's reported numbers on their own axes: one grey dashed line per (device, pair, tokens), each
    labelled with its hardware, models and token count."""
    markers = iter("sD^v")
    ref = ref.dropna(subset=[y])
    for (device, pair), r in ref.groupby(["device", "pair"]):
        for mode, m in r.groupby("mode"):
            m = m.sort_values(x)
            tokens = "/".join(str(n) for n in dict.fromkeys(m["max_new_tokens"]))
            ax.plot(m[x].astype(str), m[y] * scale, ls="--", marker=next(markers, "s"), color=SEED_COLOR,
                    label=f"seed reported: {pair}, {mode}, {device}, {tokens} tok")
    ax.set(title="Seed document (reported, not measured here)", xlabel=xlabel, ylabel=ylabel)
    ax.set_ylim(bottom=0)
    ax.title.set_color("0.35")


def has(ref):
    return ref is not None and len(ref) > 0


def sweep_panels(cells, reference, width, height):
    """The sweeps' panel grid, two per row: throughput, speedup, acceptance (not for timing-only pairs, whose
    acceptance means nothing) and the seed's reported numbers (only when given). Returns (fig, {name: axes})."""
    panels = ["throughput", "speedup"] + ([] if timing_only(cells) else ["acceptance"]) + (["seed"] if has(reference)
                                                                                               else [])
    cols = 2 if len(panels) > 2 else len(panels)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 1.2), squeeze=False)
    for extra in list(axes.flat)[len(panels):]:
        extra.remove()
    return fig, dict(zip(panels, axes.flat))


# -- 1. K sweep -------------------------------------------------------------------------------------------

def k_sweep(cells, table, reference=None, target=""):
    """Throughput and speedup vs K (speculative; mean over prompts with 95% intervals), the target-only
    baseline as a band, acceptance vs K (unless timing-only), and the seed's reported series in its own panel."""
    spec, base = table[table["mode"] == SPECULATIVE].sort_values("k"), table[table["mode"] == BASELINE]
    fig, ax = sweep_panels(cells, reference, 6, 4.2)
    hide_acceptance = "acceptance" not in ax
    nprompts = int(spec["prompts"].max()) if len(spec) else 0
    interval_line(ax["throughput"], spec, "k", "throughput", f"specdec speculative (mean of {nprompts} prompts)")
    if len(base):
        b = base.iloc[0]
        ax["throughput"].axhline(b["throughput"], color=BASE_COLOR, lw=1.5, label="target only (specdec baseline)")
        ax["throughput"].axhspan(b["throughput_lo"], b["throughput_hi"], color=BASE_COLOR, alpha=0.12)
    ax["throughput"].set(xlabel="K (draft tokens per round)", ylabel="throughput (tokens/s, end to end)",
                         title="Throughput (end to end, prefill included)")
    interval_line(ax["speedup"], spec, "k", "vs_baseline", "speedup over target only (paired by block)",
                  color="tab:green")
    ax["speedup"].axhline(1.0, color=BASE_COLOR, ls="--", lw=1)
    ax["speedup"].set(xlabel="K (draft tokens per round)", ylabel="speedup (x, end to end)",
                      title="Speedup over target only (end to end)")
    if "acceptance" in ax:
        ok = cells[(cells["runs"] > 0) & (cells["mode"] == SPECULATIVE)]
        ax["acceptance"].scatter(ok["k"], ok["acceptance_rate"] * 100, color="tab:blue", alpha=0.5, s=18,
                                 label="acceptance, one prompt")
        ax["acceptance"].plot(spec["k"], spec["acceptance_rate"] * 100, marker="o", color="tab:blue",
                              label="acceptance, mean over prompts")
        ax["acceptance"].set(xlabel="K (draft tokens per round)", ylabel="acceptance rate (%)", title="Acceptance",
                             ylim=(0, 105))
    for name in ("throughput", "speedup", "acceptance"):
        if name in ax:
            ax[name].set_xticks(sorted(spec["k"].unique()))
    if has(reference):
        seed_panel(ax["seed"], reference, "k", "throughput", xlabel="K", ylabel="throughput (tokens/s)")
    n = int(cells["max_new_tokens"].iloc[0]) if len(cells) else 0
    return finish(fig, f"K sweep: throughput, speedup and acceptance vs K ({n} new tokens, batch 1)",
                  describe(cells, target), [ci_note(spec, "vs_baseline"),
                                            TIMING_ONLY_NOTE if hide_acceptance else "",
                                            SEED_NOTE if has(reference) else ""])


# -- 2. batch sweep -----------------------------------------------------------------------------------------

def grouped_bars(ax, t, x, y, series, order, palette, fmt="%.2f"):
    """Bars of `y` per category `x` and `series`, with 95% interval error bars; only the series present at
    each x share its slot, so every bar sits over its own label. Each bar's value is written above its interval's
    cap (above the bar where it has none), so the cap does not cross the number."""
    xs = list(dict.fromkeys(t[x]))
    width = 0.8 / max(1, len(order))
    for j, name in enumerate(order):
        s = t[t[series] == name].set_index(x).reindex(xs)
        pos = np.arange(len(xs)) - 0.4 + width * (j + 0.5)
        ax.bar(pos, s[y], width, color=palette[name], label=name)
        err = yerr(s, y)
        top = s[y].to_numpy(dtype=float)
        if err is not None:  # caps only on bars that have an interval
            has = (s[f"{y}_lo"].notna() & s[f"{y}_hi"].notna()).to_numpy()
            ax.errorbar(pos[has], top[has], yerr=err[:, has], fmt="none", ecolor="0.2", capsize=3, lw=1)
            top = top + err[1]
        for p, value, above in zip(pos, s[y], top):
            if np.isfinite(value):
                ax.annotate(fmt % value, (p, above), xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=7)
    ax.margins(y=0.08)  # room above the highest cap for its number
    return xs


def batch_sweep(cells, table, reference=None, target=""):
    """Throughput and speedup per batch size (baseline and each K; 95% intervals), acceptance per batch size,
    and the seed's reported values in their own panel, labelled with their own token counts."""
    t = table.copy()
    t["series"] = t.apply(mode_label, axis=1)
    t = t.sort_values(["batch_size", "mode", "k"])
    # a batch size with a run over 1.5x its calibration's prediction (calibration_suspect) is starred
    flagged = set(cells.loc[cells.get("suspect_runs", pd.Series(0, index=cells.index)).fillna(0) > 0, "batch_size"])
    star = t["batch_size"].map(lambda b: " *" if b in flagged else "")
    t["where"] = t["batch_size"].astype(str) + star + "\n(" + t["max_new_tokens"].astype(str) + " tok/row)"
    order = list(dict.fromkeys(t.sort_values(["k"])["series"]))  # the target alone (K=0) first, then K ascending
    palette = dict(zip(order, sns.color_palette("deep", len(order))))
    fig, ax = sweep_panels(cells, reference, 6.5, 4.4)
    hide_acceptance = "acceptance" not in ax
    xs = grouped_bars(ax["throughput"], t, "where", "throughput", "series", order, palette)
    ax["throughput"].set_xticks(range(len(xs)), xs)
    ax["throughput"].set(xlabel="batch size (new tokens per row)", ylabel="throughput (tokens/s, all rows)",
                         title="Throughput")
    spec = t[t["mode"] == SPECULATIVE]
    xs = grouped_bars(ax["speedup"], spec, "where", "vs_baseline", "series", [o for o in order if o in set(spec["series"])],
                      palette)
    ax["speedup"].set_xticks(range(len(xs)), xs)
    ax["speedup"].axhline(1.0, color=BASE_COLOR, ls="--", lw=1)
    ax["speedup"].set(xlabel="batch size (new tokens per row)", ylabel="speedup over target only (x)",
                      title="Speedup (paired by block)")
    if "acceptance" in ax:
        for series, s in spec.groupby("series", sort=False):
            ax["acceptance"].plot(s["where"], s["acceptance_rate"] * 100, marker="o", label=series, color=palette[series])
        ax["acceptance"].set(xlabel="batch size (new tokens per row)", ylabel="acceptance rate (%)",
                             title="Acceptance (mean over prompt groups)", ylim=(0, 105))
    if has(reference):
        seed_panel(ax["seed"], reference, "batch_size", "throughput", xlabel="batch size",
                   ylabel="throughput (tokens/s)")
    return finish(fig, "Batch sweep: speculative vs target-only throughput per batch size", describe(cells, target),
                  [ci_note(t, "vs_baseline"), TIMING_ONLY_NOTE if hide_acceptance else "",
                   SEED_NOTE if has(reference) else "",
                   "Throughput: end to end (prefill included), the new tokens of all rows of the batch; every row "
                   "has its own prompt."
                   + (" *: a run at this batch size took over 1.5x its calibration's prediction (calibration_suspect "
                      "in rows.csv)." if flagged else "")])


# -- 3. verification latency ---------------------------------------------------------------------------------

def verification_latency(table, target=""):
    """Per model: median verification time vs K (band: interquartile range over repeats) for one parallel
    forward over K+1 tokens and for K+1 single-token forwards, and the same relative to the smallest K."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    models = list(dict.fromkeys(table["target"]))
    colors = dict(zip(models, sns.color_palette("deep", len(models))))
    style = dict(parallel="-", naive="--")
    names = dict(parallel="1 forward over K+1 tokens", naive="K+1 single-token forwards")
    for (model, mode), t in table.sort_values("k").groupby(["target", "mode"], sort=False):
        random = timing_only(t)
        label = f"{model}{' (random weights)' if random else ''}: {names.get(mode, mode)}"
        axes[0].plot(t["k"], t["median_ms"], marker="o", ls=style.get(mode), color=colors[model], label=label)
        axes[0].fill_between(t["k"], t["q25_ms"], t["q75_ms"], color=colors[model], alpha=0.2)
        axes[1].plot(t["k"], t["vs_smallest_k"], marker="o", ls=style.get(mode), color=colors[model], label=label)
    ks = np.array(sorted(table["k"].unique()))
    axes[1].axhline(1.0, color=BASE_COLOR, ls=":", label="flat (constant in K)")
    axes[1].plot(ks, (ks + 1) / (ks[0] + 1), color="0.5", ls="-.", label="linear in K+1")
    axes[0].set(xlabel="K (draft tokens verified)", ylabel="verification time (ms, median; log scale)",
                title="Verification time (band: interquartile range)", yscale="log")
    axes[1].set(xlabel="K (draft tokens verified)", ylabel=f"time relative to K={ks[0]} (x)", title="Growth with K")
    axes[0].yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # plain ms, not 6x10^0
    for ax in axes:
        ax.set_xticks(ks)
    first = table.iloc[0]
    contexts = "/".join(str(c) for c in dict.fromkeys(table["context"]))
    sub = (f"{target} target ({first['dtype']}, {first['device']}), context {contexts} tokens, batch "
           f"{first['batch_size']}, {int(table['repeats'].min())}-{int(table['repeats'].max())} repeats")
    notes = ["Models marked random weights (timing-only) are the seed's architectures with random weights: their "
             "forward times are real; nothing about acceptance can be read from them."] \
        if timing_only(table) else []
    return finish(fig, "Verification latency vs K: parallel vs naive", sub, notes, ncol=2)


# -- 5. drafters ------------------------------------------------------------------------------------------------------

def drafters(cells, table, target=""):
    """Speedup over target only per drafter and prompt category (95% intervals), and acceptance per drafter."""
    t = table.copy()
    # one label per drafter: a policy's mean K differs by category, and would split its bars into groups
    t["drafter"] = t.assign(mean_k=np.nan).apply(mode_label, axis=1)
    t["drafter"] = distinguish(t, "drafter", ["category"] if "category" in t else [])
    hide_acceptance = timing_only(cells)
    fig, axes = plt.subplots(1, 1 if hide_acceptance else 2, figsize=(7 if hide_acceptance else 13, 5.8),
                             squeeze=False)
    cats = sorted(t["category"].dropna().unique()) if "category" in t else []
    palette = dict(zip(cats, sns.color_palette("deep", len(cats))))
    drafted = t[~t["mode"].isin(A_A)]  # the A/A control is the readout's noise floor, not a drafter
    xs = grouped_bars(axes[0, 0], drafted, "drafter", "vs_baseline", "category", cats, palette)
    axes[0, 0].set_xticks(range(len(xs)), [textwrap.fill(x, 14) for x in xs], fontsize=8)
    axes[0, 0].axhline(1.0, color=BASE_COLOR, ls="--", lw=1)
    axes[0, 0].set(xlabel="drafter", ylabel="speedup over target only (x)", title="Speedup per drafter")
    if not hide_acceptance:
        d = drafted.assign(acceptance_rate=drafted["acceptance_rate"] * 100)
        xs = grouped_bars(axes[0, 1], d, "drafter", "acceptance_rate", "category", cats, palette, fmt="%.0f")
        axes[0, 1].set_xticks(range(len(xs)), [textwrap.fill(x, 14) for x in xs], fontsize=8)
        axes[0, 1].set(xlabel="drafter", ylabel="acceptance rate (%)", title="Acceptance per drafter", ylim=(0, 105))
    n = int(cells["max_new_tokens"].iloc[0]) if len(cells) else 0
    per = t.groupby("category")["prompts"].max().to_dict() if "category" in t else {}
    counts = ", ".join(f"{c}: {int(v)}" for c, v in per.items())
    return finish(fig, f"Drafters on the same target ({n} new tokens, batch 1)", describe(cells, target),
                  [TIMING_ONLY_NOTE if hide_acceptance else "",
                   "Speedup: end to end (prefill included), throughput over the target alone's in the same block; "
                   f"bars: mean over the prompts of each category (prompts per category: {counts}). "
                   + ci_note(drafted, "vs_baseline")],
                  ncol=4, legend_title="prompt category")
