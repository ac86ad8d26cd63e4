"""Every figure of the study. Each function takes a DataFrame read back from a data file that the
notebook wrote (and, where the seed made a claim, the seed's reported numbers as a labelled reference
series) and returns a matplotlib Figure; `save` writes it as PNG and SVG.

Figures must be readable on their own (they end up in the summary page without the notebook around
them): a title naming the experiment, the hardware target and the model pair; axes with units; a
legend; and a caption for anything a reader could misread (timing-only pairs, the seed's numbers).
"""
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display needed (papermill kernels, CI)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

sns.set_theme(style="whitegrid", context="notebook")
SEED_COLOR, BASE_COLOR = "0.55", "0.15"
TIMING_ONLY_NOTE = ("Acceptance is not shown: this pair has random weights (timing-only), so only its forward "
                    "times are real.")
SEED_NOTE = ("Grey dashed: numbers reported by the seed document (flawed implementation), shown for reference "
             "only; they were not measured here.")


# -- shared pieces ----------------------------------------------------------------------------------------

def describe(frame, target) -> str:
    """'<target> target: <target model> + draft <draft model> (<dtype>, <device>)' from the rows themselves."""
    first = frame.iloc[0]
    draft = first.get("draft")
    draft = f" + draft {draft}" if isinstance(draft, str) and draft else ""
    return f"{target} target: {first['target']}{draft} ({first['dtype']}, {first['device']})"


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


def save(fig, figures_dir, name) -> list[Path]:
    """<figures_dir>/<name>.png and .svg; returns the paths."""
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.png", out / f"{name}.svg"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def label_bars(ax, fmt):
    for container in ax.containers:
        ax.bar_label(container, fmt=fmt, fontsize=7, padding=1)


def spread(frame, x, y):
    """Mean over prompts per x, with min and max (the error bars)."""
    g = frame.groupby(x)[y]
    return pd.DataFrame(dict(mean=g.mean(), lo=g.min(), hi=g.max())).reset_index()


def errorline(ax, s, x, label, **kw):
    ax.errorbar(s[x], s["mean"], yerr=[s["mean"] - s["lo"], s["hi"] - s["mean"]], marker="o", capsize=3,
                label=label, **kw)


def reference_line(ax, ref, x, y, scale=1.0, positions=None):
    """The seed's series, one grey dashed line per (device, pair); `positions` maps x values to plot
    coordinates on categorical axes."""
    markers = iter("sD^v")
    for (device, pair), r in ref.dropna(subset=[y]).groupby(["device", "pair"]):
        r = r.sort_values(x)
        tokens = "/".join(str(n) for n in dict.fromkeys(r["max_new_tokens"]))
        xs = r[x].map(positions) if positions else r[x]
        ax.plot(xs, r[y] * scale, ls="--", marker=next(markers, "s"), color=SEED_COLOR, alpha=0.9,
                label=f"seed reported: {pair}, {device}, {tokens} tok")


# -- 1. K sweep -------------------------------------------------------------------------------------------

