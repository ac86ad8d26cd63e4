"""specdec.quantize's QuantLinear against torchao 0.18's CPU weight-only configs on Qwen2.5-Coder-1.5B's linear
shapes, 1 and 5 rows, bfloat16 activations, interleaved (torch.utils.benchmark, blocked_autorange, at torch's thread count: its Timer
runs one thread unless told)."""
import sys
import torch
import torch.utils.benchmark as tb
from torch import nn
from torchao.quantization import Int4WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
from specdec.quantize import QuantLinear
from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig

torch.manual_seed(0)
rows = []
for (n_in, n_out) in [(1536, 8960), (8960, 1536), (1536, 1536)]:
    base = nn.Linear(n_in, n_out, bias=False)
    cands = {}
    cands["specdec int8"] = QuantLinear(base.weight, None, "int8")
    cands["specdec int4 g128"] = QuantLinear(base.weight, None, "int4", 128)
    for name, cfg in [("torchao int8 wo", Int8WeightOnlyConfig()),
                      ("torchao int4 g128 (prototype opaque, CPU)", PrototypeInt4WeightOnlyConfig(group_size=128))]:
        m = nn.Sequential(nn.Linear(n_in, n_out, bias=False)).to(torch.bfloat16)
        m[0].weight.data.copy_(base.weight.data.to(torch.bfloat16))
        try:
            quantize_(m, cfg)
            m(torch.randn(1, n_in, dtype=torch.bfloat16))
            cands[name] = m
        except Exception as e:
            print(f"{name}: {type(e).__name__}: {str(e)[:150]}", flush=True)
    bf16 = nn.Linear(n_in, n_out, bias=False).to(torch.bfloat16); bf16.weight.data.copy_(base.weight.data)
    cands["bfloat16 dense"] = bf16
    for t in (1, 5):
        x = torch.randn(t, n_in, dtype=torch.bfloat16)
        res = {}
        with torch.inference_mode():
            for rep in range(2):  # two interleaved passes, the min kept
                for name, m in cands.items():
                    ms = tb.Timer("m(x)", globals=dict(m=m, x=x), num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=0.5).median * 1e3
                    res[name] = min(res.get(name, 1e9), ms)
        print(f"[{n_in}->{n_out}] T={t}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in res.items()), flush=True)
