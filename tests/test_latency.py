"""The order verification latency is timed in: shuffled per repeat, reproducible from the seed, recorded."""
import json

from specdec.models import load_pair
from specdec.study import latency
from specdec.study.pairing import run_order

KS = [1, 2, 3, 4, 5, 6, 7, 8]


def blocks(order):
    """[(repeat, k, mode), ...] -> one list of (k, mode) per repeat."""
    out = {}
    for r, k, m in order:
        out.setdefault(r, []).append((k, m))
    return [out[r] for r in sorted(out)]


def test_every_repeat_times_every_cell_once_in_its_own_order():
    order = latency.latency_order(KS, 5, seed=0)
    per_repeat = blocks(order)
    assert len(per_repeat) == 5 and [r for r, _, _ in order] == sorted(r for r, _, _ in order)  # repeats outermost
    ascending = [(k, m) for k in KS for m in latency.MODES]  # the order the committed study timed every repeat in
    assert all(sorted(b) == sorted(ascending) for b in per_repeat)
    assert len({tuple(b) for b in per_repeat}) == 5  # no two repeats in the same order
    assert ascending not in per_repeat


def test_the_order_is_reproducible_from_the_seed_and_its_own_stream():
    assert latency.latency_order(KS, 3, seed=7) == latency.latency_order(KS, 3, seed=7)
    assert latency.latency_order(KS, 3, seed=7) != latency.latency_order(KS, 3, seed=8)
    # not bench.run_order's stream: the two experiments do not share one random sequence
    cells = [dict(k=k, mode=m) for k in KS for m in latency.MODES]
    sweep = [(c["k"], c["mode"]) for c, _ in run_order(cells, 3, seed=7)]
    assert [(k, m) for _, k, m in latency.latency_order(KS, 3, seed=7)] != sweep


def test_measure_times_in_that_order_and_records_it(tmp_path):
    pair = load_pair("tiny-llama")
    latency.measure(pair, tmp_path, ks=[1, 2, 3], context=8, repeats=3, seed=5, warmup=False, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [(r["repeat"], r["k"], r["mode"]) for r in rows] == latency.latency_order([1, 2, 3], 3, seed=5)
    (prov,) = tmp_path.glob("provenance-*.json")
    params = json.loads(prov.read_text())["params"]
    assert params["order"] == "latency_order" and params["order_seed"] == 5
    assert params["order_rng"] == [5, latency.ORDER_STREAM]


def test_a_forward_written_twice_is_returned_once(tmp_path):
    """A results.jsonl holding one forward's row twice (a copy merged in, a run killed after its write) returns one
    row per (K, mode, repeat): the last, and a rerun times nothing."""
    pair = load_pair("tiny-llama")
    kw = dict(ks=[1, 2], context=8, repeats=2, seed=0, warmup=False, progress=False)
    first = latency.measure(pair, tmp_path, **kw)
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines + [lines[0]]) + "\n")
    again = latency.measure(pair, tmp_path, **kw)
    assert len(again) == len(first) == 2 * 2 * len(latency.MODES)
    assert not again.duplicated(["k", "mode", "repeat"]).any()
    assert len(path.read_text().splitlines()) == len(lines) + 1  # nothing timed again
