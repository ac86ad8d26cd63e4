"""The prompt-population analysis (specdec.study.population, stats.geomean_speedup, plots_population) on
synthetic rows whose answers are known by hand, and the interval's coverage on simulated studies."""
import json

import matplotlib.collections
import matplotlib.container
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy.stats import t as student_t

from specdec.study import plots_population, population
from specdec.study.stats import geomean_speedup


def row(mode, prompt, decode, k=None, category="a", iteration=0, e2e=None, temperature=0.0, status="ok",
        ks=None, accepted=None):
    """One timed generation of 101 new tokens whose decode phase ran at `decode` tok/s after a 0.1 s prefill."""
    k = 0 if mode == "baseline" else np.nan if k is None else k
    seconds = 0.1 + 100 / decode
    return dict(mode=mode, k=k, prompt_id=prompt, category=category, iteration=iteration, status=status,
                temperature=temperature, seconds=seconds, prefill_s=0.1, decode_seconds=seconds - 0.1, new_tokens=101, batch_size=1,
                throughput=101 / seconds if e2e is None else e2e, k_per_iteration=ks, accepted_per_iteration=accepted)


def population_runs(rng, log_speedups, runs, noise):
    """Per prompt (its true log speedup): `runs` mode and reference decode throughputs with log-normal noise."""
    out = []
    for s in log_speedups:
        base = np.exp(rng.normal(3, 0.5))  # prompts differ in speed too; the ratio is what counts
        out.append((base * np.exp(s + rng.normal(0, noise, runs)), base * np.exp(rng.normal(0, noise, runs))))
    return out


# -- the interval over prompts ----------------------------------------------------------------------------

def test_prompts_that_differ_give_the_width_their_spread_implies_even_when_repeats_agree():
    rng = np.random.default_rng(0)
    for n in (8, 64):
        logs = rng.normal(0.4, 0.3, n)
        e = geomean_speedup([([np.exp(s)] * 3, [1.0] * 3) for s in logs])  # 3 identical repeats each
        assert e.est == pytest.approx(np.exp(logs.mean()))
        t_width = 2 * student_t.ppf(0.975, n - 1) * logs.std(ddof=1) / np.sqrt(n)
        assert 1 / 1.5 < np.log(e.hi / e.lo) / t_width < 1.5, (n, e)


@pytest.mark.parametrize("categories, prompts, runs", [(8, 8, 1), (1, 8, 3)])
def test_interval_covers_the_population_geometric_mean(categories, prompts, runs):
    # the study's counts: 8 categories x 8 prompts, 1 run each; and 8 prompts of one category, 3 runs each
    rng = np.random.default_rng(1)
    means = rng.normal(0.4, 0.3, categories)  # categories differ; the prompts of one spread around its mean
    truth = np.exp(means.mean())  # equal prompts per category: the population geomean over all prompts
    hits = []
    for study in range(300):
        per = [population_runs(rng, rng.normal(m, 0.3, prompts), runs, 0.05) for m in means]
        cats = np.repeat(np.arange(categories), prompts)
        e = geomean_speedup([p for c in per for p in c], cats)
        hits.append(e.lo <= truth <= e.hi)
    assert 0.93 <= np.mean(hits) <= 0.98, np.mean(hits)  # two-stage bootstrap (Hesterberg): 0.97, 0.93


@pytest.mark.parametrize("categories", [list("abc"), list("aabb"), list("abcd"), [c for c in "abcdefgh" for _ in "xy"]])
@pytest.mark.parametrize("runs", [1, 2])
def test_a_a_interval_covers_1_at_the_cpu_notebooks_designs(categories, runs):
    # 3 prompts 1 per category (04), 4 prompts 2 per category (05), 4 prompts 1 per category (06), 16 prompts (01):
    # the two-stage percentile bootstrap before covered 0.75, 0.63, 0.84 and 0.92 with one run each
    rng = np.random.default_rng(2)
    hits = []
    for _ in range(1000):
        per = [(np.exp(rng.normal(0, 0.1, runs)), np.exp(rng.normal(0, 0.1, runs))) for _ in categories]
        e = geomean_speedup(per, categories)
        hits.append(e.lo <= 1 <= e.hi)
    assert 0.93 <= np.mean(hits) <= 0.975, np.mean(hits)


