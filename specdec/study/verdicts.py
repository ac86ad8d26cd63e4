"""Two runs of the study, verdict by verdict: does a rerun reach the same conclusions?

    python -m specdec.study.verdicts FIRST SECOND [--out verdicts.csv]

FIRST and SECOND are two runs' data/<target>/ folders (the committed one and yours, say: `python -m specdec.study
--target cpu --out /tmp/mine`, then `python -m specdec.study.verdicts data/cpu /tmp/mine/data/cpu`). Every ratio
with a 95% interval in a table both runs wrote (a speedup, a ratio against a reference) is matched by its table and
the columns that name it (mode, K, category, ...), and each side's verdict is read twice: from its interval alone
(above 1, below 1, or no clear difference: it includes 1), and as the readouts judge it, where an estimate inside
the experiment's A/A control (its aa_control.csv row for that batch size, precision, ...: stats.beyond_floor) is no
clear difference too. The first is the thing a reader of a table sees, the second the conclusion a readout states.
An A/A control (the target alone timed against itself) is never faster or slower, whatever its interval: its verdict
is "A/A control" in both runs, and the count of those whose interval excluded 1 in a run (a bias the pairing carried
that time) is printed beside the flips. A flip is "within the runs' noise" where the two intervals overlap (each
run's interval is consistent with the other's value range: a verdict near its boundary that tipped), and "apart"
where they do not (the runs measured different values: a code change between them, or the machine's state).
Prints the flips and the counts; writes every matched ratio to --out.
"""
import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from .modes import A_A
from .results import AA_FILE
from .stats import NO_DIFFERENCE, beyond_floor

# The columns that say which comparison a table's row is (never a measured value).
NAMES = ("pair", "effect", "strategy", "chosen_on", "measured_on", "group", "by", "precision", "tool", "draft_max",
         "p_min", "category", "mode", "k", "reference", "metric", "batch_size", "max_new_tokens", "drafter",
         "temperature", "top_p")
VERDICTS = {1: "above 1", -1: "below 1", 0: NO_DIFFERENCE}
CONTROL = "A/A control"
WITHIN = "within the runs' noise"  # a flip whose two intervals overlap


