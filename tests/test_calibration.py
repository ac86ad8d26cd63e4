"""Calibration (specdec.calibration): recorded, checked against every generation, healed when it is wrong, and
stored in cache files that several processes can share."""
import json
import multiprocessing
import subprocess
import sys
import time

import pytest
import torch

import specdec
from specdec import calibrate, calibration, costs, linear, machine, qkernel
from specdec.models import load_pair
from conftest import cpu_only


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    monkeypatch.setattr(linear, "PLANS", linear.Plans())
    for kind in calibration.LEDGER.values():
        kind.clear()
    calibration._stale.clear()
    calibration._slow_in_a_row.clear()


def write_many(tag, n):
    for i in range(n):
        machine.write_cache("shared.json", f"{tag}-{i}", {"value": i})


def test_two_processes_writing_at_once_keep_every_entry(tmp_path):
    ctx = multiprocessing.get_context("spawn")  # each with its own interpreter, as two study runs would be
    procs = [ctx.Process(target=write_many, args=(tag, 40)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    data = json.loads((tmp_path / "shared.json").read_text())
    assert set(data) == {f"{t}-{i}" for t in "ab" for i in range(40)}
    assert not list(tmp_path.glob("*.tmp"))  # every temp file was renamed into place


def test_a_corrupt_cache_file_is_reported_and_replaced(tmp_path, capsys):
    (tmp_path / linear.CACHE).write_text('{"half a file": ')
    plans = linear.Plans().get(torch.randn(12, 8))
    assert "corrupt" in capsys.readouterr().err and set(plans) == {"fast", "lean"}
    assert json.loads((tmp_path / linear.CACHE).read_text())  # valid again, with the new entry


def test_the_machine_key_names_the_cpu_features_and_cores():
    key = machine.machine_key()
    assert f"{machine.cpu_features()}" in key and "cores" in key and "threads" in key


@cpu_only
def test_a_slow_plan_is_flagged_and_healed_with_unchanged_output(monkeypatch, capsys):
    """A plan file that sends every product down a slow path (here `linear`, made slow on purpose): the
    generations run over SLOW x their prediction, are marked, and the plans are measured again before the
    generation after the second such one; the tokens never change."""
    monkeypatch.setattr(calibration, "MIN_JUDGED_S", 0.0)
    # The slow plan runs ~19x its prediction and a sound one 0.6-0.8x, but a 16-token generation of the tiny models
    # lasts ~50 ms, so a shared CI machine can push a sound one past the default 1.5x: judge at 5x here.
    monkeypatch.setattr(calibration, "SLOW", 5.0)
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: False)  # an idle machine
    run_path = linear.run_path

    def slow_linear(path, *args):
        if path == "linear":
            time.sleep(0.002)
        return run_path(path, *args)
    monkeypatch.setattr(linear, "run_path", slow_linear)
    monkeypatch.setattr(linear, "PATHS", ("linear", "wxt", "xwt"))
    pair = load_pair("tiny-llama")  # float32: it takes the linear path (float64 models do not)
    ids = [pair.tokenizer.encode("The quick brown fox")]
    run = lambda: specdec.generate(pair.target, ids, draft=pair.draft, k="auto", max_new_tokens=16)
    first = run()  # measures plans (avoiding the slow path) and auto's costs
    assert not first.stats["calibration_suspect"]
    cache = machine.measurement_root() / linear.CACHE
    table = json.loads(cache.read_text())
    for plans in table.values():  # the deliberately slow plan, as a busy machine might have measured it
        for entry in plans.values():
            entry.update({half: {r: "linear" for r in entry[half]} for half in ("fast", "lean")})
    cache.write_text(json.dumps(table))
    linear.PLANS.table = None  # as a new process would read it
    later = [run() for _ in range(3)]
    assert [r.stats["calibration_suspect"] for r in later] == [True, True, False]
    assert later[0].stats["calibration_ratio"] > calibration.SLOW
    healed = {shape: e for plans in json.loads(cache.read_text()).values() for shape, e in plans.items()}
    in_use = {key for _, key in linear.plans_in_use([pair.target, pair.draft])}
    assert in_use and all(set(healed[shape]["fast"].values()) != {"linear"} for shape in in_use)
    assert later[2].stats["calibration_id"] != later[0].stats["calibration_id"]
    assert all(r.tokens == first.tokens for r in later)
    assert "measuring it again" in capsys.readouterr().err


def test_a_fixed_calibration_is_flagged_but_kept(monkeypatch):
    monkeypatch.setenv("SPECDEC_CALIBRATION", "fixed")
    calibration._stale.add("k")
    assert not calibration.may_remeasure("k", "these models")
    monkeypatch.setenv("SPECDEC_CALIBRATION", "sometimes")
    with pytest.raises(ValueError, match="SPECDEC_CALIBRATION"):
        calibration.healing()


def test_the_snapshot_says_where_each_entry_came_from():
    weight = torch.randn(16, 8)
    linear.PLANS.get(weight)
    snap = calibration.snapshot()
    (entry,) = snap["linear"].values()
    assert entry["source"] == "measured in this process" and entry["measured_utc"] and "busy" in entry
    linear.PLANS.get(weight)  # used again in this process: still "measured in this process"
    assert next(iter(calibration.snapshot()["linear"].values()))["source"] == "measured in this process"
    for kind in calibration.LEDGER.values():  # a second process: from the cache
        kind.clear()
    linear.Plans().get(weight)
    again = calibration.snapshot()
    assert next(iter(again["linear"].values()))["source"] == "loaded from the cache"
    assert again["id"] == snap["id"]  # the same plan: the same calibration


@cpu_only
def test_calibrate_prints_its_choices_and_warns_beside_a_busy_process(capsys):
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 60: pass"])
    try:
        time.sleep(0.5)
        lines = calibrate.run("tiny-llama", quiet_s=0)  # no waiting for the spinner to end
    finally:
        spin.kill()
        spin.wait()
    text = "\n".join(lines)
    assert "linear 64x64 float32: 1" in text and "prices at batch 1" in text and "calibration " in text
    assert "warning: before measuring, other processes used" in text
    assert capsys.readouterr().out.strip().splitlines() == lines  # printed as it went


def dtype_chosen(monkeypatch):
    """tiny-llama's draft dtype chosen and cached as measured idle (so calibrate.run's load_pair does not time it
    again, which would spend the patched readings below)."""
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: False)
    load_pair("tiny-llama")


