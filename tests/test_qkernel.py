"""specdec's quantized linear kernel (specdec.qkernel): bitwise row invariance for 1..16 rows on every code path this
CPU runs, the paths agreeing bit for bit, an error bound against the float weights, fused siblings, and speculation
on a model quantized with it token-identical to that model alone (not "up to near ties")."""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

import specdec
from specdec import attention, calibration, lean, qkernel
from specdec.machine import machine_key
from specdec import quantize as quantize_module
from specdec.arena import Arena
from specdec.quantize import QuantLinear, fastest_draft, kernel_report, quantize, quantize_pair
from specdec.models import load_pair
from specdec.study.prompts import encode, load_prompts
from conftest import cpu_only, perturbed, skip_without_qwen, tiny_llama
from test_engine import PROMPTS

REPO = Path(__file__).resolve().parents[1]
pytestmark = [cpu_only,
              pytest.mark.skipif(not qkernel.available(), reason=f"no kernel here: {qkernel.why_not()}")]
FORMATS = [(4, 32), (4, 64), (4, 128), (8, 64)]
SHAPES = [(64, 128), (192, 256), (128, 896)]  # out x in: one and several blocks of 64 outputs, Qwen's 896


def paths():
    """The code paths this CPU can run: 3 (AMX), 2 (AVX-512 VNNI), 1 (AVX2), 0 (scalar), whichever it has."""
    best = {"amx": 3, "avx512-vnni": 2, "avx2": 1, "scalar": 0}[qkernel.best_path()]
    return list(range(best, -1, -1))


def packed(out_f, in_f, bits, group, seed=0):
    torch.manual_seed(seed)
    w = torch.randn(out_f, in_f) * 0.05
    return w, *qkernel.pack(w, bits, group)


@pytest.mark.parametrize("bits,group", FORMATS)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_rows_output_never_depends_on_the_other_rows_of_the_call(bits, group, shape):
    out_f, in_f = shape
    if in_f % group:
        pytest.skip("groups must tile the input")
    _, codes, scales = packed(out_f, in_f, bits, group)
    x = torch.randn(20, in_f) * 2
    bias = torch.randn(out_f)
    for path in paths():
        full = qkernel.qlinear(x, codes, scales, bias, out_f, group, bits, path)
        for t in range(1, 21):  # every row count 1..20: each pass size, each split of rows into passes (AMX: 16)
            assert torch.equal(qkernel.qlinear(x[:t], codes, scales, bias, out_f, group, bits, path), full[:t]), (path, t)
        for i in range(20):  # and each row alone
            assert torch.equal(qkernel.qlinear(x[i:i + 1], codes, scales, bias, out_f, group, bits, path), full[i:i + 1])


def test_the_bits_never_depend_on_how_the_threads_split_the_blocks():
    # The threads take blocks in chunks that shrink as the work runs out, whichever thread is free first: 37 blocks
    # split 1, 2 and 3 ways must give the one-thread bits (a block skipped or done twice would not).
    out_f = qkernel.ROWS * 37
    _, codes, scales = packed(out_f, 256, 4, 64)
    x = torch.randn(9, 256)
    threads = torch.get_num_threads()
    try:
        outputs = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            outputs.append([qkernel.qlinear(x[:t], codes, scales, None, out_f, 64, 4) for t in (1, 5, 9)])
    finally:
        torch.set_num_threads(threads)
    for split in outputs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(split, outputs[0]))


@pytest.mark.skipif(qkernel.available() and qkernel.best_path() != "amx", reason="this CPU has no AMX")
def test_from_how_many_rows_amx_serves_changes_no_bit():
    # The best path takes AMX from a measured row count (qkernel.tuning) and AVX-512 VNNI below: wherever that
    # crossover lies, a call gives the bits of the scalar definition.
    _, codes, scales = packed(128, 256, 4, 64)
    x = torch.randn(12, 256)
    definition = qkernel.qlinear(x, codes, scales, None, 128, 64, 4, 0)
    measured = torch.ops.specdec.qlinear_amx_from(1)
    try:
        for rows in (1, 5, 9, 13, qkernel.NEVER):
            torch.ops.specdec.qlinear_amx_from(rows)
            for t in (1, 4, 8, 12):
                assert torch.equal(qkernel.qlinear(x[:t], codes, scales, None, 128, 64, 4), definition[:t]), (rows, t)
    finally:
        torch.ops.specdec.qlinear_amx_from(measured)