def test_one_prompt_interval_is_its_runs_spread():
    mode, ref = np.array([2.0, 2.2, 1.8]), np.array([1.0, 1.1, 0.9])
    e = geomean_speedup([(mode, ref)])
    half = student_t.ppf(0.975, 4) * np.sqrt(2 * mode.var(ddof=1) / (3 * 4.0))  # both sides' CV^2 / 3, equal
    assert e.est == pytest.approx(2.0) and (e.lo, e.hi) == pytest.approx((2 * np.exp(-half), 2 * np.exp(half)))


def test_identical_prompts_and_runs_collapse_and_one_number_has_no_interval():
    e = geomean_speedup([([2.0, 2.0], [1.0, 1.0])] * 4, ["a", "a", "b", "b"])
    assert e == (2.0, 2.0, 2.0)  # nothing varies: est exact, a zero-width interval stated as such
    one = geomean_speedup([([3.0], [2.0])])
    assert one.est == 1.5 and np.isnan(one.lo) and np.isnan(one.hi)


def test_a_category_of_one_prompt_is_not_frozen():
    # one prompt per category: stratified resampling would repeat each prompt, giving a zero width
    e = geomean_speedup([([1.0], [1.0]), ([2.0], [1.0]), ([4.0], [1.0])], ["a", "b", "c"])
    assert e.est == pytest.approx(2.0) and e.lo < 1.5 < 2.6 < e.hi


def test_unequal_run_counts():
    runs = [([2.0, 2.2, 1.8], [1.0]), ([3.0], [1.0, 1.1]), ([2.5, 2.4], [1.0, 0.9, 1.1])]
    a = geomean_speedup(runs)
    assert a.lo < a.est < a.hi
    assert a.est == pytest.approx(np.exp(np.mean(np.log([2.0 / 1.0, 3.0 / 1.05, 2.45 / 1.0]))))


# -- tables ---------------------------------------------------------------------------------------------------

def speedup_rows():
    """Category a: prompts at 2x and 8x (geomean 4x); b: 1x and 1x. Decode at 10 tok/s for the baseline."""
    rows = []
    for prompt, cat, s in [("p1", "a", 2.0), ("p2", "a", 8.0), ("p3", "b", 1.0), ("p4", "b", 1.0)]:
        for it in (0, 1):
            rows += [row("baseline", prompt, 10.0, category=cat, iteration=it, e2e=5.0),
                     row("auto", prompt, 10.0 * s, category=cat, iteration=it, e2e=5.0 * s / 2)]
    rows += [row("auto", "p1", 1000.0, temperature=1.0),  # sampled: not in the greedy table
             row("auto", "p3", 1000.0, category="b", status="failed")]
    return pd.DataFrame(rows)


def test_speedup_table_is_paired_by_prompt_and_has_an_overall_line():
    t = population.speedup_table(speedup_rows()).set_index("category")
    assert list(t.index) == ["a", "b", "overall"]
    assert t.loc["a", "speedup"] == pytest.approx(4.0) and t.loc["b", "speedup"] == pytest.approx(1.0)
    assert t.loc["overall", "speedup"] == pytest.approx(2.0)  # geomean of 2, 8, 1, 1
    assert t.loc["overall", "e2e_speedup"] == pytest.approx(1.0)  # end to end: half the decode speedup
    assert t.loc["a", "mode_decode_tok_s"] == pytest.approx(40.0)
    assert t.loc["a", "reference_decode_tok_s"] == pytest.approx(10.0)
    assert (t["prompts"] == [2, 2, 4]).all() and (t["runs_min"] == 2).all() and (t["runs_max"] == 2).all()
    assert t.loc["b", "speedup_lo"] == t.loc["b", "speedup_hi"] == 1.0  # b's prompts and repeats agree
    assert t.loc["a", "speedup_lo"] < 4.0 < t.loc["a", "speedup_hi"]


def test_per_prompt_and_its_repeat_spread():
    rows = pd.DataFrame([row("baseline", "p", 10.0, iteration=0), row("baseline", "p", 10.0, iteration=1),
                         row("auto", "p", 20.0, iteration=0), row("auto", "p", 30.0, iteration=1),
                         row("baseline", "q", 10.0), row("auto", "q", 15.0)])
    d = population.per_prompt(rows).set_index("prompt_id")
    assert d.loc["p", "speedup"] == pytest.approx(2.5) and d.loc["p", "runs"] == 2
    assert (d.loc["p", "repeat_min"], d.loc["p", "repeat_max"]) == pytest.approx((2.0, 3.0))
    assert d.loc["q", "speedup"] == pytest.approx(1.5) and np.isnan(d.loc["q", "repeat_min"])


