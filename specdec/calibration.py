"""The calibration a generation runs under, recorded, checked, and measured in quiet moments.

Three measurements make specdec fast on a machine and are cached per machine under machine.measurement_root(): the
linear plans (specdec.linear), auto's price list (specdec.costs) and the quantized kernel's tuning (specdec.qkernel:
prefetch distances, the AMX crossover). This module is their ledger and their check, and imports nothing of
specdec but machine:

- Recorded: linear, costs and qkernel `note` every plan, cost entry and tuning they use, with where it came from (measured in
  this process, or loaded from the cache and when it was measured there, and whether the machine was busy then).
  `snapshot()` is that record with an id (a hash of the entries), for provenance; every generation's stats carry
  the id (`calibration_id`).
- Checked: after every generation the engine compares the time of its rounds (decode time less the draft's prefill,
  which no curve prices) with what the cost curve predicts for
  the rounds it ran (`check`). A generation more than SLOW x the prediction is marked in its stats; after
  CONSISTENT such generations in a row for one (models, batch), or when an entry in use was measured on a busy
  machine, the calibration of those models is `stale` and the engine measures it again before the next
  generation (never inside a timed one), unless the machine looks busy now (then it says so and keeps it).
  SPECDEC_CALIBRATION=fixed keeps every calibration as it is (the study: it re-measures only between
  experiments, so no comparison mixes calibrations); the check and the marks still happen.
- Measured in quiet moments (`Quiet`): `python -m specdec calibrate`, the draft's dtype (specdec.devices) and a
  quantized pair's draft precision (specdec.quantize; both through `cached_choice`) time
  each measurement when other processes leave the CPU, and again when one overlapped it, within a budget of waiting;
  `save` writes a snapshot beside the rows or report that name it.
"""
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

from .machine import BUSY_CORES, busy, cpu_clock, machine_key, others_cpu, others_since, read_cache, write_cache

SLOW = 1.5           # a generation this much slower than its calibration predicts is a sign of a stale one
CONSISTENT = 2       # ... this many generations in a row, for the same models and batch size
MIN_JUDGED_S = 0.2   # generations predicted shorter than this are noise-dominated: not judged
LEDGER = {"linear": {}, "costs": {}, "kernel": {}}  # kind -> key -> {"entry", "source", "measured_utc", "busy"}
_slow_in_a_row, _stale, _told = {}, set(), set()
_busy_read = None  # (monotonic time, busy) of the last reading


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def note(kind: str, key: str, entry: dict, measured: bool):
    """Record that `entry` (a plan or a cost curve, as stored in the cache) is in use, and where it came from."""
    if not measured and LEDGER[kind].get(key, {}).get("entry") == entry:
        return  # the same entry again (e.g. measured a moment ago in this process): keep where it came from
    source = "measured in this process" if measured else "loaded from the cache"
    LEDGER[kind][key] = dict(entry=entry, source=source, measured_utc=entry.get("measured_utc"),
                             busy=entry.get("busy"))


def snapshot(kinds=tuple(LEDGER)) -> dict:
    """{"id", "machine_key", "linear": {...}, "costs": {...}, "kernel": {...}}: what this process ran under so far."""
    record = {kind: dict(sorted(LEDGER[kind].items())) for kind in kinds}
    entries = {k: {key: v["entry"] for key, v in r.items()} for k, r in record.items()}
    blob = json.dumps(json.loads(json.dumps(entries)), sort_keys=True)  # as stored: int keys become strings
    return dict(id=hashlib.sha256(blob.encode()).hexdigest()[:12], machine_key=machine_key(), **record)


def save(folder, snap: dict) -> str:
    """<folder>/calibration-<id>.json for a snapshot() that rows or a report name (kept if already there); its id."""
    path = Path(folder) / f"calibration-{snap['id']}.json"
    if not path.is_file():
        path.write_text(json.dumps(snap, indent=1, sort_keys=True))
    return snap["id"]


def busy_now(max_age=30.0) -> bool:
    """machine.busy(), read at most once per `max_age` seconds (a measurement of many shapes asks often)."""
    global _busy_read
    if _busy_read is None or time.monotonic() - _busy_read[0] > max_age:
        _busy_read = (time.monotonic(), busy())
    return _busy_read[1]


def stamp(entry: dict) -> dict:
    """A freshly measured entry, with when and whether the machine was busy while it was measured."""
    return dict(entry, measured_utc=now(), busy=busy_now())


QUIET_S = 120.0  # the most `python -m specdec calibrate` waits, in all, for other processes to leave the CPU
TRIES = 3        # runs of one measurement at most, while other processes overlap them
READING_S = 0.3  # how long a reading of other processes' CPU use before a measurement lasts


