"""The target alone against its bandwidth floor, timed in pairs (notebook 06).

A decode step that only read its weights once would take bytes per step / the memory read rate. Both sides move
with the machine's state, which on a shared virtual machine changes by ~25% within minutes: one read rate measured
beside decode rows timed over minutes mixes that drift into the ratio (the fastest of several reads taken before
the rows can fall in a fast state the rows never see). So each pass here times the target alone's decode (`TOKENS`
new tokens, EOS ignored, through the engine: the loop a generation runs, its per-token work included) and the
machine's readers (specdec.qkernel.readers, each the fastest of a few adjacent reads) back to back, in a shuffled
order; the pass's ratio is its decode step over bytes / its faster reader's rate, and the readout is the median
over passes with their range.

    found = floor.step_over_floor(target, ids, step_bytes)   # {"floor_ratio": ..., "read_rate": ..., ...}
"""
import random
import statistics

import pandas as pd

from .. import qkernel
from ..engine import generate
from . import results

PASSES = 7  # pairs of (decode, reads)
TOKENS = 17  # new tokens per decode: 16 decode steps after the prefill's token
READS = 3  # adjacent reads per reader in a pass, the fastest kept (the least interrupted)


def decode_step(target, ids, tokens) -> float:
    """Seconds per decode step of the target alone, by the study's one decode-time definition
    (results.decode_throughput: from the end of its prefill to its last token, over the tokens after the first)."""
    stats = generate(target, ids, draft=None, k=0, max_new_tokens=tokens, eos_token_id=[]).stats
    return 1.0 / results.decode_throughput(pd.DataFrame([stats])).iloc[0]


def step_over_floor(target, ids, step_bytes, passes=PASSES, tokens=TOKENS, gib=1.0, seed=0) -> dict:
    """The target alone's decode step over its bandwidth floor, paired per pass (see the module's doc); `ids`: one
    prompt's token ids [1, P]; `step_bytes`: what one step reads (specdec.quantize.step_bytes)."""
    found = qkernel.readers(gib)
    decode_step(target, ids, tokens)  # warm: the engine's first generation, the plans' first calls
    shuffle = random.Random(seed)
    steps, rates, ratios = [], [], []
    for _ in range(passes):
        order = ["decode", "reads"]
        shuffle.shuffle(order)
        seen = {}
        for job in order:
            seen[job] = decode_step(target, ids, tokens) if job == "decode" else qkernel.read_rate(passes=READS,
                                                                                                 found=found)
        steps.append(seen["decode"])
        rates.append(seen["reads"])
        ratios.append(seen["decode"] / (step_bytes / seen["reads"]))
    return dict(step_s=statistics.median(steps), read_rate=statistics.median(rates),
                floor_ratio=statistics.median(ratios), floor_ratio_lo=min(ratios), floor_ratio_hi=max(ratios),
                passes=passes)