def idle(monkeypatch, others_cpu):
    """Other processes' CPU use as `others_cpu` reads it: before calibrate measures (its warning) and before each
    measurement (calibration.Quiet)."""
    monkeypatch.setattr(calibrate, "others_cpu", others_cpu)
    monkeypatch.setattr(calibration, "others_cpu", others_cpu)


def test_calibrate_warns_of_load_while_measuring_only_when_it_measured(monkeypatch):
    dtype_chosen(monkeypatch)
    idle(monkeypatch, lambda seconds=0.3: 0.0)  # idle before each run
    # the ledger's own busy stamp reads the real machine: idle here, or a stray load would mark the first run's
    # entries busy and the second run would measure them again (a flaky test on a shared machine)
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: False)
    load = {"cores": 0.0}
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: load["cores"])
    assert "warning" not in "\n".join(calibrate.run("tiny-llama"))  # measured while idle
    load["cores"] = 5.0
    for kind in calibration.LEDGER.values():  # as in a new process: its ledger knows only what it measured
        kind.clear()
    cached = "\n".join(calibrate.run("tiny-llama"))  # busy, but all from the cache: nothing to spoil
    assert " 0 entries measured now" in cached and "warning" not in cached
    forced = "\n".join(calibrate.run("tiny-llama", force=True))  # measured under that load: said
    assert " 0 entries measured now" not in forced and "warning: while it measured" in forced


