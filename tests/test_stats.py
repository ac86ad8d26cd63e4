"""Intervals (specdec.study.stats) and the readouts drawn from them, on synthetic data with a known answer."""
import numpy as np
import pandas as pd
import pytest

from scipy.stats import t as student_t

from specdec.study import bench, pairing, population, results, stats, summary


def test_interval_is_the_t_interval_of_the_runs():
    x = np.random.default_rng(1).normal(10, 1, 20)
    e = stats.mean_interval(x)
    half = student_t.ppf(0.975, 19) * x.std(ddof=1) / np.sqrt(20)
    assert e == pytest.approx((x.mean(), x.mean() - half, x.mean() + half))


@pytest.mark.parametrize("prompts, runs", [(1, 3), (3, 3), (4, 2), (2, 40)])
def test_interval_covers_95_percent_at_the_study_s_small_designs(prompts, runs):
    # a percentile bootstrap cannot reach past the runs' own range: at 3 x 3 it covered about 0.85
    rng = np.random.default_rng(0)
    hits = []
    for _ in range(1000):
        centers = rng.normal(5.0, 2.0, prompts)  # prompts differ; the truth is the mean of their centers
        e = stats.mean_interval([rng.normal(c, 0.5, runs) for c in centers])
        hits.append(e.lo <= centers.mean() <= e.hi)
    assert 0.93 <= np.mean(hits) <= 0.975, np.mean(hits)


def test_strata_are_prompts_and_ratios_are_paired():
    # two prompts with very different speeds: the interval reflects the repeats, not the gap between prompts
    e = stats.mean_interval([np.array([1.0, 1.1, 0.9]), np.array([9.0, 9.1, 8.9])])
    assert e.est == pytest.approx(5.0) and e.hi - e.lo < 0.3
    # speculative 2x the baseline on each prompt, whatever the prompt's own speed: its per-block ratios
    r = stats.mean_interval([np.array([2.0, 2.2, 1.8]) / np.array([1.0, 1.05, 0.95]),
                             np.array([18.0, 18.2, 17.8]) / np.array([9.0, 9.05, 8.95])])
    assert r.lo < 2.0 < r.hi and r.hi - r.lo < 0.5


def test_no_ratio_interval_reaches_below_zero_and_a_ratios_inverse_gets_the_inverse_interval():
    far_apart = [np.array([0.3, 1.7])]  # two runs of one cell, one of them disturbed
    assert stats.mean_interval(far_apart).lo < 0  # what the ratio columns had
    r = stats.ratio_interval(far_apart)
    assert 0 < r.lo < r.est < r.hi
    inverse = stats.ratio_interval([1 / far_apart[0]])
    assert inverse.est == pytest.approx(1 / r.est) and inverse.lo == pytest.approx(1 / r.hi)
    rng = np.random.default_rng(3)
    for _ in range(200):
        cells = [np.exp(rng.normal(0, 1.0, 2)) for _ in range(rng.integers(1, 4))]
        assert stats.ratio_interval(cells).lo > 0


def test_summarize_s_ratio_columns_never_reach_below_zero():
    rows = synthetic_rows(1.5)
    spec = rows["mode"] == "speculative"
    rows.loc[spec, "throughput"] *= np.where(np.arange(spec.sum()) % 2, 0.2, 1.8)  # runs far apart
    cells = summary.summarize(rows)
    assert (cells.loc[cells["mode"] == "speculative", "speedup_lo"] > 0).all()


def test_one_run_has_no_interval_and_identical_runs_a_zero_width_one():
    assert np.isnan(stats.mean_interval(np.array([3.0])).lo)
    assert stats.mean_interval(np.array([0.5, 0.5, 0.5])) == (0.5, 0.5, 0.5)


