"""Figures of the prompt-population experiment, drawn from specdec.study.population's tables in plots.py's look
(title, axes with units, one legend and a caption under the axes; plots.save writes them)."""
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .modes import label as mode_label
from .plots import BASE_COLOR, finish
from .population import OVERALL

POPULATION_NOTE = ("Geometric means with 95% t intervals over prompts: each prompt's ratio (its repeats' noise "
                   "inside it), stratified by category (the overall line: all prompts), so an interval says where the "
                   "mean over other prompts of the same categories would fall.")

METRIC_WORDS = {"decode_throughput": ", decode tok/s: the target's prefill excluded, the draft's charged",
                "throughput": ", end to end"}


def category_order(cats):
    return sorted(set(cats) - {OVERALL}) + ([OVERALL] if OVERALL in set(cats) else [])


def palette(order):
    """One colour per category, the same in every figure; 'overall' dark."""
    colors = dict(zip([c for c in order if c != OVERALL], sns.color_palette("deep", len(order))))
    return {**colors, OVERALL: BASE_COLOR}


def per_prompt_speedups(per_prompt_df, table_df, title, subtitle=""):
    """Per category: each prompt's speedup as a point (a vertical line: the range over its repeats), and beside
    them the category's geometric mean with its 95% interval; the overall line last; a dashed line at 1."""
    order = category_order(table_df["category"])
    t = table_df.set_index("category")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(order) + 2), 5.2))
    jitter = np.random.default_rng(0)  # fixed: the same figure from the same table
    for i, cat in enumerate(order):
        if cat != OVERALL:
            p = per_prompt_df[per_prompt_df["category"] == cat]
            x = i - 0.15 + jitter.uniform(-0.08, 0.08, len(p))
            spread = p["repeat_min"].notna() if "repeat_min" in p else np.zeros(len(p), bool)
            if np.any(spread):
                ax.vlines(x[spread], p["repeat_min"][spread], p["repeat_max"][spread], color="tab:blue", alpha=0.35,
                          lw=1, label="range over a prompt's repeats")
            ax.scatter(x, p["speedup"], s=18, alpha=0.75, color="tab:blue", label="one prompt (mean of its repeats)")
        if cat in t.index:
            e = t.loc[cat]
            err = np.nan_to_num(np.clip([[e["speedup"] - e["speedup_lo"]], [e["speedup_hi"] - e["speedup"]]], 0, None))
            overall = cat == OVERALL
            ax.errorbar(i + (0 if overall else 0.2), e["speedup"], yerr=err, fmt="D", capsize=4, ms=6,
                        color=BASE_COLOR if overall else "tab:red",
                        label="all prompts: geometric mean, 95%" if overall else "category: geometric mean, 95%")
    if OVERALL in order:
        ax.axvline(len(order) - 1.5, color="0.7", lw=0.8, ls=":")
    ax.axhline(1.0, color=BASE_COLOR, ls="--", lw=1, label="target alone (= 1)")
    prompts = lambda c: int(t.loc[c, "prompts"]) if c in t.index else 0
    ax.set_xticks(range(len(order)), [f"{c}\n({prompts(c)} prompts)" for c in order], fontsize=8)
    metric = METRIC_WORDS.get(table_df["metric"].iloc[0], "") if "metric" in table_df and len(table_df) else ""
    ax.set(xlabel="prompt category", ylabel=f"speedup over the target alone (x{metric})", xlim=(-0.6, len(order) - 0.4))
    return finish(fig, title, subtitle, [POPULATION_NOTE], ncol=3)


def panel_grid(n, width=4.6, height=3.6, cols=3):
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 1.4), squeeze=False, sharey=True)
    for extra in list(axes.flat)[n:]:
        extra.remove()
    return fig, list(axes.flat)[:n]


