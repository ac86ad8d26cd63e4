"""Weight-only quantization of a loaded HF causal LM on CPU: the precision axis.

    model = quantize(model, "int4", group_size=64)   # groups of 64 inputs, a float16 scale and min each
    model = quantize(model, "int8")                  # symmetric int8, a float16 scale per group
    pair = quantize_pair(load_pair("qwen2.5-coder"), "int4")   # the target, and the draft at its fastest precision

Every nn.Linear (and GPT-2's Conv1D, the same product with a transposed weight) becomes a QuantLinear calling one
kernel, the same for every linear of a model:
  specdec  specdec's own (specdec.qkernel, x86, built with a C++ compiler): activations quantized to int8 per row
           and group, int8 dot products (AVX-512 VNNI or AVX2), each weight tile read once per call for every row,
           so a verify over 8 tokens costs little more than one token; and row-invariant, so speculation at this
           precision is token-identical to the quantized target alone.
  aten     torch's `_weight_int4pack_mm_for_cpu` / `_weight_int8pack_mm`, multiplying in bfloat16 (ACT): where the
           own kernel cannot be built or run. Its int4 kernel works 4 rows at a time (a 5-token verify reads the
           weights twice) and its output for a row depends on the call's row count, so speculation is identical to
           the target alone only up to near ties.
`quantize(..., kernel=...)` forces one (the benchmarks compare both).

What is quantized: every linear, the LM head included. Why the head: it is the largest single weight (Qwen2.5-1.5B:
151936 x 1536, 0.93 GB in float32, 15% of a float32 step's bytes and half of an int4 step's), and a decode step
streams it whole. The input embeddings are not: a step gathers one row of them per token, so their bytes do not
count per token, and keeping them float keeps `model.dtype` (which the arena and HF read) the float dtype. A tied
head gets its own quantized copy; the embedding keeps the float weight. Norms, attention, RoPE and the KV cache
stay float: float32 on specdec's kernel (which computes in float32), the model's dtype on torch's.

The quantized modules are not nn.Linear, so specdec.linear's measured few-row path (which patches exactly
`type(module) is nn.Linear`) leaves them alone: they always run their one kernel.
"""
import copy
import dataclasses
import functools
import time

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from . import attention, hugepages, lean, paired, qkernel
from .calibration import cached_choice
from .costs import model_key
from .linear import fast_linears, plan_key
from .profiler import Forwards, draft_forwards

PRECISIONS = ("float32", "bfloat16", "float16", "int8", "int4")
QUANTIZED = ("int8", "int4")
ACT = torch.bfloat16  # what the kernels multiply in (see above); the scales are stored in it too
GROUP_SIZES = (32, 64, 128)
KERNELS = ("specdec", "aten")
# A quantized draft's LM head keeps the first DRAFT_HEAD token ids. Why: the head is the draft's largest weight
# (Qwen2.5-0.5B at int4: 72 of 262 MB a step), and a draft only proposes: a token it cannot name is a rejected draft,
# never a wrong output. BPE tokenizers number tokens in merge order, roughly by frequency: Qwen2.5's first 65536 ids
# hold 97.5% of the tokens its 1.5B target wrote in the committed run (32768: 93%). Measured on the Zen 4, int4 pair,
# 4 prompts x 2 passes, paired: a 31 MB head (a draft step streams 16% fewer bytes), acceptance unchanged,
# speculation 1.05x (K=2) and 1.06x (auto) the full head's; 32768 ids lost acceptance (0.59 -> 0.48 on a QA prompt).
DRAFT_HEAD = 65536


def int8_weight(w):
    """(int8 [out, in], float scales [out]): symmetric per output channel, scale = max|w| / 127."""
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12)
    return torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8), scales