def test_calibrate_waits_for_a_quiet_moment_and_measures_again_what_a_burst_overlapped(monkeypatch):
    dtype_chosen(monkeypatch)  # the readings below are the plans'
    readings = iter([1.5, 1.5] + [0.0] * 1000)  # others_cpu: before measuring, busy, then quiet
    idle(monkeypatch, lambda seconds=0.3: next(readings))
    bursts = iter([2.0] + [0.0] * 1000)  # others_since: a burst overlapped the first measurement
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: next(bursts))
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: False)
    text = "\n".join(calibrate.run("tiny-llama", force=True))
    assert "other processes use 1.5 cores: waiting for quiet moments" in text
    lines = text.splitlines()
    again = next(i for i, line in enumerate(lines) if "measuring it again" in line)
    assert text.count("measuring it again") == 1  # the overlapped measurement (the plans' first pass), run again
    assert lines[again].startswith("  linear ") and ", pass 1 of " in lines[again]  # the first shape's first pass
    assert "linear 64x64 float32: " in "\n".join(lines[again + 1:])
    assert "(timed passes run again because load overlapped them: 1)" in text
    assert "warning: while it measured" not in text


def test_the_quiet_budget_is_spent_only_on_waiting(monkeypatch):
    """Loading models and measuring take minutes: a budget that counted them left nothing to wait or retry with."""
    idle(monkeypatch, lambda seconds=0.3: 0.0)
    bursts = iter([2.0, 0.0])  # a burst overlapped the first run
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: next(bursts))
    quiet = calibration.Quiet(0.2, print)
    assert quiet.measure("m", lambda fresh: time.sleep(0.3) or fresh) is True  # the second run's result
    assert quiet.again == 1 and quiet.budget == 0.2


def test_a_steady_load_is_measured_through_once_the_wait_is_spent_and_said(monkeypatch):
    dtype_chosen(monkeypatch)
    idle(monkeypatch, lambda seconds=0.3: 1.0)
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: 1.0)
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: True)
    start = time.monotonic()
    text = "\n".join(calibrate.run("tiny-llama", force=True, quiet_s=0.5))
    assert time.monotonic() - start < 60 and "measuring it again" not in text  # the budget is spent: no retries
    assert "warning: while it measured, other processes used 1.0 cores" in text


def test_a_steady_load_is_said_once_and_the_wait_counted(monkeypatch):
    idle(monkeypatch, lambda seconds=0.3: 1.5)
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: 0.0)
    said = []
    quiet = calibration.Quiet(1.0, said.append)
    for _ in range(3):  # three measurements under the same load: one line, not three
        quiet.measure("m", lambda fresh: None)
    assert len(said) == 1 and "waiting for quiet moments" in said[0]
    assert quiet.budget <= 0 and quiet.waited_s == pytest.approx(1.2)


def test_a_choice_made_by_timing_is_timed_in_a_quiet_moment_cached_and_timed_again_if_it_was_busy(monkeypatch):
    idle(monkeypatch, lambda seconds=0.3: 0.0)
    bursts = iter([2.0, 0.0, 0.0])  # a burst overlapped the first timing: timed again
    monkeypatch.setattr(calibration, "others_since", lambda clock, window=0.0: next(bursts))
    busy = {"now": True}
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: busy["now"])
    timed = []
    measure = lambda: timed.append(len(timed)) or dict(choice=f"run {len(timed)}")
    first = calibration.cached_choice("choices.json", "machine", "draft", measure, "timing")
    assert first["choice"] == "run 2" and first["busy"] is True and first["measured_utc"]
    assert calibration.cached_choice("choices.json", "machine", "draft", measure, "timing") == first  # busy now too
    busy["now"] = False  # the machine went idle: a choice measured busy is measured again, and kept ...
    monkeypatch.setenv("SPECDEC_CALIBRATION", "fixed")  # ... unless a study holds its calibration fixed
    assert calibration.cached_choice("choices.json", "machine", "draft", measure, "timing") == first
    monkeypatch.delenv("SPECDEC_CALIBRATION")
    again = calibration.cached_choice("choices.json", "machine", "draft", measure, "timing")
    assert again["choice"] == "run 3" and again["busy"] is False and len(timed) == 3
    assert calibration.cached_choice("choices.json", "machine", "draft", measure, "timing") == again