def test_readout_says_no_clear_difference_when_intervals_overlap():
    rng = np.random.default_rng(2)
    a = stats.mean_interval(rng.normal(4.20, 0.3, 5))  # 1.20x vs 1.18x: the committed run's "win"
    b = stats.mean_interval(rng.normal(4.13, 0.3, 5))
    assert stats.separated(a, b) == 0
    assert stats.compare("K=1", a, "K=2", b) == "no clear difference between K=1 and K=2"
    said = stats.best(["K=1", "K=2"], [a, b], unit="tok/s")
    assert "no clear difference from K=" in said and "beats" not in said
    assert "no clear difference from" in stats.versus_one("K=1", (1.02, 0.95, 1.09))


def test_readout_names_the_winner_when_intervals_separate():
    rng = np.random.default_rng(3)
    a = stats.mean_interval(rng.normal(5.0, 0.1, 5))
    b = stats.mean_interval(rng.normal(4.0, 0.1, 5))
    assert stats.compare("K=2", b, "K=1", a) == "K=1 beats K=2"
    assert "beats every other configuration" in stats.best(["K=2", "K=1"], [b, a])
    assert stats.best(["K=2", "K=1"], [b, a]).startswith("highest: K=1")
    assert "slower than" in stats.versus_one("K=6", (0.8, 0.75, 0.85))
    assert "faster than" in stats.versus_one("K=1", (1.2, 1.1, 1.3))
    assert stats.fmt((1.2, 1.1, 1.3), unit="x") == "1.20x [1.10, 1.30]"


def test_no_interval_means_no_claim():
    assert stats.separated((5.0, np.nan, np.nan), (1.0, 0.9, 1.1)) == 0
    assert "no interval" in stats.fmt((5.0, np.nan, np.nan), unit="tok/s")


def synthetic_rows(spec_speed, prompts=("p1", "p2"), repeats=4, seed=0):
    """Rows as a sweep writes them: baseline at ~1 tok/s x prompt factor, speculative at spec_speed x that."""
    rng = np.random.default_rng(seed)
    rows = []
    for j, p in enumerate(prompts):
        for mode, k, speed in (("baseline", 0, 1.0), ("speculative", 2, spec_speed)):
            for it in range(repeats):
                tp = speed * (1 + j) * rng.normal(1, 0.02)
                rows.append(dict(pair="x", target="t", draft="d", device="cpu", dtype="float32", draft_dtype="float32",
                                 temperature=0.0, seed=0, mode=mode, k=k, batch_size=1, max_new_tokens=16,
                                 verify="parallel" if k else "-", prompt_id=p, prompt_ids=p, iteration=it,
                                 status="ok", timing_only=False, new_tokens=16, seconds=16 / tp, throughput=tp,
                                 prefill_s=3 / tp, decode_seconds=13 / tp, accepted=10 if k else None, proposed=14 if k else None,
                                 iterations=7 if k else 16, acceptance_rate=0.7 if k else None, mean_k=k or None,
                                 draft_step_s=0.05 if k else None, verify_iter_s=(0.3 if k else 0.25)))
    return pd.DataFrame(rows).reindex(columns=list(results.COLUMNS))  # every column a sweep writes


def test_summarize_has_interval_columns_around_the_paired_speedup():
    rows = synthetic_rows(1.5)
    cells = summary.summarize(rows)
    spec = cells[cells["mode"] == "speculative"]
    assert ((spec["speedup_lo"] < spec["speedup"]) & (spec["speedup"] < spec["speedup_hi"])).all()
    assert (spec["speedup_lo"] > 1.4).all() and (spec["speedup_hi"] < 1.6).all()
    assert ((cells["throughput_lo"] <= cells["throughput"]) & (cells["throughput"] <= cells["throughput_hi"])).all()
    assert (cells["decode_throughput"] > cells["throughput"]).all()  # a slow prefill (3 token-times) is left out
    by = summary.summarize(rows, by=("mode", "k"))
    s = by[by["mode"] == "speculative"].iloc[0]
    assert s["prompts"] == 2 and s["speedup_lo"] < 1.5 < s["speedup_hi"]