def k_sweep(cells, reference=None, target=""):
    """Throughput and acceptance vs K (speculative, mean over prompts with min-max bars), the target-only
    baseline as a horizontal band, and the seed's reported series in grey."""
    ok = cells[cells["runs"] > 0]
    spec, base = ok[ok["mode"] == "speculative"], ok[ok["mode"] == "baseline"]
    hide_acceptance = timing_only(cells)
    fig, axes = plt.subplots(1, 1 if hide_acceptance else 2, figsize=(6 if hide_acceptance else 12, 5.6),
                             squeeze=False)
    ax = axes[0, 0]
    nprompts = spec["prompt_id"].nunique()
    errorline(ax, spread(spec, "k", "throughput"), "k", f"specdec speculative (mean of {nprompts} prompts, "
                                                         f"bars: min-max)")
    if len(base):
        lo, mean, hi = base["throughput"].min(), base["throughput"].mean(), base["throughput"].max()
        ax.axhline(mean, color=BASE_COLOR, lw=1.5, label="target only (specdec baseline)")
        ax.axhspan(lo, hi, color=BASE_COLOR, alpha=0.1)
    if reference is not None and len(reference):
        reference_line(ax, reference, "k", "throughput")
    ax.set(xlabel="K (draft tokens per iteration)", ylabel="throughput (tokens/s)", title="Throughput")
    ks = sorted(set(spec["k"]) | (set(reference["k"]) if reference is not None else set()))
    ax.set_xticks(ks)
    if not hide_acceptance:
        ax = axes[0, 1]
        errorline(ax, spread(spec.assign(pct=spec["acceptance_rate"] * 100), "k", "pct"), "k",
                  f"specdec speculative (mean of {nprompts} prompts, bars: min-max)")
        if reference is not None and len(reference):
            reference_line(ax, reference, "k", "acceptance_rate", scale=100)
        ax.set(xlabel="K (draft tokens per iteration)", ylabel="acceptance rate (%)", title="Acceptance",
               ylim=(0, 105))
        ax.set_xticks(ks)
    n = int(ok["max_new_tokens"].iloc[0]) if len(ok) else 0
    return finish(fig, f"K sweep: throughput and acceptance vs K ({n} new tokens, batch 1)",
                  describe(ok if len(ok) else cells, target),
                  [TIMING_ONLY_NOTE if hide_acceptance else "",
                   SEED_NOTE if reference is not None and len(reference) else ""])


# -- 2. batch sweep -----------------------------------------------------------------------------------------

def series_label(row) -> str:
    if row["mode"] == "baseline":
        return "target only (baseline)"
    return f"speculative K={row['k']}"


def batch_sweep(cells, reference=None, target=""):
    """Grouped bars of throughput per batch size (baseline and each K; error bars: min-max over the prompt
    groups), the seed's reported values as hatched grey bars, and acceptance per batch size."""
    ok = cells[cells["runs"] > 0].copy()
    ok["series"] = ok.apply(series_label, axis=1)
    order = ["target only (baseline)"] + [f"speculative K={k}" for k in sorted(ok.loc[ok["mode"] == "speculative",
                                                                                         "k"].unique())]
    palette = dict(zip(order, sns.color_palette("deep", len(order))))
    frame = ok[["batch_size", "series", "throughput"]]
    if reference is not None and len(reference):
        ref = reference.assign(series=lambda r: np.where(r["mode"] == "baseline", "seed reported: baseline",
                                                         "seed reported: speculative K=" + r["k"].astype(str)))
        order += sorted(ref["series"].unique())
        palette.update({s: SEED_COLOR if "speculative" in s else "0.8" for s in ref["series"].unique()})
        frame = pd.concat([frame, ref[["batch_size", "series", "throughput"]]], ignore_index=True)
    hide_acceptance = timing_only(cells)
    fig, axes = plt.subplots(1, 1 if hide_acceptance else 2, figsize=(7 if hide_acceptance else 13, 5.6),
                             squeeze=False, gridspec_kw=None if hide_acceptance else dict(width_ratios=(3, 2)))
    ax = axes[0, 0]
    batches = sorted(frame["batch_size"].unique())  # ours and the seed's (it may have sizes we did not run)
    sns.barplot(frame, x="batch_size", y="throughput", hue="series", order=batches, hue_order=order, palette=palette,
                estimator="mean", errorbar=("pi", 100), capsize=0.1, ax=ax)
    for container, name in zip(ax.containers, order):
        if name.startswith("seed"):
            for bar in container:
                bar.set_hatch("//")
    tokens = ok.groupby("batch_size")["max_new_tokens"].first()
    ax.set_xticks(range(len(batches)), [f"{b}\n({tokens[b]} tok/row)" if b in tokens else f"{b}\n(seed only)"
                                        for b in batches])
    ax.set(xlabel="batch size (new tokens per row)", ylabel="throughput (tokens/s, all rows)", title="Throughput")
    if not hide_acceptance:
        ax = axes[0, 1]
        spec = ok[ok["mode"] == "speculative"]
        where = {b: i for i, b in enumerate(batches)}  # same categorical positions as the bars
        for k, s in spec.groupby("k"):
            line = spread(s.assign(pct=s["acceptance_rate"] * 100), "batch_size", "pct")
            errorline(ax, line.assign(batch_size=line["batch_size"].map(where)), "batch_size", f"speculative K={k}",
                      color=palette[f"speculative K={k}"])
        if reference is not None and len(reference):
            reference_line(ax, reference[reference["mode"] != "baseline"], "batch_size", "acceptance_rate", 100,
                           positions=where)
        ax.set(xlabel="batch size", ylabel="acceptance rate (%)", title="Acceptance", ylim=(0, 105))
        ax.set_xticks(range(len(batches)), [str(b) for b in batches])
    return finish(fig, "Batch sweep: speculative vs target-only throughput per batch size", describe(ok, target),
                  [TIMING_ONLY_NOTE if hide_acceptance else "",
                   SEED_NOTE.replace("dashed", "hatched bars / dashed") if reference is not None and len(reference)
                   else "", "Throughput counts the new tokens of all rows of the batch."])