def test_repeat_vs_prompt_variance():
    # log speedups: p1 repeats 0.0 and 0.2, p2 1.0 and 1.2: repeats vary by var 0.02, prompts by 0.5
    rows = []
    for prompt, cat, logs in [("p1", "a", (0.0, 0.2)), ("p2", "b", (1.0, 1.2)), ("p3", "b", (0.5,))]:
        for it, s in enumerate(logs):
            rows += [row("baseline", prompt, 10.0, category=cat, iteration=it),
                     row("auto", prompt, 10.0 * np.exp(s), category=cat, iteration=it)]
    v = population.repeat_vs_prompt_variance(pd.DataFrame(rows)).iloc[0]
    assert v["prompts"] == 2  # p3 has one iteration
    assert v["repeat_var"] == pytest.approx(0.02)
    assert v["prompt_var"] == pytest.approx(0.5 - 0.02 / 2)  # prompt means' variance less what repeats add
    assert v["dominant"] == "prompts"
    assert np.isnan(v["prompt_var_within_category"])  # one prompt per category: nothing left within


def oracle_rows(with_auto=True):
    """Speedups (baseline 10 tok/s) per prompt, iteration and K, and auto at 1.5x (p1) and 2x (p2)."""
    speed = {("p1", 0): {1: 2.0, 2: 1.0}, ("p1", 1): {1: 1.8, 2: 1.2},
             ("p2", 0): {1: 1.0, 2: 3.0}, ("p2", 1): {1: 1.1, 2: 2.5}}
    rows = []
    for (prompt, it), by_k in speed.items():
        rows.append(row("baseline", prompt, 10.0, iteration=it))
        rows += [row("speculative", prompt, 10.0 * s, k=k, iteration=it) for k, s in by_k.items()]
        if with_auto:
            rows.append(row("auto", prompt, 10.0 * {"p1": 1.5, "p2": 2.0}[prompt], iteration=it))
    return pd.DataFrame(rows)


def test_oracle_against_best_fixed_k_and_per_prompt_best():
    o = population.oracle(oracle_rows()).set_index("strategy")
    best = o.loc["best fixed K"]  # K=2 wins on iteration 0 (geomean sqrt 3 vs sqrt 2); on iteration 1: 1.2, 2.5
    assert best["k"] == "2" and best["speedup"] == pytest.approx(np.sqrt(1.2 * 2.5))
    assert best["auto_speedup"] == pytest.approx(np.sqrt(3.0)) and best["auto_vs"] == pytest.approx(1.0)
    orc = o.loc["per-prompt oracle"]  # p1 picks K=1, p2 K=2 on iteration 0; measured 1.8 and 2.5
    assert orc["speedup"] == pytest.approx(np.sqrt(1.8 * 2.5)) and orc["k"] == "per prompt (mean 1.5)"
    assert orc["auto_vs"] == pytest.approx(np.sqrt(1.5 / 1.8 * 2.0 / 2.5))
    cross = o.loc["per-prompt oracle, cross-fitted"]  # reversed: p1 K=1, p2 K=2 on iteration 1, measured 2.0, 3.0
    assert cross["speedup"] == pytest.approx((1.8 * 2.5 * 2.0 * 3.0) ** 0.25)
    assert o.loc["best fixed K, cross-fitted", "speedup"] == pytest.approx((1.2 * 2.5 * 1.0 * 3.0) ** 0.25)
    assert o.loc["best fixed K, cross-fitted", "k"] == "2 / 2"
    assert (o["prompts"] == 2).all() and (o["speedup_lo"] < o["speedup"]).all()
    assert np.isnan(population.oracle(oracle_rows(with_auto=False))["auto_vs"]).all()


def acceptance_rows():
    """auto (JSON strings, as stored): 6 rounds and one after the row finished; speculative K=2 (lists)."""
    return pd.DataFrame([
        row("auto", "p", 20.0, ks=json.dumps([3, 3, 2, 3, 1, 0, 3]),
            accepted=json.dumps([[3], [1], [2], [0], [1], [0], [None]])),
        row("auto", "q", 20.0, category="b", ks="[2, 2]", accepted="[[0], [2]]"),
        row("speculative", "p", 20.0, k=2, ks=[2, 2], accepted=[[2], [0]]),
        row("baseline", "p", 10.0)])