def test_plan_cells_gives_every_batch_row_its_own_prompt():
    prompts = bench.load_prompts()[:5]
    cells = bench.plan_cells(["baseline"], [1], [2, 4], [8], ["parallel"], prompts)
    groups = [c["prompt_ids"].split(",") for c in cells]
    assert [len(g) for g in groups] == [2, 2, 4]
    assert all(len(set(g)) == len(g) for g in groups)
    assert len({frozenset(g) for g in groups}) == len(groups)  # no group is a permutation of another
    with pytest.raises(ValueError, match="needs at least 8 distinct prompts"):
        bench.plan_cells(["baseline"], [1], [8], [8], ["parallel"], prompts)


def test_run_order_times_each_prompts_cells_back_to_back_in_seeded_blocks():
    cells = [dict(mode=m, k=k, verify="-", batch_size=1, max_new_tokens=8, prompt_id=p, prompt_ids=p)
             for p in ("a", "b", "c") for m, k in (("baseline", 0), ("speculative", 1), ("speculative", 2))]
    order = pairing.run_order(cells, 3, seed=5)
    assert order == pairing.run_order(cells, 3, seed=5) != pairing.run_order(cells, 3, seed=6)
    assert sorted((c["prompt_id"], c["k"], i) for c, i in order) == sorted(
        (c["prompt_id"], c["k"], i) for c in cells for i in range(3))
    blocks = pairing.blocks_in_order(order)
    assert len(blocks) == 9 and all(len(b) == 3 for b in blocks)  # one prompt's three cells, consecutively
    assert all(len({(c["prompt_id"], i) for c, i in b}) == 1 for b in blocks)
    assert [b[0][1] for b in blocks] == [0] * 3 + [1] * 3 + [2] * 3  # iterations outermost
    firsts = {b[0][0]["mode"] + str(b[0][0]["k"]) for b in blocks}
    assert len(firsts) > 1  # the baseline does not always go first
    assert len(bench.warmup_cells(cells + cells)) == 3


def test_a_block_is_timed_again_when_its_runs_straddle_two_machine_states():
    row = lambda ratio, mode="baseline", status="ok": dict(mode=mode, k=dict(baseline=0).get(mode), status=status,
                                                           calibration_ratio=ratio)
    # auto's cost model is off by a steady 1.4x: not a change of state
    typical = {("baseline", 0): 1.0, ("auto", None): 1.4}
    assert pairing.disturbed([row(1.0), row(1.4, "auto"), row(None, "hf_generate")], typical) == ""
    assert pairing.disturbed([row(1.25), row(1.1, "auto")], typical) == ""  # ordinary noise: 1.25 vs 0.79
    assert "took" in pairing.disturbed([row(0.7), row(1.7, "auto")], typical)  # two speed states in one block
    assert "3.96x" in pairing.disturbed([row(3.96), row(1.4, "auto")], typical)  # one run far over its usual
    assert pairing.disturbed([row(9.0, "junk")], typical) == ""  # no history yet: not judged
    assert pairing.disturbed([row(1.0), row(3.0, status="failed")], typical) == ""  # a failure is not judged


def test_calibrated_prediction_recovers_known_parameters():
    # a = 0.5 at K=2: accepted per round a(1-a^2)/(1-a) = 0.75; c = 0.05/0.25 = 0.2; v = 0.3/0.25 = 1.2
    rows = synthetic_rows(1.0).assign(accepted=lambda d: np.where(d["k"] > 0, 3.0, np.nan),
                                      iterations=lambda d: np.where(d["k"] > 0, 4, 16))
    pred = summary.calibrated_prediction(rows, ks=[2]).iloc[0]
    assert pred["a"] == pytest.approx(0.5, abs=1e-6) and pred["c"] == pytest.approx(0.2)
    assert pred["v"] == pytest.approx(1.2)
    assert pred["predicted_speedup"] == pytest.approx(summary.predicted_speedup(0.5, 2, 0.2, 1.2))
    with pytest.raises(ValueError, match="calibration needs"):
        summary.calibrated_prediction(rows[rows["mode"] == "baseline"], ks=[2])