@pytest.mark.skipif(qkernel.available() and qkernel.best_path() == "scalar", reason="only the vector paths prefetch")
@pytest.mark.parametrize("bits,group", [(4, 64), (8, 64)])
def test_how_far_ahead_the_kernel_prefetches_changes_no_bit(bits, group):
    # qkernel.tuning sets a prefetch distance per path and machine; any distance, past the weights' end included
    # (a prefetch never faults), gives the scalar definition's bits.
    _, codes, scales = packed(192, 256, bits, group)
    x = torch.randn(12, 256)
    definition = qkernel.qlinear(x, codes, scales, None, 192, group, bits, 0)
    for path in [p for p in paths() if p >= 1]:
        tuned = qkernel.set_prefetch(path, (0, 0))
        try:
            for ahead in ((0, 0), (64, 0), (0, 64), (1024, 4096), (1 << 20, 1 << 20)):
                qkernel.set_prefetch(path, ahead)
                for t in (1, 4, 12):
                    assert torch.equal(qkernel.qlinear(x[:t], codes, scales, None, 192, group, bits, path),
                                       definition[:t]), (path, ahead, t)
        finally:
            qkernel.set_prefetch(path, tuned)


def test_the_amx_crossover_is_the_split_that_costs_least_over_every_size_measured():
    xeon = {1: 1.28, 2: 1.17, 3: 1.13, 4: 1.05, 5: 0.95, 6: 0.93, 8: 0.92, 10: 1.01, 12: 0.85, 16: 0.76}
    assert qkernel.crossover(xeon) == 5  # 10 rows' disturbed 1.01 does not push it to 12
    assert qkernel.crossover({1: 1.2, 4: 1.1, 8: 1.02, 16: 1.01}) == qkernel.NEVER  # AMX never pays
    assert qkernel.crossover({1: 0.9, 4: 0.9, 8: 0.9}) == 1  # always pays
    assert qkernel.crossover({1: 1.1, 4: 1.0, 8: 0.9}) == 8  # a size that saves nothing stays on VNNI


def test_the_kernels_tuning_is_set_in_the_kernel_and_measured_once_per_machine(monkeypatch, tmp_path):
    if qkernel.best_path() == "scalar":
        assert "tuning" not in qkernel._state  # nothing to tune: the scalar code does not prefetch
        return
    tuned = qkernel._state["tuning"]  # what load() measured (or read) and set: a distance for each path this CPU runs
    runs = qkernel.RUNS[torch.ops.specdec.qlinear_best_path()]
    assert set(tuned["prefetch"]) == {str(p) for p in runs}
    assert all(tuple(d) in qkernel.PREFETCH for d in tuned["prefetch"].values())
    for path, ahead in tuned["prefetch"].items():  # the op returns the distances it replaces
        assert qkernel.set_prefetch(int(path), ahead) == tuple(ahead)
    if qkernel.best_path() == "amx":
        assert tuned["amx_from"] in qkernel.AMX_ROWS + (qkernel.NEVER,)
        assert torch.ops.specdec.qlinear_amx_from(tuned["amx_from"]) == tuned["amx_from"]
    # into an empty cache: measured once (stamped), then read back; the calibration snapshot names it either way
    measured = []
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))
    monkeypatch.setattr(calibration, "busy_now", lambda max_age=30.0: False)
    monkeypatch.setattr(qkernel, "_measure_tuning", lambda: measured.append(1) or dict(tuned))
    first = qkernel.tuning()
    assert first["busy"] is False and first["measured_utc"] and first["prefetch"] == tuned["prefetch"]
    assert calibration.snapshot()["kernel"][f"{machine_key()} | {qkernel.digest()} | rule {qkernel.TUNING_RULE}"][
        "source"] == "measured in this process"
    before = calibration.snapshot()["id"]
    calibration.LEDGER["kernel"].clear()  # as in a new process
    assert qkernel.tuning() == first and measured == [1]
    assert calibration.snapshot()["id"] == before  # the same tuning: the same calibration