def test_acceptance_by_position_conditional_and_unconditional():
    acc = population.acceptance_by_position(acceptance_rows())
    a = acc[(acc["mode"] == "auto") & (acc["category"] == "a")].set_index("position")
    # position 2: proposed by 4 rounds (K 3, 3, 2, 3); 3 of them accepted position 1; 2 accepted position 2
    assert a.loc[2, ["proposed", "reached", "accepted"]].tolist() == [4, 3, 2]
    assert a.loc[2, "conditional"] == pytest.approx(2 / 3) and a.loc[2, "unconditional"] == pytest.approx(0.5)
    assert a.loc[1, ["proposed", "reached", "accepted"]].tolist() == [5, 5, 4]
    assert a.loc[3, ["proposed", "reached", "accepted"]].tolist() == [3, 1, 1]
    s = acc[(acc["mode"] == "speculative") & (acc["category"] == "overall")].set_index("position")
    assert s["k"].eq(2).all() and s.loc[2, "conditional"] == 1.0 and s.loc[2, "unconditional"] == 0.5
    o = acc[(acc["mode"] == "auto") & (acc["category"] == "overall")].set_index("position")
    assert o.loc[2, ["proposed", "reached", "accepted"]].tolist() == [6, 4, 3]  # a's and b's rounds together


def test_acceptance_by_window_places_each_round_where_it_started():
    # 101 tokens: prefill gives token 1; rounds of K=3 accepting 3 (4 tokens each) start at 1, 5, 9, ..., 97
    rounds_k = [3] * 25
    long = row("auto", "p", 20.0, ks=json.dumps(rounds_k), accepted=json.dumps([[3]] * 25))
    short = row("auto", "q", 20.0, ks="[2, 2]", accepted="[[0], [2]]")
    w = population.acceptance_by_window(pd.DataFrame([dict(long, max_new_tokens=101), dict(short, max_new_tokens=4)]),
                                        window=32).set_index(["max_new_tokens", "window_start"])
    assert w.loc[(101, 0), "rounds"] == 8 and w.loc[(101, 32), "rounds"] == 8 and w.loc[(101, 96), "rounds"] == 1
    assert w.loc[(101, 64), "acceptance"] == 1.0 and w.loc[(101, 64), "tokens_per_round"] == 4.0
    assert w.loc[(4, 0), "acceptance"] == pytest.approx(0.5) and w.loc[(4, 0), "rounds"] == 2


def test_mean_accepted_length_counts_every_round():
    m = population.mean_accepted_length(acceptance_rows()).set_index(["mode", "category"])
    assert m.loc[("auto", "a"), "rounds"] == 6 and m.loc[("auto", "a"), "mean_accepted_length"] == pytest.approx(13 / 6)
    assert m.loc[("auto", "overall"), "mean_accepted_length"] == pytest.approx((13 + 1 + 3) / 8)


def test_k_distribution_shares_with_zeros_for_ks_not_chosen():
    d = population.k_distribution(acceptance_rows()).set_index(["category", "k"])
    assert d.loc[("a", 3), "rounds"] == 3 and d.loc[("a", 3), "share"] == pytest.approx(0.5)
    assert d.loc[("b", 3), "rounds"] == 0 and d.loc[("b", 2), "share"] == 1.0
    assert d.loc[("overall", 2), "rounds"] == 3 and np.allclose(d.groupby("category")["share"].sum(), 1)
    assert len(d) == 3 * 4  # categories a, b, overall x K 0..3


# -- figures ----------------------------------------------------------------------------------------------------

def test_figures_draw_with_the_expected_points_lines_and_bars():
    rows = speedup_rows()
    pp, table = population.per_prompt(rows), population.speedup_table(rows)
    fig = plots_population.per_prompt_speedups(pp, table, "Prompt population: auto K vs the target alone")
    ax = fig.axes[0]
    points = sum(len(c.get_offsets()) for c in ax.collections if isinstance(c, matplotlib.collections.PathCollection))
    assert points == len(pp) == 4
    assert sum(isinstance(c, matplotlib.container.ErrorbarContainer) for c in ax.containers) == len(table) == 3
    acc = population.acceptance_by_position(acceptance_rows())
    fig2 = plots_population.acceptance_positions(acc, "Acceptance per drafted position")
    assert len(fig2.axes) == 2  # auto, and speculative K=2
    assert sum(len(a.lines) for a in fig2.axes) == 2 * len(acc[["mode", "k", "category"]].drop_duplicates())
    dist = population.k_distribution(acceptance_rows())
    fig3 = plots_population.k_chosen(dist, "K chosen by auto")
    assert sum(len(a.patches) for a in fig3.axes) == len(dist)
    plt.close("all")
