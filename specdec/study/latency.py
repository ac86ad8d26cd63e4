"""Verification latency vs K: one parallel forward over K+1 tokens vs K+1 single-token forwards.

The seed claimed verification time is "approximately constant" in K. This measures exactly that, with
nothing else in the way: a fixed context of C tokens is prefilled once into an Arena, then for each K

    parallel  one target forward over K+1 tokens (what the engine's verify step does)
    naive     K+1 single-token forwards, one after the other (what a loop over drafts would do)

and the pointers go back to C after every measurement, so every repeat sees the same context.
Each repeat times every (K, mode) once, in its own seeded random order (latency_order). One row per
(K, mode, repeat) goes to <out>/results.jsonl (appended and fsynced as it is measured; pairing.sweep resumes
it), with <out>/provenance-<run_id>.json.
"""
import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import calibration
from ..arena import Arena
from ..inputs import VERIFY_MODES
from .bench import model_names, weights_of
from ..linear import fast_linears, mode as linear_mode
from ..profiler import synchronize
from . import pairing
from .results import RESULTS, append_row, now, record_calibrations, start_run

MODES = VERIFY_MODES  # the engine's: one (K+1)-token forward, or K+1 one-token forwards
SETTING = ("pair", "target", "device", "dtype", "linear", "context", "batch_size")  # what makes two rows comparable
KEY = SETTING + ("k", "mode", "repeat")
COLUMNS = ("run_id", *KEY, "timing_only", "tokens", "forwards", "seconds", "calibration_id", "finished_utc")
ORDER_STREAM = 13  # latency_order's rng is default_rng([seed, ORDER_STREAM]); pairing.run_order uses 11


def latency_order(ks, repeats, seed, modes=MODES) -> list[tuple]:
    """The order measure() times its cells in: [(repeat, k, mode), ...], repeats outermost, each repeat every
    (K, mode) once in a seeded random order of its own (a randomised complete block design, like
    pairing.run_order), so that drift in machine load, or a cache warming over the run, spreads over every K
    instead of lining up with the largest ones. Deterministic in `seed`; its own random stream, independent
    of every other use of the seed."""
    rng = np.random.default_rng([seed, ORDER_STREAM])
    cells = [(int(k), m) for k in ks for m in modes]
    return [(r, *cells[i]) for r in range(repeats) for i in rng.permutation(len(cells))]


def context_tokens(model, batch_size, context, seed) -> torch.Tensor:
    """A fixed [B, C] context of random token ids: the content does not change a forward's cost."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vocab = min(model.config.get_text_config().vocab_size, 256)  # low ids exist in every vocabulary
    return torch.randint(vocab, (batch_size, context), generator=gen, device="cpu").to(model.device)


def time_verify(arena, block, mode, context) -> float:
    """Seconds for one verification of `block` [B, K+1] at a context of `context` tokens."""
    lengths = torch.full_like(arena.lengths, context)
    arena.point_to(lengths, context)
    synchronize(arena.device)
    start = time.perf_counter()
    if mode == "parallel":
        arena.forward(block)  # writes slots C..C+K in place; pointers stay at C
    else:
        for i in range(block.shape[1]):  # the token-by-token loop the parallel verify replaces
            arena.forward(block[:, i:i + 1])
            arena.advance(1)
    synchronize(arena.device)
    seconds = time.perf_counter() - start
    arena.point_to(lengths, context)  # back to the fixed context for the next measurement
    return seconds


@torch.inference_mode()
def measure(pair, out_dir, *, ks=range(1, 9), modes=MODES, context=64, batch_size=1, repeats=5, warmup=True,
            seed=0, progress=True, params=None) -> pd.DataFrame:
    """Time parallel vs naive verification of the pair's target for every K; return all rows of this setting.
    Repeats are the outer loop, every K and mode once per repeat in a seeded shuffled order (latency_order)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / RESULTS
    ks, modes = [int(k) for k in ks], list(modes)
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown verification modes {sorted(unknown)}; choose from {MODES}")
    # `linear`: the few-row linear path the engine itself uses inside generate (specdec.linear; "off" is torch's
    # default). Each forward runs over its own K+1 tokens, not padded as the engine may run it (specdec.costs): the
    # question is how a forward's cost grows with its tokens; the price list holds what the engine pays.
    setting = dict(pair=pair.name, target=model_names(pair)[0], device=str(pair.device),
                   dtype=str(pair.dtype).removeprefix("torch."), linear=linear_mode(), context=int(context),
                   batch_size=int(batch_size))
    plan = [dict(setting, k=k, mode=m, repeat=r) for r, k, m in latency_order(ks, repeats, seed, modes)]
    blocks = [[(p, None)] for p in plan]  # a forward is timed alone: no pair to keep together

    def begin(todo):
        run_id = start_run(out, **setting, weights=weights_of(pair), timing_only=pair.timing_only, ks=ks, modes=modes,
                           repeats=repeats, warmup=warmup, seed=seed, order="latency_order", order_seed=seed,
                           order_rng=[seed, ORDER_STREAM], **(params or {}))
        return timing(pair, ks, context, batch_size, warmup, seed, results, run_id)

    rows = pairing.sweep(results, blocks, begin, key=KEY, unit="forward", progress=progress)
    return pd.DataFrame(rows, columns=list(COLUMNS))


