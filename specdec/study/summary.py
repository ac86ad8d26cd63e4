"""Sweep rows -> per-cell and per-configuration tables: means with 95% intervals, speedups over the baseline
measured on the same prompts, and the Leviathan et al. predicted speedup (in-sample in `summarize`, from a
separate calibration pass in `calibrated_prediction`). Metrics follow docs/DESIGN.md section 3.
"""
import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.stats import iqr

from . import stats
from .modes import BASELINE, SPECULATIVE, VS_HF, VS_HF_DEFAULT
from .results import CELL, METRICS, PAIRED_ON, PHASES, decode_throughput


def predicted_speedup(a, k, c, v):
    """Leviathan et al.: expected tokens per round (1 - a^(K+1)) / (1 - a) over the round's cost K c + v,
    in target steps; at a == 1 the first factor's limit is K + 1."""
    a, k = np.asarray(a, float), np.asarray(k, float)
    perfect = np.isclose(a, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tokens = np.where(perfect, k + 1, (1 - a ** (k + 1)) / np.where(perfect, 1.0, 1 - a))
        return tokens / (k * np.asarray(c, float) + np.asarray(v, float))


def summarize(rows, by=None) -> pd.DataFrame:
    """One row per cell (metrics over its ok runs: throughput is their mean) with speedup (the mean over its runs
    of throughput / the baseline's run in the same block, pairing.py; every non-baseline mode), speedup_vs_hf
    (specdec at a fixed K over HF assisted at that K, in the same block) and predicted_speedup (in-sample:
    use calibrated_prediction for an honest one); with `by` (e.g. ("mode", "k", "batch_size",
    "max_new_tokens", "verify")), the mean over prompts of those per-cell numbers.
    decode_speedup: the same ratio of decode throughputs (specdec modes: what Leviathan's formula predicts).
    suspect_runs: runs over 1.5x their calibration's prediction (calibration_suspect), which figures mark.
    95% intervals (specdec.stats, stratified by prompt, paired for ratios): throughput_lo/_hi,
    decode_throughput_lo/_hi, speedup_lo/_hi and decode_speedup_lo/_hi. decode_throughput: the decode phase alone
    (results.decode_throughput: the engine's decode_seconds, the draft's prefill charged; specdec modes only)."""

    rows = pd.DataFrame(rows)
    cell = [c for c in CELL if c in rows]
    match = [c for c in PAIRED_ON if c in rows]
    key = lambda cols: rows[cols].map(str).agg("|".join, axis=1)  # NaN-proof join keys (NaN -> "nan")
    rows = rows.assign(_cell=key(cell), _match=key(match))
    keys = cell + ["_cell", "_match"]
    success = rows.groupby(keys, dropna=False, sort=False)["status"].agg(lambda s: (s == "ok").mean())
    ok = rows[rows["status"] == "ok"].copy()
    for col in METRICS:  # null-only columns load as object; make every metric numeric
        ok[col] = pd.to_numeric(ok[col], errors="coerce")
    ok["decode_throughput"] = decode_throughput(ok)
    suspect = ok["calibration_suspect"] if "calibration_suspect" in ok else pd.Series(False, index=ok.index)
    ok["_suspect"] = suspect.map(lambda v: v is True or v == 1)  # None (HF references): not judged
    # paired timing (pairing.py): a run's speedup is over its reference's run in the same block (prompts, iteration)
    ok["_vs_base"] = np.where(ok["mode"] != BASELINE, ok["throughput"] / block_mate(ok, BASELINE), np.nan)
    ok["_vs_base_decode"] = np.where(ok["mode"] != BASELINE,
                                     ok["decode_throughput"] / block_mate(ok, BASELINE, "decode_throughput"), np.nan)
    ok["_vs_hf"] = np.where(ok["mode"] == VS_HF[0], ok["throughput"] / block_mate(ok, VS_HF[1], by=("k",)), np.nan)
    # what a user would otherwise get: generate(assistant_model=...) at HF's own defaults, vs specdec's auto K
    ok["_vs_hf_default"] = np.where(ok["mode"] == VS_HF_DEFAULT[0], ok["throughput"] / block_mate(ok, VS_HF_DEFAULT[1]),
                                    np.nan)
    matches = lambda s: bool(s.dropna().astype(bool).all()) if s.notna().any() else None
    agg = dict(runs=("throughput", "size"), throughput=("throughput", "mean"),
               throughput_iqr=("throughput", iqr), throughput_min=("throughput", "min"),
               throughput_max=("throughput", "max"), decode_throughput=("decode_throughput", "mean"),
               seconds=("seconds", "median"), new_tokens=("new_tokens", "median"),
               acceptance_rate=("acceptance_rate", "mean"), mean_k=("mean_k", "mean"),
               tokens_per_target_forward=("tokens_per_target_forward", "mean"),
               speedup=("_vs_base", "mean"), decode_speedup=("_vs_base_decode", "mean"),
               speedup_vs_hf=("_vs_hf", "mean"),
               speedup_vs_hf_default=("_vs_hf_default", "mean"),
               **{p: (p, "median") for p in (*PHASES, "draft_step_s", "verify_iter_s")},
               peak_memory_mib=("peak_memory_mib", "max"), timing_only=("timing_only", "first"),
               suspect_runs=("_suspect", "sum"),
               matches_baseline=("matches_baseline", matches),
               **{c: (c, "first") for c in (by or ()) if c in ok and c not in keys})  # e.g. a prompt's category
    metrics = ok.groupby(keys, dropna=False, sort=False).agg(**agg)
    cells = success.rename("success_rate").to_frame().join(metrics).reset_index()
    cells["runs"] = cells["runs"].fillna(0).astype(int)

    base = cells[cells["mode"] == BASELINE][match + ["throughput", "verify_iter_s"]]
    cells = cells.merge(base.rename(columns={"throughput": "baseline_throughput", "verify_iter_s": "target_step_s"}),
                        on=match, how="left")
    spec = cells["mode"] == SPECULATIVE
    predicted = predicted_speedup(cells["acceptance_rate"], cells["k"], cells["draft_step_s"] / cells["target_step_s"],
                                  cells["verify_iter_s"] / cells["target_step_s"])
    cells["predicted_speedup"] = np.where(spec, predicted, np.nan)

    runs = {k: g for k, g in ok.groupby("_cell", sort=False)}
    col = lambda c, name: [runs[k][name].to_numpy(float) if k in runs else np.array([np.nan]) for k in c["_cell"]]
    # the geometric mean over prompts of each prompt's paired ratios, its runs' spread the noise (no pairs: stats.NAN)
    ratios = lambda c, name: (stats.ratio_interval(found) if (found := [x for x in col(c, name)
                                                                             if np.isfinite(x).any()]) else stats.NAN)
    intervals = lambda c: dict(
        throughput=stats.mean_interval(col(c, "throughput")),
        decode_throughput=stats.mean_interval(col(c, "decode_throughput")),
        speedup=ratios(c, "_vs_base"), decode_speedup=ratios(c, "_vs_base_decode"),
        speedup_vs_hf_default=ratios(c, "_vs_hf_default"))
    if by is None:
        found = [intervals(cells.iloc[[i]]) for i in range(len(cells))]
        out = cells
    else:
        grouped = cells.groupby(list(by), dropna=False, sort=False)
        found = [intervals(g) for _, g in grouped]
        out = grouped.mean(numeric_only=True).join(grouped["prompt_id"].nunique().rename("prompts")).reset_index()
    for name in ("throughput", "decode_throughput", "speedup", "decode_speedup", "speedup_vs_hf_default"):
        out[f"{name}_lo"] = [f[name].lo for f in found]
        out[f"{name}_hi"] = [f[name].hi for f in found]
    return out.drop(columns=["_cell", "_match"], errors="ignore")


def block_mate(rows, mode, metric="throughput", by=()) -> np.ndarray:
    """Per row, `metric` of `mode`'s run in the same block (same _match and iteration, and the same `by` columns,
    e.g. k; NaN where none)."""
    keys = ["_match", "iteration", *by]
    ref = rows[rows["mode"] == mode].groupby(keys)[metric].mean()
    return ref.reindex(pd.MultiIndex.from_arrays([rows[k] for k in keys])).to_numpy(float)


def calibrated_prediction(calibration, ks, seed=0) -> pd.DataFrame:
    """Leviathan's predicted speedup for each K in `ks`, from a separate calibration pass (batch 1, other
    prompts than the runs it predicts; baseline + speculative rows): per run, the per-token acceptance a
    solved from its accepted tokens per round, E = a (1 - a^K) / (1 - a); c = draft step / target step,
    v = verify round (at that K, interpolated between calibrated K) / target step. Interval: t-wide around a
    bootstrap standard error over the calibration runs (stats.bootstrap_interval). Columns: k, predicted_speedup, _lo, _hi, a, c, v."""
    cal = pd.DataFrame(calibration)
    cal = cal[(cal["status"] == "ok") & (cal["batch_size"] == 1)]
    spec, base = cal[cal["mode"] == SPECULATIVE], cal[cal["mode"] == BASELINE]
    if not len(spec) or not len(base):
        raise ValueError("calibration needs ok baseline and speculative rows at batch 1: run the calibration pass")

    def alpha(accepted, rounds, k):  # solve the expected accepted-per-round for a (0 <= a < 1)
        e = accepted / rounds
        f = lambda a: a * (1 - a ** k) / (1 - a) - e
        return 0.0 if e <= 0 else 1 - 1e-9 if e >= k - 1e-9 else brentq(f, 0.0, 1 - 1e-9)
    a_runs = np.array([alpha(r.accepted, r.iterations, r.k) for r in spec.itertuples()], float)
    draft = spec["draft_step_s"].to_numpy(float)
    target = base["verify_iter_s"].to_numpy(float)
    verify = {k: g["verify_iter_s"].to_numpy(float) for k, g in spec.groupby("k")}
    known = sorted(verify)
    out = []
    for k in ks:
        # v at K: measured at that K if calibrated, else linear between the nearest calibrated K
        lo_k, hi_k = max([x for x in known if x <= k], default=known[0]), min([x for x in known if x >= k],
                                                                               default=known[-1])
        w = 0.0 if hi_k == lo_k else (k - lo_k) / (hi_k - lo_k)
        def predict(a, d, t, v1, v2, axis=-1, k=k, w=w):
            v = (1 - w) * v1.mean(axis=axis) + w * v2.mean(axis=axis)
            return predicted_speedup(a.mean(axis=axis), k, d.mean(axis=axis) / t.mean(axis=axis), v / t.mean(axis=axis))
        e = stats.bootstrap_interval([a_runs, draft, target, verify[lo_k], verify[hi_k]], predict, seed)
        v = (1 - w) * verify[lo_k].mean() + w * verify[hi_k].mean()
        out.append(dict(k=k, predicted_speedup=e.est, predicted_lo=e.lo, predicted_hi=e.hi, a=a_runs.mean(),
                        c=draft.mean() / target.mean(), v=v / target.mean()))
    return pd.DataFrame(out)