def test_the_tuning_takes_the_least_costly_prefetch_distance_even_on_a_noisy_machine(monkeypatch):
    # A distance never changes a bit, so no default has to be beaten: 1 KiB into L1 and 4 KiB into L2 ahead costing
    # 0.85x "none", measured with passes straying 20% (a noisy pass), is taken; keeping "none" unless another won by
    # more than the noise left the AMX code without prefetch in a fresh run, 1.1-1.2x slower at 3-8 rows.
    if qkernel.best_path() == "scalar":
        pytest.skip("only the vector paths prefetch")
    noisy = [1.0, 1.2, 0.8, 1.0, 1.2]
    cost = dict(zip(qkernel.PREFETCH, (1.0, 0.95, 0.9, 0.85, 0.9, 0.95)))  # (1 KiB into L1, 4 KiB into L2) least

    def interleaved(candidates, passes):
        if set(candidates) == set(qkernel.PREFETCH):
            return {d: [cost[d] * n for n in (noisy if any(d) else [1.0] * passes)] for d in candidates}
        return {"vnni": [1.0] * passes, "amx": [0.9] * passes}  # AMX cheaper at every size: from 1 row

    monkeypatch.setattr(qkernel.paired, "interleaved", interleaved)
    monkeypatch.setattr(qkernel, "TUNING_BYTES", 1)  # one layer of weights: the fake timings never run them
    before = {path: qkernel.set_prefetch(path, (0, 0)) for path in qkernel.RUNS[torch.ops.specdec.qlinear_best_path()]}
    try:
        found = qkernel._measure_tuning()
    finally:
        for path, ahead in before.items():
            qkernel.set_prefetch(path, ahead)
    assert found["prefetch"] == {str(p): [1024, 4096] for p in before}
    if qkernel.best_path() == "amx":
        assert found["amx_from"] == 1


