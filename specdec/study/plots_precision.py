"""The precision figure (notebook 06): why speculation wins or loses at each target precision. Left: the speedup of
auto over the target alone (same precision) against the verify-cost ratio at 5 tokens, one point per precision with
its 95% interval, and llama.cpp's points when it was timed. Right: the verify-cost curves, one forward over 1..9
tokens relative to one token. In plots.py's look (plots.finish adds title, legend and caption)."""
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns

from .plots import BASE_COLOR, finish

NOTE = ("Speedup: geometric mean over prompts of auto's decode throughput over the target alone at the same "
        "precision (each precision has its own baseline), 95% interval over prompts. Verify-cost ratio: one "
        "cache-free forward over T tokens / over 1 token, min of 3 shuffled repeats, on specdec's linear path. "
        "Flat verification (ratio near 1) is what lets K drafts pay.")


def precision_figure(table, curves, title, subtitle="", llama=None):
    """`table`: one line per precision (precision, speedup, speedup_lo, speedup_hi, verify_ratio_5); `curves`: one
    line per (precision, tokens) with ratio; `llama`: optional lines (label, speedup, verify_ratio_5)."""
    colors = dict(zip(table["precision"], sns.color_palette("deep", len(table))))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    for r in table.itertuples():
        err = np.nan_to_num(np.clip([[r.speedup - r.speedup_lo], [r.speedup_hi - r.speedup]], 0, None))
        left.errorbar(r.verify_ratio_5, r.speedup, yerr=err, fmt="o", ms=7, capsize=4, color=colors[r.precision],
                      label=f"specdec, {r.precision} target")
    if llama is not None and len(llama):
        for r in llama.itertuples():
            left.scatter(r.verify_ratio_5, r.speedup, marker="s", s=50, color="0.3", label=f"llama.cpp, {r.label}")
    left.axhline(1.0, color=BASE_COLOR, ls="--", lw=1, label="target alone (= 1)")
    left.set(xlabel="verify cost at 5 tokens / at 1 token", ylabel="auto over the target alone (x, decode tok/s)")
    for precision, c in curves.groupby("precision", sort=False):
        right.plot(c["tokens"], c["ratio"], "o-", ms=4, color=colors.get(precision, BASE_COLOR))
    right.axhline(1.0, color="0.7", lw=0.8, ls=":")
    right.set(xlabel="tokens in one forward (K + 1)", ylabel="forward time / one-token forward",
              xticks=sorted(curves["tokens"].unique()))
    return finish(fig, title, subtitle, [NOTE], ncol=3)
