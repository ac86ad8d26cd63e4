"""Prompt lookup and adaptive K: lossless like the draft model, and they do what they claim."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import specdec
from specdec.drafters import PromptLookupDrafter
from specdec.policy import AdaptiveK
from specdec.sampling import Sampler
from test_engine import NEW, PROMPTS, hf_greedy

REPEATING = [[7, 8, 9, 10, 7, 8, 9, 10, 7, 8], [20, 21, 22, 20, 21], [5, 6, 7, 8, 9, 10, 11], [3, 4]]


@pytest.fixture(scope="module")
def references(pair):
    _, target, _ = pair
    return {tuple(r): hf_greedy(target, r) for r in PROMPTS + REPEATING}


@pytest.mark.parametrize("batch", [1, 2, 4])
@pytest.mark.parametrize("k", [1, 3, 6])
@pytest.mark.parametrize("prompts", [PROMPTS, REPEATING])
def test_prompt_lookup_greedy_matches_target_alone(pair, references, batch, k, prompts):
    _, target, _ = pair
    rows = prompts[:batch]
    result = specdec.generate(target, rows, draft="prompt_lookup", k=k, max_new_tokens=NEW)
    assert result.tokens == [references[tuple(r)] for r in rows]
    assert result.stats["draft_forwards"] == 0


@pytest.mark.parametrize("batch", [1, 3, 4])
def test_adaptive_k_greedy_matches_target_alone(pair, references, batch):
    _, target, draft = pair
    rows = PROMPTS[:batch]
    result = specdec.generate(target, rows, draft=draft, k="adaptive", max_new_tokens=NEW)
    assert result.tokens == [references[tuple(r)] for r in rows]
    ks = result.stats["k_per_iteration"]
    # the last round drafts no more than the budget keeps (maybe none)
    assert len(ks) == result.stats["iterations"] and all(1 <= k <= 16 for k in ks[:-1]) and 0 <= ks[-1] <= 16
    assert result.stats["k"] == "adaptive"


def test_adaptive_k_follows_the_schedule():
    policy = AdaptiveK(start=4, low=1, high=8)
    assert policy.next_k(4, [4, 4]) == 6      # everyone accepted everything: grow by 2
    assert policy.next_k(8, [8]) == 8         # capped
    assert policy.next_k(4, [4, 1]) == 3      # someone rejected: shrink by 1
    assert policy.next_k(1, [0]) == 1         # floored
    with pytest.raises(ValueError, match="low <= start <= high"):
        AdaptiveK(start=10, high=8)


def test_adaptive_k_grows_when_the_draft_is_the_target(pair):
    _, target, _ = pair
    result = specdec.generate(target, PROMPTS[:2], draft=target, k=AdaptiveK(start=2, high=10),
                              max_new_tokens=40, eos_token_id=[])
    assert result.stats["k_per_iteration"][:4] == [2, 4, 6, 8]


def test_prompt_lookup_finds_a_planted_repetition():
    seq = torch.tensor([[1, 2, 3, 4, 5, 9, 9, 1, 2, 3, 0, 0],     # "1 2 3" recurs: propose 4 5 9
                        [6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6],     # no earlier occurrence of "8"
                        [4, 5, 7, 1, 4, 5, 8, 2, 4, 5, 0, 0]])    # most recent "4 5" wins: 8 2 4
    lengths = torch.tensor([10, 6, 10])
    seq[1, 5] = 8
    drafts, probs = PromptLookupDrafter().propose(seq, lengths, 3, Sampler())
    assert drafts[0].tolist() == [4, 5, 9]
    assert drafts[1].tolist() == [8, 8, 8]   # no match: the last token repeated
    assert drafts[2].tolist() == [8, 2, 4]
    assert probs is None


def successor_model(vocab=12):
    """A real (hand-weighted) Llama whose greedy next token is (t + 1) mod vocab: its output
    repeats with period `vocab`, so prompt lookup can predict all of it."""
    config = LlamaConfig(vocab_size=vocab, hidden_size=vocab, intermediate_size=4, num_hidden_layers=1,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=False, eos_token_id=None, bos_token_id=None)
    model = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.model.layers[0].self_attn.o_proj.weight.zero_()  # the layer adds nothing: pure residual
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.copy_(torch.eye(vocab).roll(1, 0))
    return model


def test_prompt_lookup_accepts_everything_on_an_exact_repetition():
    model = successor_model()
    rows = [list(range(12)) + [0, 1, 2], list(range(5, 12)) + list(range(12)) + [0]]
    result = specdec.generate(model, rows, draft="prompt_lookup", k=4, max_new_tokens=30)
    assert result.tokens == [hf_greedy(model, r, new=30) for r in rows]
    assert result.tokens[0][:3] == [3, 4, 5]
    assert result.stats["acceptance_rate"] == 1.0
