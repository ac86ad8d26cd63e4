"""Paired timing: the runs a comparison divides are timed back to back, in the same machine state.

These shared machines change speed by ~25% within minutes. A sweep therefore times in blocks: a block is every
cell of one prompt group (same prompts, length, sampling; any mode, K or verify setting), at one iteration. A
block's runs go consecutively, in a seeded random order within the block, and the blocks of an iteration in a
seeded random order (a randomised complete block design). A speedup is a ratio inside one block: a mode's run
over the target alone's run of the same block (results.PAIRED_ON + iteration).

A block whose runs disagree with their calibration's prediction (specdec.calibration: the measured rounds over
the time the cost curves predict, taken relative to what is typical for the run's mode) is timed again, up to
MAX_ATTEMPTS times: one run far slower than expected, or runs whose ratios differ as much as the machine's two
speed states do, mean the pair straddled a change of state.
The rows of every attempt stay in results.jsonl (column `attempt`); the latest attempt is the one summarised.
"""
import sys
from pathlib import Path

import numpy as np

from .progress import bar as progress_bar
from .results import KEY, PAIRED_ON, end_torn_line, read_rows

MAX_ATTEMPTS = 3   # a block is timed at most this many times
# Both thresholds sit above ordinary run-to-run noise: on a 2-core Zen 4 EPYC (family 25), back-to-back runs of
# the same work (the A/A control's pairs) took up to 1.32x each other's time, and a rule at 1.3x re-timed 4 of 9
# blocks without any change of state. A disturbed run (the example: 3.96x its prediction) is far above.
DISTURBED = 1.6    # a run over 1.6x its mode's typical ratio was disturbed
SPREAD = 1.6       # runs of one block whose relative ratios differ by more ran in different machine states


def block_of(cell) -> tuple:
    """What a cell is compared on: its prompt group and setting, without mode, K, verify or draft dtype."""
    return tuple(cell.get(c) for c in PAIRED_ON)


def run_order(cells, iterations, seed=0) -> list[tuple]:
    """The order a sweep times its (cell, iteration) pairs in: per iteration, the blocks in a seeded random order,
    each block's cells consecutively in a seeded random order of their own. Deterministic in `seed` (record it
    with the rows). Returns [(cell, iteration), ...]."""
    rng = np.random.default_rng([seed, 11])  # its own stream: independent of the sampling seed's uses
    blocks = {}
    for cell in cells:
        blocks.setdefault(block_of(cell), []).append(cell)
    groups = list(blocks.values())
    order = []
    for it in range(iterations):
        for b in rng.permutation(len(groups)):
            order += [(groups[b][i], it) for i in rng.permutation(len(groups[b]))]
    return order


def blocks_in_order(order) -> list[list[tuple]]:
    """run_order's list cut into its blocks: consecutive (cell, iteration) of one block and iteration."""
    out = []
    for cell, it in order:
        if out and (block_of(out[-1][-1][0]), out[-1][-1][1]) == (block_of(cell), it):
            out[-1].append((cell, it))
        else:
            out.append([(cell, it)])
    return out


def not_consecutive(rows, block=block_of) -> list[tuple]:
    """The timings (block, iteration, attempt, run) whose rows, in the order they were written, are not one
    consecutive stretch: pairs that were not timed back to back. [] for a paired sweep's results.jsonl.
    `block`: a row's block (llamacpp.block_of for llama.cpp's sweep, which blocks by prompt alone)."""
    seen, last, broken = set(), None, []
    for row in rows:
        timing = (block(row), row.get("iteration"), row.get("attempt"), row.get("run_id"))
        if timing != last and timing in seen and timing not in broken:
            broken.append(timing)
        seen.add(timing)
        last = timing
    return broken


def config_of(row) -> tuple:
    """(mode, K): what a run's calibration ratio is typical of (each fixed K errs by its own steady factor)."""
    return row.get("mode"), row.get("k")


