"""Every number with an interval that the README quotes ("1.23x [1.10, 1.31]", "4.2 [4.0, 4.4] tok/s") is a row of
a committed table under data/cpu/: the same estimate and bounds, at the README's precision; and every count of
verdicts it quotes from a comparison of two runs ("the same verdict on 122 of 131 effects
(`reproduction/A-vs-B.csv`)") is that table's count. The tables are read as committed (git's index: HEAD plus what
is staged), so a user's own rerun of the study, which rewrites data/cpu/ on disk, does not fail it; a new run meant
to be committed is checked once it is `git add`ed."""
import io
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from specdec.study.verdicts import interval_columns

REPO = Path(__file__).resolve().parents[1]
QUOTED = re.compile(r"(\d+\.\d+)x?\s+\[(\d+\.\d+),\s+(\d+\.\d+)\]")  # across line breaks too
# "N of M ..." and, before any other quoted name, the comparison it counts: `reproduction/<name>.csv`; what it counts
# is said within 40 characters before it or between
COUNTED = re.compile(r"(\d+) of (\d+)([^`]{0,120}?)`reproduction/([^`]+\.csv)`")
HELD = ("held", "same verdict")  # words that count the verdicts that held; otherwise a count is of those that changed


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
    return [table(REPO / name) for name in listed.split() if name.endswith(".csv")]


def table(path):
    """One CSV table as git's index holds it (as on disk outside a git checkout)."""
    staged = git("show", f":{path.relative_to(REPO).as_posix()}")
    return pd.read_csv(io.StringIO(staged) if staged is not None else path)


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


def verdict_counts(frame):
    """(verdicts that held, verdicts that changed, effects) of a comparison of two runs (specdec.study.verdicts: its
    A/A controls, where a table has them, are no verdict)."""
    effects = frame[~frame["control"].astype(bool)] if "control" in frame else frame
    changed = int(effects["flipped"].astype(bool).sum())
    return len(effects) - changed, changed, len(effects)


def test_readme_counts_of_verdicts_are_those_of_their_tables():
    text = (REPO / "README.md").read_text()
    counted = list(COUNTED.finditer(text))
    if not counted:
        pytest.fail("the README quotes no count of verdicts: this test would check nothing")
    wrong = []
    for m in counted:
        n, of, _, name = m.groups()
        held, changed, effects = verdict_counts(table(REPO / "data" / "cpu" / "reproduction" / name))
        said = text[max(m.start() - 40, 0):m.end()]  # "the same verdict on N of M", "N of M held"
        want = held if any(word in said for word in HELD) else changed
        if (int(n), int(of)) != (want, effects):
            wrong.append(f"{n} of {of} ({name}: {want} of {effects})")
    assert not wrong, f"README counts of verdicts that are not their table's: {wrong}"


def test_the_check_can_fail():
    frame = pd.DataFrame(dict(speedup=[1.234], speedup_lo=[1.1], speedup_hi=[1.3]))
    values = set(triples(frame))
    assert matches(("1.23", "1.10", "1.30"), values) and not matches(("1.24", "1.10", "1.30"), values)
    runs = pd.DataFrame(dict(control=[False, False, False, True], flipped=[True, False, False, True]))
    assert verdict_counts(runs) == (2, 1, 3)
    assert COUNTED.findall("the same verdict on 2 of 3 effects (`reproduction/a-vs-b.csv`)") == \
        [("2", "3", " effects (", "a-vs-b.csv")]