class Quiet:
    """Measurements in quiet moments: `measure` waits (while its budget of seconds spent waiting lasts) until other
    processes use at most BUSY_CORES, runs, and runs again (fresh) when they overlapped the run, up to TRIES runs.
    It says so the first time it waits (not at every wait: a steady load would repeat it per measurement).
    again: how many runs were repeated; waited_s: seconds spent waiting; kept_under_load: the most cores others used
    during a run it kept."""

    def __init__(self, budget, say):
        self.budget, self.say, self.again, self.waited_s, self.kept_under_load = budget, say, 0, 0.0, 0.0
        self.told = False

    def wait(self):
        while self.budget > 0:
            used = others_cpu(READING_S)
            if used <= BUSY_CORES:
                return
            self.budget -= READING_S
            self.waited_s += READING_S
            if not self.told:
                self.say(f"  other processes use {used:.1f} cores: waiting for quiet moments (up to "
                         f"{max(self.budget, 0):.0f} s more in all)")
                self.told = True

    def measure(self, what, run):
        """run(fresh) -> its result, from a run that other processes did not overlap if one can be had."""
        for attempt in range(TRIES):
            self.wait()
            clock = cpu_clock()
            result = run(attempt > 0)
            # over at least a reading's length: a small shape's pass takes tens of milliseconds, where one ~10 ms tick
            # of CPU time counted on the wrong side reads as a fifth of a core (one disturbed pass: the median's job)
            used = others_since(clock, window=READING_S)
            if used <= BUSY_CORES or self.budget <= 0 or attempt == TRIES - 1:
                self.kept_under_load = max(self.kept_under_load, used)
                return result
            self.say(f"  {what}: other processes used {used:.1f} cores while it was measured: measuring it again")
            self.again += 1


def measured_busy(entry) -> bool:
    """A cached entry measured while the machine was busy, and the machine is idle now: measure it again."""
    return bool(entry and entry.get("busy")) and not busy_now(max_age=0)


LOAD_QUIET_S = 30.0  # the most loading a model waits, in all, for quiet moments to time a choice (e.g. its dtype)


def cached_choice(file, machine, key, measure, what) -> dict:
    """The entry `measure()` makes for `key`, from this machine's cache `file` (under `machine`, its plan key), or
    measured now in quiet moments (waiting LOAD_QUIET_S at most, said on stderr), stamped with whether the machine
    was busy, and cached; an entry measured on a busy machine is measured again once the machine is idle (unless
    SPECDEC_CALIBRATION=fixed: a study keeps what it started with)."""
    entry = read_cache(file).get(machine, {}).get(key)
    if entry is None or (measured_busy(entry) and healing()):
        quiet = Quiet(LOAD_QUIET_S, lambda line: print(f"specdec: {line.strip()}", file=sys.stderr, flush=True))
        entry = stamp(quiet.measure(what, lambda fresh: measure()))
        write_cache(file, machine, {key: entry})
    return entry


def healing() -> bool:
    value = os.environ.get("SPECDEC_CALIBRATION", "heal").lower()
    if value not in ("heal", "fixed"):
        raise ValueError(f"SPECDEC_CALIBRATION={value!r} is unknown; use heal (the default) or fixed")
    return value == "heal"


def check(key: str, predicted_s, decode_s: float) -> dict:
    """Judge one generation of (models, batch) `key`: the time of its rounds against the prediction (None: no cost
    curve for these models). Returns the stats it adds; marks `key` stale after CONSISTENT slow ones."""
    stats = dict(calibration_id=snapshot()["id"], predicted_decode_s=predicted_s, calibration_ratio=None,
                 calibration_suspect=False)
    if predicted_s is None or predicted_s < MIN_JUDGED_S:
        return stats
    ratio = decode_s / predicted_s
    slow = ratio > SLOW
    _slow_in_a_row[key] = _slow_in_a_row.get(key, 0) + 1 if slow else 0
    if _slow_in_a_row[key] >= CONSISTENT:
        _stale.add(key)
    return dict(stats, calibration_ratio=ratio, calibration_suspect=slow)


def stale(key: str, kinds_in_use) -> bool:
    """Whether the calibration of `key` should be measured again: generations ran consistently slower than it
    predicts, or an entry it uses (`kinds_in_use`: [(kind, entry key)]) was measured on a busy machine."""
    return key in _stale or any(LEDGER[kind].get(k, {}).get("busy") for kind, k in kinds_in_use)


def may_remeasure(key: str, name: str) -> bool:
    """Measuring now is allowed (healing on) and sound (the machine is not busy). Says once per key why not;
    `name` says which models in words."""
    if not healing():
        return False
    if busy_now(max_age=0):
        tell(key, f"specdec: the calibration of {name} looks stale, but other processes are using the CPU: kept "
                  f"as it is (measured again on a later generation, when the machine is idle)")
        return False
    tell(key + " healed", f"specdec: the calibration of {name} looks stale (generations ran over {SLOW}x its "
                          f"prediction, or it was measured on a busy machine): measuring it again")
    return True


def healed(key: str):
    _stale.discard(key)
    _slow_in_a_row[key] = 0


def tell(once_key: str, message: str):
    if once_key not in _told:
        _told.add(once_key)
        print(message, file=sys.stderr)
