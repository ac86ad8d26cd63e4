"""pairing.sweep: the study's one resumable sweep loop, on fake cells (no model)."""
import contextlib
import json

import pytest

from specdec.models import load_pair
from specdec.study import bench, latency, pairing
from specdec.study.results import append_row

KEY = ("cell", "iteration")
COLUMNS = KEY + ("run_id", "attempt", "status")
BLOCKS = [[({"cell": c}, it) for c in block] for it in range(2) for block in (["a", "b"], ["c", "d"])]


class Timer:
    """A `begin` for pairing.sweep that writes one row per run; `fail`: cells whose runs fail; `stop_after`: the
    timer raises (as an interrupted sweep would) after that many blocks."""

    def __init__(self, path, name="run1", fail=(), stop_after=None):
        self.path, self.name, self.fail, self.stop_after = path, name, set(fail), stop_after
        self.begun, self.timed = 0, []

    @contextlib.contextmanager
    def __call__(self, todo):
        self.begun += 1
        run_id = self.name

        def time_block(block):
            if self.stop_after is not None and len(self.timed) == self.stop_after:
                raise KeyboardInterrupt
            self.timed.append([(c["cell"], it) for c, it in block])
            for cell, it in block:
                status = "failed" if cell["cell"] in self.fail else "ok"
                append_row(self.path, dict(cell, iteration=it, run_id=run_id, attempt=1, status=status), COLUMNS)
        yield time_block


def sweep(path, timer):
    return pairing.sweep(path, BLOCKS, timer, key=KEY, progress=False)


def test_a_sweep_times_every_block_once_in_order_and_a_finished_one_starts_nothing(tmp_path):
    path = tmp_path / "results.jsonl"
    first = Timer(path)
    rows = sweep(path, first)
    assert first.timed == [[(c["cell"], it) for c, it in b] for b in BLOCKS]
    assert [(r["cell"], r["iteration"]) for r in rows] == [(c["cell"], it) for b in BLOCKS for c, it in b]
    again = Timer(path, "run2")
    assert sweep(path, again) == rows
    assert again.begun == 0  # no provenance, no warm-up: nothing left leaves no trace


def test_a_failed_run_retimes_its_whole_block_and_a_cell_failing_in_two_sweeps_is_left(tmp_path):
    path = tmp_path / "results.jsonl"
    sweep(path, Timer(path, fail={"c"}))
    second = Timer(path, "run2", fail={"c"})
    rows = sweep(path, second)
    assert second.timed == [[("c", 0), ("d", 0)], [("c", 1), ("d", 1)]]  # c's blocks whole, d beside it again
    assert {r["cell"]: r["run_id"] for r in rows if r["cell"] in "cd"} == {"c": "run2", "d": "run2"}
    third = Timer(path, "run3")
    sweep(path, third)
    assert third.begun == 0  # c failed in two sweeps: its failed rows stand


def test_an_interrupted_sweep_keeps_its_rows_and_the_rerun_times_only_what_is_left(tmp_path):
    path = tmp_path / "results.jsonl"
    with pytest.raises(KeyboardInterrupt):
        sweep(path, Timer(path, stop_after=2))
    rest = Timer(path, "run2")
    rows = sweep(path, rest)
    assert rest.timed == [[(c["cell"], it) for c, it in b] for b in BLOCKS[2:]]
    assert len(rows) == 8 and {r["run_id"] for r in rows[:4]} == {"run1"}


@pytest.mark.parametrize("measure", ["bench", "latency"])
def test_the_study_sweeps_run_on_the_one_loop(measure, tmp_path, monkeypatch):
    calls = []
    loop = pairing.sweep
    monkeypatch.setattr(pairing, "sweep", lambda *a, **kw: calls.append(a[0]) or loop(*a, **kw))
    pair = load_pair("tiny-llama")
    if measure == "bench":
        bench.sweep(pair, tmp_path, modes=["baseline"], ks=(1,), max_new_tokens=(4,), iterations=1, warmup=False,
                    prompts=bench.load_prompts()[:1], progress=False)
    else:
        latency.measure(pair, tmp_path, ks=[1], context=8, repeats=1, warmup=False, progress=False)
    assert calls == [tmp_path / "results.jsonl"]
    assert [json.loads(line)["run_id"] for line in calls[0].read_text().splitlines()]  # it timed through the loop
