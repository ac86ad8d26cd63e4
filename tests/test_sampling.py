"""Speculative sampling has exactly the target's distribution (chi-square against enumeration)."""
import itertools

import numpy as np
import pytest
import torch
from scipy import stats

import specdec
import specdec.engine
from conftest import tiny_gpt2, tiny_llama

V = 6          # small vocabulary: the joint of 3 tokens has 216 cells, enumerable
PROMPT = [2, 3]
NEW = 3        # token 1 comes from prefill, tokens 2-3 from speculative rounds
ROWS = 6000    # independent samples, as rows of one batch


def warped_probs(logits, temperature, top_k):
    """Reference warping, written independently of specdec.sampling."""
    logits = logits / temperature
    if top_k is not None:
        kth = logits.topk(top_k).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.softmax(-1)


def exact_joint(target, temperature, top_k, prompt=PROMPT):
    """P(t1, t2, t3 | prompt) of the target alone, by enumerating every continuation."""
    joint = {}
    for seq in itertools.product(range(V), repeat=NEW):
        ids = torch.tensor([prompt + list(seq)])
        with torch.no_grad():
            probs = warped_probs(target(ids).logits[0], temperature, top_k)
        prob = 1.0
        for i, tok in enumerate(seq):
            prob *= probs[len(prompt) - 1 + i, tok].item()
        joint[seq] = prob
    return joint


def chi_square_pvalue(samples, joint):
    counts = {}
    for s in samples:  # the first NEW tokens: a generation may run longer so that its rounds can draft K
        counts[tuple(s[:NEW])] = counts.get(tuple(s[:NEW]), 0) + 1
    assert sum(joint.values()) == pytest.approx(1.0)
    observed, expected, rest_obs, rest_exp = [], [], 0, 0.0
    for seq, p in joint.items():  # pool rare cells so every expected count is >= 5
        if p * len(samples) >= 5:
            observed.append(counts.get(seq, 0))
            expected.append(p * len(samples))
        else:
            rest_obs += counts.get(seq, 0)
            rest_exp += p * len(samples)
    observed.append(rest_obs)
    expected.append(rest_exp)
    expected = np.array(expected) * sum(observed) / sum(expected)
    return stats.chisquare(observed, expected).pvalue


@pytest.fixture(scope="module")
def models():
    target = tiny_llama(layers=2, vocab=V, seed=5)
    draft = tiny_gpt2(layers=1, vocab=V, seed=6)  # a genuinely different distribution
    return target, draft


CASES = [(1.0, None, 2), (0.7, 3, 2), (1.0, None, 1), (0.7, 3, 4)]


def sample(target, draft, temperature, top_k, k, seed=0):
    # K - 1 tokens past NEW: a round drafts no more than the budget keeps, and the first must draft K
    result = specdec.generate(target, [PROMPT] * ROWS, draft=draft, k=k, max_new_tokens=NEW + k - 1,
                              temperature=temperature, top_k=top_k, seed=seed, eos_token_id=[])
    return result


@pytest.mark.parametrize("temperature,top_k,k", CASES)
def test_speculative_sampling_has_the_target_distribution(models, temperature, top_k, k):
    target, draft = models
    result = sample(target, draft, temperature, top_k, k)
    assert 0.01 < result.stats["acceptance_rate"] < 0.95  # rejections and resamples both happen
    assert chi_square_pvalue(result.tokens, exact_joint(target, temperature, top_k)) > 1e-3


def test_a_wrong_acceptance_rule_is_caught(models, monkeypatch):
    """The chi-square test has power: accepting every draft gives the draft's distribution."""
    target, draft = models

    def always_accept(p, q, drafts, generator):
        accepted = torch.full((drafts.shape[0],), drafts.shape[1])
        bonus = torch.multinomial(p[:, -1], 1, generator=generator)
        return accepted, torch.cat([drafts, bonus], 1)

    monkeypatch.setattr(specdec.engine, "accept_sampled", always_accept)
    result = sample(target, draft, 1.0, None, 2)
    assert chi_square_pvalue(result.tokens, exact_joint(target, 1.0, None)) < 1e-6