# -- 3. verification latency ---------------------------------------------------------------------------------

def verification_latency(table, target=""):
    """Median verification time vs K (band: interquartile range over repeats) for one parallel forward over
    K+1 tokens and for K+1 single-token forwards, and the same relative to K=1 (flat = 1)."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4))
    colors = dict(parallel="tab:blue", naive="tab:red")
    names = dict(parallel="parallel: 1 forward over K+1 tokens", naive="naive: K+1 single-token forwards")
    for mode, t in table.sort_values("k").groupby("mode"):
        axes[0].plot(t["k"], t["median_ms"], marker="o", color=colors.get(mode), label=names.get(mode, mode))
        axes[0].fill_between(t["k"], t["q25_ms"], t["q75_ms"], color=colors.get(mode), alpha=0.2)
        axes[0].plot(t["k"], t["min_ms"], ls=":", lw=1, color=colors.get(mode), label=f"{mode}: fastest repeat")
        axes[1].plot(t["k"], t["vs_smallest_k"], marker="o", color=colors.get(mode), label=names.get(mode, mode))
    ks = np.array(sorted(table["k"].unique()))
    axes[1].axhline(1.0, color=BASE_COLOR, ls=":", label="flat (constant in K)")
    axes[1].plot(ks, (ks + 1) / (ks[0] + 1), color="0.5", ls="--", label="linear in K+1")
    axes[0].set(xlabel="K (draft tokens verified)", ylabel="verification time (ms, median)",
                title="Verification time (line: median, band: interquartile range)")
    axes[1].set(xlabel="K (draft tokens verified)", ylabel=f"time relative to K={ks[0]} (x)",
                title="Growth with K")
    for ax in axes:
        ax.set_xticks(ks)
    first = table.iloc[0]
    sub = (f"{target} target: {first['target']} ({first['dtype']}, {first['device']}), context "
           f"{first['context']} tokens, batch {first['batch_size']}, {int(table['repeats'].min())} repeats")
    return finish(fig, "Verification latency vs K: parallel vs naive", sub)


# -- 4. speculative vs baseline -----------------------------------------------------------------------------------

def config_label(row) -> str:
    head = "target only" if row["mode"] == "hf_generate" else f"K={row['k']}"
    return f"{head}, b={row['batch_size']}, {row['max_new_tokens']} tok"


def speedup(table, target=""):
    """Per configuration: measured speedup over the target-only baseline, the Leviathan prediction from the
    measured acceptance and cost ratios, and Hugging Face generate / assisted generation on the same scale."""
    names = dict(speculative="specdec measured", predicted="Leviathan predicted (measured a, c, v)",
                 hf_assisted="HF assisted generation", hf_generate="HF generate (target only)")
    palette = dict(zip(names.values(), sns.color_palette("deep", len(names))))  # same colours in every panel
    pairs = list(dict.fromkeys(table["pair"]))
    # Horizontal bars: one row per configuration, so many configurations grow the figure downwards and
    # every label stays readable at the same size.
    configs = table.groupby("pair").size().max()
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, (0.42 * configs + 1.5) * len(pairs) + 1.2), squeeze=False)
    notes = []
    for ax, pair in zip(axes[:, 0], pairs):
        t = table[(table["pair"] == pair) & table["mode"].isin(["speculative", "hf_assisted", "hf_generate"])].copy()
        t["config"] = t.apply(config_label, axis=1)
        long = [t.assign(series=t["mode"].map(names), value=t["vs_baseline"])]
        if not timing_only(t):
            s = t[t["mode"] == "speculative"]
            long.append(s.assign(series=names["predicted"], value=s["predicted_speedup"]))
        else:
            notes.append(f"{pair}: random weights (timing-only), so the Leviathan prediction (which needs a real "
                         f"acceptance rate) is not shown.")
        long = pd.concat(long, ignore_index=True).dropna(subset=["value"])
        order = list(dict.fromkeys(t.sort_values(["batch_size", "max_new_tokens", "k"])["config"]))
        hue_order = [n for n in names.values() if n in set(long["series"])]
        sns.barplot(long, y="config", x="value", hue="series", order=order, hue_order=hue_order, ax=ax,
                    errorbar=None, palette=palette, orient="h")
        ax.axvline(1.0, color=BASE_COLOR, ls="--", lw=1, label="specdec target-only baseline (= 1)")
        ax.set(ylabel="configuration (K, batch size, new tokens per row)",
               xlabel="speedup over target only (x)", title=describe(t, target) if len(t) else pair)
        ax.set_xlim(0, max(1.1, long["value"].max() * 1.15))  # room for the bar labels
        label_bars(ax, "%.2f")
    return finish(fig, "Speculative vs target-only decoding: measured and predicted speedup", "",
                  notes + ["Speedup = throughput / specdec target-only throughput on the same prompts, same run; "
                           "bars are means over prompts."])


# -- 5. drafters ------------------------------------------------------------------------------------------------------

def drafter_label(row) -> str:
    if row["mode"] == "baseline":
        return "none (target only)"
    if row["mode"] == "adaptive" or str(row["k"]) == "adaptive":
        return "draft model, adaptive K"
    if row["mode"] == "prompt_lookup":
        return f"prompt lookup, K={row['k']}"
    return f"draft model, K={row['k']}"


def drafters(cells, target=""):
    """Throughput and acceptance per drafter on the same target, per prompt category."""
    ok = cells[cells["runs"] > 0].copy()
    ok["drafter"] = ok.apply(drafter_label, axis=1)
    hue = "category" if "category" in ok else "prompt_id"
    hide_acceptance = timing_only(cells)
    fig, axes = plt.subplots(1, 1 if hide_acceptance else 2, figsize=(7 if hide_acceptance else 13, 5.6),
                             squeeze=False)
    sns.barplot(ok, x="drafter", y="throughput", hue=hue, errorbar=None, ax=axes[0, 0])
    axes[0, 0].set(xlabel="drafter", ylabel="throughput (tokens/s)", title="Throughput per drafter")
    if not hide_acceptance:
        drafted = ok[ok["mode"] != "baseline"].assign(pct=lambda d: d["acceptance_rate"] * 100)
        sns.barplot(drafted, x="drafter", y="pct", hue=hue, errorbar=None, ax=axes[0, 1])
        axes[0, 1].set(xlabel="drafter", ylabel="acceptance rate (%)", title="Acceptance per drafter", ylim=(0, 105))
    label_bars(axes[0, 0], "%.3g")
    if not hide_acceptance:
        label_bars(axes[0, 1], "%.0f")
    for ax in axes[0]:
        ax.tick_params(axis="x", labelsize=8)
    n = int(ok["max_new_tokens"].iloc[0]) if len(ok) else 0
    return finish(fig, f"Drafters on the same target ({n} new tokens, batch 1)", describe(ok, target),
                  [TIMING_ONLY_NOTE if hide_acceptance else "", "Bars: mean over the prompts of each category."],
                  ncol=4, legend_title=f"prompt {hue}")