def disturbed(rows, typical=None) -> str:
    """Why a block's rows (one attempt) should be timed again, or '' if they should not. Each run's calibration
    ratio (measured rounds / predicted) is taken relative to its configuration's typical ratio (`typical`:
    {config_of(row): median ratio of that configuration's earlier runs in this sweep}), so a cost model that is off
    by a steady factor for one mode or K is not read as a change of machine state. Timed again: a run over DISTURBED x
    its configuration's typical ratio, or relative ratios more than SPREAD apart within the block. Rows without a
    prediction (HF references, failed runs) or whose configuration has no typical ratio yet (its first runs of the
    sweep) are not judged."""
    typical = typical or {}
    relative = [r["calibration_ratio"] / typical[config_of(r)] for r in rows
                if r.get("status") == "ok" and r.get("calibration_ratio") and typical.get(config_of(r))]
    worst = max(relative, default=0.0)
    if worst > DISTURBED:
        return f"a run took {worst:.2f}x its expected time"
    if len(relative) >= 2 and max(relative) / min(relative) > SPREAD:
        return f"its runs took {min(relative):.2f}x to {max(relative):.2f}x their expected times"
    return ""


# -- the sweep: which blocks are still to time, and timing them ----------------------------------------------------

def key_of(row, key=KEY) -> tuple:
    """A (cell, iteration)'s identity in results.jsonl (`key`: its columns; llama.cpp's sweep has its own)."""
    return tuple(row.get(c) for c in key)


def last_timing(rows, key=KEY) -> dict:
    """{key: row}: each (cell, iteration)'s row from its latest timing, failed or not, so that a block's rows all
    come from the same timing (an ok row of an earlier attempt never stands in for a cell that failed later)."""
    return {key_of(r, key): r for r in rows}


def failing_in_two_runs(rows, latest, key=KEY) -> set:
    """Keys whose latest row (`latest`: last_timing(rows)) failed and that have failed rows from two or more sweeps
    (run ids). Rows without a status (latency's timings) count as ok."""
    runs = {}
    for r in rows:
        if r.get("status", "ok") != "ok":
            runs.setdefault(key_of(r, key), set()).add(r.get("run_id"))
    return {k for k, ids in runs.items() if len(ids) >= 2 and latest[k].get("status", "ok") != "ok"}


def timed_together(block, latest, hopeless=frozenset(), key=KEY) -> bool:
    """Whether a block's latest rows all exist, were timed together (one run, one attempt), and are ok, or failed
    where failing persists (`hopeless`: failing_in_two_runs)."""
    keys = [key_of(dict(c, iteration=i), key) for c, i in block]
    rows = [latest.get(k) for k in keys]
    return (all(r is not None and (r.get("status", "ok") == "ok" or k in hopeless) for k, r in zip(keys, rows))
            and len({(r.get("run_id"), r.get("attempt")) for r in rows}) == 1)


def sweep(path, blocks, begin, *, key=KEY, defaults=None, unit="run", progress=True) -> list[dict]:
    """The study's one resumable sweep loop (bench.sweep, latency.measure and llamacpp.sweep run on it).

    `blocks`: the sweep's (cell, iteration) runs cut into blocks, in the order they are timed. A block is kept when
    its latest rows in `path` (a results.jsonl) are ok and were timed together (timed_together); any other is timed
    whole again, so a resumed sweep never pairs a run with one of another machine state. A cell that failed in two
    sweeps is left as it is (a failure that persists is not worth a re-timing on every rerun).
    `begin(todo)`: a context manager around the timing (provenance, warm-up, what the runs share) that yields a
    function timing one block and appending its rows (results.append_row: fsynced, so a kill loses no finished
    row). A sweep with nothing left to time never calls it, so it leaves no trace. Rows without a status count as
    ok; `defaults` fills columns older rows lack (results.read_rows). Returns each (cell, iteration)'s latest row,
    in `blocks`' order."""
    path = Path(path)
    end_torn_line(path)
    written = read_rows(path, defaults)
    latest = last_timing(written, key)
    hopeless = failing_in_two_runs(written, latest, key)
    if hopeless:
        print(f"specdec.study: {len(hopeless)} cell(s) of {path.parent.name} failed in two sweeps; not timed again "
              f"(their failed rows stand; delete them from {path.name} to retry)", file=sys.stderr)
    todo = [b for b in blocks if not timed_together(b, latest, hopeless, key)]
    if todo:
        total = sum(map(len, blocks))
        with begin(todo) as time_block:
            bar = progress_bar(path.parent.name, total, done=total - sum(map(len, todo)), unit=unit, enabled=progress)
            for block in todo:
                time_block(block)
                bar.update(len(block))
            bar.close()
        latest = last_timing(read_rows(path, defaults), key)
    mine = [key_of(dict(cell, iteration=iteration), key) for block in blocks for cell, iteration in block]
    return [latest[k] for k in mine if k in latest]
