"""Choosing the fastest of several ways to run one thing on a machine whose speed drifts (the linear paths, the
draft's dtype, the draft's precision), so that two calibrations minutes apart choose alike.

A shared virtual machine changes speed by ~25% within minutes, so times taken at different moments are not
comparable: the candidates run interleaved, one call of each per pass, and are compared within each pass (one
machine state). A candidate replaces the default only when its paired time ratio beats the default's by `gain`
plus the ratios' own spread, and among candidates within that margin of each other a fixed order of
preference decides: a win inside the noise is not a decision, and a choice made by preference there costs at
most the margin.
"""
import time

import numpy as np

MAX_SPREAD = 0.25  # the most extra margin noise adds (a candidate twice as fast still wins on a noisy day)


def at_once(what, run):
    """A `quiet` that runs a measurement at once (specdec.calibrate's Quiet waits for a quiet moment instead)."""
    return run(False)


def interleaved(candidates: dict, passes: int, calls: int = 1, shuffle=None, warm_up=True, quiet=at_once) -> dict:
    """{name: [seconds per call in each pass]}: each `candidates[name]()` called `calls` times in a row per pass
    (a short call's jitter averages out over several), the names in turn (in an order `shuffle`, a random.Random,
    draws anew for every pass, so no name always follows the same one), after one untimed warm-up pass (page-in,
    kernel selection). `quiet(what, run)`: how each timed pass runs (specdec.calibrate waits for a quiet moment and
    runs a pass again when other processes overlapped it)."""
    def one_pass(again=False) -> dict:
        order = list(candidates)
        if shuffle is not None:
            shuffle.shuffle(order)
        seconds = {}
        for name in order:
            start = time.perf_counter()
            for _ in range(calls):
                candidates[name]()
            seconds[name] = (time.perf_counter() - start) / calls
        return seconds

    if warm_up:
        one_pass()
    times = {name: [] for name in candidates}
    for rep in range(passes):
        seconds = quiet(f"pass {rep + 1} of {passes}", one_pass)
        for name in candidates:
            times[name].append(seconds[name])
    return times


def ratios(samples: list, default) -> tuple:
    """({name: cost relative to `default`}, spread) over `samples`, a list of {name: [seconds per pass]} (one per
    size measured, e.g. row counts): per size the median over passes of the pass's time over the default's, then
    the geometric mean over sizes; spread: how far those per-pass ratios stray from their median (relative, the
    75th percentile: a median deviation of a few passes can come out near 0, a mean is led by one disturbed pass),
    the median over names and sizes. Names missing from some sample (screened out there: specdec.linear) are left
    out."""
    names = [n for n in samples[0] if all(n in s for s in samples)]
    per_pass = {n: [np.array(s[n]) / np.array(s[default]) for s in samples] for n in names}
    cost = {n: float(np.exp(np.mean([np.log(np.median(r)) for r in rs]))) for n, rs in per_pass.items()}
    strays = [np.percentile(np.abs(r / np.median(r) - 1), 75) for n, rs in per_pass.items() if n != default for r in rs]
    return cost, float(np.median(strays)) if strays else 0.0


def margin(spread: float, gain: float) -> float:
    """The relative cost below which a candidate clearly beats another: 1 - gain - spread (capped)."""
    return 1 - gain - min(spread, MAX_SPREAD)


def preferred(cost: dict, order, gain: float, spread: float):
    """The first name in `order` (most preferred first) that no other name clearly beats (costs under margin x its
    own): the default (first) unless something clearly beats it, and among near-equal winners the same one every
    time, not whichever the noise put ahead."""
    clear = margin(spread, gain)
    return next(n for n in order if not any(cost[o] < clear * cost[n] for o in order))


def fastest(samples: dict, default, gain: float = 0.05):
    """preferred() over `samples` ({name: [seconds per interleaved pass]}, in order of preference after `default`)."""
    cost, spread = ratios([samples], default)
    return preferred(cost, [default, *(n for n in samples if n != default)], gain, spread)
