"""llama.cpp as notebook 06's outside reference (specdec.study.llamacpp), without llama.cpp: stand-in binaries
print what the real ones print (lines copied from llama.cpp 0.5.0-dev, commit 0c1e570, run on this project's GGUF
pair), so finding, command lines, parsing, the sweep's resume and failure handling, and the summary are tested
wherever the suite runs. The figure with llama.cpp's points and the GGUF assembly for it are tested here too."""
import hashlib
import json
import stat
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from specdec import generate, weights
from specdec.models import load_pair
from specdec.study import llamacpp, llamacpp_run, pairing, plots_precision

matplotlib.use("Agg")

COMPLETION_LOG = """0.02.175.139 I common_perf_print: prompt eval time =     619.76 ms /    99 tokens (    6.26 ms per token,   159.74 tokens per second)
0.02.175.152 I common_perf_print:        eval time =     732.81 ms /    31 runs   (   23.64 ms per token,    42.30 tokens per second)
"""
SPECULATIVE_LOG = """0.03.669.206 I encoded   99 tokens in    0.929 seconds, speed:  106.557 t/s
0.03.669.223 I decoded   33 tokens in    1.495 seconds, speed:   22.080 t/s
0.03.669.246 I n_draft   = 3
0.03.669.257 I n_predict = 33
0.03.669.268 I n_drafted = 28
0.03.669.280 I n_accept  = 23
"""
# A stand-in for both binaries: it records its arguments and the prompt file it got, echoes the prompt as the
# speculative binary does, prints a generated text and the timing lines, and fails where FAIL_ON names the prompt
# (only as FAIL_TOOL, when that is set).
FAKE = r'''#!{python}
import json, os, sys
args = sys.argv[1:]
if args == ["--version"]:
    print("version: 0.5.0-dev (build 1, commit 0c1e570)", file=sys.stderr); sys.exit(0)
prompt = open(args[args.index("-f") + 1]).read()
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(dict(tool=os.path.basename(sys.argv[0]), args=args, prompt=prompt,
                              tunables=os.environ.get("GLIBC_TUNABLES"))) + "\n")
if os.environ.get("FAIL_ON") and os.environ["FAIL_ON"] in prompt and \
        os.environ.get("FAIL_TOOL", os.path.basename(sys.argv[0])) == os.path.basename(sys.argv[0]):
    print("error: out of memory", file=sys.stderr); sys.exit(1)
speculative = "-md" in args
print(("\n\n" + prompt[:-1] if speculative else "") + "the answer is 42" + ("\n\n" if speculative else ""))
print({log!r}, file=sys.stderr)
'''


def fake_binaries(folder, names=(llamacpp_run.COMPLETION_BIN, llamacpp_run.SPECULATIVE_BIN)):
    folder.mkdir(exist_ok=True)
    for name in names:
        log = SPECULATIVE_LOG if name == llamacpp_run.SPECULATIVE_BIN else COMPLETION_LOG
        path = folder / name
        path.write_text(FAKE.replace("{python}", sys.executable).replace("{log!r}", repr(log)))
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return folder


@pytest.fixture
def fakes(tmp_path, monkeypatch):
    """Stand-in binaries in $SPECDEC_LLAMA_CPP, none in the build script's folder, no llama.cpp on the PATH, no Python
    package."""
    monkeypatch.setenv(llamacpp_run.ENV, str(fake_binaries(tmp_path / "bin")))
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))  # a machine's own build must not stand in for them
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setattr(llamacpp_run.importlib.util, "find_spec", lambda name: None)
    return tmp_path


