"""Weight-only quantization of a loaded HF causal LM on CPU, with torch's own kernels: the precision axis.

    model = quantize(model, "int8")                 # per-output-channel int8, bfloat16 activations (ACT)
    model = quantize(model, "int4", group_size=64)  # groupwise asymmetric int4 (gpt-fast's recipe)
    pair = quantize_pair(load_pair("qwen2.5-coder"), "int8")   # the target only; the draft stays as it was

Every nn.Linear (and GPT-2's Conv1D, the same product with a transposed weight) becomes a small module holding
the packed weight and calling one aten kernel: `_weight_int8pack_mm` (int8) or `_weight_int4pack_mm_for_cpu`
(int4). The kernels' inputs are bfloat16 (ACT): both also take float32, but measured on a 2-core AVX-512 EPYC
(torch 2.13) their float32 path is 2-6x slower than bfloat16 and 4-10x slower than a float32 F.linear, so a
float32-activation quantized model would be slower than the float one it came from. Only the linears' inputs and
outputs are cast (back to the model's dtype after the kernel): norms, attention, RoPE and the KV cache stay float32.

What is quantized: every linear, the LM head included. Why the head: it is the largest single weight (Qwen2.5-1.5B:
151936 x 1536, 0.93 GB in float32, 15% of a float32 step's bytes and half of an int4 step's), and a decode step
streams it whole. The input embeddings are not: a step gathers one row of them per token, so their bytes do not
count per token, and keeping them float keeps `model.dtype` (which the arena and HF read) the float dtype. A tied
head gets its own quantized copy; the embedding keeps the float weight.

The quantized modules are not nn.Linear, so specdec.linear's measured few-row path (which patches exactly
`type(module) is nn.Linear`) leaves them alone: they always run their one kernel.
"""
import copy
import dataclasses

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

PRECISIONS = ("float32", "bfloat16", "float16", "int8", "int4")
QUANTIZED = ("int8", "int4")
ACT = torch.bfloat16  # what the kernels multiply in (see above); the scales are stored in it too
GROUP_SIZES = (32, 64, 128)


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
    """y = x W^T + b with W stored int8 (per channel) or int4 (per group), multiplied in ACT; x in any float
    dtype, y in x's."""

    def __init__(self, weight, bias, precision, group_size=64):
        super().__init__()
        w = weight.detach().float().contiguous()  # Conv1D hands a transposed view
        self.out_features, self.in_features = w.shape
        self.precision, self.group_size = precision, group_size
        if precision == "int8":
            q, scales = int8_weight(w)
        else:
            q, scales = int4_weight(w, group_size)
        # Buffers, not parameters: nothing trains them, and model.parameters() keeps meaning the float weights.
        self.register_buffer("qweight", q)
        self.register_buffer("scales", scales.to(ACT))
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    @property
    def weight(self):
        """The packed weight: its shape[0] is out_features, which is all the engine reads of an LM head's weight
        (dequantize() gives the float weight)."""
        return self.qweight

    def dequantize(self):
        """The weight [out, in] the kernel multiplies by, in float32 (for tests and error bounds)."""
        if self.precision == "int8":
            return self.qweight.float() * self.scales[:, None]
        eye = torch.eye(self.in_features, dtype=ACT)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.qweight, self.group_size, self.scales).float().T

    def forward(self, x):
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
        group = f", group_size={self.group_size}" if self.precision == "int4" else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, {self.precision}{group}"


def quantizable(module, precision, group_size) -> bool:
    if type(module) not in (nn.Linear, Conv1D) or module.weight.device.type != "cpu":
        return False
    out_f, in_f = module.weight.shape if type(module) is nn.Linear else module.weight.shape[::-1]
    # int4: groups must tile the input features, and the packing takes output rows 16 at a time
    return precision == "int8" or in_f % group_size == 0 and out_f % 16 == 0


def quantize(model, precision, group_size=64):
    """Replace the model's CPU nn.Linear / Conv1D modules in place by QuantLinear ("int8" or "int4"); set
    model.specdec_precision (what specdec.costs keys cost curves by) and return the model. An int4 linear whose
    input size is not a multiple of `group_size`, or output size not one of 16, stays float (none in Qwen2.5 or
    Llama at 32/64/128; a test model's odd-sized LM head)."""
    if precision not in QUANTIZED:
        raise ValueError(f"precision {precision!r}: quantize takes one of {QUANTIZED} (cast for float ones)")
    if precision == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"int4 group_size {group_size}: use one of {GROUP_SIZES}")
    if model.device.type != "cpu":
        raise ValueError(f"quantize uses torch's CPU weight-pack kernels; this model is on {model.device.type}")
    if model.dtype not in (torch.float32, torch.bfloat16):
        model.float()  # float64 test models, float16: the kernels take float32 or bfloat16 activations
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if quantizable(child, precision, group_size)]
    for parent, name, child in swaps:
        weight = child.weight if type(child) is nn.Linear else child.weight.T  # Conv1D stores [in, out]
        setattr(parent, name, QuantLinear(weight, child.bias, precision, group_size))
    model.specdec_precision = precision if precision == "int8" else f"int4-g{group_size}"
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


def quantize_pair(pair, precision, group_size=64):
    """The pair with its target at `precision` ("float32", "bfloat16", "float16": the target cast; "int8",
    "int4": quantized from its float weights), in place. The draft stays as the pair chose it (on a CPU
    float32 target: bfloat16 or float32, whichever runs it faster here, measured)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose from {PRECISIONS}")
    if precision in QUANTIZED:
        quantize(pair.target, precision, group_size)
    else:
        # .to(dtype) also casts float buffers (RoPE's inv_freq): as HF's own from_pretrained(dtype=...) leaves
        # them, the rotation is computed in float32 either way (HF upcasts), so this is the model a user casts.
        pair.target.to(getattr(torch, precision))
        pair.target.specdec_precision = None  # the dtype alone keys its cost curves (specdec.costs.model_key)
        pair.dtype = pair.target.dtype
    return pair


def at_precision(pair, precision, group_size=64):
    """A new pair sharing `pair`'s draft and tokenizer, whose target is a copy of `pair`'s at `precision` (the
    original untouched: a study runs several precisions from one loaded pair). The copy costs the float target's
    memory once more until quantization frees it; `precision` equal to the pair's own float dtype: the pair itself."""
    if precision not in QUANTIZED and getattr(torch, precision, None) == pair.dtype:
        return pair
    # The weight copies specdec.linear keeps on modules (oneDNN-packed ones are opaque tensors, which deepcopy
    # cannot copy) are left out: the copy starts without them and remakes what its own path needs.
    memo = {id(m.__dict__["_specdec_weights"]): {} for m in pair.target.modules() if "_specdec_weights" in m.__dict__}
    target = copy.deepcopy(pair.target, memo)
    return quantize_pair(dataclasses.replace(pair, target=target), precision, group_size)