def test_a_sweep_records_the_calibration_of_its_rows(tmp_path):
    from specdec.study import bench, results
    pair = load_pair("tiny-llama")
    prompts = [dict(id="a", category="qa", text="Why is the sky blue?")]
    rows = bench.sweep(pair, tmp_path, modes=("baseline", "auto"), ks=(2,), max_new_tokens=(6,), prompts=prompts,
                       iterations=1, warmup=False, progress=False)
    ids = set(rows["calibration_id"])
    assert ids and all((tmp_path / f"calibration-{i}.json").is_file() for i in ids)
    (prov,) = tmp_path.glob("provenance-*.json")
    record = json.loads(prov.read_text())
    assert record["cpu_features"] in record["machine_key"] and record["cpu_cores"] >= 1
    assert set(record["calibrations"]) == ids  # the provenance names the calibrations its rows ran under
    lines = results.describe_calibrations(tmp_path, rows.to_dict("records"))
    assert len(lines) == len(ids) and all("Plans: " in line and machine.machine_key() in line for line in lines)


def test_the_calibration_lines_name_the_kernels_tuning(tmp_path):
    from specdec.study import results
    tuning = dict(prefetch={"2": [1024, 4096], "3": [1024, 0]}, amx_from=6, measured_utc="2026-12-06T06:00:00+00:00",
                  busy=False)
    snap = dict(id="abc", machine_key="m", linear={}, costs={},
                kernel={"m | k": dict(entry=tuning, source="loaded from the cache", measured_utc=None, busy=False)})
    (tmp_path / "calibration-abc.json").write_text(json.dumps(snap))
    (line,) = results.describe_calibrations(tmp_path, [dict(calibration_id="abc")])
    assert line.endswith("Quantized kernel's tuning: prefetch AVX-512 VNNI 1024 B into L1 and 4096 B into L2, "
                         "AMX 1024 B into L1; AMX from 6 rows")
    assert results.tuning_words(dict(prefetch={}, amx_from=qkernel.NEVER)) == "prefetch none; no AMX"


@cpu_only
def test_costs_are_measured_on_the_path_generations_take(monkeypatch):
    """A cost curve measured outside generate (python -m specdec calibrate, a heal) must time the measured linear
    path, not torch's default: it is stored under the linear mode the generations run with."""
    calls = []
    run_path = linear.run_path
    monkeypatch.setattr(linear, "run_path", lambda path, *a: calls.append(path) or run_path(path, *a))
    pair = load_pair("tiny-llama")  # float32
    calls.clear()  # (loading timed the draft's dtype on the path already)
    costs.price_list(pair.target, pair.draft, 1, fresh=True)
    assert calls  # every forward went through the planned path
    assert all("forward" not in m.__dict__ for m in linear.linears([pair.target, pair.draft]))  # restored after


def test_machines_that_differ_only_in_cpu_family_get_different_keys(monkeypatch):
    """A Zen 4 and a Zen 5 EPYC report the same name and features; their family tells them apart."""
    info = {"vendor_id": "AuthenticAMD", "cpu family": "25", "model": "17", "stepping": "1", "model name": "AMD EPYC",
            "flags": "avx2 fma avx512f avx512_vnni avx512_bf16"}
    monkeypatch.setattr(machine, "cpuinfo", info.get)
    zen4 = machine.machine_key()
    monkeypatch.setattr(machine, "cpuinfo", dict(info, **{"cpu family": "26", "model": "2"}).get)
    assert machine.machine_key() != zen4 and "family 26" in machine.machine_key() and "family 25" in zen4


def test_the_suite_cannot_reach_the_users_measurements(monkeypatch):
    """conftest's guard: with the variable pointing back at the user's folder, a read fails loudly."""
    monkeypatch.delenv("SPECDEC_MEASUREMENTS")
    monkeypatch.delenv("SPECDEC_CACHE", raising=False)
    with pytest.raises(AssertionError, match="user's measurements"):
        machine.read_cache(linear.CACHE)
