"""Control drafters for the study: drafters whose outcome is known in advance, so a sweep can isolate one cost.

They follow the drafter protocol of specdec.drafters (start, prefill, propose, rollback).
"""
import torch

from ..drafters import ModelFreeDrafter
from ..inputs import vocab_size


class JunkDrafter(ModelFreeDrafter):
    """Proposes, for every row, K copies of the last id of the target's output layer: a vocabulary padding row
    that a trained model essentially never predicts. Greedy verification then rejects the first draft of every
    round, so each round is one (K+1)-token verify forward that yields one token: the verify path's cost alone,
    with no draft model to run. The output is the target alone's (lossless, as any drafter's)."""

    def __init__(self, target):
        self.token = vocab_size(target) - 1

    def propose(self, seq, lengths, k, sampler):
        # q None: the drafts are deterministic (one-hot q); sampled acceptance then keeps one with p(token) ~ 0
        return torch.full((seq.shape[0], k), self.token, dtype=seq.dtype, device=seq.device), None
