"""The study runner end to end: every notebook through papermill in smoke mode (tiny random models), then
the files it must leave behind. One smoke run is shared by the module (about a minute on 2 cores)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from specdec.study import latency, results, runner
from specdec.models import load_pair

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_k_sweep", "02_batch_sweep", "03_verification_latency", "04_speculative_vs_baseline", "05_drafters",
             "06_precision"]
SECTIONS = [n.split("_", 1)[1] for n in NOTEBOOKS]
PNG = b"\x89PNG\r\n\x1a\n"
STALE = "0123456789ab"  # an earlier run's calibration id


def run_study(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "specdec.study", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    # an earlier run's calibration record in the folder (as in a clone's data/cpu): not this run's, so not on its page
    (out / "data" / "cpu").mkdir(parents=True)
    (out / "data" / "cpu" / f"calibration-{STALE}.json").write_text(json.dumps({"id": STALE}))
    proc = run_study("--target", "cpu", "--smoke", "--out", str(out))
    return proc, out / "data" / "cpu", out / "figures" / "cpu"


def test_runner_succeeds_with_a_progress_line_per_notebook(smoke):
    proc, _, _ = smoke
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for i, name in enumerate(NOTEBOOKS, 1):
        assert f"[{i}/{len(NOTEBOOKS)}] {name}: ok in" in proc.stdout
    for sec in SECTIONS:  # each sweep's own bar reaches the runner's terminal while the notebook runs: runs done
        # out of the total and the time left (papermill shows a notebook's output only when it ends)
        assert re.search(rf"{sec}: +\d+%\|.*\| \d+/\d+ \[", proc.stderr), sec


def test_executed_notebooks_have_no_errors(smoke):
    _, data, _ = smoke
    for name in NOTEBOOKS:
        book = nbformat.read(data / "notebooks" / f"{name}.ipynb", as_version=4)
        errors = [o for c in book.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        assert not errors, f"{name}: {errors[0]['ename']}: {errors[0]['evalue']}" if errors else ""
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in book.cells), name


def test_each_notebook_wrote_its_data_with_provenance(smoke):
    _, data, _ = smoke
    for sec in SECTIONS:
        folder = data / sec
        rows = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines()]
        assert rows and all(r["status"] == "ok" for r in rows if "status" in r), sec
        provenance = [json.loads(p.read_text()) for p in folder.glob("provenance-*.json")]
        assert provenance, f"{sec}: no provenance file"
        for record in provenance:
            assert {"git_commit", "torch", "transformers", "device_name", "params"} <= set(record), sec
        assert {r["run_id"] for r in rows} <= {p["params"]["run_id"] for p in provenance}, sec
        assert len(pd.read_csv(folder / "summary.csv")), sec
        assert (folder / "readout.md").read_text().strip(), sec
    assert (data / "study-provenance.json").is_file()


def test_each_notebook_wrote_readable_figures(smoke):
    _, _, figures = smoke
    for sec in SECTIONS:
        png = figures / f"{sec}.png"
        assert png.read_bytes()[:8] == PNG and png.stat().st_size > 10_000, sec
        assert (figures / f"{sec}.svg").stat().st_size > 0, sec


def test_summary_page_lists_figures_data_and_notebooks(smoke):
    _, data, figures = smoke
    page = (data / "README.md").read_text()
    assert "smoke" in page.splitlines()[0]
    machine = json.loads(next((data / "k_sweep").glob("provenance-*.json")).read_text())["device_name"]
    assert f"measured on {machine}" in page and "commit " in page  # the rows' own machine and commit
    for name, sec in zip(NOTEBOOKS, SECTIONS):
        assert f"## {name}: ok" in page
        assert os.path.relpath(figures / f"{sec}.png", data) in page
        assert f"notebooks/{name}.ipynb" in page
        for f in (data / sec).iterdir():
            assert f"{sec}/{f.name}" in page, f"{f} not on the summary page"
    # every figure drawn is named by its section (so the section's next run removes it) and is on the page
    drawn = set(figures.glob("*.png"))
    assert drawn == {f for sec in SECTIONS for f in results.section_figures(figures, sec) if f.suffix == ".png"}
    for png in drawn:
        assert os.path.relpath(png, data) in page, f"{png.name} not on the summary page"


def test_the_published_calibration_names_no_folder_of_this_machine(smoke):
    _, data, _ = smoke
    report = (data / "calibration.txt").read_text()
    assert "(cache: <measurements>)" in report and os.environ["SPECDEC_MEASUREMENTS"] not in report


def test_the_calibration_the_report_names_is_on_disk_and_on_the_page(smoke):
    _, data, _ = smoke
    named = re.findall(r"^calibration ([0-9a-f]{12}):", (data / "calibration.txt").read_text(), re.M)
    assert named, "calibration.txt names no calibration"
    page = (data / "README.md").read_text()
    for cid in named:  # the id a reader sees leads to the plans and prices it stands for
        assert json.loads((data / f"calibration-{cid}.json").read_text())["id"] == cid
        assert f"(calibration-{cid}.json)" in page
    assert STALE not in named and STALE not in page


def test_seed_numbers_appear_only_as_the_labelled_reference(smoke):
    _, data, _ = smoke
    for sec in ("k_sweep", "batch_sweep"):
        ref = pd.read_csv(data / sec / "seed_reference.csv")
        assert len(ref) and (ref["source"] == "seed (reported; flawed implementation)").all()
        assert not (data / sec / "rows.csv").read_text().count("seed (reported")


def test_only_runs_one_notebook(tmp_path):
    proc = run_study("--target", "cpu", "--smoke", "--only", "03_verification_latency", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = tmp_path / "data" / "cpu"
    assert [p.stem for p in (data / "notebooks").glob("*.ipynb")] == ["03_verification_latency"]
    assert sorted(p.name for p in (tmp_path / "figures" / "cpu").glob("*.png")) == ["verification_latency.png"]
    page = (data / "README.md").read_text()
    assert "## 03_verification_latency: ok" in page and "01_k_sweep" not in page


def test_the_precision_notebook_runs_without_a_float32_reference(tmp_path):
    """precisions=[int4] alone: no float32 target to measure agreement against, so the agreement is left blank (it
    failed on formatting a missing value, after the whole sweep and llama.cpp's blocks had run)."""
    proc = run_study("--target", "cpu", "--smoke", "--only", "06_precision", "-p", "precision.precisions=[int4]",
                     "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = pd.read_csv(tmp_path / "data" / "cpu" / "precision" / "summary.csv")
    assert list(summary["precision"]) == ["int4"] and summary["agreement"].isna().all()


def test_unknown_target_exits_2_and_lists_targets():
    proc = run_study("--target", "nope")
    assert proc.returncode == 2
    assert "nope" in proc.stderr and all(t in proc.stderr for t in ("cpu", "t4", "mps", "cuda"))


def test_bad_parameter_and_unknown_device_exit_2_before_any_work(tmp_path):
    proc = run_study("--target", "cpu", "--smoke", "-p", "k_sweep.no_such_key=1", "--out", str(tmp_path))
    assert proc.returncode == 2 and "no_such_key" in proc.stderr
    proc = run_study("--target", "cpu", "--smoke", "-p", "device=tpu", "--out", str(tmp_path))
    assert proc.returncode == 2 and "unknown device 'tpu'" in proc.stderr
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("target", ["cpu", "t4", "mps", "cuda"])
def test_every_target_gives_every_notebook_valid_parameters(target, tmp_path):
    config = runner.load_config(target)
    names = runner.notebooks(REPO)
    assert list(names) == NOTEBOOKS
    inputs = dict(prompts_file="p.jsonl", reference_file="r.csv")
    for name, path in names.items():
        assert runner.section(name) in config, f"{target}.yaml has no {runner.section(name)} section"
        params = runner.notebook_params(name, path, config, target, tmp_path / "d", tmp_path / "f", inputs)
        assert params["target"] == target and params["data_dir"] == str(tmp_path / "d")
        assert params.get("prompts_file", "p.jsonl") == "p.jsonl"


def test_overrides_are_yaml_and_go_to_a_section_or_common():
    assert runner.parse_overrides(["k_sweep.pair=gpt2-random", "iterations=2", "04_speculative_vs_baseline.pair=[a, b]"]) \
        == {"k_sweep": {"pair": "gpt2-random"}, "common": {"iterations": 2}, "speculative_vs_baseline": {"pair": ["a", "b"]}}
    with pytest.raises(ValueError):
        runner.parse_overrides(["k_sweep.pair"])


def test_source_notebooks_are_clean_and_parameterised():
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        nbformat.validate(book)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in book.cells
                   if c.cell_type == "code"), f"{path.name} has outputs"
        if path.name[:2].isdigit():
            tagged = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
            assert len(tagged) == 1, path.name
            for key in ("target", "pair", "device", "dtype", "seed", "data_dir", "figures_dir"):
                assert f"\n{key} = " in "\n" + tagged[0].source, f"{path.name}: no {key} parameter"


def test_latency_rows_and_resume(tmp_path):
    pair = load_pair("tiny-llama")
    rows = latency.measure(pair, tmp_path, ks=[1, 3], context=8, repeats=2, progress=False)
    assert len(rows) == 2 * 2 * 2 and set(rows["forwards"]) == {1, 2, 4}
    assert len(latency.measure(pair, tmp_path, ks=[1, 3], context=8, repeats=2, progress=False)) == 8
    assert len((tmp_path / "results.jsonl").read_text().splitlines()) == 8  # nothing measured twice
    table = latency.summarize(rows)
    assert set(table["mode"]) == {"parallel", "naive"} and (table.groupby("mode")["vs_smallest_k"].first() == 1).all()


def test_a_failing_notebook_is_recorded_and_the_others_still_run(tmp_path):
    proc = run_study("--target", "cpu", "--smoke", "--only", "01_k_sweep", "--only", "03_verification_latency",
                     "-p", "k_sweep.categories=[no-such-category]", "--out", str(tmp_path))
    assert proc.returncode == 1
    assert "01_k_sweep: failed" in proc.stdout and "03_verification_latency: ok" in proc.stdout
    page = (tmp_path / "data" / "cpu" / "README.md").read_text()
    assert "## 01_k_sweep: failed" in page and "no-such-category" in page
    assert (tmp_path / "data" / "cpu" / "notebooks" / "01_k_sweep.ipynb").is_file()  # kept up to the failing cell
