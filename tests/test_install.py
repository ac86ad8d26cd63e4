"""The install: pyproject.toml and environment.yml declare the same dependencies; an old transformers is refused."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def name(requirement):
    return re.split(r"[<>=!~\[ ]", requirement, maxsplit=1)[0].lower()


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = {name(r): r for r in project["dependencies"] + extras["study"] + extras["test"]}
    pip = next(d["pip"] for d in yaml.safe_load((REPO / "environment.yml").read_text())["dependencies"]
               if isinstance(d, dict))
    env = {name(r): r for r in pip if not r.startswith("-e")}
    assert set(env) == set(declared)
    for dep in set(declared) - {"torch"}:  # torch: unpinned in pyproject (Colab keeps its own), pinned in the env
        assert env[dep].replace(" ", "") == declared[dep].split("#")[0].replace(" ", ""), dep
    assert "jupyterlab" not in declared and "accelerate" in declared


def test_the_engine_needs_none_of_the_study_stack():
    """`import specdec` (and its model loading) stays light: the study's packages are an extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    study = {name(r) for r in project["optional-dependencies"]["study"]}
    assert {"pandas", "scipy", "matplotlib", "seaborn", "papermill"} <= study
    assert not study & {name(r) for r in project["dependencies"]}
    probe = "import sys, specdec, specdec.engine; print(sorted(m for m in %r if m in sys.modules))" % sorted(
        {"pandas", "matplotlib", "seaborn", "papermill", "scipy"})
    run = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def test_floor_in_pyproject_is_the_one_checked_at_import():
    import specdec

    pins = re.search(r'"transformers>=([\d.]+),', (REPO / "pyproject.toml").read_text())[1]
    assert pins == specdec.TRANSFORMERS_FLOOR


def test_older_transformers_is_refused_at_import_with_the_upgrade_command():
    fake = ("import importlib.metadata as m; real = m.version; "
            "m.version = lambda d: '5.20.0' if d == 'transformers' else real(d); import specdec")
    run = subprocess.run([sys.executable, "-c", fake], cwd=REPO, capture_output=True, text=True)
    assert run.returncode != 0
    assert 'pip install -U "transformers>=' in run.stderr and "found 5.20.0" in run.stderr