def int4_weight(w, group_size):
    """(packed uint8, scales_and_zeros [in/group, out, 2]) in the layout `_weight_int4pack_mm_for_cpu` reads:
    per group of `group_size` inputs, 4-bit codes q in 0..15 with w ~ (q - 8) * scale + zero (asymmetric:
    min..max of the group spread over the 16 codes)."""
    out_f, in_f = w.shape
    g = w.reshape(out_f, in_f // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    scales = ((hi - lo) / 15).clamp(min=1e-6)
    q = torch.round((g - lo[..., None]) / scales[..., None]).clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
    zeros = lo + 8 * scales  # the kernel subtracts 8 from each code
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    return packed, torch.stack([scales, zeros], dim=-1).transpose(0, 1).contiguous()


class QuantLinear(nn.Module):
    """y = x W^T + b with W stored int8 or int4 in groups, multiplied by `kernel` ("specdec" or "aten", see the
    module docstring); x in any float dtype, y in x's."""

    def __init__(self, weight, bias, precision, group_size=64, kernel="aten"):
        super().__init__()
        w = weight.detach().float().contiguous()  # Conv1D hands a transposed view
        self.out_features, self.in_features = w.shape
        self.precision, self.group_size, self.kernel = precision, group_size, kernel
        self.bits = 8 if precision == "int8" else 4
        if kernel == "specdec":
            q, scales = qkernel.pack(w, self.bits, group_size)
        elif precision == "int8":
            q, scales = int8_weight(w)
        else:
            q, scales = int4_weight(w, group_size)
        # Buffers, not parameters: nothing trains them, and model.parameters() keeps meaning the float weights.
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales if kernel == "specdec" else scales.to(ACT))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self.group = None  # a qkernel.Fused this linear is part of

    @property
    def weight(self):
        """The packed weight: the engine reads only an LM head's output size, `out_features` (dequantize() gives
        the float weight)."""
        return self.qweight

    def dequantize(self):
        """The weight [out, in] the kernel multiplies by, in float32 (for tests and error bounds)."""
        if self.kernel == "specdec":
            return qkernel.dequantize(self.qweight, self.scales, self.bits, self.group_size, self.in_features)
        if self.precision == "int8":
            return self.qweight.float() * self.scales[:, None]
        eye = torch.eye(self.in_features, dtype=ACT)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scales).float().T

    def forward(self, x):
        if self.group is not None:  # fused with its siblings (specdec.qkernel.Fused)
            return self.group(self, x)
        if self.kernel == "specdec":
            return qkernel.qlinear(x, self.qweight, self.scales, self.bias, self.out_features, self.group_size,
                                   self.bits)
        x2 = x.reshape(-1, self.in_features).to(ACT).contiguous()
        if self.precision == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.qweight, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.qweight, self.group_size, self.scales)
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self):
        group = f", group_size={self.group_size}" if self.precision == "int4" or self.kernel == "specdec" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.precision}{group}, " \
               f"kernel={self.kernel}"


def quantizable(module, precision, group_size, kernel) -> bool:
    if type(module) not in (nn.Linear, Conv1D) or module.weight.device.type != "cpu":
        return False
    out_f, in_f = module.weight.shape if type(module) is nn.Linear else module.weight.shape[::-1]
    # groups must tile the input features; specdec's kernel takes outputs in blocks of 64
    if kernel == "specdec":
        return qkernel.fits(out_f, in_f, group_size)
    return precision == "int8" or in_f % group_size == 0 and out_f % 16 == 0  # torch's int4 packing: 16 rows


def resolve_kernel(kernel) -> str:
    """"auto": specdec's own kernel where it is built and runs here, else torch's."""
    if kernel == "auto":
        return "specdec" if qkernel.available() else "aten"
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: choose auto or one of {KERNELS}")
    if kernel == "specdec" and not qkernel.available():
        raise ValueError(f"specdec's quantized kernel is not available here ({qkernel.why_not()}); use kernel='aten'")
    return kernel


def kernel_report() -> str:
    """Which kernel quantized models get here, in words (calibrate prints it)."""
    if qkernel.available():
        return f"specdec's own kernel ({qkernel.path_words()}, row-invariant)"
    return f"torch's int4/int8 kernels: specdec's own is not available ({qkernel.why_not()})"


