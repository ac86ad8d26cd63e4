"""The Colab launcher runs: papermill executes notebooks/colab_t4.ipynb itself, on cpu, from a local clone.

It installs nothing (install=False: this test's environment is shared, and already has specdec's needs); the
clone's own code runs, because the launcher starts the study from the clone's folder.
"""
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "notebooks" / "colab_t4.ipynb"


def run_launcher(tmp_path, **params):
    import papermill

    return papermill.execute_notebook(str(LAUNCHER), str(tmp_path / "executed.ipynb"), parameters=params,
                                      cwd=str(tmp_path), progress_bar=False, kernel_name="python3")


def test_launcher_runs_the_smoke_study_from_a_clone(tmp_path):
    source = tmp_path / "source"  # a clone stands in for the hosted repository
    subprocess.run(["git", "clone", "-q", str(REPO), str(source)], check=True)
    out = tmp_path / "results"
    run_launcher(tmp_path, repo_url=str(source), target="cpu", smoke=True, out_dir=str(out),
                 clone_dir=str(tmp_path / "specdec"), install=False)
    data = out / "data" / "cpu"
    summary = (data / "README.md").read_text()
    assert "k_sweep" in summary
    rows = [json.loads(line) for line in (data / "k_sweep" / "results.jsonl").read_text().splitlines() if line]
    assert rows and {r["pair"] for r in rows} == {"tiny-gpt2"}  # the smoke models, measured just now
    assert list((out / "figures" / "cpu").glob("*.png"))
    assert (tmp_path / "specdec-cpu-results.zip").is_file()  # the download cell's archive
    assert (tmp_path / "specdec" / ".git").is_dir()  # cloned where asked (an absolute path: reruns never nest)


def test_launcher_without_repo_url_says_what_to_set(tmp_path):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="repo_url is empty: set it"):
        run_launcher(tmp_path, out_dir=str(tmp_path / "results"), clone_dir=str(tmp_path / "specdec"))