@pytest.mark.parametrize("runs", [3, 10])
def test_bootstrap_interval_of_a_ratio_covers_95_percent_with_few_runs(runs):
    # Leviathan's prediction is a ratio of means of 3 calibration runs each: a percentile bootstrap covered 0.80
    # (10 runs: 0.91)
    rng = np.random.default_rng(4)
    ratio = lambda a, b, axis=-1: a.mean(axis=axis) / b.mean(axis=axis)
    hits = [(e := stats.bootstrap_interval([rng.normal(2, 0.1, runs), rng.normal(1, 0.05, runs)], ratio, i)).lo
            <= 2 <= e.hi for i in range(300)]
    assert 0.93 <= np.mean(hits) <= 0.995, np.mean(hits)


def test_auto_against_hf_defaults_gets_its_own_paired_interval():
    rows = synthetic_rows(1.5)
    as_mode = lambda mode, k: rows[rows["mode"] == "speculative"].assign(mode=mode, k=k)
    auto, hf = as_mode("auto", 8), as_mode("hf_assisted_default", 20)
    noise = np.random.default_rng(3).normal(1, 0.02, len(hf))  # auto is ~1.2x HF's defaults, run by run
    hf = hf.assign(throughput=hf["throughput"] / 1.2 * noise, seconds=hf["seconds"] * 1.2 / noise)
    cells = summary.summarize(pd.concat([rows, auto, hf], ignore_index=True))
    a = cells[cells["mode"] == "auto"]
    est, lo, hi = (a[f"speedup_vs_hf_default{x}"] for x in ("", "_lo", "_hi"))
    assert ((lo < est) & (est < hi)).all() and np.allclose(est, 1.2, rtol=0.03)
    assert cells[cells["mode"] != "auto"]["speedup_vs_hf_default_lo"].isna().all()


def test_a_speedup_divides_runs_of_the_same_block():
    """Paired timing: the machine's speed changes between blocks (0.8x, then 1.05x), and within a block a mode is
    exactly 1.5x the target alone. Every speedup is a ratio inside a block, so it is exactly 1.5, interval too;
    dividing means over all runs (unpaired) would have mixed the two machine states."""
    rows = synthetic_rows(1.5)
    state = rows["iteration"].map({0: 0.8, 1: 1.05, 2: 0.8, 3: 1.05})
    rows = rows.assign(throughput=np.where(rows["mode"] == "baseline", 1.0, 1.5) * state)
    rows = rows.assign(seconds=16 / rows["throughput"], prefill_s=3 / rows["throughput"],
                       decode_seconds=13 / rows["throughput"], category="c")
    spec = summary.summarize(rows).query("mode == 'speculative'")
    assert np.allclose(spec[["speedup", "speedup_lo", "speedup_hi"]].to_numpy(), 1.5)
    table = population.speedup_table(rows, "speculative", k=2, metric="throughput")
    assert np.allclose(table[["speedup", "speedup_lo", "speedup_hi"]].to_numpy(), 1.5)
    swapped = rows.assign(iteration=np.where(rows["mode"] == "baseline", 3 - rows["iteration"], rows["iteration"]))
    unpaired = population.speedup_table(swapped, "speculative", k=2, metric="throughput")  # pairs across states
    assert not np.allclose(unpaired["speedup"], 1.5)


def test_an_effect_inside_the_a_a_floor_is_no_clear_difference():
    floor = stats.Estimate(1.0, 0.95, 1.06)
    assert "faster than" in stats.versus_one("auto", (1.10, 1.07, 1.13), floor=floor)
    said = stats.versus_one("auto", (1.04, 1.02, 1.06), floor=floor)  # excludes 1, but inside the floor
    assert stats.NO_DIFFERENCE in said and "A/A" in said and "faster" not in said
    assert "faster" not in stats.a_a((1.04, 1.02, 1.06)) and "bias" in stats.a_a((1.04, 1.02, 1.06))
    assert "noise floor" in stats.a_a((1.0, 0.97, 1.03))
