"""Weight-only quantized targets (specdec.quantize): the linears stay close to the float ones, speculation on a
quantized target is lossless within its precision (equal to the quantized target alone, or parting only at a near
tie), and the measured linear path, the cost-curve keys and the padded forwards treat it as its own model."""
import pytest
import torch
from torch import nn

import specdec
from specdec import costs, engine, linear
from specdec import quantize as quantize_module
from specdec.models import load_pair
from specdec.quantize import ACT, QuantLinear, at_precision, quantize, quantize_pair, step_bytes, weight_bytes
from conftest import cpu_only, perturbed, tiny_gpt2, tiny_llama
from test_engine import PROMPTS
from test_padding import FOUR_IS_CHEAPEST

pytestmark = cpu_only

FORMATS = [("int8", 64), ("int4", 32), ("int4", 64)]
NEW = 16


def quantized(build, precision, group_size, kernel="aten"):
    """torch's kernels (tests/test_qkernel.py covers specdec's own); conftest's models are float64."""
    return quantize(build().float(), precision, group_size, kernel)


@pytest.mark.parametrize("precision,group_size,bound", [("int8", 64, 0.02), ("int4", 32, 0.15), ("int4", 128, 0.2)])
def test_quantized_linear_is_close_to_the_float_one(precision, group_size, bound):
    torch.manual_seed(0)
    float_linear = nn.Linear(256, 48)
    q = QuantLinear(float_linear.weight, float_linear.bias, precision, group_size)
    x = torch.randn(3, 5, 256)
    want, got = float_linear(x), q(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).norm() / want.norm() < bound
    # the kernel computes exactly the product with the dequantized weight (up to its bfloat16 arithmetic)
    exact = x @ q.dequantize().T + float_linear.bias
    assert (got - exact).norm() / exact.norm() < 0.01
    assert (got - want).norm() / want.norm() > 1e-4  # it did quantize


def test_quantize_swaps_every_linear_and_conv1d_but_keeps_the_embeddings():
    for build in (tiny_llama, tiny_gpt2):
        model = quantized(build, "int8", 64)
        assert not [m for m in model.modules() if type(m) is nn.Linear or type(m).__name__ == "Conv1D"]
        assert isinstance(model.get_output_embeddings(), QuantLinear)  # the LM head too
        assert model.get_input_embeddings().weight.dtype == torch.float32 and model.dtype == torch.float32
        assert model.specdec_precision == "int8"
        assert step_bytes(model) < weight_bytes(model)  # the embedding gather is not a per-token read
    int4 = quantized(tiny_llama, "int4", 32)
    assert int4.specdec_precision == "int4-g32"
    assert type(int4.get_output_embeddings()) is nn.Linear  # 97 output rows: not a multiple of 16, stays float
    with pytest.raises(ValueError, match="group_size"):
        quantize(tiny_llama().float(), "int4", 48)
    with pytest.raises(ValueError, match="precision"):
        quantize(tiny_llama().float(), "int3")
    with pytest.raises(ValueError, match="kernel"):
        quantize(tiny_llama().float(), "int4", 32, kernel="openvino")


def test_the_measured_linear_path_leaves_quantized_modules_alone(monkeypatch):
    monkeypatch.setenv("SPECDEC_LINEAR", "wxt")  # forced: every real nn.Linear would be patched
    model = quantized(tiny_llama, "int4", 32)
    floats = [m for m in model.modules() if type(m) is nn.Linear]
    assert list(linear.linears([model])) == floats  # the float LM head only
    with linear.fast_linears([model]):
        assert all("forward" not in m.__dict__ for m in model.modules() if isinstance(m, QuantLinear))
        assert all("forward" in m.__dict__ for m in floats)


def test_cost_curves_of_a_quantized_target_are_its_own():
    plain = tiny_llama().float()
    keys = {costs.model_key(plain), costs.model_key(quantized(tiny_llama, "int8", 64)),
            costs.model_key(quantized(tiny_llama, "int4", 32)), costs.model_key(quantized(tiny_llama, "int4", 64))}
    assert len(keys) == 4
    assert costs.model_key(plain).endswith("cpu")  # float models keep the keys of the curves already cached


def near_tie(target, row, got, ref):
    """None if `got` equals `ref`; else whether they part at a near tie: at the first difference the two tokens'
    logits (a plain forward over the shared prefix) lie within 2 units in the last place of the kernels' ACT."""
    first = next((i for i, (a, b) in enumerate(zip(got, ref)) if a != b), None)
    if first is None:
        return None
    with torch.no_grad():
        logits = target(torch.tensor([row + ref[:first]])).logits[0, -1].float()
    ulp = torch.finfo(ACT).eps * logits.abs().max()
    return bool((logits[got[first]] - logits[ref[first]]).abs() <= 2 * ulp)


