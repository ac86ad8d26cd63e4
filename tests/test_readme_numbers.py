"""Every number with an interval that the README quotes ("1.23x [1.10, 1.31]", "4.2 [4.0, 4.4] tok/s") is a row of
a committed table under data/cpu/: the same estimate and bounds, at the README's precision. The tables are read as
committed (git's index: HEAD plus what is staged), so a user's own rerun of the study, which rewrites data/cpu/ on
disk, does not fail it; a new run meant to be committed is checked once it is `git add`ed."""
import io
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from specdec.study.verdicts import interval_columns

REPO = Path(__file__).resolve().parents[1]
QUOTED = re.compile(r"(\d+\.\d+)x?\s+\[(\d+\.\d+),\s+(\d+\.\d+)\]")  # across line breaks too


def triples(frame: pd.DataFrame):
    """(estimate, lo, hi) of every interval column group: X with X_lo/X_hi, or X_speedup with X_lo/X_hi."""
    for columns in interval_columns(frame):
        yield from frame[list(columns)].itertuples(index=False, name=None)


def git(*args) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout if out.returncode == 0 else None


def tables(folder):
    """The CSV tables under `folder` as git's index holds them; outside a git checkout (an sdist), as on disk."""
    listed = git("ls-files", "--", folder.relative_to(REPO).as_posix())
    if listed is None:
        return [pd.read_csv(p) for p in sorted(folder.rglob("*.csv"))]
    return [pd.read_csv(io.StringIO(git("show", f":{name}"))) for name in listed.split() if name.endswith(".csv")]


def committed(folder):
    found = set()
    for frame in tables(folder):
        found.update(triples(frame.apply(pd.to_numeric, errors="coerce")))
    return found


def matches(quoted, values):
    digits = [len(q.split(".")[1]) for q in quoted]
    want = tuple(float(q) for q in quoted)
    return any(all(abs(v - w) <= 0.5 * 10 ** -d + 1e-9 for v, w, d in zip(t, want, digits)) for t in values)


def test_readme_intervals_are_rows_of_committed_tables():
    quoted = QUOTED.findall((REPO / "README.md").read_text())
    if not quoted:
        pytest.fail("the README quotes no interval: this test would check nothing")
    values = committed(REPO / "data" / "cpu")
    missing = [q for q in quoted if not matches(q, values)]
    assert not missing, f"README intervals that are no row of a committed table under data/cpu/: {missing}"


def test_the_check_can_fail():
    frame = pd.DataFrame(dict(speedup=[1.234], speedup_lo=[1.1], speedup_hi=[1.3]))
    values = set(triples(frame))
    assert matches(("1.23", "1.10", "1.30"), values) and not matches(("1.24", "1.10", "1.30"), values)