def acceptance_positions(acc_df, title, subtitle=""):
    """One panel per configuration: acceptance at each drafted position, conditional (solid: given the positions
    before it were accepted) and unconditional (dashed: of all rounds that drafted it), one colour per category."""
    configs = list(acc_df.groupby(["mode", "k"], dropna=False))  # auto (k NaN) and each fixed K
    order = category_order(acc_df["category"])
    colors = palette(order)
    fig, axes = panel_grid(len(configs))
    for ax, ((mode, k), c) in zip(axes, configs):
        for cat in order:
            s = c[c["category"] == cat].sort_values("position")
            if s.empty:  # a category this configuration did not run
                continue
            line = dict(lw=2.2, alpha=1.0) if cat == OVERALL else dict(lw=1.2, alpha=0.75)  # overall stands out
            ax.plot(s["position"], s["conditional"] * 100, marker="o", ms=3, color=colors[cat], label=cat, **line)
            ax.plot(s["position"], s["unconditional"] * 100, ls="--", color=colors[cat], **line)
        ax.set(title=mode_label(dict(mode=mode, k=k)), xlabel="drafted position i", ylabel="acceptance (%)",
               ylim=(0, 105))
        ax.set_xticks(sorted(c["position"].unique()))
    notes = ["Solid: conditional acceptance, the share of rounds accepting position i among those that drafted it "
             "and accepted position i-1. Dashed: unconditional, among all rounds that drafted position i."]
    return finish(fig, title, subtitle, notes, ncol=5, legend_title="prompt category")


def k_chosen(dist_df, title, subtitle=""):
    """One panel per category ('overall' first): the share of verify rounds in which auto chose each K."""
    order = category_order(dist_df["category"])
    order = [OVERALL] + order[:-1] if order and order[-1] == OVERALL else order
    colors = palette(order)
    ks = sorted(dist_df["k"].unique())
    fig, axes = panel_grid(len(order), width=3.8, height=3.0, cols=4)
    for ax, cat in zip(axes, order):
        d = dist_df[dist_df["category"] == cat].set_index("k").reindex(ks)
        bars = ax.bar(range(len(ks)), d["share"].fillna(0) * 100, color=colors[cat])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        rounds = int(d["rounds"].fillna(0).sum())
        ax.set(title=f"{cat} ({rounds:,} rounds)", xlabel="K chosen", ylabel="share of rounds (%)")
        ax.set_xticks(range(len(ks)), [str(int(k)) for k in ks])
    return finish(fig, title, subtitle, ["Share of verify rounds, per category, in which auto proposed K drafts "
                                         "(K = 0: a round of the target alone)."])


def length_axis(lengths_df, windows_df, title, subtitle=""):
    """Left: auto's decode speedup over the target alone per generation length (95% intervals over prompts).
    Right: acceptance per window of new tokens, one line per generation length: does speculation pay more or
    less as a generation goes on?"""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    t = lengths_df.sort_values("max_new_tokens")
    err = np.nan_to_num(np.clip([t["speedup"] - t["speedup_lo"], t["speedup_hi"] - t["speedup"]], 0, None))
    left.errorbar(t["max_new_tokens"], t["speedup"], yerr=err, fmt="o-", capsize=4, color=BASE_COLOR,
                  label="auto over the target alone")
    left.axhline(1.0, color="0.6", ls="--", lw=1)
    left.set(xlabel="new tokens per generation (EOS ignored)", ylabel="speedup (x, decode)",
             xticks=sorted(t["max_new_tokens"].unique()))
    # Longest first, shorter ones on top as larger hollow markers: greedy, a shorter generation's windows are the
    # longer one's first windows (the same tokens), so their lines would hide each other.
    for i, (n, w) in enumerate(sorted(windows_df.groupby("max_new_tokens"), key=lambda g: -g[0])):
        right.plot(w["window_start"], 100 * w["acceptance"], "o-", ms=4 + 3 * i, mfc="none" if i else None,
                   lw=1.5, label=f"{n} tokens")
    right.set(xlabel=f"window of {int(windows_df['window'].iloc[0]) if len(windows_df) else 0} new tokens "
                     "(its first token)", ylabel="acceptance of\nauto's drafts (%)", ylim=(0, 105))
    note = ("Left: geometric mean over the prompts of the length subset, decode phase (the draft's prefill "
            "charged), each length's runs paired with the target alone's; right: accepted / proposed drafts of the "
            "verify rounds that started in each window, over all those prompts (greedy: a shorter generation's "
            "windows are the same tokens as a longer one's first windows, so their points coincide).")
    return finish(fig, title, subtitle, [note], ncol=4)
