"""Quality beside speed (specdec.study.quality, notebook 06): greedy agreement with the float32 target, and a
perplexity defined as llama.cpp's llama-perplexity defines it, so specdec's precisions and llama.cpp's GGUF are
scored alike; llama-perplexity's command and output (lines copied from llama.cpp 0.5.0-dev, commit 0c1e570, run on
this project's Q4_K_M target and held-out text); the memory read rate the bandwidth floor divides by, and the floor
paired with the target alone's decode (specdec.study.floor)."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from specdec import qkernel
from specdec.models import load_pair
from specdec.study import floor, llamacpp_run, quality
from conftest import tiny_llama

PERPLEXITY_LOG = """0.03.272.884 I perplexity: calculating perplexity over 6 chunks, n_ctx=256, batch_size=256, n_seq=1
[1]86.1730,[2]112.7372,[3]94.9421,[4]89.6452,[5]94.8975,[6]90.7112,
0.19.449.271 I Final estimate: PPL = 90.7112 +/- 11.94235
"""


def test_agreement_counts_tokens_before_the_first_difference():
    assert quality.agreement([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert quality.agreement([1, 2, 9, 4], [1, 2, 3, 4]) == 0.5
    assert quality.agreement([7, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert quality.agreement([1, 2], [1, 2, 3, 4]) == 0.5  # a shorter output keeps only what it has
    rows = pd.DataFrame(dict(config=["int4", "int4", "int8"], prompt_id=["a", "b", "a"],
                             tokens=[[1, 9], [5, 6], [1, 2]]))
    got = quality.greedy_agreement(rows, {"a": [1, 2]}).set_index("config")  # "b" has no reference: left out
    assert got.loc["int4", "agreement"] == 0.5 and got.loc["int4", "agreement_prompts"] == 1
    assert got.loc["int8", "agreement"] == 1.0
    # no row with a reference (an engine that did not run, or no float32 target): an empty table, not an error
    assert quality.greedy_agreement(rows, {"z": [1]}).set_index("config")["agreement"].empty
    assert quality.greedy_agreement(rows.iloc[:0], {"a": [1, 2]}).empty


def test_chunks_are_llama_perplexitys_whole_chunks():
    ids = list(range(10))
    assert quality.chunks(ids, 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]  # the rest is dropped
    assert quality.chunks(ids, 4, most=1) == [[0, 1, 2, 3]]
    with pytest.raises(ValueError, match="at least 12"):  # fewer than two chunks' worth is refused, as llama.cpp does
        quality.chunks(ids, 6)


def test_perplexity_scores_each_chunks_second_half_in_a_fresh_context():
    model = load_pair("tiny-llama").target
    ids = torch.randint(0, model.config.vocab_size, (3 * 16 + 5,), generator=torch.Generator().manual_seed(0)).tolist()
    got = quality.perplexity(model, ids, n_ctx=16)
    assert got["chunks"] == 3 and got["tokens"] == 3 * 7  # positions 8..14 predict tokens 9..15 of each chunk
    # independently: HF's own loss with the first half (and the first token of the second) masked, chunk by chunk
    losses = []
    with torch.inference_mode():
        for c in range(3):
            x = torch.tensor([ids[c * 16:(c + 1) * 16]])
            labels = x.clone()
            labels[0, :9] = -100
            losses.append(model(input_ids=x, labels=labels).loss.item())
    assert got["perplexity"] == pytest.approx(math.exp(np.mean(losses)), rel=1e-5)
    with pytest.raises(ValueError, match="position limit 1024"):  # refused up front, not deep in torch
        quality.perplexity(model, ids * 50, n_ctx=2048)


def test_the_standard_error_is_llama_perplexitys():
    nll = np.array([1.0, 2.0, 4.0, 3.0])
    got = quality.from_nll(nll, 1)
    mean, mean2 = nll.mean(), (nll ** 2).mean()
    assert got["perplexity"] == pytest.approx(math.exp(mean))
    assert got["perplexity_se"] == pytest.approx(math.sqrt((mean2 - mean * mean) / (len(nll) - 1)) * math.exp(mean))


def test_llama_perplexity_command_and_output():
    cmd = llamacpp_run.perplexity_command("llama-perplexity", "t.gguf", "text.md", 256, 6, 2)
    assert cmd[cmd.index("-c") + 1] == "256" and cmd[cmd.index("--chunks") + 1] == "6"
    assert cmd[cmd.index("-f") + 1] == "text.md" and cmd[cmd.index("-t") + 1] == "2"
    assert llamacpp_run.parse_perplexity(PERPLEXITY_LOG) == dict(perplexity=90.7112, perplexity_se=11.94235, chunks=6)
    with pytest.raises(ValueError, match="Final estimate"):  # another version's output is refused, not misread
        llamacpp_run.parse_perplexity(PERPLEXITY_LOG.replace("Final estimate", "Estimate"))
    assert llamacpp_run.perplexity(dict(binaries={}, python=None), "t.gguf", "text.md", 256, 6, 2) is None


def test_the_held_out_text_is_long_enough_for_the_study():
    text = quality.HELDOUT.read_text()
    assert len(text) > 8 * 6 * quality.N_CTX  # cpu.yaml's 6 chunks even at 8 characters a token (Qwen's: ~4.3)


def test_read_rates_are_plausible_memory_read_rates():
    found = qkernel.readers(gib=0.25)
    assert set(found) == ({"torch sum", "kernel"} if qkernel.available() else {"torch sum"})
    for name, (call, n) in found.items():
        assert 1e8 < n / qkernel.fastest(call, 2) < 1e13, name  # bytes a second: a tenth of a GB/s to ten TB/s
    assert 1e8 < qkernel.read_rate(passes=2, found=found) < 1e13  # the faster of the two


def test_the_floor_prices_each_decode_step_by_the_read_rate_timed_beside_it(monkeypatch):
    calls, steps, rates = [], iter([0.010, 0.020, 0.012, 0.011]), iter([2e9, 1e9, 1.5e9])
    monkeypatch.setattr(floor, "decode_step", lambda *args: calls.append("decode") or next(steps))
    monkeypatch.setattr(floor.qkernel, "readers", lambda gib: {})
    monkeypatch.setattr(floor.qkernel, "read_rate", lambda passes, found: calls.append("reads") or next(rates))
    found = floor.step_over_floor(None, None, step_bytes=1e7, passes=3)
    # a warm-up decode, then per pass one decode and one read, in a shuffled order
    assert calls[0] == "decode" and all(sorted(calls[i:i + 2]) == ["decode", "reads"] for i in (1, 3, 5))
    # each pass's step over bytes / that pass's rate: 4.0, 1.2, 1.65 (medians of each side would give 1.8)
    assert found["floor_ratio"] == pytest.approx(1.65) and (found["floor_ratio_lo"], found["floor_ratio_hi"]) == \
        pytest.approx((1.2, 4.0))
    assert found["step_s"] == pytest.approx(0.012) and found["read_rate"] == pytest.approx(1.5e9)


def test_a_decode_step_is_timed_through_the_engine_from_prefill_to_last_token():
    target = tiny_llama()
    ids = torch.tensor([[5, 6, 7, 8]])
    assert 0 < floor.decode_step(target, ids, 5) < 1.0  # a tiny model's step, seconds