@pytest.mark.parametrize("bits,group", FORMATS)
def test_every_code_path_computes_the_same_bits(bits, group):
    _, codes, scales = packed(128, 256, bits, group)
    x = torch.randn(5, 256)
    outs = [qkernel.qlinear(x, codes, scales, None, 128, group, bits, p) for p in paths()]
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("group", [32, 64])
def test_every_code_path_quantizes_activations_alike_ties_and_clamps_included(group):
    """The activation quantization is vectorised per path; the scalar one is the definition. Groups whose max is 127
    (scale exactly 1) put values on .5 ties, which round to even; zeros, signed zeros, a zero group and tiny values
    too: every path gives the same output bits."""
    _, codes, scales = packed(64, 4 * group, 4, group)
    ties = torch.arange(-63.5, 64.5, 1.0)[:group - 1]  # x.5 everywhere: round half to even decides every one
    x = torch.stack([torch.cat([ties, torch.tensor([127.0])]),
                     torch.cat([-ties, torch.tensor([-127.0])]),
                     torch.zeros(group),
                     torch.tensor([0.0, -0.0, 1e-30, -1e-30] * (group // 4))])
    x = x.repeat(1, 4)  # [4, 4 * group]: four groups a row
    outs = [qkernel.qlinear(x, codes, scales, None, 64, group, 4, p) for p in paths()]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    assert torch.equal(outs[0][2], torch.zeros(64))  # an all-zero row: zero codes, zero terms


def test_silu_mul_is_as_accurate_as_torchs_float_silu():
    """layer.cpp's SiLU runs on its own vectorisable e^x (ops.h's exp_approx): over -87..87, within the relative
    error of torch's own float32 SiLU of the float64 value."""
    assert qkernel.load(), qkernel.why_not()
    gate = torch.linspace(-87, 87, 100_001)
    got = torch.ops.specdec.silu_mul(torch.cat([gate, torch.ones_like(gate)])[None])[0].double()
    exact = torch.nn.functional.silu(gate.double())
    torchs = torch.nn.functional.silu(gate).double()
    rel = lambda y: ((y - exact).abs() / exact.abs().clamp_min(1e-37)).max().item()
    assert rel(got) <= max(rel(torchs), 2e-7)


@pytest.mark.parametrize("bits,group", FORMATS)
def test_error_is_within_the_bound_of_its_two_roundings(bits, group):
    """|y - x W^T| <= sum_k |W_q[n,k]| |x_k - x_q[k]| (activations rounded to int8 per group: at most half a step)
    + sum_k |x_k| |W[n,k] - W_q[n,k]| (weights rounded to their codes: at most half a scale), plus float slack."""
    w, codes, scales = packed(128, 256, bits, group)
    wq = qkernel.dequantize(codes, scales, bits, group, 256).double()
    if bits == 8:  # weights: half a step
        assert ((w.double() - wq).abs() <= scales_of(scales, group, 256).double() / 2 + 1e-6).all()
    x = torch.randn(7, 256) * 3
    y = qkernel.qlinear(x, codes, scales, None, 128, group, bits).double()
    xd = x.double()
    x_step = xd.reshape(7, -1, group).abs().amax(-1, keepdim=True).expand(-1, -1, group).reshape(7, 256) / 127
    bound = (x_step / 2) @ wq.abs().T + xd.abs() @ (w.double() - wq).abs().T + 1e-4 * (xd.abs() @ wq.abs().T)
    assert ((y - xd @ w.double().T).abs() <= bound).all()
    assert (y - xd @ w.double().T).abs().max() > 0  # it did quantize


@pytest.mark.parametrize("group", [32, 64])
def test_fitted_int4_grids_err_less_than_the_min_max_grid_and_never_more(group):
    """Per group, the fitted grid's squared error is at most the min..max grid's (one of its candidates), and less
    in total on Gaussian weights with outliers (what the tighter grids are for)."""
    w = torch.randn(128, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    w[::7, ::5] *= 6
    errors = {}
    for steps in (0, qkernel.FIT_STEPS):
        codes, scales = qkernel.pack(w, 4, group, steps)
        wq = qkernel.dequantize(codes, scales, 4, group, 256)
        errors[steps] = ((w - wq) ** 2).reshape(128, -1, group).sum(-1)
    fitted, min_max = errors[qkernel.FIT_STEPS], errors[0]
    assert (fitted <= min_max * (1 + 1e-5) + 1e-12).all()
    assert fitted.sum() < 0.9 * min_max.sum()


def fit_reference(x, steps):
    """fit_int4's definition for one group (numpy float32, one operation at a time, sums in index order, ties of the
    rounding to even): [scale, min]."""
    f, G = np.float32, np.float32(len(x))
    half = lambda v: f(np.float16(v))
    total = lambda v: np.cumsum(v, dtype=f)[-1]  # a sequential float32 sum
    codes = lambda v: np.clip(np.rint(v), f(0), f(15))

    def error(s, m):
        d = codes((x - m) / s) * s + m - x
        return total(d * d)

    lo, hi, sx = x.min(), x.max(), total(x)
    best_s, best_m = half(max(f((hi - lo) / f(15)), f(1e-6))), half(lo)
    best = error(best_s, best_m)
    for j in range(steps if hi > lo else 0):
        iscale = (f(14) + f(2) * f(j) / f(steps - 1)) / (hi - lo)
        q = codes((x - lo) * iscale)
        sl, sll, slx = total(q), total(q * q), total(q * x)
        den = G * sll - sl * sl
        if not den > 0:
            continue
        s = half(max((G * slx - sl * sx) / den, f(1e-6)))
        m = half((sx - s * sl) / G)
        if error(s, m) < best:
            best, best_s, best_m = error(s, m), s, m
    return np.array([best_s, best_m], dtype=f)


@pytest.mark.parametrize("steps", [0, 2, qkernel.FIT_STEPS])
def test_the_int4_fit_computes_its_definition_bit_for_bit(steps):
    """fit_int4 against fit_reference on Gaussian groups with outliers, constant and all-zero groups, and a group
    of integers whose best grid is the one of 14 codes over its range (codes x - lo) with two ties (2.5, 8.5: rounded
    to even, not away, or that grid's least-squares scale and min come out otherwise)."""
    assert qkernel.load(), qkernel.why_not()
    rng = np.random.default_rng(3)
    groups = (rng.standard_normal((40, 64)) * 0.02).astype(np.float32)
    groups[::5, ::9] *= 8
    groups[1], groups[2] = 0.3, 0.0
    groups[3] = np.resize(np.arange(15, dtype=np.float32), 64)  # the 15-code grid fits it, ties and all
    groups[3, [20, 40]] = 2.5, 8.5
    got = torch.ops.specdec.fit_int4(torch.from_numpy(groups), steps).numpy()
    want = np.stack([fit_reference(x, steps) for x in groups])
    assert np.array_equal(got.view(np.int32), want.view(np.int32))


def scales_of(scales, group, in_f):
    """The per-weight scale [out, in] of a packed weight (the stored float16 scale of each weight's group)."""
    out_f = scales.shape[0] * qkernel.ROWS
    return scales[:, :, :, 0, :].permute(0, 2, 3, 1).reshape(out_f, -1).float().repeat_interleave(group, 1)


def test_pack_refuses_shapes_the_kernel_cannot_tile():
    with pytest.raises(ValueError, match="out % 64"):
        qkernel.pack(torch.randn(48, 64), 4, 32)
    with pytest.raises(ValueError, match="bits"):
        qkernel.pack(torch.randn(64, 64), 3, 32)


def test_the_kernels_ops_refuse_a_tensor_off_the_cpu_instead_of_reading_its_memory():
    """On a GPU machine a cuda tensor reached fit_int4 and its worker crashed (the op read device memory as host
    memory); a meta tensor stands in for one here."""
    assert qkernel.load(), qkernel.why_not()
    with pytest.raises(RuntimeError, match="CPU tensor"):
        torch.ops.specdec.fit_int4(torch.empty(4, 32, device="meta"), 0)
    with pytest.raises(RuntimeError, match="CPU"):
        torch.ops.specdec.rms_norm(torch.empty(1, 64, device="meta"), torch.empty(64, device="meta"), 1e-6)


def test_fused_siblings_give_the_bits_each_would_alone():
    model = quantize(tiny_llama(layers=1).float(), "int4", 32, kernel="specdec")
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.group is mlp.up_proj.group is not None  # gate/up fused (k/v: 32 outputs stay float)
    x = torch.randn(1, 3, 64)
    with torch.inference_mode():
        gate, up = mlp.gate_proj(x), mlp.up_proj(x)  # the second takes its part of the first call
        for m, got in ((mlp.gate_proj, gate), (mlp.up_proj, up)):
            alone = qkernel.qlinear(x, m.qweight, m.scales, m.bias, m.out_features, m.group_size, m.bits)
            assert torch.equal(got, alone)
        other = torch.randn(1, 3, 64)
        assert torch.equal(mlp.up_proj(other), qkernel.qlinear(other, mlp.up_proj.qweight, mlp.up_proj.scales, None,
                                                                mlp.up_proj.out_features, 32, 4))


def test_quantize_with_the_kernel_swaps_what_it_can_tile_and_makes_attention_row_invariant():
    model = quantize(tiny_llama().float(), "int4", 32, kernel="specdec")
    kinds = {name.rsplit(".", 1)[-1]: type(m).__name__ for name, m in model.named_modules()}
    assert kinds["q_proj"] == kinds["gate_proj"] == "QuantLinear"  # 64 and 128 outputs
    assert kinds["k_proj"] == "Linear" and kinds["lm_head"] == "Linear"  # 32 and 97 outputs: not whole blocks
    assert model.specdec_precision == "int4-g32 specdec"
    assert model.config._attn_implementation == attention.NAME


@pytest.mark.parametrize("bits", [4, 8])
def test_speculation_on_a_kernel_quantized_target_is_token_identical_to_it(bits):
    """Not 'identical up to near ties': every K, auto, padding, rows of different lengths in one batch."""
    precision = f"int{bits}"
    target = quantize(tiny_llama(layers=2).float(), precision, 32, kernel="specdec")
    draft = quantize(perturbed(tiny_llama(layers=2), 0.05).float(), "int4", 32, kernel="specdec")
    alone = specdec.generate(target, PROMPTS, max_new_tokens=16, eos_token_id=[]).tokens
    for k in (1, 3, 8, 15, "auto"):
        result = specdec.generate(target, PROMPTS, draft=draft, k=k, max_new_tokens=16, eos_token_id=[])
        assert result.tokens == alone, k
        assert k == "auto" or result.stats["proposed"] > 0
    for prompt, ref in zip(PROMPTS, alone):  # batch 1 too (no mask: the aligned path)
        assert specdec.generate(target, [prompt], draft=draft, k=4, max_new_tokens=16, eos_token_id=[]).tokens == [ref]


def test_a_quantized_pair_runs_a_draft_at_its_measured_fastest_precision():
    pair = quantize_pair(load_pair("tiny-llama"), "int4", 32)
    choice = fastest_draft(load_pair("tiny-llama").draft, 32, "specdec")  # cached by the call above
    if choice == "as loaded":
        assert not any(isinstance(m, QuantLinear) for m in pair.draft.modules())
    else:
        assert pair.draft.specdec_precision.startswith(choice)
    forced = quantize_pair(load_pair("tiny-llama"), "int4", 32, draft_precision="int8")
    assert forced.draft.specdec_precision == "int8-g32 specdec"


def test_the_draft_precision_choice_times_every_candidate_on_the_path_a_generation_runs_it_on(monkeypatch, tmp_path):
    """The float draft ("as loaded") is timed on its measured linear plans, as generate runs it, not on torch's
    default path: a handicapped float candidate would bias the choice toward the quantized ones."""
    monkeypatch.setenv("SPECDEC_MEASUREMENTS", str(tmp_path))  # an empty cache: the choice is measured here
    real, timed = quantize_module.draft_forwards, []

    def spy(forwards):
        plain = [m for m in forwards.model.modules() if type(m) is torch.nn.Linear]
        timed.append(bool(plain) and all("forward" in m.__dict__ for m in plain))  # patched by fast_linears
        return real(forwards)
    monkeypatch.setattr(quantize_module, "draft_forwards", spy)
    fastest_draft(tiny_llama(layers=2).float(), 32, "specdec")
    assert len(timed) >= 3 and all(timed)  # as loaded, int8 and int4, in every pass


def test_without_the_kernel_torchs_kernels_serve_and_calibrate_says_why(monkeypatch):
    """No compiler, not x86, or SPECDEC_QKERNEL=off: quantize's "auto" takes torch's kernels, forcing specdec's own is
    refused with the reason, and the report names it."""
    monkeypatch.setattr(qkernel, "_state", dict(loaded=False, why="no C++ compiler found"))
    model = quantize(tiny_llama().float(), "int4", 32)
    assert model.specdec_precision == "int4-g32" and model.config._attn_implementation != attention.NAME
    with pytest.raises(ValueError, match="no C\\+\\+ compiler"):
        quantize(tiny_llama().float(), "int4", 32, kernel="specdec")
    assert "no C++ compiler" in kernel_report()


def tiny_blockwise(kind, layers=2, seed=0, vocab=97):
    """A tiny Llama or Qwen2 (q/k/v bias) whose every projection has a multiple of 64 outputs, so q/k/v and gate/up
    all run fused on the kernel and the layers get specdec.lean's forward."""
    torch.manual_seed(seed)
    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[kind]
    config = config_cls(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                        initializer_range=0.3, bos_token_id=0, eos_token_id=1)
    return model_cls(config).eval()


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_lean_layer_forward_matches_transformers_and_keeps_speculation_exact(kind):
    plain = quantize(tiny_blockwise(kind), "int4", 32, kernel="specdec")
    for layer in plain.model.layers:
        del layer.forward  # transformers' own forward, on the same quantized weights
    lean_model = quantize(tiny_blockwise(kind), "int4", 32, kernel="specdec")
    assert lean.enable(lean_model) == 0 and all("forward" in layer.__dict__ for layer in lean_model.model.layers)
    ids = torch.tensor([PROMPTS[2]])
    with torch.inference_mode():  # the same computation, up to the norm's rounding
        torch.testing.assert_close(lean_model(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)
    draft = quantize(tiny_blockwise(kind, seed=1), "int4", 32, kernel="specdec")
    alone = specdec.generate(lean_model, PROMPTS, max_new_tokens=12, eos_token_id=[]).tokens
    for k in (2, 5, "auto"):
        assert specdec.generate(lean_model, PROMPTS, draft=draft, k=k, max_new_tokens=12, eos_token_id=[]).tokens == alone


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_the_lean_base_forward_skips_transformers_masks_and_changes_no_bit(kind, monkeypatch):
    """lean.base_forward: the arena's forwards of up to MAX_TOKENS tokens (ragged rows) give the logits bit for bit
    as transformers' own base forward over the same lean layers, without building a mask; any other forward (a
    cache-free one) is transformers' own."""
    model = quantize(tiny_blockwise(kind), "int4", 32, kernel="specdec")
    assert "forward" in model.model.__dict__
    g = torch.Generator().manual_seed(0)
    prompts, lengths = torch.randint(2, 97, (2, 20), generator=g), torch.tensor([20, 13])

    def logits(block):
        a = Arena(model, 2, 40)
        a.forward(prompts)
        a.point_to(lengths, 20)
        return a.forward(block)

    blocks = [torch.randint(2, 97, (2, t), generator=g) for t in (1, 2, 5)]
    with torch.inference_mode():
        lean_forward = model.model.__dict__.pop("forward")  # transformers' base forward, the layers still lean
        expected = [logits(block) for block in blocks]
        model.model.forward = lean_forward

        def no_mask(*args, **kwargs):
            raise AssertionError("the lean base forward built a mask")
        monkeypatch.setattr(sys.modules[type(model.model).__module__], "create_causal_mask", no_mask)
        for block, want in zip(blocks, expected):
            assert torch.equal(logits(block), want)
        with pytest.raises(AssertionError, match="built a mask"):  # a cache-free forward: transformers' own
            model(prompts)


def test_the_layer_ops_compute_transformers_values_row_by_row():
    """specdec/csrc/layer.cpp: the rotary embedding bit for bit as transformers', RMSNorm and SiLU * up to float32
    rounding; each row's result the same alone as among others (a verify's rows, as one-token steps)."""
    from transformers.models.qwen2.modeling_qwen2 import apply_rotary_pos_emb
    assert qkernel.load(), qkernel.why_not()
    ops, g = torch.ops.specdec, torch.Generator().manual_seed(0)
    qkv, cos, sin = torch.randn(2, 5, (4 + 2 * 2) * 16, generator=g), torch.randn(2, 5, 16, generator=g), \
        torch.randn(2, 5, 16, generator=g)
    q, k, v = ops.rope_qkv(qkv, cos, sin, 4, 2)
    heads = lambda t: t.view(2, 5, -1, 16).transpose(1, 2)
    q_ref, k_ref = apply_rotary_pos_emb(heads(qkv[..., :64]), heads(qkv[..., 64:96]), cos, sin)
    assert torch.equal(q, q_ref) and torch.equal(k, k_ref) and torch.equal(v, heads(qkv[..., 96:]))
    x, w = torch.randn(3, 4, 96, generator=g), torch.randn(96, generator=g)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-6), torch.nn.functional.rms_norm(x, (96,), w, 1e-6))
    torch.testing.assert_close(ops.silu_mul(x), torch.nn.functional.silu(x[..., :48]) * x[..., 48:])
    assert torch.equal(ops.rms_norm(x, w, 1e-6)[1, 2], ops.rms_norm(x[1, 2:3], w, 1e-6)[0])
    assert torch.equal(ops.silu_mul(x)[2, 1], ops.silu_mul(x[2, 1:2])[0])
    assert torch.equal(ops.rope_qkv(qkv[1:, 3:4], cos[1:, 3:4], sin[1:, 3:4], 4, 2)[0][0, :, 0], q[1, :, 3])
    shared = ops.rope_qkv(qkv, cos[:1], sin[:1], 4, 2)  # one rotation for every batch row, as transformers broadcasts
    assert torch.equal(shared[1], apply_rotary_pos_emb(heads(qkv[..., :64]), heads(qkv[..., 64:96]), cos[:1], sin[:1])[1])


def test_the_whole_layer_op_gives_every_row_of_a_verify_its_one_token_output(monkeypatch):
    """specdec/csrc/decoder.cpp, T = 1..16 new tokens on two rows of different lengths: each row's logits bit for bit
    those of one-token forwards, and close to those of the layer's general path (the same ops called from Python,
    SDPA per row): its own attention rounds differently in the last bit, which the kernel's int8 activation
    quantization turns into one code step now and then (~0.1 in a logit), never more."""
    model = quantize(tiny_blockwise("qwen2", vocab=128), "int4", 32, kernel="specdec")  # the LM head on the kernel too
    g = torch.Generator().manual_seed(0)
    prompts, lengths = torch.randint(2, 97, (2, 20), generator=g), torch.tensor([20, 13])

    def arena():
        a = Arena(model, 2, 40)
        a.forward(prompts)
        a.point_to(lengths, 20)  # ragged: row 1 continues after 13 tokens
        return a

    with torch.inference_mode():
        for t in range(1, 17):
            block = torch.randint(2, 97, (2, t), generator=g)
            together = arena().forward(block)
            one, steps = arena(), []
            for i in range(t):
                steps.append(one.forward(block[:, i:i + 1]))
                one.point_to(lengths + i + 1, 21 + i)
            assert torch.equal(together, torch.cat(steps, 1)), t
            with monkeypatch.context() as m:
                m.setattr(lean, "MAX_TOKENS", 0)  # the general path
                general = arena().forward(block)
            assert (together - general).abs().amax() < 0.5 and (together - general).abs().mean() < 0.01, t


@pytest.mark.slow
def test_the_real_pair_at_int4_speculates_token_identically_on_every_committed_prompt():
    """Qwen2.5-Coder 1.5B + 0.5B at int4 on the kernel, the draft at its measured precision: greedy speculation (a
    fixed K past the kernel's 4-row pass, and auto) equals the int4 target alone on every prompt of prompts.jsonl."""
    skip_without_qwen()
    pair = load_pair("qwen2.5-coder", precision="int4")
    assert pair.target.specdec_precision == "int4-g64 specdec"
    for prompt in load_prompts(REPO / "data" / "prompts" / "prompts.jsonl"):
        ids = encode(pair.tokenizer, prompt)
        alone = specdec.generate(pair.target, [ids], max_new_tokens=24, eos_token_id=[]).tokens
        for k in (6, "auto"):
            got = specdec.generate(pair.target, [ids], draft=pair.draft, k=k, max_new_tokens=24, eos_token_id=[],
                                   same_tokenizer=True).tokens
            assert got == alone, (prompt["id"], k)