@pytest.mark.parametrize("precision,group_size", FORMATS)
@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
def test_speculation_on_a_quantized_target_is_lossless_within_its_precision(build, precision, group_size):
    target = quantized(build, precision, group_size)
    draft = perturbed(build(), 0.03).float()  # the draft stays float, as quantize_pair leaves it
    alone = specdec.generate(target, PROMPTS, max_new_tokens=NEW, eos_token_id=[]).tokens
    diverged = 0
    for k in (2, "auto"):
        result = specdec.generate(target, PROMPTS, draft=draft, k=k, max_new_tokens=NEW, eos_token_id=[])
        assert k == "auto" or result.stats["proposed"] > 0  # it did speculate
        for row, got, ref in zip(PROMPTS, result.tokens, alone):
            tie = near_tie(target, row, got, ref)
            assert tie in (None, True), (k, row)
            diverged += tie is True
    assert diverged <= len(PROMPTS) // 2


@pytest.mark.parametrize("precision,group_size", FORMATS[:2])
def test_padded_forwards_of_a_quantized_target_change_nothing(precision, group_size, monkeypatch):
    target = quantized(tiny_llama, precision, group_size)
    plain = specdec.generate(target, PROMPTS, max_new_tokens=12, eos_token_id=[]).tokens
    monkeypatch.setattr(engine, "padded_rows", lambda model, batch: costs.padding(FOUR_IS_CHEAPEST))
    padded = specdec.generate(target, PROMPTS, max_new_tokens=12, eos_token_id=[]).tokens
    for row, got, ref in zip(PROMPTS, padded, plain):
        assert near_tie(target, row, got, ref) in (None, True), row


def test_quantize_pair_quantizes_the_target_and_the_draft_at_its_own_precision():
    pair = load_pair("tiny-llama")
    draft_dtype = pair.draft.dtype
    assert quantize_pair(pair, "int8", draft_precision="int4").target.specdec_precision.startswith("int8")
    assert pair.draft.specdec_precision.startswith("int4-g64")
    kept = quantize_pair(load_pair("tiny-llama"), "int4", draft_precision="as loaded")
    assert kept.draft.dtype == draft_dtype and not any(isinstance(m, QuantLinear) for m in kept.draft.modules())
    cast = quantize_pair(load_pair("tiny-llama"), "bfloat16")
    assert cast.target.dtype == cast.dtype == torch.bfloat16 and cast.target.specdec_precision is None
    assert not any(isinstance(m, QuantLinear) for m in cast.draft.modules())  # a float target keeps its draft
    with pytest.raises(ValueError, match="precision"):
        quantize_pair(pair, "fp8")


def test_a_quantized_draft_keeps_the_first_draft_head_ids_and_speculation_stays_exact(monkeypatch):
    """quantize_pair cuts a quantized draft's LM head to its first DRAFT_HEAD ids (here 64 of tiny-llama's 320): the
    draft's logits have 64 columns, its vocabulary is still the target's (no same_tokenizer needed), its label and
    so its prices say so, and greedy speculation equals the quantized target alone."""
    monkeypatch.setattr(quantize_module, "DRAFT_HEAD", 64)
    pair = quantize_pair(load_pair("tiny-llama"), "int8", draft_precision="int8")
    head = pair.draft.get_output_embeddings()
    assert (head.out_features, head.vocabulary) == (64, 320) and pair.draft.specdec_precision.endswith("head 64")
    assert pair.target.get_output_embeddings().out_features == 320  # the target's head is whole: it decides
    with torch.inference_mode():
        assert pair.draft(torch.tensor([PROMPTS[0]])).logits.shape[-1] == 64
    alone = specdec.generate(pair.target, PROMPTS, max_new_tokens=10, eos_token_id=[]).tokens
    for k in (3, "auto"):
        assert specdec.generate(pair.target, PROMPTS, draft=pair.draft, k=k, max_new_tokens=10,
                                eos_token_id=[]).tokens == alone


def test_at_precision_copies_a_target_that_ran_on_the_measured_path(monkeypatch):
    monkeypatch.setenv("SPECDEC_LINEAR", "packed" if "packed" in linear.PATHS else "xwt")  # weight copies on modules
    pair = load_pair("tiny-llama")
    specdec.generate(pair.target, PROMPTS, max_new_tokens=2)
    assert any("_specdec_weights" in m.__dict__ for m in pair.target.modules())
    q = at_precision(pair, "int8")
    assert q.target is not pair.target and q.draft is not pair.draft and q.target.specdec_precision.startswith("int8")
    assert not any(isinstance(m, QuantLinear) for m in pair.target.modules())  # the originals are untouched
    assert not any(isinstance(m, QuantLinear) for m in pair.draft.modules())
    assert at_precision(pair, "float32") is pair
