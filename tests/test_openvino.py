"""OpenVINO GenAI as notebook 06's second outside reference (specdec.study.openvino_run, its worker, and its cells in
llama.cpp's blocks), without OpenVINO: a stand-in worker answers as the real one does, so finding it, the sweep, the
summary and the readout are tested wherever the suite runs; the worker's own reading of OpenVINO's clock is tested
against a stand-in of the two OpenVINO modules it imports. Where scripts/setup_openvino.sh has set it up, the real
worker runs the real pair (slow)."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from specdec.study import llamacpp, llamacpp_run, openvino_run, pairing
from test_llamacpp import GGUFS, PROMPTS, fakes  # noqa: F401 (fakes: the stand-in llama.cpp binaries)

# A stand-in for OpenVINO's environment: its "python" ignores the worker's path and answers as the worker does,
# the decode rate set per mode (alone 20 tok/s, speculation 30), the text the same for both.
FAKE_PYTHON = r'''#!{python}
import json, sys
target, draft, threads = sys.argv[2:5]
print(json.dumps({"ready": "2026.4.1.0-fake"}), flush=True)
for line in sys.stdin:
    req = json.loads(line)
    with open({log!r}, "a") as log:
        log.write(json.dumps(dict(req, threads=threads, target=target)) + "\n")
    if req["ids"] == [4, 5] and req["mode"] == "speculative":
        print(json.dumps({"error": "RuntimeError: out of memory"}), flush=True); continue
    n = req["n"]
    seconds = (n - 1) / (20.0 if req["mode"] == "target_alone" else 30.0)
    print(json.dumps(dict(prompt_tokens=len(req["ids"]), prefill_s=0.5, new_tokens=n, decode_tokens=n - 1,
                          decode_s=seconds, text="the answer is 42")), flush=True)
'''


def set_up(folder, calls_log, python=None):
    """What scripts/setup_openvino.sh leaves: an environment's python and both models' exports."""
    (folder / "venv" / "bin").mkdir(parents=True)
    exe = folder / "venv" / "bin" / "python"
    exe.write_text(python or FAKE_PYTHON.replace("{python}", sys.executable).replace("{log!r}", repr(str(calls_log))))
    exe.chmod(0o755)
    for model in ("qwen2.5-coder-1.5b", "qwen2.5-coder-0.5b"):
        (folder / f"{model}-int4").mkdir()
        (folder / f"{model}-int4" / "openvino_model.xml").write_text("<net/>")
        (folder / f"{model}-int4" / "openvino_model.bin").write_bytes(b"\0" * 1000)
    return folder


def test_found_only_where_the_environment_and_both_exports_are(tmp_path, monkeypatch):
    monkeypatch.setenv(openvino_run.ENV, str(tmp_path / "ov"))
    assert openvino_run.find("qwen2.5-coder") is None
    assert "setup_openvino.sh" in openvino_run.describe(None)
    set_up(tmp_path / "ov", tmp_path / "calls.jsonl")
    found = openvino_run.find("qwen2.5-coder")
    assert found["target"].name == "qwen2.5-coder-1.5b-int4" and found["draft"].name == "qwen2.5-coder-0.5b-int4"
    assert openvino_run.step_bytes(found) == 1000
    assert openvino_run.find("no-such-pair") is None
    (found["draft"] / "openvino_model.xml").unlink()  # an export cut short
    assert openvino_run.find("qwen2.5-coder") is None


def test_openvinos_cells_are_timed_in_llama_cpps_blocks_and_read_against_both_targets(fakes, monkeypatch):  # noqa: F811
    monkeypatch.setenv(openvino_run.ENV, str(set_up(fakes / "ov", fakes / "ov-calls.jsonl")))
    ov = openvino_run.find("qwen2.5-coder")
    rows = llamacpp.sweep(fakes / "out", llamacpp_run.find(), GGUFS, PROMPTS, [[16, 0.75]], 8, 2, iterations=2,
                          seed=0, openvino=ov, openvino_ks=[3, 5])
    mine = rows[rows["tool"] == openvino_run.OPENVINO]
    assert len(rows) == 5 * 2 * 2 and len(mine) == 3 * 2 * 2
    assert set(zip(mine["mode"], mine["draft_max"].fillna(0))) == {("target_alone", 0), ("speculative", 3),
                                                                     ("speculative", 5)}
    failed = mine[mine["status"] == "failed"]  # the worker's error is the run's row; the worker goes on
    assert set(failed["prompt_id"]) == {"p2"} and (failed["mode"] == "speculative").all()
    assert failed["error"].str.contains("out of memory").all()
    assert (mine["version"] == "openvino-genai 2026.4.1.0-fake").all()
    sent = [json.loads(line) for line in (fakes / "ov-calls.jsonl").read_text().splitlines()]
    timed = [s for s in sent if s["n"] == 8]
    assert {tuple(s["ids"]) for s in timed} == {tuple(q["ids"]) for q in PROMPTS}  # the exact token ids
    assert {s["threads"] for s in sent} == {"2"} and {s["k"] for s in timed if s["mode"] == "speculative"} == {3, 5}
    warm = [s["mode"] for s in sent if s["n"] == 4]
    assert sorted(warm) == ["speculative", "target_alone"]  # each pipeline warmed up (compiled) once
    written = [json.loads(line) for line in (fakes / "out" / "results.jsonl").read_text().splitlines()]
    assert pairing.not_consecutive(written, block=llamacpp.block_of) == []
    record = json.loads(next((fakes / "out").glob("provenance-*.json")).read_text())
    assert record["params"]["openvino"] == dict(models=["qwen2.5-coder-1.5b-int4", "qwen2.5-coder-0.5b-int4"], ks=[3, 5])

    table = llamacpp.summary(rows).set_index(["tool", "mode", "draft_max"]).sort_index()
    llama = table.loc[(llamacpp_run.COMPLETION_BIN, "target_alone")].iloc[0]
    alone = table.loc[(openvino_run.OPENVINO, "target_alone")].iloc[0]
    assert alone["decode_tok_s"] == pytest.approx(20.0)
    assert alone["speedup"] == pytest.approx(20.0 / llama["decode_tok_s"])  # against llama.cpp's target alone
    k3 = table.loc[(openvino_run.OPENVINO, "speculative", 3)]
    assert k3["own_speedup"] == pytest.approx(1.5) and k3["prompts"] == 1  # over its own target alone; p2 failed
    assert k3["speedup"] == pytest.approx(30.0 / llama["decode_tok_s"])
    assert np.isnan(k3["acceptance"]) and k3["identical"] == 1  # its pipeline reports no drafts
    # llama.cpp's own lines are not OpenVINO's: its speculation is still its own cell, read against its target alone
    text = llamacpp.readout(llamacpp_run.find(), [Path(g) for g in GGUFS], table.reset_index().assign(step_gb=1.0),
                            "cpu", pd.DataFrame([dict(precision="int4", target_alone_tok_s=30.0)]))
    assert text.count("Its speculation") == 1 and "up to 16 drafts" in text and "K=3" not in text
    ov_text = llamacpp.openvino_readout(ov, table.reset_index())
    assert "Its int4 target alone (openvino-genai 2026.4.1.0-fake" in ov_text and "K=3: 30.00 tok/s" in ov_text
    assert "its own target alone" in ov_text and "on 1 of 1 prompts" in ov_text
    assert llamacpp.finding(table.reset_index()) == ""  # the summary page's line is specdec's: OpenVINO is not it


def test_readout_says_why_openvino_was_not_timed(tmp_path, monkeypatch):
    monkeypatch.setenv(openvino_run.ENV, str(set_up(tmp_path / "ov", tmp_path / "calls.jsonl")))
    found = openvino_run.find("qwen2.5-coder")
    assert "setup_openvino.sh" in llamacpp.openvino_readout(None, None)
    assert "llama.cpp's blocks, which did not run" in llamacpp.openvino_readout(found, None)
    assert "its runs failed" in llamacpp.openvino_readout(found, pd.DataFrame(dict(tool=["llama-completion"],
                                                                                  mode=["target_alone"])))
    # OpenVINO's cells need llama.cpp's target alone in their blocks: without it, that is the reason given
    assert "llama.cpp's target alone, the baseline" in llamacpp.openvino_readout(found, pd.DataFrame(columns=["tool", "mode"]))


@pytest.mark.parametrize("python", [
    f"#!{sys.executable}\nimport sys\nprint('cannot compile the model', file=sys.stderr)\nsys.exit(3)\n",
    f"#!{sys.executable}\nimport sys, time\nprint('cannot compile the model', file=sys.stderr, flush=True)\ntime.sleep(60)\n",
], ids=["dies", "hangs"])
def test_a_worker_that_dies_or_hangs_fails_its_own_runs_not_the_sweep(fakes, monkeypatch, python):  # noqa: F811
    monkeypatch.setenv(openvino_run.ENV, str(set_up(fakes / "ov", fakes / "ov-calls.jsonl", python)))
    monkeypatch.setattr(openvino_run, "TIMEOUT_S", 2)
    rows = llamacpp.sweep(fakes / "out", llamacpp_run.find(), GGUFS, PROMPTS, [[3, 0.0]], 8, 2, seed=0,
                          openvino=openvino_run.find("qwen2.5-coder"), openvino_ks=[3])
    mine = rows[rows["tool"] == openvino_run.OPENVINO]
    assert len(mine) == 2 * 2 and (mine["status"] == "failed").all()
    assert mine["error"].str.contains("did not start").all() and (mine["version"].str.contains("did not start")).all()
    assert (rows.loc[rows["tool"] != openvino_run.OPENVINO, "status"] == "ok").all()  # llama.cpp's runs went on
    assert "cannot compile the model" in (fakes / "out" / "openvino.log").read_text()
    table = llamacpp.summary(rows)
    assert "its runs failed" in llamacpp.openvino_readout(openvino_run.find("qwen2.5-coder"), table)


# Stand-ins of the two modules the worker imports: each generation reports its clock as OpenVINO's perf metrics do
# (milliseconds), time to the first token 400 ms for the target alone and 500 for the assisted pipeline (the draft's
# prefill before the first token), 50 ms a token after it; the pipelines' settings are recorded.
OV_STANDIN = textwrap.dedent('''
    class Tensor:
        def __init__(self, a):
            self.data = a
''')
GENAI_STANDIN = textwrap.dedent('''
    import json, os, types
    __version__ = "2026.4.1.0-standin"
    made = []
    class SchedulerConfig:
        enable_prefix_caching = True
    class GenerationConfig:
        num_assistant_tokens = 0
    def draft_model(path, device, **props):
        return dict(path=path, props=props)
    class Tokenizer:
        def decode(self, tokens):
            return " ".join(map(str, tokens))
    class LLMPipeline:
        def __init__(self, path, device, draft_model=None, **props):
            self.draft = draft_model
            with open(os.environ["STANDIN_LOG"], "a") as f:
                f.write(json.dumps(dict(path=path, draft=draft_model and draft_model["path"],
                                        threads=props["INFERENCE_NUM_THREADS"],
                                        prefix_caching=props["scheduler_config"].enable_prefix_caching)) + "\\n")
        def get_tokenizer(self):
            return Tokenizer()
        def generate(self, prompt, c):
            assert c.ignore_eos and not c.do_sample and c.min_new_tokens == c.max_new_tokens
            assert (c.num_assistant_tokens > 0) == (self.draft is not None)
            ttft = 500.0 if self.draft else 400.0
            ms = lambda v: types.SimpleNamespace(mean=v)
            metrics = types.SimpleNamespace(get_ttft=lambda: ms(ttft),
                                            get_generate_duration=lambda: ms(ttft + 50.0 * (c.max_new_tokens - 1)))
            return types.SimpleNamespace(tokens=[[7] * c.max_new_tokens], perf_metrics=metrics)
''')


def test_the_worker_charges_the_drafts_prefill_and_keeps_stdout_for_its_answers(tmp_path):
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "openvino.py").write_text(OV_STANDIN)
    (tmp_path / "mods" / "openvino_genai.py").write_text(GENAI_STANDIN + "\nprint('a library talking on stdout')\n")
    requests = [dict(mode="target_alone", ids=[1, 2, 3], n=9), dict(mode="speculative", ids=[1, 2, 3], n=9, k=3),
                dict(mode="sideways", ids=[1], n=2)]
    out = subprocess.run([sys.executable, str(openvino_run.WORKER), "T", "D", "2"], capture_output=True, text=True,
                         input="".join(json.dumps(r) + "\n" for r in requests), timeout=60,
                         env={"PYTHONPATH": str(tmp_path / "mods"), "STANDIN_LOG": str(tmp_path / "made.jsonl")})
    answers = [json.loads(line) for line in out.stdout.splitlines()]  # every stdout line is an answer
    assert answers[0] == {"ready": "2026.4.1.0-standin"} and "a library talking" in out.stderr
    alone, spec, bad = answers[1:]
    # the target alone: its generation less its own time to the first token
    assert alone["prefill_s"] == pytest.approx(0.4) and alone["decode_s"] == pytest.approx(0.4)
    assert alone["decode_tokens"] == 8 and alone["text"] == " ".join(["7"] * 9)
    # speculation: its generation less the target alone's prefill, so the draft's prefill (0.1 s) is charged
    assert spec["prefill_s"] == pytest.approx(0.4) and spec["decode_s"] == pytest.approx(0.1 + 8 * 0.05)
    assert "sideways" in bad["error"]
    made = [json.loads(line) for line in (tmp_path / "made.jsonl").read_text().splitlines()]
    assert made == [dict(path="T", draft=None, threads=2, prefix_caching=False),
                    dict(path="T", draft="D", threads=2, prefix_caching=False)]


@pytest.mark.slow
def test_the_real_worker_runs_the_pair_greedy_on_the_exact_ids(tmp_path):
    found = openvino_run.find("qwen2.5-coder")
    if found is None:
        pytest.skip("OpenVINO GenAI is not set up here (scripts/setup_openvino.sh)")
    ids = [151644, 872, 198, 7985, 264, 13027, 729, 429, 16, 10, 16, 13, 151645, 198, 151644, 77091, 198]
    with openvino_run.Worker(found, 2, tmp_path / "ov.log") as worker:
        alone, alone_text = worker.run("target_alone", ids, 16)
        spec, spec_text = worker.run("speculative", ids, 16, 3)
    assert alone["decode_tokens"] == spec["decode_tokens"] == 15 and alone["prompt_tokens"] == len(ids)
    assert alone["decode_s"] > 0 and spec["decode_s"] > 0 and alone["prefill_s"] > 0
    assert spec_text == alone_text and alone_text.strip()  # greedy speculation: the target's own text


def test_the_summary_pages_line_names_openvinos_fastest_cell():
    line = lambda tool, mode, speedup, k=None: dict(tool=tool, mode=mode, draft_max=k, p_min=0.0 if k else None,
                                                   prompts=16, speedup=speedup, speedup_lo=speedup - 0.1,
                                                   speedup_hi=speedup + 0.1, version="specdec int4-g128 specdec")
    table = pd.DataFrame([line(llamacpp.SPECDEC, "auto", 1.4), line(openvino_run.OPENVINO, "target_alone", 0.7),
                          line(openvino_run.OPENVINO, "speculative", 0.8, 3)])
    text = llamacpp.finding(table)
    assert "specdec's int4-g128 k=\"auto\" 1.40x [1.30, 1.50]" in text
    assert text.endswith("(OpenVINO's int4 speculation (K=3) 0.80x [0.70, 0.90] that)")