PROMPTS = [dict(id="p1", category="code", ids=[1, 2, 3], text="<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
           dict(id="p2", category="qa", ids=[4, 5], text="Why is the sky blue?")]
GGUFS = ("target.gguf", "draft.gguf")


def calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_parsers_read_llama_cpps_own_lines():
    assert llamacpp_run.parse_completion(COMPLETION_LOG) == dict(prompt_tokens=99, prefill_s=pytest.approx(0.61976),
                                                                 new_tokens=32, decode_tokens=31,
                                                                 decode_s=pytest.approx(0.73281))
    got = llamacpp_run.parse_speculative(SPECULATIVE_LOG)
    assert got == dict(prompt_tokens=99, prefill_s=0.929, new_tokens=33, decode_tokens=33, decode_s=1.495,
                       drafted=28, accepted=23)
    with pytest.raises(ValueError, match="n_drafted"):  # another version's output is refused, not misread
        llamacpp_run.parse_speculative(SPECULATIVE_LOG.replace("n_drafted", "drafted"))


def test_find_and_plan(fakes, monkeypatch):
    run = llamacpp_run
    found = run.find()
    assert set(found["binaries"]) == {run.COMPLETION_BIN, run.SPECULATIVE_BIN} and found["python"] is None
    assert run.plan(found) == dict(target_alone=run.COMPLETION_BIN, speculative=run.SPECULATIVE_BIN)
    # the Python package alone: the target alone only, and the sentence says what is missing and how to build it
    python_only = dict(binaries={}, python="0.3.36")
    assert llamacpp_run.plan(python_only) == dict(target_alone=llamacpp_run.PYTHON)
    said = llamacpp_run.describe(python_only)
    assert "speculation is not" in said and "build_llama_cpp.sh" in said
    # speculation without any target alone is not timed: it would have no baseline
    assert llamacpp_run.plan(dict(binaries={llamacpp_run.SPECULATIVE_BIN: "x"}, python=None)) == {}
    monkeypatch.setenv(llamacpp_run.ENV, str(fakes / "nowhere"))
    nothing = llamacpp_run.find()
    assert nothing == dict(binaries={}, python=None) and "not available" in llamacpp_run.describe(nothing)


def test_binaries_built_by_the_script_are_found_without_the_variable(fakes, monkeypatch):
    monkeypatch.delenv(llamacpp_run.ENV)
    assert llamacpp_run.find()["binaries"] == {}
    llamacpp_run.built_folder().mkdir(parents=True)
    fake_binaries(llamacpp_run.built_folder())  # where `bash scripts/build_llama_cpp.sh` builds them by default
    found = llamacpp_run.find()
    assert set(found["binaries"]) == {llamacpp_run.COMPLETION_BIN, llamacpp_run.SPECULATIVE_BIN}
    assert all(path.parent == llamacpp_run.built_folder() for path in found["binaries"].values())


def test_commands_are_greedy_fixed_length_and_name_the_draft_settings():
    alone = llamacpp_run.completion_command("bin", "t.gguf", "p.txt", 32, 2)
    spec = llamacpp_run.speculative_command("bin", "t.gguf", "d.gguf", "p.txt", 32, 2, 3, 0.0)
    for cmd in (alone, spec):
        assert cmd[cmd.index("-n") + 1] == "32" and "--ignore-eos" in cmd and cmd[cmd.index("--temp") + 1] == "0"
        assert cmd[cmd.index("-t") + 1] == "2"
    assert "-no-cnv" in alone and "-md" not in alone
    assert spec[spec.index("--spec-type") + 1] == "draft-simple" and spec[spec.index("-md") + 1] == "d.gguf"
    assert spec[spec.index("--spec-draft-n-max") + 1] == "3" and spec[spec.index("--spec-draft-p-min") + 1] == "0.0"


def test_sweep_times_every_cell_keeps_finished_ones_and_records_failures(fakes, monkeypatch):
    found = llamacpp_run.find()
    drafts = [[3, 0.0], [16, 0.75]]
    monkeypatch.setenv("FAIL_ON", "sky")  # every run on p2 fails
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.check=0:glibc.malloc.hugetlb=0")
    rows = llamacpp.sweep(fakes / "out", found, GGUFS, PROMPTS, drafts, 32, 2, iterations=2, seed=0)
    assert len(rows) == 3 * 2 * 2 and set(rows["status"]) == {"ok", "failed"}
    failed = rows[rows["status"] == "failed"]
    assert set(failed["prompt_id"]) == {"p2"} and failed["error"].str.contains("out of memory").all()
    ok = rows[rows["status"] == "ok"]
    alone, spec = ok[ok["mode"] == "target_alone"], ok[ok["mode"] == "speculative"]
    assert np.allclose(alone["decode_tok_s"], 31 / 0.73281) and alone["drafted"].isna().all()
    assert np.allclose(spec["decode_tok_s"], 33 / 1.495) and (spec["accepted"] == 23).all()
    assert set(zip(spec["draft_max"], spec["p_min"])) == {(3, 0.0), (16, 0.75)}
    assert (ok["text"].str.rstrip() == "the answer is 42").all()  # the speculative binary's prompt echo is cut off
    assert (ok["hf_prompt_tokens"] == 3).all() and (ok["version"] == "0.5.0-dev (build 1, commit 0c1e570)").all()
    # the binary read exactly the prompt's text: -f drops one trailing newline, so the file carries one more
    timed = [c for c in calls(fakes) if c["args"][c["args"].index("-n") + 1] == "32"]
    assert {c["prompt"][:-1] for c in timed} == {q["text"] for q in PROMPTS}
    # every binary ran with its allocations on huge pages (its fastest configuration), other tunables kept
    assert {c["tunables"] for c in calls(fakes)} == {"glibc.malloc.check=0:" + llamacpp_run.HUGE_PAGES}
    # rerun: only the failed cells are tried again
    monkeypatch.delenv("FAIL_ON")
    before = len(calls(fakes))
    rows = llamacpp.sweep(fakes / "out", found, GGUFS, PROMPTS, drafts, 32, 2, iterations=2, seed=0)
    retried = calls(fakes)[before:]
    assert len([c for c in retried if c["args"][c["args"].index("-n") + 1] == "32"]) == len(failed)
    assert (rows["status"] == "ok").all() and not rows.duplicated(list(llamacpp.KEY)).any()


def test_a_retried_cell_retimes_its_whole_block_and_a_finished_sweep_leaves_no_trace(fakes, monkeypatch):
    """Pairing survives a retry: a block with one failed run is timed whole again, so its rows come from one machine
    state; each (cell, prompt, iteration) is returned once, its latest row; a sweep with nothing left to time runs no
    binary (no warm-up) and writes no provenance."""
    found, drafts, out = llamacpp_run.find(), [[3, 0.0], [16, 0.75]], fakes / "out"
    monkeypatch.setenv("FAIL_ON", "sky")
    monkeypatch.setenv("FAIL_TOOL", llamacpp_run.SPECULATIVE_BIN)  # p2's speculation fails, its target alone does not
    first = llamacpp.sweep(out, found, GGUFS, PROMPTS, drafts, 32, 2, iterations=2, seed=0)
    assert (first["status"] == "failed").sum() == 2 * 2
    monkeypatch.delenv("FAIL_ON")
    before = len(calls(fakes))
    rows = llamacpp.sweep(out, found, GGUFS, PROMPTS, drafts, 32, 2, iterations=2, seed=0)
    timed = [c for c in calls(fakes)[before:] if c["args"][c["args"].index("-n") + 1] == "32"]
    assert len(timed) == 3 * 2 and {c["prompt"][:-1] for c in timed} == {PROMPTS[1]["text"]}  # p2's blocks, whole
    assert len(rows) == 3 * 2 * 2 and (rows["status"] == "ok").all() and not rows.duplicated(list(llamacpp.KEY)).any()
    retimed = rows[rows["prompt_id"] == "p2"]
    assert retimed["run_id"].nunique() == 1 and retimed["run_id"].iloc[0] != first["run_id"].iloc[0]
    written = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert pairing.not_consecutive(written, block=llamacpp.block_of) == []
    provenance, before = sorted(out.glob("provenance-*.json")), len(calls(fakes))
    again = llamacpp.sweep(out, found, GGUFS, PROMPTS, drafts, 32, 2, iterations=2, seed=0)
    assert len(calls(fakes)) == before and sorted(out.glob("provenance-*.json")) == provenance
    pd.testing.assert_frame_equal(again, rows)


def test_specdecs_target_alone_and_speculation_are_timed_in_each_block_beside_llama_cpp(fakes):
    """With a specdec pair, every prompt's block also times specdec's target alone (twice: the A/A control) and its
    speculation (k="auto"), back to back with llama.cpp's runs of that prompt, and the summary divides each by
    llama.cpp's target alone of the same prompts; specdec's speculation has its acceptance, its text is compared with
    specdec's own target alone's, and so is its speed, run over run in the same blocks."""
    pair = load_pair("tiny-llama", device="cpu")
    rows = llamacpp.sweep(fakes / "out", llamacpp_run.find(), GGUFS, PROMPTS, [[3, 0.0]], 8, 2, iterations=2,
                          seed=0, specdec=pair)
    mine = rows[rows["tool"] == llamacpp.SPECDEC]
    assert len(rows) == 5 * 2 * 2 and len(mine) == 3 * 2 * 2 and (mine["status"] == "ok").all()
    assert set(mine["mode"]) == {"target_alone", "target_again", "auto"}
    assert (mine["version"] == "specdec float32").all()
    assert (mine["decode_tokens"] == 7).all() and (mine["decode_s"] > 0).all() and (mine["prefill_s"] > 0).all()
    spec = mine[mine["mode"] == "auto"]
    assert (spec["drafted"] >= spec["accepted"]).all() and spec["drafted"].sum() > 0
    for q in PROMPTS:  # both texts are the target's own greedy continuation of the exact ids
        expected = pair.tokenizer.decode(generate(pair.target, [q["ids"]], max_new_tokens=8, eos_token_id=[]).tokens[0])
        assert (mine.loc[mine["prompt_id"] == q["id"], "text"] == expected).all()
    written = [json.loads(line) for line in (fakes / "out" / "results.jsonl").read_text().splitlines()]
    assert pairing.not_consecutive(written, block=llamacpp.block_of) == []
    table = llamacpp.summary(rows).set_index(["tool", "mode"])
    alone = table.loc[(llamacpp_run.COMPLETION_BIN, "target_alone")]
    for mode in ("target_alone", "target_again", "auto"):
        line = table.loc[(llamacpp.SPECDEC, mode)]
        assert line["speedup"] == pytest.approx(line["decode_tok_s"] / alone["decode_tok_s"])  # one run a prompt each
    speed = mine.set_index(["mode", "prompt_id", "iteration"])["decode_tok_s"].sort_index()
    for mode in ("target_again", "auto"):  # over specdec's own target alone, block by block: runs of one block
        ratios = [(speed[mode, p].to_numpy() / speed["target_alone", p].to_numpy()).mean()
                  for p in speed[mode].index.unique(0)]
        assert table.loc[(llamacpp.SPECDEC, mode), "own_speedup"] == pytest.approx(np.exp(np.log(ratios).mean()))
    spec_line = table.loc[(llamacpp_run.SPECULATIVE_BIN, "speculative")]
    assert spec_line["own_speedup"] == pytest.approx(spec_line["speedup"])  # llama.cpp's own target alone again
    assert np.isnan(table.loc[(llamacpp.SPECDEC, "target_alone"), "own_speedup"])
    assert np.isnan(alone["speedup"]) and np.isnan(table.loc[(llamacpp.SPECDEC, "target_alone"), "acceptance"])
    auto = table.loc[(llamacpp.SPECDEC, "auto")]
    assert auto["acceptance"] == pytest.approx(spec["accepted"].sum() / spec["drafted"].sum())
    assert auto["identical"] == len(PROMPTS)
    text = llamacpp.readout(llamacpp_run.find(), [Path(g) for g in GGUFS], table.reset_index().assign(step_gb=1.0),
                            "cpu", pd.DataFrame([dict(precision="int4", target_alone_tok_s=30.0)]))
    assert "Paired with it" in text and "specdec float32's target alone" in text
    assert "specdec float32's speculation (k=\"auto\"" in text and "specdec float32's target_again" not in text
    assert "against specdec's own target alone in the same blocks, its speculation" in text
    assert "(A/A control (the target alone timed twice in each block)" in text
    assert f"on {len(PROMPTS)} of {len(PROMPTS)} prompts" in text
    # the summary page's line: specdec's fastest cell in these blocks (never the A/A's second run) and llama.cpp's own
    line = llamacpp.finding(table.reset_index())
    fastest = max(("target_alone", "target alone"), ("auto", 'k="auto"'), key=lambda m: table.loc[("specdec", m[0]), "speedup"])
    assert line.startswith(f"; in llama.cpp's blocks ({len(PROMPTS)} prompts), specdec's float32 {fastest[1]} ")
    assert "llama.cpp's target alone (llama.cpp's own speculation" in line
    assert llamacpp.finding(table.reset_index().query("tool != 'specdec'")) == ""


def test_summary_compares_each_cell_with_llama_cpps_own_target_alone():
    def row(mode, prompt, tok_s, text, dmax=None, p_min=None, drafted=None, accepted=None):
        return dict(tool="t", mode=mode, draft_max=dmax, p_min=p_min, prompt_id=prompt, category="c", iteration=0,
                    decode_tok_s=tok_s, text=text, drafted=drafted, accepted=accepted, status="ok", version="v")
    rows = pd.DataFrame([row("target_alone", "a", 40.0, "x y"), row("target_alone", "b", 30.0, "u v"),
                         row("speculative", "a", 20.0, "x y z", 3, 0.0, 30, 15),
                         row("speculative", "b", 30.0, "u w", 3, 0.0, 10, 5),
                         row("speculative", "c", 99.0, "orphan", 3, 0.0, 10, 10)])  # no baseline: not paired
    table = llamacpp.summary(rows).set_index("mode")
    spec = table.loc["speculative"]
    assert spec["speedup"] == pytest.approx(np.sqrt(0.5 * 1.0)) and spec["prompts"] == 2
    assert spec["speedup_lo"] <= spec["speedup"] <= spec["speedup_hi"]
    assert spec["acceptance"] == pytest.approx(25 / 50) and spec["identical"] == 1
    assert table.loc["target_alone", "decode_tok_s"] == pytest.approx(np.sqrt(40 * 30))
    assert spec["decode_tok_s"] == pytest.approx(np.sqrt(20 * 30))  # the orphan prompt left out here too
    assert np.isnan(table.loc["target_alone", "speedup"])
    assert llamacpp.cell_label(next(table.loc[["speculative"]].itertuples())) == "K=3"


def test_summary_divides_runs_of_the_same_block():
    """Two blocks of one prompt, the machine twice as fast in the second: each run is divided by the target alone's
    run of its own block (2.0 both times), so the interval has no machine-state spread to resample; runs drawn
    unpaired (20 or 40 over 10 or 20) would spread it from 1x to 4x."""
    row = lambda mode, it, tok_s: dict(tool="t", mode=mode, draft_max=3 if mode == "speculative" else None,
                                       p_min=0.0 if mode == "speculative" else None, prompt_id="a", category="c",
                                       iteration=it, decode_tok_s=tok_s, text="x", drafted=4, accepted=2,
                                       status="ok", version="v")
    rows = pd.DataFrame([row("target_alone", 0, 10.0), row("speculative", 0, 20.0),
                         row("target_alone", 1, 20.0), row("speculative", 1, 40.0)])
    spec = llamacpp.summary(rows).set_index("mode").loc["speculative"]
    assert spec["speedup"] == pytest.approx(2.0) and spec["speedup_lo"] == spec["speedup_hi"] == pytest.approx(2.0)


def test_readout_says_why_nothing_was_timed():
    nothing = dict(binaries={}, python=None)
    assert "build_llama_cpp.sh" in llamacpp.readout(nothing, None, None, "cpu", None)
    found = dict(binaries={llamacpp_run.COMPLETION_BIN: "x", llamacpp_run.SPECULATIVE_BIN: "y"}, python=None)
    assert "cuda target" in llamacpp.readout(found, None, None, "cuda", None)
    assert "no GGUF files" in llamacpp.readout(found, None, None, "cpu", None)


def test_pair_ggufs_only_for_offline_gguf_pairs(monkeypatch):
    assert llamacpp.pair_ggufs("gpt2") is None and llamacpp.pair_ggufs("no-such-pair") is None
    monkeypatch.setattr(weights, "gguf_file", lambda model: model)
    assert llamacpp.pair_ggufs("qwen2.5-coder") == ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b")


def test_gguf_file_is_assembled_once_and_rebuilt_when_damaged(tmp_path, monkeypatch):
    parts = [tmp_path / f"part{i}.bin" for i in (1, 2)]
    for p, data in zip(parts, (b"GGUF" + b"a" * 10, b"b" * 7)):
        p.write_bytes(data)
    whole = b"GGUF" + b"a" * 10 + b"b" * 7
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(weights.OFFLINE, "toy", dict(title="toy", parts=("toy_part", 2), size=len(whole),
                                                     sha256=hashlib.sha256(whole).hexdigest()))
    monkeypatch.setattr(weights, "part_paths", lambda model: parts)
    out = weights.gguf_file("toy")
    assert out == tmp_path / "cache" / "gguf" / "toy.gguf" and out.read_bytes() == whole
    first = out.stat().st_mtime_ns
    assert weights.gguf_file("toy").stat().st_mtime_ns == first  # not assembled again
    out.write_bytes(whole[:5])  # truncated: rebuilt, checked
    assert weights.gguf_file("toy").read_bytes() == whole
    parts[1].write_bytes(b"c" * 7)  # same size, other bytes: refused by its SHA-256, nothing left behind
    out.unlink()
    with pytest.raises(ValueError, match="SHA-256"):
        weights.gguf_file("toy")
    assert not out.exists()


def test_the_figure_draws_llama_cpps_points_beside_specdecs():
    table = pd.DataFrame(dict(precision=["float32", "int4"], step_gb=[6.2, 0.8], speedup=[1.7, 1.0],
                              speedup_lo=[1.4, 0.95], speedup_hi=[2.0, 1.1], verify_ratio_5=[1.1, 2.6]))
    curves = pd.DataFrame(dict(precision=["float32"] * 2 + ["int4"] * 2, tokens=[1, 5] * 2, ratio=[1, 1.1, 1, 2.6]))
    llama = pd.DataFrame(dict(label=["K=3"], step_gb=[1.1], speedup=[0.55], speedup_lo=[0.5], speedup_hi=[0.6]))
    fig = plots_precision.precision_figure(table, curves, "t", llama=llama)
    left = fig.axes[0]
    labels = [t.get_text() for t in fig.legends[0].get_texts()] if fig.legends else left.get_legend_handles_labels()[1]
    assert "llama.cpp, K=3" in labels and "specdec auto, int4" in labels
    assert any(t.get_text() == "verify cost 5 vs 1 token: 2.60" for t in left.texts)  # labelled: not a speedup


def test_the_figures_labels_stay_off_the_line_and_inside_and_padded_forwards_are_marked():
    table = pd.DataFrame(dict(precision=["float32", "int4"], step_gb=[6.2, 0.8], speedup=[1.2, 0.93],
                              speedup_lo=[1.0, 0.86], speedup_hi=[1.4, 1.0], verify_ratio_5=[1.5, 2.5]))
    curves = pd.DataFrame(dict(precision=["float32"] * 4 + ["int4"] * 4, tokens=[1, 2, 3, 4] * 2,
                               runs_as=[1, 2, 4, 4, 1, 2, 3, 4], ratio=[1, 1.3, 1.34, 1.34, 1, 1.5, 1.8, 2.2]))
    fig = plots_precision.precision_figure(table, curves, "t")
    left, right = fig.axes[:2]
    by_text = {t.get_text(): t for t in left.texts}
    f32, i4 = by_text["verify cost 5 vs 1 token: 1.50"], by_text["verify cost 5 vs 1 token: 2.50"]
    assert f32.get_ha() == "right" and i4.get_ha() == "left"  # toward the middle: not past the panel's edge
    assert i4.get_va() == "top" and i4.xyann[1] < 0  # under a point below 1.0: the line does not cut it
    open_markers = [ln for ln in right.lines if ln.get_linestyle() == "None" and ln.get_markerfacecolor() == "white"]
    assert [list(ln.get_xdata()) for ln in open_markers] == [[3], []]  # float32's T = 3 runs as 4: marked


def test_readout_and_summary_when_runs_failed_or_a_binary_is_missing():
    found = dict(binaries={llamacpp_run.COMPLETION_BIN: "x", llamacpp_run.SPECULATIVE_BIN: "y"}, python=None)
    failed = pd.DataFrame([dict(tool=llamacpp_run.COMPLETION_BIN, mode="target_alone", draft_max=None, p_min=None,
                                prompt_id="a", category="c", iteration=0, decode_tok_s=None, text=None,
                                drafted=None, accepted=None, status="failed", version="v")])
    table = llamacpp.summary(failed)
    assert table.empty and "mode" in table.columns  # the notebook can still select from it
    assert "runs failed" in llamacpp.readout(found, (Path("t.gguf"), Path("d.gguf")), table, "cpu", None)
    only_spec = dict(binaries={llamacpp_run.SPECULATIVE_BIN: "y"}, python=None)
    said = llamacpp.readout(only_spec, (Path("t.gguf"), Path("d.gguf")), None, "cpu", None)
    assert "nothing of it is timed" in said and llamacpp_run.COMPLETION_BIN in said


class FakeLlama:
    """llama_cpp.Llama's surface that python_target_alone uses: eval, sample (greedy), reset, detokenize."""
    loads = 0

    def __init__(self, path, **kw):
        FakeLlama.loads += 1
        self.evaluated = []

    def reset(self):
        self.evaluated = []

    def eval(self, ids):
        self.evaluated += list(ids)

    def sample(self, temp):
        assert temp == 0.0
        return len(self.evaluated)  # a deterministic "next token"

    def detokenize(self, tokens):
        return " ".join(map(str, tokens)).encode()


def test_the_python_package_times_the_target_alone_on_the_exact_ids(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", type(sys)("llama_cpp"))
    sys.modules["llama_cpp"].Llama = FakeLlama
    llamacpp_run._LOADED.clear()
    timing, text = llamacpp_run.python_target_alone("t.gguf", [7, 8, 9], 4, 2)
    # the prompt's forward gives the first token; each later one needs the one before evaluated
    assert text == "3 4 5 6" and timing["new_tokens"] == 4 and timing["decode_tokens"] == 3
    assert timing["prompt_tokens"] == 3 and timing["decode_s"] >= 0 and timing["prefill_s"] >= 0
    llamacpp_run.python_target_alone("t.gguf", [1], 2, 2)
    assert FakeLlama.loads == 1  # loaded once, reset between prompts