def kernel_table(models, rows=(1, 4, 8), reps=5) -> list[str]:
    """Per quantized weight shape of `models`: ms per call of the kernel they run and of the other one, at `rows`
    rows (interleaved, min of `reps`), so a user sees what the choice is worth on this machine."""
    shapes = {(m.out_features, m.in_features, m.precision, m.group_size, m.kernel): m
              for model in models if model is not None for m in model.modules() if isinstance(m, QuantLinear)}
    lines = []
    for (out_f, in_f, precision, group, kernel), m in sorted(shapes.items()):
        weight = m.dequantize()
        kernels = [k for k in KERNELS if k == "aten" or qkernel.available()]
        mods = {k: QuantLinear(weight, None, precision, group, k) for k in kernels}
        best = {(k, r): float("inf") for k in kernels for r in rows}
        with torch.inference_mode():
            for _ in range(reps):
                for r in rows:
                    x = torch.randn(r, in_f, device=weight.device)
                    for k, mod in mods.items():
                        start = time.perf_counter()
                        mod(x)
                        best[k, r] = min(best[k, r], time.perf_counter() - start)
        timings = "; ".join(f"{k} " + "/".join(f"{best[k, r] * 1e3:.2f}" for r in rows) for k in kernels)
        lines.append(f"{out_f}x{in_f} {precision}-g{group}: runs {kernel}; ms at {'/'.join(map(str, rows))} rows: {timings}")
    return lines


def precision_label(model) -> str | None:
    """A model's precision in words: its quantized format (e.g. 'int4-g64 specdec', what its cost curves are keyed
    by), else its float dtype ('bfloat16'); None without a model."""
    if model is None:
        return None
    return getattr(model, "specdec_precision", None) or str(model.dtype).removeprefix("torch.")


def quantize(model, precision, group_size=64, kernel="auto", head_rows=None):
    """Replace the model's CPU nn.Linear / Conv1D modules in place by QuantLinear ("int8" or "int4") on one
    `kernel`; set model.specdec_precision (what specdec.costs keys cost curves by) and return the model. A linear
    whose input size is not a multiple of `group_size`, or output size not one of 64 (specdec's kernel; 16 for
    torch's int4), stays float (none in Qwen2.5 or Llama at 32/64/128; a test model's odd-sized LM head).
    `head_rows`: the LM head keeps only its first `head_rows` outputs where it has more (a draft's: DRAFT_HEAD)."""
    if precision not in QUANTIZED:
        raise ValueError(f"precision {precision!r}: quantize takes one of {QUANTIZED} (cast for float ones)")
    if group_size not in GROUP_SIZES:
        raise ValueError(f"group_size {group_size}: use one of {GROUP_SIZES}")
    if model.device.type != "cpu":
        raise ValueError(f"quantize runs CPU kernels; this model is on {model.device.type}")
    kernel = resolve_kernel(kernel)
    if kernel == "specdec" or model.dtype not in (torch.float32, torch.bfloat16):
        # specdec's kernel computes in float32: bfloat16 norms and attention around it would cost two casts per
        # linear and slower elementwise ops (the bfloat16 0.5B draft at int4: 24.5 ms a step, float32 21.9 ms,
        # medians of 6 interleaved, Zen 4 EPYC). torch's kernels take float32 or bfloat16 (float64 test models,
        # float16: cast).
        model.float()
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if quantizable(child, precision, group_size, kernel)]
    made, head, cut = set(), model.get_output_embeddings(), None
    for parent, name, child in swaps:
        weight = child.weight if type(child) is nn.Linear else child.weight.T  # Conv1D stores [in, out]
        bias = child.bias
        if child is head and head_rows and weight.shape[0] > head_rows:
            cut = weight.shape[0]
            weight, bias = weight[:head_rows], None if bias is None else bias[:head_rows]
        setattr(parent, name, QuantLinear(weight, bias, precision, group_size, kernel))
        made.add(getattr(parent, name))
    if cut:  # the distribution the head's outputs are the first ids of (specdec.inputs.vocab_size)
        model.get_output_embeddings().vocabulary = cut
    if kernel == "specdec":  # siblings that read one input as one weight (which then moves as one)
        qkernel.fuse_siblings(model, made)
    hugepages.place([m for m in model.modules() if m in made])  # before lean.enable holds the weights' tensors
    if kernel == "specdec":  # row-invariant linears and attention: a verify gives each token its one-token logits
        attention.enable(model)
        lean.enable(model)
    grouped = precision == "int4" or kernel == "specdec"
    model.specdec_precision = (f"{precision}-g{group_size}" if grouped else precision) + \
        ("" if kernel == "aten" else f" {kernel}") + (f" head {head_rows}" if cut else "")
    return model