@contextlib.contextmanager
def timing(pair, ks, context, batch_size, warmup, seed, results, run_id):
    """On the engine's linear path: prefill the fixed context once, warm every shape, then yield a function that
    times a block's forwards and writes their rows."""
    model = pair.target
    with fast_linears([model]):
        arena = Arena(model, batch_size, context + max(ks) + 1)
        prefix = context_tokens(model, batch_size, context + max(ks) + 1, seed)
        arena.forward(prefix[:, :context])  # prefill once; every measurement reuses this context
        arena.advance(context)
        if warmup:  # one untimed forward per shape (T = 1 and every K+1): first calls pay one-off costs
            for t in sorted({1, *(k + 1 for k in ks)}):
                time_verify(arena, prefix[:, context:context + t], "parallel", context)
        calibration_id = calibration.save(results.parent, calibration.snapshot())  # the plans the timings ran on
        record_calibrations(results.parent, run_id, [calibration_id])

        def time_block(block):
            for p, _ in block:
                forward = prefix[:, context:context + p["k"] + 1]  # the "drafts": content is irrelevant to cost
                seconds = time_verify(arena, forward, p["mode"], context)
                append_row(results, dict(p, run_id=run_id, timing_only=pair.timing_only, tokens=p["k"] + 1,
                                         forwards=1 if p["mode"] == "parallel" else p["k"] + 1, seconds=seconds,
                                         calibration_id=calibration_id, finished_utc=now()),
                           COLUMNS)
        yield time_block


def summarize(rows) -> pd.DataFrame:
    """Per model setting, K and mode: median, quartiles, min and max of the verification time in ms, and the
    median relative to the same model's and mode's median at its smallest K (1.0 everywhere = flat).
    One table may hold several models (e.g. the study's pair and the seed's random-weight architectures)."""
    rows = pd.DataFrame(rows).assign(ms=lambda d: d["seconds"] * 1e3)
    if "timing_only" not in rows:
        rows["timing_only"] = False
    setting = list(SETTING)
    group = rows.groupby(setting + ["mode", "k"], sort=True)
    table = group["ms"].agg(median_ms="median", q25_ms=lambda s: s.quantile(0.25), q75_ms=lambda s: s.quantile(0.75),
                            min_ms="min", max_ms="max", repeats="size").join(
        group["timing_only"].first()).reset_index()
    first = table.sort_values("k").groupby(setting + ["mode"])["median_ms"].transform("first")
    table["vs_smallest_k"] = table["median_ms"] / first
    return table


def verdict(table, flat_within=1.25) -> dict:
    """The numbers the notebook states: growth from the smallest to the largest K per mode (of the medians,
    and of the fastest repeats, which a machine shared with other work disturbs least), and whether the
    parallel verify's median stayed within `flat_within` x of its smallest-K median (our definition of flat)."""
    kmin, kmax = table["k"].min(), table["k"].max()
    def growth(col):
        return {m: float(t.set_index("k").loc[kmax, col] / t.set_index("k").loc[kmin, col])
                for m, t in table.groupby("mode")}
    median = growth("median_ms")
    return dict(k_min=int(kmin), k_max=int(kmax), growth=median, growth_fastest=growth("min_ms"),
                flat_within=flat_within, flat=median.get("parallel", float("inf")) <= flat_within)