def test_seeded_sampling_is_reproducible(models):
    target, draft = models
    a = specdec.generate(target, [PROMPT] * 4, draft=draft, k=3, max_new_tokens=10, temperature=1.0, seed=7)
    b = specdec.generate(target, [PROMPT] * 4, draft=draft, k=3, max_new_tokens=10, temperature=1.0, seed=7)
    assert a.tokens == b.tokens


def test_top_p_keeps_only_the_nucleus(models):
    target, _ = models
    probs = warped_probs(target(torch.tensor([PROMPT])).logits[0, -1].detach(), 1.0, None)
    top = int(probs.argmax())
    # top_p below the top token's mass keeps that token alone: sampling becomes deterministic.
    result = specdec.generate(target, [PROMPT] * 50, max_new_tokens=1, temperature=1.0,
                              top_p=float(probs.max()) * 0.5, seed=0)
    assert {t[0] for t in result.tokens} == {top}


def test_prompt_lookup_sampling_has_the_target_distribution(models):
    """Prompt lookup's q is one-hot; speculative sampling must still give the target's distribution."""
    target, _ = models
    result = specdec.generate(target, [PROMPT * 3] * ROWS, draft="prompt_lookup", k=2, max_new_tokens=NEW + 1,
                              temperature=1.0, seed=3, eos_token_id=[])
    assert 0.01 < result.stats["acceptance_rate"] < 0.99
    joint = exact_joint(target, 1.0, None, prompt=PROMPT * 3)
    assert chi_square_pvalue(result.tokens, joint) > 1e-3


def test_padded_vocabulary_pair_has_the_target_distribution():
    """Target with 2 padding output rows (never predicted, like a trained model's), draft without them:
    the draft's q is extended with zeros over those rows and sampling stays exact."""
    target = tiny_llama(layers=2, vocab=V, seed=5)
    target.resize_token_embeddings(V + 2, mean_resizing=False)
    target.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([V, V + 1]), -torch.inf))
    draft = tiny_gpt2(layers=1, vocab=V, seed=6)
    result = specdec.generate(target, [PROMPT] * ROWS, draft=draft, k=2, max_new_tokens=NEW + 1, temperature=1.0,
                              seed=4, eos_token_id=[], same_tokenizer=True)
    assert 0.01 < result.stats["acceptance_rate"] < 0.95
    assert chi_square_pvalue(result.tokens, exact_joint(target, 1.0, None)) > 1e-3


def test_a_draft_head_naming_only_the_first_ids_keeps_the_target_distribution():
    """A draft whose head has rows for the first V - 2 ids only (specdec.quantize.DRAFT_HEAD's cut: the draft
    never proposes the last two, which the target does predict): its q is zero there, the residual gives them their
    target probability, and sampling stays exact; generate takes it without same_tokenizer (one vocabulary)."""
    target = tiny_llama(layers=2, vocab=V, seed=5)
    draft = tiny_llama(layers=1, vocab=V, seed=6)
    head = torch.nn.Linear(draft.lm_head.in_features, V - 2, bias=False, dtype=draft.dtype)
    head.weight.data.copy_(draft.lm_head.weight[: V - 2])
    head.vocabulary = V
    draft.lm_head = head
    result = specdec.generate(target, [PROMPT] * ROWS, draft=draft, k=2, max_new_tokens=NEW + 1, temperature=1.0,
                              seed=4, eos_token_id=[])
    assert 0.01 < result.stats["acceptance_rate"] < 0.95
    assert max(t for row in result.tokens for t in row) >= V - 2  # the target still says the ids the draft cannot
    assert chi_square_pvalue(result.tokens, exact_joint(target, 1.0, None)) > 1e-3
