"""A lean decoder-layer forward for Llama-family models (Qwen2, Llama, Mistral) on specdec's quantized kernel.

Why: at 4 bits a step's products are fast enough that the framework code around them shows. Measured on a 2-core
EPYC, replacing every quantized product by zeros left 5.8 ms per token for Qwen2.5-1.5B (28 layers) and 5.2 ms for
the 0.5B draft: about 200 us a layer of module calls, keyword plumbing, a six-op RMSNorm, the attention interface's
lookups. This forward does the same computation with fewer calls: one kernel call for q/k/v and one for gate/up
(the fused siblings' whole output), the kernel extension's single-call RMSNorm, rotary embedding (bitwise
transformers' own) and SiLU(gate) * up (specdec/csrc/layer.cpp; torch ran a one-row RMSNorm as ~8 ops, ~60 us on a
Zen 4), the cache's own update, and specdec.attention's row-invariant attention. Every operation is per row, so
the forward stays row-invariant: a verify still gives each token its one-token logits, bit for bit.

    enable(model)   # what specdec.quantize does for models on specdec's kernel; other layers keep their forward
"""
import torch

from .attention import rowwise_attention

SERVED = ("Qwen2DecoderLayer", "LlamaDecoderLayer", "MistralDecoderLayer")


def eligible(layer) -> bool:
    """A Llama-family float32 layer whose q/k/v and gate/up run fused on specdec's kernel, with full attention and
    SiLU in its MLP."""
    if type(layer).__name__ not in SERVED:
        return False
    attn, mlp = layer.self_attn, layer.mlp
    fused = [getattr(m, "group", None) for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)]
    return all(fused) and fused[0] is fused[1] is fused[2] and fused[3] is fused[4] and \
        getattr(attn, "sliding_window", None) is None and hasattr(layer.input_layernorm, "variance_epsilon") and \
        getattr(getattr(mlp, "config", None), "hidden_act", None) == "silu" and \
        layer.input_layernorm.weight.dtype == torch.float32


def rms_norm(norm, x):
    return torch.ops.specdec.rms_norm(x, norm.weight, norm.variance_epsilon)


def layer_forward(layer):
    """The forward transformers calls (hidden_states, attention_mask, position_embeddings, cache, ...) -> hidden."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = attn.q_proj.group, mlp.gate_proj.group
    q_heads, kv_heads = (m.out_features // attn.head_dim for m in (attn.q_proj, attn.k_proj))

    def forward(hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        batch, rows, _ = hidden_states.shape
        q, k, v = torch.ops.specdec.rope_qkv(qkv.whole(rms_norm(layer.input_layernorm, hidden_states)),
                                             *position_embeddings, q_heads, kv_heads)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        out, _ = rowwise_attention(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling)
        hidden_states = hidden_states + attn.o_proj(out.reshape(batch, rows, -1))
        gate_and_up = gate_up.whole(rms_norm(layer.post_attention_layernorm, hidden_states))
        return hidden_states + mlp.down_proj(torch.ops.specdec.silu_mul(gate_and_up))
    return forward


def enable(model) -> int:
    """Give every eligible decoder layer of `model` the lean forward (once); returns how many got it now."""
    done = 0
    for layer in model.modules():
        if eligible(layer) and "forward" not in layer.__dict__:
            layer.forward = layer_forward(layer)
            done += 1
    return done
