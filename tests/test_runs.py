"""Run storage and the study's run semantics (issue: a rerun is a new measurement, resuming is explicit or
safe, provenance is true for the rows it sits beside). Uses the smoke study's fastest notebook (03, ~15 s)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from specdec.study import results
from specdec.study.provenance import git_state

REPO = Path(__file__).resolve().parents[1]


def study(*args, env=None, wait=True):
    env = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    cmd = [sys.executable, "-m", "specdec.study", "--target", "cpu", "--smoke", *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def latency_rows(out):
    return results.read_rows(out / "data" / "cpu" / "verification_latency" / "results.jsonl")


def test_a_second_run_measures_again_and_resume_keeps_everything(tmp_path):
    first = study("--only", "03", "--out", str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr
    rows1 = latency_rows(tmp_path)
    assert rows1 and "new run" in first.stdout
    second = study("--only", "03", "--out", str(tmp_path))
    assert second.returncode == 0 and "new run" in second.stdout
    rows2 = latency_rows(tmp_path)
    assert len(rows2) == len(rows1)  # the same cells, measured anew: nothing carried over
    assert {r["run_id"] for r in rows1}.isdisjoint({r["run_id"] for r in rows2})
    resumed = study("--only", "03", "--resume", "--out", str(tmp_path))
    assert resumed.returncode == 0 and "resuming run" in resumed.stdout
    assert latency_rows(tmp_path) == rows2  # nothing was missing, so nothing was measured
    state = json.loads((tmp_path / "data" / "cpu" / "study-run.json").read_text())
    assert state["status"] == "complete" and state["fingerprint"]["machine"]


def test_a_killed_run_continues_on_the_same_machine_and_keeps_finished_cells(tmp_path):
    # Enough repeats that the notebook is still measuring when it is killed.
    args = ["--only", "03", "-p", "verification_latency.repeats=40", "--out", str(tmp_path)]
    proc = study(*args, wait=False)
    deadline = time.time() + 300
    while len(latency_rows(tmp_path)) < 20 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner and its notebook kernel, mid-measurement
    proc.wait()
    before = latency_rows(tmp_path)
    assert 20 <= len(before) < 40 * 6, "the kill did not land mid-measurement"
    again = study(*args)  # no --resume: same machine, code and parameters continue automatically
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming run" in again.stdout
    after = latency_rows(tmp_path)
    assert after[: len(before)] == before  # every finished cell kept, untouched
    pair = [r for r in after if r["target"] == "tiny-llama"]
    assert len(pair) == 40 * 6  # 3 K x 2 modes x 40 repeats, each exactly once
    keys = [tuple(r[c] for c in ("target", "k", "mode", "repeat")) for r in after]
    assert len(set(keys)) == len(keys)


def test_an_unfinished_run_with_other_parameters_is_moved_aside_not_resumed(tmp_path):
    assert study("--only", "03", "--out", str(tmp_path)).returncode == 0
    state_path = tmp_path / "data" / "cpu" / "study-run.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps(dict(state, status="running", fingerprint=dict(state["fingerprint"],
                                                                                    machine="another machine"))))
    proc = study("--only", "03", "--out", str(tmp_path))
    assert proc.returncode == 0 and "new run" in proc.stdout and "moved to" in proc.stdout
    aside = tmp_path / "data" / f"cpu.interrupted-{state['run_id']}"
    assert results.read_rows(aside / "verification_latency" / "results.jsonl")  # kept, not deleted


def test_unavailable_pairs_are_skipped_and_named_on_the_summary_page(tmp_path):
    proc = study("--only", "01", "--only", "03", "-p", "k_sweep.pair=gpt2", "--out", str(tmp_path),
                 env=dict(HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "01_k_sweep: skipping pair gpt2" in proc.stdout
    page = (tmp_path / "data" / "cpu" / "README.md").read_text()
    assert "## Skipped here" in page and "gpt2" in page and "## 03_verification_latency: ok" in page


def test_published_outputs_hold_no_absolute_paths(tmp_path):
    assert study("--only", "03", "--out", str(tmp_path)).returncode == 0
    data = tmp_path / "data" / "cpu"
    for f in [*data.rglob("*.ipynb"), *data.rglob("*.md"), *data.rglob("*.json"), *data.rglob("*.csv")]:
        text = f.read_text()
        for path in (str(tmp_path), str(REPO), sys.prefix, str(Path.home())):
            assert path not in text, f"{f.name} contains {path}"


def test_dirty_check_ignores_study_outputs_and_hashes_source_changes(tmp_path):
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)
    (tmp_path / "specdec").mkdir()
    (tmp_path / "specdec" / "x.py").write_text("a = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    clean = git_state(tmp_path / "specdec")
    assert clean["git_dirty"] is False and clean["git_diff_sha256"] is None
    (tmp_path / "data" / "cpu").mkdir(parents=True)
    (tmp_path / "data" / "cpu" / "results.jsonl").write_text("{}\n")
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "f.png").write_bytes(b"png")
    assert git_state(tmp_path / "specdec")["git_dirty"] is False  # fresh results are not dirty code
    (tmp_path / "specdec" / "x.py").write_text("a = 2\n")
    edited = git_state(tmp_path / "specdec")
    assert edited["git_dirty"] is True and edited["git_diff_sha256"]
    (tmp_path / "specdec" / "new.py").write_text("b = 1\n")
    assert git_state(tmp_path / "specdec")["git_diff_sha256"] != edited["git_diff_sha256"]


def test_a_new_run_removes_every_figure_of_its_sections_and_no_other(tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir()
    names = ["k_sweep.png", "k_sweep.svg", "k_sweep_acceptance.png", "k_sweep_dropped.svg", "drafters.png",
             "k_sweepstakes.png"]
    for name in names:
        (figures / name).write_bytes(b"png")
    state, decided = results.open_study_run(tmp_path / "data", figures, ["k_sweep"], {"machine": "m"})
    assert "new run" in decided
    assert sorted(f.name for f in figures.iterdir()) == ["drafters.png", "k_sweepstakes.png"]
