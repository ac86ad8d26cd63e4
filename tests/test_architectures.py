"""The engine on the architectures people use: sliding windows (Mistral, Qwen2), mixed sliding/full
layers (Gemma 3), padded vocabularies (Qwen2.5-7B vs 0.5B), and refusals of what the arena cannot serve."""
import pytest
import torch
from transformers import (Gemma3ForCausalLM, Gemma3TextConfig, Lfm2Config, Lfm2ForCausalLM, MambaConfig,
                          MambaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM)

import specdec
from conftest import VOCAB, perturbed, tiny_llama
from test_engine import PROMPTS, hf_greedy

NEW = 28  # prompt + output >= 4x the window for every window below
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
             max_position_embeddings=128, initializer_range=0.3, bos_token_id=0, eos_token_id=1)


def build(cls, config, attn="sdpa", seed=0):
    torch.manual_seed(seed)
    config._attn_implementation = attn
    return cls(config).double().eval()


ARCHS = {
    "mistral-w4": lambda attn: build(MistralForCausalLM, MistralConfig(num_hidden_layers=2, sliding_window=4, **SIZES), attn),
    # layer 0 full, layer 1 sliding: a dict of masks, one per layer type
    "qwen2-w6": lambda attn: build(Qwen2ForCausalLM, Qwen2Config(num_hidden_layers=2, use_sliding_window=True,
                                                                 sliding_window=6, max_window_layers=1, **SIZES), attn),
    "gemma3-w8": lambda attn: build(Gemma3ForCausalLM, Gemma3TextConfig(
        num_hidden_layers=4, head_dim=16, sliding_window=8, **SIZES,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"]), attn),
}
# (architecture, attention, batch, k, draft): a few representative combinations, not the full product
CASES = [("mistral-w4", "sdpa", 4, 3, "model"), ("mistral-w4", "eager", 2, 6, "model"),
         ("mistral-w4", "sdpa", 1, 1, "model"), ("qwen2-w6", "sdpa", 4, 2, "model"),
         ("qwen2-w6", "eager", 3, 5, "prompt_lookup"), ("qwen2-w6", "sdpa", 1, 4, "model"),
         ("gemma3-w8", "sdpa", 4, 4, "model"), ("gemma3-w8", "eager", 2, 1, "model"),
         ("gemma3-w8", "sdpa", 3, 6, "prompt_lookup")]


@pytest.fixture(scope="module")
def models():
    return {}


def target_and_references(models, arch, attn):
    if (arch, attn) not in models:
        target = ARCHS[arch](attn)
        refs = {tuple(r): hf_greedy(target, r, new=NEW) for r in PROMPTS}
        models[arch, attn] = target, perturbed(target, 0.03), refs
    return models[arch, attn]


@pytest.mark.parametrize("arch,attn,batch,k,draft", CASES)
def test_sliding_windows_match_target_alone(models, arch, attn, batch, k, draft):
    target, noisy, refs = target_and_references(models, arch, attn)
    rows = PROMPTS[:batch]
    result = specdec.generate(target, rows, draft=noisy if draft == "model" else draft, k=k, max_new_tokens=NEW)
    assert result.tokens == [refs[tuple(r)] for r in rows]


def test_a_full_causal_mask_would_be_caught(models, monkeypatch):
    """The test has power: with the window ignored (every layer full) the output differs."""
    import specdec.arena

    target, noisy, refs = target_and_references(models, "mistral-w4", "sdpa")
    monkeypatch.setattr(specdec.arena, "layer_windows", lambda model: [None] * model.config.num_hidden_layers)
    monkeypatch.setattr(target.config, "sliding_window", None)  # transformers' own masks (aligned rows) too
    result = specdec.generate(target, PROMPTS, draft=noisy, k=3, max_new_tokens=NEW)
    assert result.tokens != [refs[tuple(r)] for r in PROMPTS]


# --- refusals: before any forward, naming what to use instead ----------------------------------

def lfm2():
    config = Lfm2Config(num_hidden_layers=3, full_attn_idxs=[1], vocab_size=VOCAB, hidden_size=32,
                        intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    return Lfm2ForCausalLM(config).eval()


def mamba():
    return MambaForCausalLM(MambaConfig(num_hidden_layers=2, vocab_size=VOCAB, hidden_size=32, state_size=4)).eval()


def with_attention(implementation):
    model = tiny_llama()
    model.config._attn_implementation = implementation
    return model


REFUSED = [(lfm2, "conv", "assistant_model"), (mamba, "recurrent", "assistant_model"),
           (lambda: with_attention("flash_attention_2"), "flash_attention_2", "sdpa"),
           (lambda: with_attention("flex_attention"), "flex_attention", "sdpa"),
           (lambda: with_attention("paged|sdpa"), "paged", "sdpa")]


@pytest.mark.parametrize("role", ["target", "draft"])
@pytest.mark.parametrize("case", range(len(REFUSED)))
def test_unservable_models_are_refused_before_any_forward(case, role):
    make, problem, fix = REFUSED[case]
    bad, good = make(), tiny_llama()
    forwards = []
    for model in (bad, good):
        model.register_forward_pre_hook(lambda *a: forwards.append(1))
    target, draft = (bad, good) if role == "target" else (good, bad)
    with pytest.raises(ValueError, match=problem) as error:
        specdec.generate(target, [[2, 3, 4]], draft=draft, k=2, max_new_tokens=4)
    assert fix in str(error.value) and role in str(error.value)
    assert not forwards


# --- padded vocabularies: one tokenizer, different output sizes ---------------------------------

def padded(model, rows):
    """`model` with `rows` extra output rows that (like a trained model's padding) are never predicted."""
    size = model.get_output_embeddings().weight.shape[0]
    model.resize_token_embeddings(size + rows, mean_resizing=False)
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.arange(size, size + rows), -torch.inf))
    return model


def test_padded_vocabulary_pair_is_greedy_identical():
    draft = perturbed(tiny_llama(), 0.03)
    target = padded(tiny_llama(), 7)
    assert target.get_output_embeddings().weight.shape[0] == VOCAB + 7
    refs = [hf_greedy(target, r) for r in PROMPTS]
    result = specdec.generate(target, PROMPTS, draft=draft, k=3, max_new_tokens=24, same_tokenizer=True)
    assert result.tokens == refs
    assert 0 < result.stats["acceptance_rate"] < 1
    with pytest.raises(ValueError, match="same_tokenizer=True"):  # a bare call still gets the clear error
        specdec.generate(target, PROMPTS, draft=draft, k=3)
    with pytest.raises(ValueError, match="as target"):  # the draft may not predict ids the target cannot score
        specdec.generate(draft, PROMPTS, draft=target, k=3, same_tokenizer=True)


# --- half precision: what token-identical means there -------------------------------------------

@pytest.mark.parametrize("arch", ["llama", "mistral-w4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_diverges_only_at_near_ties(arch, dtype):
    """In bf16/fp16 a (K+1)-token verify and a one-token step round differently (so do HF's and the arena's
    kernels), so outputs may part at a near tie between the top two logits. Every row must equal the
    target alone up to its first difference, and there the two tokens' logits (a plain forward over the
    shared prefix, same dtype) must be within 2 units in the last place of the top logit."""
    target = (tiny_llama() if arch == "llama" else ARCHS[arch]("sdpa")).to(dtype)
    draft = perturbed(target, 0.03)
    result = specdec.generate(target, PROMPTS, draft=draft, k=3, max_new_tokens=NEW)
    diverged = 0
    for row, got in zip(PROMPTS, result.tokens):
        ref = hf_greedy(target, row, new=NEW)
        first = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
        if first is None:
            continue
        diverged += 1
        with torch.no_grad():
            logits = target(torch.tensor([row + ref[:first]])).logits[0, -1].float()
        ulp = torch.finfo(dtype).eps * logits.max().abs()
        assert (logits[got[first]] - logits[ref[first]]).abs() <= 2 * ulp, (row, first)
    assert diverged <= len(PROMPTS) // 2
