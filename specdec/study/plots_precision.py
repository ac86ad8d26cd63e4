"""The precision figure (notebook 06): why speculation wins or loses at each target precision. Left: the speedup of
auto over the target alone (same precision) against the bytes one decode step reads, one point per precision with
its 95% interval and its verify-cost ratio at 5 tokens written beside it, and llama.cpp's speculation over its own
target alone on its GGUF file when it was timed. Right: the verify-cost curves, one forward over 1..9 tokens
relative to one token. And the decode-speed figure: tok/s per engine and configuration beside each precision's
bandwidth floor. In plots.py's look (plots.finish adds title, legend and caption)."""
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .plots import BASE_COLOR, finish

NOTE = ("Speedup: geometric mean over prompts of decode throughput over the target alone at the same precision "
        "(each precision, and llama.cpp, has its own baseline), 95% interval over prompts. GB per step: the weights "
        "one decode step reads (input embeddings excluded; llama.cpp: its GGUF file). Verify-cost ratio (beside "
        "each point, and right): a forward over T tokens / over 1 token through the KV arena after 64 cached tokens, "
        "the machine's price list (interleaved passes, median ratio to each pass), on specdec's linear path (not a "
        "speedup), each T at the forward the engine runs it as (an open marker: padded to more tokens, which "
        "measured faster). Flat verification (ratio near 1) is what lets K drafts pay.")


def _errorbar(ax, x, r, **kw):
    err = np.nan_to_num(np.clip([[r.speedup - r.speedup_lo], [r.speedup_hi - r.speedup]], 0, None))
    ax.errorbar(x, r.speedup, yerr=err, capsize=4, **kw)


def _beside(table, r) -> dict:
    """Where a point's label goes: toward the panel's middle, below the point when it lies under the 1.0 line (so
    neither the line nor the panel's edge cuts it)."""
    left = r.step_gb > (table["step_gb"].min() + table["step_gb"].max()) / 2
    below = r.speedup < 1.0
    return dict(xytext=(-6 if left else 6, -8 if below else 6), ha="right" if left else "left",
                va="top" if below else "bottom")


def precision_figure(table, curves, title, subtitle="", llama=None):
    """`table`: one line per precision (precision, step_gb, speedup, speedup_lo, speedup_hi, verify_ratio_5);
    `curves`: one line per (precision, tokens) with ratio (and runs_as: the forward T runs as); `llama`: optional lines (label, step_gb, speedup,
    speedup_lo, speedup_hi), llama.cpp's speculation over its own target alone."""
    colors = dict(zip(table["precision"], sns.color_palette("deep", len(table))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    for r in table.itertuples():
        _errorbar(left, r.step_gb, r, fmt="o", ms=7, color=colors[r.precision], label=f"specdec auto, {r.precision}")
        left.annotate(f"verify cost 5 vs 1 token: {r.verify_ratio_5:.2f}", (r.step_gb, r.speedup), **_beside(table, r),
                      textcoords="offset points", fontsize=8, color=colors[r.precision])
    markers = iter("sDv^P")
    for r in (llama.itertuples() if llama is not None else ()):
        _errorbar(left, r.step_gb, r, fmt=next(markers, "s"), ms=6, color="0.3", label=f"llama.cpp, {r.label}")
    left.axhline(1.0, color=BASE_COLOR, ls="--", lw=1, label="target alone (= 1)")
    left.set(xlabel="GB of weights read per decode step", ylabel="speculation over the\ntarget alone (x, decode)")
    for precision, c in curves.groupby("precision", sort=False):
        color = colors.get(precision, BASE_COLOR)
        right.plot(c["tokens"], c["ratio"], "o-", ms=4, color=color)
        padded = c[c["runs_as"] != c["tokens"]] if "runs_as" in c else c.iloc[:0]
        right.plot(padded["tokens"], padded["ratio"], "o", ms=7, mfc="white", color=color)
    right.axhline(1.0, color="0.7", lw=0.8, ls=":")
    right.set(xlabel="tokens in one forward (K + 1)", ylabel="forward time /\none-token forward",
              xticks=sorted(curves["tokens"].unique()))
    return finish(fig, title, subtitle, [NOTE], ncol=3)


SPEED_NOTE = ("Decode tok/s: geometric mean over prompts (decode time from the end of the target's prefill, the "
              "draft's prefill charged to speculation). Bandwidth floor (|): the tok/s of a step that only read its "
              "weights once, at the memory read rate the notebook measured on this machine (GB per step over GB/s), "
              "in its floor passes after each precision's rows: the machine's speed moves within minutes, so a bar "
              "timed in a faster moment can pass its marker; the step's ratio to its floor, timed in pairs, is in "
              "the readout. "
              "Perplexity: on the held-out text (specdec.study.quality). Bars of one group ran on the same prompts, "
              "in the same blocks.")


def speed_figure(bars, title, subtitle=""):
    """The first figure a CPU user reads: decode tok/s per engine and configuration on this machine. `bars`: one line
    per bar (label, group, tok_s, floor_tok_s; top to bottom), `group` naming the prompts it ran on."""
    groups = list(dict.fromkeys(bars["group"]))
    colors = dict(zip(groups, sns.color_palette("deep", len(groups))))
    fig, ax = plt.subplots(figsize=(11, 0.42 * len(bars) + 1.6))
    y = np.arange(len(bars))[::-1]
    for yi, r in zip(y, bars.itertuples()):
        ax.barh(yi, r.tok_s, color=colors[r.group], label=r.group)
        ax.annotate(f"{r.tok_s:.1f}", (r.tok_s, yi), xytext=(3, 0), textcoords="offset points", va="center", fontsize=8)
        if np.isfinite(r.floor_tok_s):
            ax.plot([r.floor_tok_s] * 2, [yi - 0.4, yi + 0.4], color=BASE_COLOR, lw=2,
                    label="bandwidth floor (a step that only reads its weights), as tok/s")
    ax.set_yticks(y, bars["label"], fontsize=8)
    ax.set(xlabel="decode tok/s (batch 1, greedy)")
    return finish(fig, title, subtitle, [SPEED_NOTE], ncol=2)
