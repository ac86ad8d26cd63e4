"""`python -m specdec calibrate --pair NAME [--force]`: measure (or, with --force, measure again) a pair's
calibration on this machine: the linear plan of every weight shape its models use, the draft's dtype, and auto's
cost curves per batch size; print what was chosen and how long it took, and warn when other processes use the
CPU while it measures (a calibration measured under load is slow for every later run: specdec.calibration).

Load cannot be timed away on a 2-core machine (a kernel whose second thread shares a core with another process looks
slower than a one-thread one that does not), so it is avoided: each timed pass of the plans it measures and of the
price list runs in a quiet moment (Quiet), and again when another process overlapped it, within QUIET_S seconds of
waiting in all (the draft dtype's timing, inside load_pair, waits within its own shorter budget:
calibration.cached_choice). A load that stays longer (a steady one) is measured through once the time is spent,
with a warning, and marked busy in the cache: the engine measures those entries again on an idle machine."""
import time

import torch

from . import calibration, costs
from .calibration import QUIET_S, Quiet, measured_busy
from .linear import PLANS, mode as linear_mode, plan_key, plan_ranges, weights_by_shape
from .machine import BUSY_CORES, measurement_root, others_cpu
from .models import load_pair
from .policy import resolve
from .quantize import QUANTIZED, kernel_report, kernel_table, precision_label


def busy_warning(when, used) -> str | None:
    if used > BUSY_CORES:
        return (f"warning: {when}, other processes used {used:.1f} cores: a calibration measured under load is "
                f"slow for every later run; run it again on an idle machine (python -m specdec calibrate --force)")
    return None


def run(pair_name, batches=(1,), force=False, device="auto", dtype="auto", draft_dtype=None, precision=None,
        quiet_s=QUIET_S, save_to=None) -> list[str]:
    """Measure and report; returns the report's lines (also printed as they come). `quiet_s`: Quiet's budget;
    `save_to`: a folder for the record the report names (calibration-<id>.json), so that its id is not a dead end."""
    lines = []
    say = lambda line: (lines.append(line), print(line, flush=True))
    quiet = Quiet(quiet_s, say)
    before = busy_warning("before measuring", others_cpu())
    if before:
        say(before)
    start = time.perf_counter()
    pair = load_pair(pair_name, device=device, dtype=dtype, draft_dtype=draft_dtype, precision=precision)
    loaded = time.perf_counter() - start
    models = [m for m in (pair.target, pair.draft) if m is not None]
    say(f"calibration of {pair_name} on {plan_key()} (cache: {measurement_root()})")
    say(f"models loaded in {loaded:.1f} s: target {precision_label(pair.target)}, draft "
        f"{precision_label(pair.draft) or 'none'}")
    if precision in QUANTIZED:
        say(f"  quantized linears: {kernel_report()}")
        for line in kernel_table([pair.target, pair.draft]):
            say("  " + line)
    start = time.perf_counter()
    if linear_mode() == "auto":
        weights = weights_by_shape(models)
        due = PLANS.due(weights, force, busy_again=True)
        if due:
            say(f"  timing the linear paths of {len(due)} weight shapes, in passes spread over the measurement")
            PLANS.measure(due, fresh=True, quiet=quiet.measure)
        for key, plan in PLANS.measure(weights).items():
            say(f"  linear {key}: {plan_ranges(plan['fast'])}")
    else:
        say(f"  linear path: SPECDEC_LINEAR={linear_mode()} (no plans)")
    high = resolve("auto").k_max
    for batch in batches:
        roles = [("target", pair.target)] + ([("draft", pair.draft)] if pair.draft is not None else [])
        again = force or any(measured_busy(costs.table().get(costs.entry_key(r, m, batch))) for r, m in roles)
        with torch.inference_mode():
            curve = costs.price_list(pair.target, pair.draft, batch, high + 1, fresh=again, quiet=lambda what, run:
                                     quiet.measure(f"prices at batch {batch}, {what}", run))[0]
            prices = costs.prices(pair.target, pair.draft, batch, high)
            padded = costs.padded_rows(pair.target, batch)
        verify = ", ".join(f"{t}: {prices['verify_s'][t] * 1e3:.1f}" for t in (1, 2, 3, 5, high + 1))
        say(f"  prices at batch {batch}: target forward over T tokens (ms, each at its padded forward): {verify}; "
            f"draft step {prices['draft_s'] * 1e3:.1f} ms, draft prefill {prices['draft_prefill_s'] * 1e3:.2f} ms "
            f"a token ({curve['passes']} timing passes, noise {curve['noise']:.1%}, halves "
            f"{'agree' if curve['halves_agree'] else 'still disagree'})")
        say(f"  padding at batch {batch} (a forward over T tokens runs as): "
            + (", ".join(f"{t} -> {r}" for t, r in padded.items() if r != t) or "none (every T as itself)"))
    snap = calibration.snapshot()
    fresh = sum(e["source"].startswith("measured") for k in calibration.LEDGER for e in snap[k].values())
    if save_to is not None:
        calibration.save(save_to, snap)
    say(f"calibration {snap['id']}: {fresh} entries measured now, the rest from the cache"
        + (f" (timed passes run again because load overlapped them: {quiet.again})" if quiet.again else "")
        + (f" (waited {quiet.waited_s:.0f} s for quiet moments)" if quiet.waited_s else "")
        + f"; {time.perf_counter() - start:.1f} s")
    # Only a measurement can be spoiled by load (an entry read from the cache cannot), and only a kept one matters.
    after = busy_warning("while it measured", quiet.kept_under_load)
    if after:
        say(after)
    return lines
