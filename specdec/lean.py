"""A lean decoder-layer forward for Llama-family models (Qwen2, Llama, Mistral) on specdec's quantized kernel.

Why: at 4 bits a step's products are fast enough that the framework code around them shows. Measured on a 2-core
EPYC, replacing every quantized product by zeros left 5.8 ms per token for Qwen2.5-1.5B (28 layers) and 5.2 ms for
the 0.5B draft: about 200 us a layer of module calls, keyword plumbing, a six-op RMSNorm, the attention interface's
lookups. A forward over up to MAX_TOKENS tokens that writes specdec's KV arena (decode steps, verifies, short
prefills) runs each layer as one call of the kernel extension (specdec/csrc/decoder.cpp: norms, fused q/k/v and
gate/up products, rotary embedding, the arena's write, row-by-row attention, SiLU * up, residuals). Any other forward
(a long prefill, a cache-free one) calls the same extension's ops one by one from Python, with specdec.attention's
row-invariant SDPA. Every operation is per row, so the forward stays row-invariant: a verify still gives each token
its one-token logits, bit for bit.

When every layer of a model takes that one call, the base model's forward gets a lean twin too (base_forward):
embedding, rotary embedding, the layers' forwards called directly, final norm. It skips what transformers' forward
does around the layers (mask building, output capture, a module call per layer): about 0.6 ms of the int4 0.5B
draft's 9.6 ms step (1.054x as fast, paired on the Zen 4), about 1% of the 1.5B target's; the same bits.

    enable(model)   # what specdec.quantize does for models on specdec's kernel; other layers keep their forward
"""
import torch
from transformers.modeling_outputs import BaseModelOutputWithPast

from . import qkernel
from .arena import Arena
from .attention import MAX_TOKENS, rowwise_attention

SERVED = ("Qwen2DecoderLayer", "LlamaDecoderLayer", "MistralDecoderLayer")


def eligible(layer) -> bool:
    """A Llama-family float32 layer whose q/k/v and gate/up run fused on specdec's kernel (o and down on it alone),
    with full attention and SiLU in its MLP."""
    if type(layer).__name__ not in SERVED:
        return False
    attn, mlp = layer.self_attn, layer.mlp
    fused = [getattr(m, "group", None) for m in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)]
    alone = [getattr(m, "kernel", None) == "specdec" and m.group is None for m in (attn.o_proj, mlp.down_proj)]
    return all(fused) and all(alone) and fused[0] is fused[1] is fused[2] and fused[3] is fused[4] and \
        getattr(attn, "sliding_window", None) is None and hasattr(layer.input_layernorm, "variance_epsilon") and \
        getattr(getattr(mlp, "config", None), "hidden_act", None) == "silu" and \
        layer.input_layernorm.weight.dtype == torch.float32


def takes_one_call(attn) -> bool:
    """Whether the whole-layer op serves this attention: its own attention works in 16-lane chunks of a head."""
    return attn.head_dim % 16 == 0


def rms_norm(norm, x):
    return torch.ops.specdec.rms_norm(x, norm.weight, norm.variance_epsilon)


def layer_forward(layer):
    """The forward transformers calls (hidden_states, attention_mask, position_embeddings, cache, ...) -> hidden."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv, gate_up = attn.q_proj.group, mlp.gate_proj.group
    q_heads, kv_heads = (m.out_features // attn.head_dim for m in (attn.q_proj, attn.k_proj))
    # What the whole-layer op reads (specdec/csrc/decoder.cpp): the norms' weights, then each linear's packed weight.
    weights, ints = [layer.input_layernorm.weight, layer.post_attention_layernorm.weight], [q_heads, kv_heads]
    o, down = attn.o_proj, mlp.down_proj
    for codes, scales, bias, member in ((qkv.codes, qkv.scales, qkv.bias, qkv.members[0]),
                                        (o.qweight, o.scales, o.bias, o),
                                        (gate_up.codes, gate_up.scales, gate_up.bias, gate_up.members[0]),
                                        (down.qweight, down.scales, down.bias, down)):
        weights += [codes, scales, codes.new_empty(0, dtype=torch.float32) if bias is None else bias.detach()]
        ints += [codes.shape[0] * qkernel.ROWS, member.group_size, member.bits]
    floats = [layer.input_layernorm.variance_epsilon, layer.post_attention_layernorm.variance_epsilon, attn.scaling]
    one_call = takes_one_call(attn)

    def forward(hidden_states, attention_mask=None, position_embeddings=None, cache=None, **kwargs):
        batch, rows, _ = hidden_states.shape
        if one_call and isinstance(cache, Arena) and rows <= MAX_TOKENS:  # decode steps, verifies: one call
            store = cache.layers[attn.layer_idx]
            if not store.is_initialized:  # a short prompt's prefill: the arena allocates from a write's shape
                store.lazy_initialization(*[hidden_states.new_empty(batch, kv_heads, 0, attn.head_dim)] * 2)
            return torch.ops.specdec.decoder_layer(hidden_states, weights, ints, floats, *position_embeddings,
                                                   store.keys, store.values, cache.write_slots)
        q, k, v = torch.ops.specdec.rope_qkv(qkv.whole(rms_norm(layer.input_layernorm, hidden_states)),
                                             *position_embeddings, q_heads, kv_heads)
        if cache is not None:
            k, v = cache.update(k, v, attn.layer_idx)
        out, _ = rowwise_attention(attn, q, k, v, attention_mask, dropout=0.0, scaling=attn.scaling)
        hidden_states = hidden_states + attn.o_proj(out.reshape(batch, rows, -1))
        gate_and_up = gate_up.whole(rms_norm(layer.post_attention_layernorm, hidden_states))
        return hidden_states + mlp.down_proj(torch.ops.specdec.silu_mul(gate_and_up))
    return forward


def base_forward(base):
    """The base model's forward transformers calls (input_ids, attention_mask, position_ids, cache, ...): lean for
    the forwards every layer serves in one call (tokens on specdec's arena, at most MAX_TOKENS), its own otherwise.
    The arena's mask is not needed there: the whole-layer op attends over each row's own slots."""
    own = base.forward

    def forward(input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        if input_ids is None or position_ids is None or not isinstance(cache, Arena) or \
                input_ids.shape[1] > MAX_TOKENS or kwargs:
            return own(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                       inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
        hidden = base.embed_tokens(input_ids)
        position_embeddings = base.rotary_emb(hidden, position_ids)
        for layer in base.layers:
            hidden = layer.forward(hidden, position_embeddings=position_embeddings, cache=cache)
        return BaseModelOutputWithPast(last_hidden_state=base.norm(hidden), cache=cache)
    return forward


def layers_in_one_call(base) -> bool:
    """Every layer of `base` has the lean forward and takes it as one call (so base_forward may skip the masks)."""
    layers = getattr(base, "layers", None)
    return bool(layers) and all("forward" in layer.__dict__ and takes_one_call(layer.self_attn)
                                for layer in layers) and \
        len(layers) == getattr(base.config, "num_hidden_layers", -1) and \
        all(hasattr(base, name) for name in ("embed_tokens", "rotary_emb", "norm"))


def enable(model) -> int:
    """Give every eligible decoder layer of `model` the lean forward (once), and its base model the lean forward
    where every layer has it; returns how many layers got it now."""
    done = 0
    for layer in model.modules():
        if eligible(layer) and "forward" not in layer.__dict__:
            layer.forward = layer_forward(layer)
            done += 1
    base = getattr(model, "model", None)
    if base is not None and "forward" not in base.__dict__ and layers_in_one_call(base):
        base.forward = base_forward(base)
    return done