def weight_bytes(model) -> int:
    """Bytes of every parameter and buffer (packed weights included): what one decode step reads, give or take
    the input embeddings (read one row per token) and the KV cache."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() not in seen:  # tied weights count once
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def step_bytes(model) -> int:
    """weight_bytes less the input embeddings when they are not also the (float) LM head."""
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = isinstance(head, nn.Linear) and head.weight.data_ptr() == emb.weight.data_ptr()
    return weight_bytes(model) - (0 if tied else emb.weight.numel() * emb.weight.element_size())


def quantize_pair(pair, precision, group_size=64, draft_precision="auto"):
    """The pair with its target at `precision` ("float32", "bfloat16", "float16": the target cast; "int8",
    "int4": quantized from its float weights), in place. A quantized target gets a draft at `draft_precision`:
    "auto" is the fastest on this machine of the draft as loaded, int8 and int4 (fastest_draft: measured, cached),
    on the same kernel as the target; a float target keeps the draft as the pair chose it (on a CPU float32
    target: bfloat16 or float32 by its steps and prefill here, measured: specdec.devices.faster_draft_dtype)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {PRECISIONS}")
    if precision in QUANTIZED:
        quantize(pair.target, precision, group_size)
        if pair.draft is not None and draft_precision is not None:
            kernel = resolve_kernel("auto")  # the one the target got
            chosen = fastest_draft(pair.draft, group_size, kernel) if draft_precision == "auto" else draft_precision
            if chosen in QUANTIZED:
                quantize(pair.draft, chosen, group_size, kernel, head_rows=DRAFT_HEAD)
    else:
        # .to(dtype) also casts float buffers (RoPE's inv_freq): as HF's own from_pretrained(dtype=...) leaves
        # them, the rotation is computed in float32 either way (HF upcasts), so this is the model a user casts.
        pair.target.to(getattr(torch, precision))
        pair.target.specdec_precision = None  # the dtype alone keys its cost curves (specdec.costs.model_key)
        pair.dtype = pair.target.dtype
    return pair


DRAFTS = "draft-precisions.json"  # under specdec.machine.measurement_root()


def fastest_draft(draft, group_size, kernel) -> str:
    """"as loaded", "int8" or "int4": the one that runs the draft's forwards clearly fastest here (one token, most
    draft steps, plus two, a round's first step after a fully accepted round), each a quantized copy of `draft`;
    "as loaded" unless another wins clearly. The draft only proposes, so its precision is free: exactness comes
    from the target's verification. Interleaved and compared paired (specdec.paired); cached per machine and model,
    timed in quiet moments (specdec.calibration.cached_choice)."""
    def measure():
        candidates = {"as loaded": draft, **{p: quantize(copy.deepcopy(draft), p, group_size, kernel, DRAFT_HEAD)
                                             for p in QUANTIZED}}
        # each on the path a generation runs it on: the float draft on its measured linear plans, not torch's default
        with torch.inference_mode(), fast_linears(list(candidates.values())):
            timed = {n: functools.partial(draft_forwards, Forwards(m)) for n, m in candidates.items()}
            seconds = paired.interleaved(timed, 3)
        return dict(seconds={n: min(s) for n, s in seconds.items()}, choice=paired.fastest(seconds, "as loaded"))

    key = f"{model_key(draft)} | g{group_size} {kernel} head {DRAFT_HEAD}"
    entry = cached_choice(DRAFTS, plan_key(), key, measure, "timing the draft's precision")
    return entry["choice"]


def at_precision(pair, precision, group_size=64, draft_precision="auto"):
    """A new pair sharing `pair`'s tokenizer, whose target (and at a quantized precision, draft) is a copy of
    `pair`'s at `precision` (the original untouched: a study runs several precisions from one loaded pair). The copy
    costs the float model's memory once more until quantization frees it; `precision` equal to the pair's own float
    dtype: the pair itself."""
    if precision not in QUANTIZED and getattr(torch, precision, None) == pair.dtype:
        return pair
    target = copy_model(pair.target)
    draft = copy_model(pair.draft) if precision in QUANTIZED and pair.draft is not None else pair.draft
    return quantize_pair(dataclasses.replace(pair, target=target, draft=draft), precision, group_size, draft_precision)


def copy_model(model):
    """A deep copy without the weight copies specdec.linear keeps on modules (oneDNN-packed ones are opaque
    tensors, which deepcopy cannot copy): the copy remakes what its own path needs."""
    memo = {id(m.__dict__["_specdec_weights"]): {} for m in model.modules() if "_specdec_weights" in m.__dict__}
    return copy.deepcopy(model, memo)