def interval_columns(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(estimate, lo, hi) column names of every value with an interval in a study table: X with X_lo and X_hi, or
    X_speedup with X_lo and X_hi (how summary tables name them)."""
    found = []
    for lo in (c for c in frame.columns if c.endswith("_lo")):
        base = lo[:-3]
        est = base if base in frame else f"{base}_speedup"
        if est in frame and f"{base}_hi" in frame:
            found.append((est, lo, f"{base}_hi"))
    return found


def ratio_columns(frame: pd.DataFrame) -> list[tuple[str, str, str]]:
    """The ratios among them: a speedup or a `vs` column (throughputs in tok/s have intervals too, but no verdict
    against 1)."""
    return [(est, lo, hi) for est, lo, hi in interval_columns(frame) if "speedup" in est or "vs" in est]


def cell(value) -> str:
    """A table's value as a row name writes it: 4.0 and 4 both as 4."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def aa_floors(folder) -> list[tuple[str, str, tuple]]:
    """An experiment folder's A/A controls: (by, group, (est, lo, hi)) per row of its aa_control.csv; by "" (group
    "all"): one control for every comparison of the experiment."""
    path = Path(folder) / AA_FILE
    if not path.is_file():
        return []
    return [("" if pd.isna(r.by) else str(r.by), cell(r.group), (r.speedup, r.speedup_lo, r.speedup_hi))
            for r in pd.read_csv(path).itertuples()]


def floor_of(row, floors) -> tuple:
    """The A/A control that a table's row is judged against: its experiment's for the row's batch size (precision,
    ...), or the one for all; NaN when the experiment has none."""
    for by, group, floor in floors:
        if not by or (by in row and pd.notna(row[by]) and cell(row[by]) == group):
            return floor
    return (np.nan, np.nan, np.nan)


def ratios(folder, skip=()) -> pd.DataFrame:
    """Every ratio with an interval in the CSV tables under `folder` (but those named in `skip`): table, row name,
    column, estimate, lo, hi, and the A/A control it is judged against (floor, floor_lo, floor_hi)."""
    folder, out = Path(folder), []
    for path in sorted(folder.rglob("*.csv")):
        if path.relative_to(folder).as_posix() in skip:
            continue
        frame = pd.read_csv(path)
        floors = aa_floors(folder / path.relative_to(folder).parts[0])
        # Outcomes of a run, not names of a comparison: the oracle table's k (the K its strategy chose), and a
        # drafter's label beside its mode (auto's label carries the mean K it chose: modes.label)
        names = [c for c in NAMES if c in frame and not (c == "k" and "strategy" in frame)
                 and not (c == "drafter" and "mode" in frame)]
        for est, lo, hi in ratio_columns(frame):
            for _, row in frame.iterrows():
                name = "; ".join(f"{c}={cell(row[c])}" for c in names if pd.notna(row[c]))
                out.append(dict(table=path.relative_to(folder).as_posix(), row=name, column=est,
                                est=row[est], lo=row[lo], hi=row[hi],
                                **dict(zip(("floor", "floor_lo", "floor_hi"), floor_of(row, floors)))))
    frame = pd.DataFrame(out, columns=["table", "row", "column", "est", "lo", "hi", "floor", "floor_lo", "floor_hi"])
    return frame[np.isfinite(frame[["est", "lo", "hi"]].astype(float)).all(axis=1)]


def verdict(est, lo, hi, floor=None) -> str:
    """Above 1, below 1 or no clear difference, by the interval and, given one, the A/A control `floor`."""
    return VERDICTS[beyond_floor((est, lo, hi), floor)]


def is_control(table: str, row: str, column: str) -> bool:
    """Whether a ratio is an A/A control: an experiment's aa_control.csv, a summary's aa_ column, or a row of the
    target alone timed again (its mode, or the decomposition's A/A effect)."""
    return Path(table).name == AA_FILE or column.startswith("aa_") or f"mode={A_A[0]}" in row or CONTROL in row


def carried(first, second) -> set[str]:
    """The tables byte for byte the same in both folders: carried along (a committed benchmark's), not measured
    twice, so their agreement says nothing."""
    first, second = Path(first), Path(second)
    names = {p.relative_to(first).as_posix() for p in first.rglob("*.csv")}
    return {n for n in names if (second / n).is_file() and (first / n).read_bytes() == (second / n).read_bytes()}


def compare(first, second) -> pd.DataFrame:
    """The ratios both runs measured (a row name repeated within a table is ambiguous and left out), side by side."""
    skip = carried(first, second)
    a, b = (ratios(f, skip).drop_duplicates(["table", "row", "column"], keep=False) for f in (first, second))
    both = a.merge(b, on=["table", "row", "column"], suffixes=("_first", "_second"))
    both["control"] = np.array([is_control(*r) for r in both[["table", "row", "column"]].values], dtype=bool)
    for side in ("first", "second"):
        read = [verdict(*r) for r in both[[f"est_{side}", f"lo_{side}", f"hi_{side}"]].values]
        both[f"interval_{side}"] = read
        both[f"verdict_{side}"] = [CONTROL if c else v for c, v in zip(both.control, read)]
        judged = [verdict(*r[:3], floor=r[3:]) for r in both[
            [f"{c}_{side}" for c in ("est", "lo", "hi", "floor", "floor_lo", "floor_hi")]].values]
        both[f"readout_{side}"] = [CONTROL if c else v for c, v in zip(both.control, judged)]
    both["flipped"] = both.verdict_first != both.verdict_second
    both["readout_flipped"] = both.readout_first != both.readout_second
    both["overlap"] = (both.lo_first <= both.hi_second) & (both.lo_second <= both.hi_first)
    return both


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m specdec.study.verdicts", description=__doc__.split("\n")[0])
    p.add_argument("first", help="one run's data/<target>/ folder")
    p.add_argument("second", help="another run's data/<target>/ folder")
    p.add_argument("--out", help="write every matched ratio, both verdicts and whether it flipped, to this CSV")
    args = p.parse_args(argv)
    both = compare(args.first, args.second)
    if args.out:
        both.to_csv(args.out, index=False)
    for r in both[both.flipped].itertuples():
        print(f"{r.table} [{r.row}] {r.column}: {r.est_first:.2f}x [{r.lo_first:.2f}, {r.hi_first:.2f}] "
              f"{r.verdict_first} -> {r.est_second:.2f}x [{r.lo_second:.2f}, {r.hi_second:.2f}] {r.verdict_second}"
              f" ({WITHIN if r.overlap else 'apart'})")
    effects, controls = both[~both.control], both[both.control]
    flips, turned = effects[effects.flipped], effects[effects.readout_flipped]
    biased = (controls.interval_first != NO_DIFFERENCE) | (controls.interval_second != NO_DIFFERENCE)
    print(f"{len(flips)} of {len(effects)} verdicts flipped (ratios with an interval in both runs): "
          f"{int(flips.overlap.sum())} {WITHIN} (the intervals overlap), {int((~flips.overlap).sum())} "
          f"apart; {len(controls)} A/A controls, never a verdict, {int(biased.sum())} of them with an interval off 1 "
          f"in a run")
    print(f"{len(turned)} of {len(effects)} flipped as the readouts judge them (an estimate inside the experiment's "
          f"A/A control is no clear difference): {int(turned.overlap.sum())} {WITHIN}, "
          f"{int((~turned.overlap).sum())} apart")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
