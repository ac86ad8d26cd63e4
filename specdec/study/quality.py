"""What a faster configuration costs in quality, against the float weights (notebook 06): the share of the float32
target's greedy tokens a configuration reproduces before its first difference, and a perplexity on a held-out text.

The perplexity is llama-perplexity's definition (llama.cpp's tools/perplexity), so that specdec's precisions and
llama.cpp's GGUF are scored alike: the text's tokens cut into whole chunks of `n_ctx`, each chunk a fresh context,
the tokens of its second half scored (the first half is context), exp of the mean negative log-likelihood, with the
standard error of that mean carried to the perplexity. The held-out text (HELDOUT: the first sections of
docs/DESIGN.md, frozen at commit f61278e) was written for this project in 2026, after the models were trained.
"""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..inputs import position_limit

HELDOUT = Path(__file__).resolve().parents[2] / "data" / "prompts" / "heldout.md"
N_CTX = 256  # tokens per chunk (llama-perplexity's -c)
FLOAT = "float32"  # the reference precision


def agreement(ids, ref) -> float:
    """Share of `ref`'s tokens that `ids` matches before their first difference."""
    same = next((i for i, (a, b) in enumerate(zip(ids, ref)) if a != b), min(len(ids), len(ref)))
    return same / len(ref)


def chunks(ids, n_ctx=N_CTX, most=None) -> list:
    """The text's token ids as llama-perplexity cuts them: whole chunks of n_ctx, the rest dropped; the first
    `most` of them (None: all; its --chunks)."""
    if len(ids) < 2 * n_ctx:
        raise ValueError(f"the held-out text has {len(ids)} tokens; a perplexity over chunks of {n_ctx} needs "
                         f"at least {2 * n_ctx} (llama-perplexity's rule): use a longer text or a smaller n_ctx")
    n = len(ids) // n_ctx if most is None else min(most, len(ids) // n_ctx)
    return [ids[i * n_ctx:(i + 1) * n_ctx] for i in range(n)]


def perplexity(model, ids, n_ctx=N_CTX, most=None) -> dict:
    """A causal LM's perplexity on `ids` (llama-perplexity's definition): {perplexity, perplexity_se, tokens, chunks}.
    Refused before any model work where a chunk would pass the model's position limit."""
    limit = position_limit(model)
    if limit is not None and n_ctx > limit:
        raise ValueError(f"perplexity over chunks of {n_ctx} tokens exceeds the model's position limit {limit}: "
                         f"pass a smaller n_ctx")
    first = n_ctx // 2
    pieces, nll = chunks(ids, n_ctx, most), []
    with torch.inference_mode():
        for chunk in pieces:
            x = torch.tensor([chunk], device=model.device)
            logits = model(input_ids=x).logits[0, first:-1].float()  # predicts tokens first + 1 .. n_ctx - 1
            nll.append(-logits.log_softmax(-1).gather(-1, x[0, first + 1:, None]).squeeze(-1).double().cpu())
    return from_nll(torch.cat(nll).numpy(), len(pieces))


def from_nll(nll, n_chunks) -> dict:
    """exp(mean), and its standard error as llama-perplexity computes it (the mean's, times the perplexity)."""
    ppl = math.exp(nll.mean())
    return dict(perplexity=ppl, perplexity_se=ppl * float(np.std(nll) / math.sqrt(len(nll) - 1)), tokens=len(nll),
                chunks=n_chunks)


def greedy_agreement(rows, reference) -> pd.DataFrame:
    """Per configuration (`rows`: config, prompt_id, tokens), the mean over prompts of agreement with `reference`
    ({prompt_id: the float32 target's greedy tokens}), on the prompts `reference` has."""
    have = rows[rows["prompt_id"].isin(reference)]
    if have.empty:  # (apply over no rows returns a frame, not a column of scores)
        return pd.DataFrame(columns=["config", "agreement", "agreement_prompts"])
    score = have.apply(lambda r: agreement(r["tokens"], reference[r["prompt_id"]]), axis=1)
    return (have.assign(agreement=score).groupby("config", sort=False)
            .agg(agreement=("agreement", "mean"), agreement_prompts=("prompt_id", "nunique")).reset_index())
