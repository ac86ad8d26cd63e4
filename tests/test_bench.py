"""Benchmark sweeps on tiny random-weight pairs: the row schema, kill -9 resume, failing cells, HF references."""
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import specdec
from specdec.study import bench, modes, pairing, results, summary
from specdec.study.controls import JunkDrafter
from specdec.models import load_pair

REPO = Path(__file__).resolve().parents[1]
PROMPTS = bench.load_prompts(ids=["code-stack-class", "qa-capital-france", "prose-city-morning"])


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: two intra-op threads stall each other (or a neighbour's) badly.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def llama():
    return load_pair("tiny-llama", device="cpu")


def keys(rows):
    return [bench.key_of(r) for r in rows]


def test_prompt_set():
    prompts = bench.load_prompts()
    assert [p["category"] for p in prompts].count("code") == 4
    assert [p["category"] for p in prompts].count("prose") == 3
    assert [p["category"] for p in prompts].count("qa") == 3
    assert len({p["id"] for p in prompts}) == 10 and {p["format"] for p in prompts} == {"raw"}
    assert all(p["text"].startswith("Question:") and p["text"].endswith("Answer:")
               for p in prompts if p["category"] == "qa")
    assert [p["id"] for p in bench.load_prompts(ids=["qa-water-boiling", "code-quicksort"])] == \
        ["qa-water-boiling", "code-quicksort"]
    with pytest.raises(ValueError, match="unknown prompt categories"):
        bench.load_prompts(categories=["poetry"])
    with pytest.raises(FileNotFoundError, match="prompt set not found"):
        bench.load_prompts(path=REPO / "no-such-file.jsonl")


def test_sweep_rows_provenance_and_summary(tmp_path):
    pair = load_pair("tiny-gpt2", device="cpu")
    rows = bench.sweep(pair, tmp_path, ks=(1, 2), batch_sizes=(1, 2), max_new_tokens=(6,), prompts=PROMPTS[:2],
                       iterations=2, progress=False)
    # per prompt group: 1 baseline + 2 speculative cells; batch 1: 2 groups, batch 2: 1 group; 2 iterations each
    assert len(rows) == (2 + 1) * 3 * 2 and (rows["status"] == "ok").all()
    assert set(results.COLUMNS) <= set(rows.columns)
    spec = rows[rows["mode"] == "speculative"]
    for col in ("new_tokens", "seconds", "throughput", "proposed", "accepted", "acceptance_rate", "target_forwards",
                "draft_forwards", "iterations", "tokens_per_target_forward", *results.PHASES, "draft_step_s",
                "verify_iter_s", "peak_memory_mib"):
        assert spec[col].notna().all(), col
    assert (rows[rows["mode"] == "baseline"]["k"] == 0).all()
    assert set(rows[rows["batch_size"] == 2]["prompt_ids"]) == {"code-stack-class,qa-capital-france"}  # no permutation
    assert (spec["matches_baseline"] == True).all()  # noqa: E712 -- greedy speculative output is lossless
    assert all(len(json.loads(t)) == b for t, b in zip(rows["tokens"], rows["batch_size"]))

    written = results.read_rows(tmp_path / "results.jsonl")
    assert len(written) == len(rows)
    (prov_file,) = tmp_path.glob("provenance-*.json")
    prov = json.loads(prov_file.read_text())
    assert {r["run_id"] for r in written} == {prov["params"]["run_id"]}
    assert prov["torch"] and prov["device_name"] and prov["params"]["pair"] == "tiny-gpt2"

    cells = summary.summarize(rows)
    assert len(cells) == 9 and (cells["success_rate"] == 1).all()
    spec_cells = cells[cells["mode"] == "speculative"]
    assert spec_cells["speedup"].map(math.isfinite).all()
    assert spec_cells["predicted_speedup"].map(math.isfinite).all()
    assert cells[cells["mode"] == "baseline"]["speedup"].isna().all()
    by = summary.summarize(rows, by=("mode", "k", "batch_size", "max_new_tokens", "verify"))
    by = by.sort_values(["batch_size", "mode", "k"])  # the sweep ran in a shuffled order
    assert len(by) == 6 and list(by["prompts"]) == [2, 2, 2, 1, 1, 1]


def test_predicted_speedup():
    # a = 0: one token per round at cost K c + v; a = 1: K + 1 tokens (the limit, no division by zero)
    assert summary.predicted_speedup(0.0, 4, 0.1, 1.0) == pytest.approx(1 / 1.4)
    assert summary.predicted_speedup(1.0, 4, 0.1, 1.0) == pytest.approx(5 / 1.4)
    assert summary.predicted_speedup(0.5, 2, 0.0, 1.0) == pytest.approx((1 - 0.5**3) / 0.5)


def cli(out, *extra):
    return [sys.executable, "-m", "specdec.study.bench", "--pair", "tiny-llama", "--k", "1,2", "--max-new-tokens", "16",
            "--iterations", "2", "--prompts", "qa,prose", "--no-warmup", "--no-progress", "--device", "cpu", "--threads", "1",
            "--out", str(out), *extra]


def test_a_rows_draft_time_holds_its_prefill_and_its_draft_step_does_not():
    """Leviathan's c is a draft step over a target step: a draft step that carried the draft's prefill (once per
    generation, 2 s here) would make c several times too large and the prediction too low."""
    stats = dict(prefill_s=1.0, draft_prefill_s=2.0, draft_s=0.8, verify_s=3.0, accept_s=0.1, rollback_s=0.0,
                 iterations=4, mean_k=2.0)
    row = bench.phase_stats(stats)
    assert row["draft_s"] == pytest.approx(2.8)  # every second the draft spent
    assert row["draft_step_s"] == pytest.approx(0.1) and row["verify_iter_s"] == pytest.approx(0.75)


def test_kill_and_resume_equals_uninterrupted(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run(cli(full), cwd=REPO, check=True, capture_output=True)
    expected = results.read_rows(full / "results.jsonl")
    assert len(expected) == 6 * 3 * 2  # 6 prompts x (baseline + 2 k) x 2 iterations

    # The sweep kills itself right after its 3rd row is fsynced (bench.KILL_AFTER_ROWS): no race with its speed.
    proc = subprocess.run(cli(killed), cwd=REPO, capture_output=True, env=dict(os.environ, **{bench.KILL_AFTER_ROWS: "3"}))
    path = killed / "results.jsonl"
    partial = results.read_rows(path)
    assert proc.returncode == -signal.SIGKILL and len(partial) == 3 < len(expected), "not killed mid-sweep"
    with open(path, "a") as f:  # as if killed mid-write: a torn last line
        f.write('{"run_id": "torn", "pair": "tiny-ll')

    subprocess.run(cli(killed), cwd=REPO, check=True, capture_output=True)
    resumed = results.read_rows(path)
    assert len(resumed) == len(set(keys(resumed))) == len(expected)  # no duplicates, none missing
    assert set(keys(resumed)) == set(keys(expected))
    assert {bench.key_of(r): r["tokens"] for r in resumed} == {bench.key_of(r): r["tokens"] for r in expected}
    assert len({r["run_id"] for r in resumed}) == 2 and len(list(killed.glob("provenance-*.json"))) == 2
    bench.main(cli(killed)[3:])  # a third run (in-process: quicker) has nothing left to do, and leaves no trace
    assert len(results.read_rows(path)) == len(expected) and len(list(killed.glob("provenance-*.json"))) == 2


def fail_at_k2(monkeypatch):
    """Make every speculative run at K=2 raise; returns the real generate."""
    real = bench.generate

    def flaky(target, input_ids, *, draft=None, k=4, **kw):
        if draft is not None and k == 2:
            raise RuntimeError("boom at k=2")
        return real(target, input_ids, draft=draft, k=k, **kw)

    monkeypatch.setattr(bench, "generate", flaky)
    return real


def test_failing_cell_is_recorded_and_retried(tmp_path, monkeypatch, llama):
    real = fail_at_k2(monkeypatch)
    kw = dict(ks=(1, 2), max_new_tokens=(4,), prompts=PROMPTS[:2], iterations=2, warmup=False, progress=False)
    rows = bench.sweep(llama, tmp_path, **kw)
    failed = rows[rows["status"] == "failed"]
    assert len(rows) == 2 * 3 * 2
    assert (failed["k"] == 2).all() and len(failed) == 2 * 2
    assert failed["error"].str.contains("RuntimeError: boom at k=2").all()
    assert (rows[rows["k"] != 2]["status"] == "ok").all()
    cells = summary.summarize(rows)
    assert (cells[cells["k"] == 2]["success_rate"] == 0).all()
    assert (cells[cells["k"] != 2]["success_rate"] == 1).all()

    monkeypatch.setattr(bench, "generate", real)  # rerun: the failed cells' blocks run again whole, now fine
    rows = bench.sweep(llama, tmp_path, **kw)
    assert len(rows) == 12 and (rows["status"] == "ok").all()
    assert len(results.read_rows(tmp_path / "results.jsonl")) == 12 + 12  # each pair timed together again
    assert rows["run_id"].nunique() == 1  # every row it reports comes from the rerun's blocks


def test_a_cell_that_fails_in_two_sweeps_is_not_timed_again(tmp_path, monkeypatch, llama):
    fail_at_k2(monkeypatch)
    kw = dict(ks=(1, 2), max_new_tokens=(4,), prompts=PROMPTS[:2], iterations=1, warmup=False, progress=False)
    path = tmp_path / "results.jsonl"
    bench.sweep(llama, tmp_path, **kw)
    first = len(results.read_rows(path))
    bench.sweep(llama, tmp_path, **kw)  # failed once: its blocks are timed again
    second = len(results.read_rows(path))
    assert second == 2 * first
    rows = bench.sweep(llama, tmp_path, **kw)  # failed in two sweeps: nothing is timed again
    assert len(results.read_rows(path)) == second
    assert (rows[rows["k"] == 2]["status"] == "failed").all() and (rows[rows["k"] != 2]["status"] == "ok").all()


def test_a_blocks_runs_are_consecutive_and_a_disturbed_block_is_timed_again(tmp_path, monkeypatch, llama):
    verdicts = iter(["a run took 9.00x its prediction"])  # the first block straddled a change of machine state
    monkeypatch.setattr(bench, "disturbed", lambda rows, typical: next(verdicts, ""))
    rows = bench.sweep(llama, tmp_path, modes=("baseline", "target_again", "speculative"), ks=(1, 2),
                       max_new_tokens=(4,), prompts=PROMPTS[:3], iterations=2, warmup=False, progress=False)
    written = results.read_rows(tmp_path / "results.jsonl")
    assert len(rows) == 3 * 4 * 2 and len(written) == len(rows) + 4  # one block of 4 cells timed twice
    assert pairing.not_consecutive(written) == []
    first = [r for r in written if r["attempt"] == 2]
    assert len(first) == 4 and all(pairing.block_of(r) == pairing.block_of(written[0]) for r in first)
    assert (rows["attempt"] == 2).sum() == 4  # the summaries read the block's later timing
    shuffled = written[1:5] + written[:1] + written[5:]  # a row moved away from its block: caught
    assert pairing.not_consecutive(shuffled)


def test_progress_reaches_the_real_stderr_and_counts_a_resumed_sweeps_runs(tmp_path, monkeypatch, llama):
    """papermill shows a notebook's output only when it ends: the sweep's bar writes to the process's real stderr
    (a kernel's reaches the runner's terminal), named by its folder, starting from the runs already recorded."""
    out = tmp_path / "k_sweep"
    kw = dict(modes=("baseline", "speculative"), ks=(2,), max_new_tokens=(4,), iterations=1, warmup=False)
    bench.sweep(llama, out, prompts=PROMPTS[:1], progress=False, **kw)
    monkeypatch.setattr(sys, "__stderr__", io.StringIO())
    bench.sweep(llama, out, prompts=PROMPTS[:2], **kw)
    shown = sys.__stderr__.getvalue()
    assert "k_sweep:" in shown and "| 2/4 [" in shown and "| 4/4 [" in shown, shown


def test_hf_references_match_baseline(tmp_path, llama):
    rows = bench.sweep(llama, tmp_path, modes=modes.NAMES, ks=(1, 3), batch_sizes=(1, 2), max_new_tokens=(6,),
                       prompts=PROMPTS, iterations=2, warmup=False, progress=False)
    assert (rows["status"] == "ok").all(), rows["error"].unique()
    hf = rows[rows["mode"] == "hf_assisted"]
    assert len(hf) == 3 * 2 * 2 and (hf["batch_size"] == 1).all()
    assert set(rows[rows["batch_size"] == 2]["mode"]) == {m for m in modes.NAMES if not modes.MODES[m].batch1_only}
    others = rows[rows["mode"] != "baseline"]
    assert (others["matches_baseline"] == True).all()  # noqa: E712
    cells = summary.summarize(rows)
    spec1 = cells[(cells["mode"] == "speculative") & (cells["batch_size"] == 1)]
    assert spec1["speedup_vs_hf"].map(math.isfinite).all()
    assert cells[cells["mode"] == "hf_assisted"]["speedup"].map(math.isfinite).all()


@pytest.mark.parametrize("args, message", [
    (["--pair", "tiny-llama", "--k", "0"], "must be >= 1"),
    (["--pair", "tiny-llama", "--modes", "baseline,turbo"], "unknown ['turbo']"),
    (["--pair", "no-such-pair"], "unknown pair"),
    (["--pair", "tiny-llama", "--batch", ","], "empty list"),
    (["--pair", "tiny-llama", "--prompts", "poetry"], "unknown prompt categories"),
    (["--k", "1"], "give either --pair"),
])
def test_bad_arguments_exit_2(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        bench.main([*args, "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert message in capsys.readouterr().err


def test_drafter_modes_run_and_record_their_k(tmp_path):
    """adaptive and prompt_lookup cells: lossless (match the baseline) and their K is recorded."""
    from specdec.study.bench import load_prompts, sweep
    from specdec.study.summary import summarize
    from specdec.models import load_pair

    pair = load_pair("tiny-llama")
    prompts = load_prompts(categories=["code"])[:2]
    rows = sweep(pair, tmp_path, modes=("baseline", "adaptive", "prompt_lookup"), ks=(2,), max_new_tokens=(8,),
                 prompts=prompts, iterations=1, warmup=False, progress=False)
    ok = rows[rows["status"] == "ok"]
    assert set(ok["mode"]) == {"baseline", "adaptive", "prompt_lookup"} and len(ok) == 6
    assert ok[ok["mode"] != "baseline"]["matches_baseline"].all()
    assert (ok[ok["mode"] == "prompt_lookup"]["draft_forwards"] == 0).all()
    assert (ok[ok["mode"] == "adaptive"]["mean_k"] >= 1).all()
    cells = summarize(rows)
    assert cells[cells["mode"] != "baseline"]["speedup"].notna().all()


def test_hf_assisted_gets_the_draft_in_the_targets_dtype(tmp_path):
    # A bfloat16 draft is the engine's choice for its own linear path; HF assisted generation is timed with the
    # draft as its users load it, in the target's dtype, and its rows say so. The pairing with the baseline holds.
    pair = load_pair("tiny-llama", device="cpu", draft_dtype="bfloat16")
    rows = bench.sweep(pair, tmp_path, modes=("baseline", "speculative", "hf_assisted"), ks=(2,), batch_sizes=(1,),
                       max_new_tokens=(6,), prompts=PROMPTS[:1], iterations=1, progress=False)
    by_mode = rows.set_index("mode")["draft_dtype"]
    assert by_mode["speculative"] == "bfloat16" and by_mode["hf_assisted"] == "float32"
    assert pair.hf_draft.dtype == torch.float32 and pair.draft.dtype == torch.bfloat16
    assert pair.draft_in_target_dtype() is pair.hf_draft  # loaded once
    cells = summary.summarize(rows)
    assert cells.set_index("mode").loc["hf_assisted", "speedup"] > 0  # found its baseline


SMOKE = bench.load_prompts(REPO / "data" / "prompts" / "smoke.jsonl")


def test_new_modes_carry_the_new_columns(tmp_path):
    # junk: K never-accepted drafts per round; the fast HF references: specdec's linear path (and, assisted, its
    # bfloat16 draft, which the row records). All lossless; rows name their category and per-round record.
    pair = load_pair("tiny-llama", device="cpu", draft_dtype="bfloat16")
    new = ("junk", "hf_generate_fast", "hf_assisted_fast")
    rows = bench.sweep(pair, tmp_path, modes=("baseline", *new), ks=(3,), max_new_tokens=(8,), prompts=SMOKE[:2],
                       iterations=1, warmup=False, progress=False)
    assert (rows["status"] == "ok").all(), rows["error"].unique()
    assert list(rows.columns) == list(results.COLUMNS) and set(rows["mode"]) == {"baseline", *new}
    assert (rows["category"] == "code").all() and (rows["sampling_seed"] == 0).all()
    assert (rows[rows["mode"] != "baseline"]["matches_baseline"] == True).all()  # noqa: E712
    by_mode = rows.groupby("mode")
    assert set(by_mode.get_group("hf_assisted_fast")["draft_dtype"]) == {"bfloat16"}
    junk = by_mode.get_group("junk")
    assert (junk["accepted"] == 0).all() and (junk["iterations"] == junk["new_tokens"] - 1).all()
    # one token per round after prefill, and no round drafts more than the budget keeps
    assert all(json.loads(r) == [3] * 4 + [2, 1, 0] for r in junk["k_per_iteration"])
    assert all(json.loads(r) == [[0]] * 7 for r in junk["accepted_per_iteration"])
    hf = rows[rows["mode"].str.startswith("hf_")]
    assert hf["k_per_iteration"].isna().all() and hf["accepted_per_iteration"].isna().all()
    assert hf["calibration_id"].notna().all()  # the linear plans they ran under
    assert modes.label(junk.iloc[0]) == "specdec, never-accepted drafts (verify cost alone), K=3"
    for mode, reference in (modes.KERNEL, modes.LOOP, modes.ENGINE, modes.SPECULATION, modes.AUTO_SPECULATION,
                            modes.VERIFY_COST):
        assert mode in modes.MODES and reference in modes.MODES


def test_junk_drafter_accepts_nothing_and_matches_the_target_alone(pair):
    _, target, _ = pair
    rows = [[5, 6, 7, 8, 9, 10, 11], [3, 4]]
    alone = specdec.generate(target, rows, max_new_tokens=12, eos_token_id=[])
    junk = specdec.generate(target, rows, draft=JunkDrafter(target), k=3, max_new_tokens=12, eos_token_id=[])
    assert junk.tokens == alone.tokens
    assert all(JunkDrafter(target).token not in t for t in alone.tokens)  # so no draft could have been right
    assert junk.stats["accepted"] == 0 and junk.stats["iterations"] == 11 and junk.stats["draft_forwards"] == 0


def test_ignore_eos_runs_every_row_to_max_new_tokens(tmp_path):
    pair = load_pair("tiny-llama", device="cpu")
    kw = dict(modes=("baseline", "speculative", "junk", "hf_generate", "hf_assisted"), ks=(2,), max_new_tokens=(10,),
              prompts=SMOKE[:1], iterations=1, warmup=False, progress=False)
    free = json.loads(bench.sweep(pair, tmp_path / "free", **kw)["tokens"].iloc[0])[0]
    pair.target.generation_config.eos_token_id = free[2]  # a token greedy decoding emits early: now its EOS
    stopped = bench.sweep(pair, tmp_path, **kw)
    fixed = bench.sweep(pair, tmp_path, ignore_eos=True, **kw)  # the same folder: ignore_eos is part of the key
    assert (stopped["status"] == "ok").all() and (fixed["status"] == "ok").all()
    assert all(json.loads(t) == [free[:free.index(free[2]) + 1]] for t in stopped["tokens"])
    assert all(json.loads(t) == [free] for t in fixed["tokens"]) and (fixed["new_tokens"] == 10).all()
    assert not stopped["ignore_eos"].any() and fixed["ignore_eos"].all()
    assert len(results.read_rows(tmp_path / "results.jsonl")) == 2 * 5


def test_sampling_seed_differs_per_iteration(tmp_path):
    pair = load_pair("tiny-llama", device="cpu")
    rows = bench.sweep(pair, tmp_path, modes=("baseline", "speculative", "hf_generate"), ks=(2,), max_new_tokens=(12,),
                       prompts=SMOKE[:1], iterations=2, warmup=False, progress=False, temperature=1.0, top_p=0.9,
                       seed=5)
    assert (rows["status"] == "ok").all(), rows["error"].unique()
    assert (rows["top_p"] == 0.9).all()
    for mode, runs in rows.groupby("mode"):
        runs = runs.sort_values("iteration")
        assert list(runs["sampling_seed"]) == [5, 6], mode
        assert runs["tokens"].iloc[0] != runs["tokens"].iloc[1], mode  # repeats are independent draws
    again = specdec.generate(pair.target, [pair.tokenizer.encode(SMOKE[0]["text"])], max_new_tokens=12,
                             temperature=1.0, top_p=0.9, seed=6)
    base = rows[(rows["mode"] == "baseline") & (rows["iteration"] == 1)]
    assert json.loads(base["tokens"].iloc[0]) == again.tokens  # the recorded seed reproduces the row


def test_rows_without_the_later_columns_still_resume(tmp_path):
    pair = load_pair("tiny-llama", device="cpu")
    kw = dict(modes=("baseline",), max_new_tokens=(4,), prompts=SMOKE[:2], iterations=1, warmup=False, progress=False)
    bench.sweep(pair, tmp_path, **kw)
    path = tmp_path / "results.jsonl"
    later = ("ignore_eos", "top_p", "category", "sampling_seed", *results.ROUNDS)
    old = [{c: v for c, v in r.items() if c not in later} for r in results.read_rows(path)]
    path.write_text("".join(json.dumps(r) + "\n" for r in old))  # as a sweep from before these columns wrote it
    rows = bench.sweep(pair, tmp_path, **kw)
    assert len(rows) == 2 and (rows["status"] == "ok").all() and not rows["ignore_eos"].any()
    assert len(list(tmp_path.glob("provenance-*.json"))) == 1  # nothing was measured again
