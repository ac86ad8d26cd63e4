"""The precision figure (notebook 06): why speculation wins or loses at each target precision. Left: the speedup of
auto over the target alone (same precision) against the bytes one decode step reads, one point per precision with
its 95% interval and its verify-cost ratio at 5 tokens written beside it, and llama.cpp's speculation over its own
target alone on its GGUF file when it was timed. Right: the verify-cost curves, one forward over 1..9 tokens
relative to one token. In plots.py's look (plots.finish adds title, legend and caption)."""
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .plots import BASE_COLOR, finish

NOTE = ("Speedup: geometric mean over prompts of decode throughput over the target alone at the same precision "
        "(each precision, and llama.cpp, has its own baseline), 95% interval over prompts. GB per step: the weights "
        "one decode step reads (input embeddings excluded; llama.cpp: its GGUF file). Verify-cost ratio (beside "
        "each point, and right): a forward over T tokens / over 1 token through the KV arena after 64 cached tokens, "
        "the machine's price list (interleaved passes, median ratio to each pass), on specdec's linear path (not a "
        "speedup). Flat verification (ratio near 1) is "
        "what lets K drafts pay.")


def _errorbar(ax, x, r, **kw):
    err = np.nan_to_num(np.clip([[r.speedup - r.speedup_lo], [r.speedup_hi - r.speedup]], 0, None))
    ax.errorbar(x, r.speedup, yerr=err, capsize=4, **kw)


def precision_figure(table, curves, title, subtitle="", llama=None):
    """`table`: one line per precision (precision, step_gb, speedup, speedup_lo, speedup_hi, verify_ratio_5);
    `curves`: one line per (precision, tokens) with ratio; `llama`: optional lines (label, step_gb, speedup,
    speedup_lo, speedup_hi), llama.cpp's speculation over its own target alone."""
    colors = dict(zip(table["precision"], sns.color_palette("deep", len(table))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    for r in table.itertuples():
        _errorbar(left, r.step_gb, r, fmt="o", ms=7, color=colors[r.precision], label=f"specdec auto, {r.precision}")
        left.annotate(f"verify cost 5 vs 1 token: {r.verify_ratio_5:.2f}", (r.step_gb, r.speedup), xytext=(6, 6), textcoords="offset points",
                      fontsize=8, color=colors[r.precision])
    markers = iter("sDv^P")
    for r in (llama.itertuples() if llama is not None else ()):
        _errorbar(left, r.step_gb, r, fmt=next(markers, "s"), ms=6, color="0.3", label=f"llama.cpp, {r.label}")
    left.axhline(1.0, color=BASE_COLOR, ls="--", lw=1, label="target alone (= 1)")
    left.set(xlabel="GB of weights read per decode step", ylabel="speculation over the\ntarget alone (x, decode)")
    for precision, c in curves.groupby("precision", sort=False):
        right.plot(c["tokens"], c["ratio"], "o-", ms=4, color=colors.get(precision, BASE_COLOR))
    right.axhline(1.0, color="0.7", lw=0.8, ls=":")
    right.set(xlabel="tokens in one forward (K + 1)", ylabel="forward time /\none-token forward",
              xticks=sorted(curves["tokens"].unique()))
    return finish(fig, title, subtitle, [NOTE], ncol=3)
