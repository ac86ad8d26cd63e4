"""Row-invariant attention: each query row attends through its own one-row SDPA call, over exactly the keys it sees.

Why: a speculative verify runs the target over T tokens at once where the target alone runs them one by one. With
row-invariant linears (specdec's quantized kernel) the only operation whose result for one row depends on the
others is attention: SDPA's kernels block and reduce differently for T query rows than for one (measured: a 6-token
forward of Qwen2.5-0.5B differs from six 1-token forwards by up to 0.33 in a logit). Here a row at position p is
computed as sdpa(q_row, keys[:p+1], values[:p+1]): the very call a one-token forward at p makes, so a verify gives
every token the logits the target alone gives it, bit for bit, and greedy speculation is token-identical to it.

It costs T small SDPA calls per layer where one would do (a few ms per verify on a 28-layer model); forwards over
more than MAX_TOKENS tokens (prefill of a long prompt, which speculation and the target alone share) and
sliding-window layers (whose visible keys are not a prefix) take transformers' SDPA as it is.

    enable(model)   # what specdec.quantize does for models on specdec's kernel
"""
import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .arena import ROWWISE as NAME  # the arena serves it by this name
MAX_TOKENS = 65  # a verify over K + 1 tokens for any K up to specdec.policy.MAX_K


def visible_keys(attention_mask, batch, rows, keys) -> list:
    """[b][i]: how many keys query row i of batch row b sees. Without a mask every row is aligned and causal (the
    last `rows` positions of `keys`); a boolean mask [B or 1, 1, T, S] (the arena's, or transformers' causal one)
    marks a prefix per row, since slot == position and a row's stale slots lie beyond its position."""
    if attention_mask is None:
        return [[keys - rows + i + 1 for i in range(rows)]] * batch
    counts = attention_mask[:, 0].sum(-1).expand(batch, rows)
    return counts.tolist()


def rowwise_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' attention interface: query [B, H, T, D], key/value [B, H_kv, S, D] -> ([B, T, H, D], None)."""
    batch, _, rows, _ = query.shape
    if rows > MAX_TOKENS or getattr(module, "sliding_window", None) or \
            (attention_mask is not None and attention_mask.dtype != torch.bool):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs["is_causal"] = False
    if batch == 1 and rows == 1 and attention_mask is None:  # a one-token step: the row sees every key already
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)
    out = []
    for b, lengths in enumerate(visible_keys(attention_mask, batch, rows, key.shape[2])):
        row = [sdpa_attention_forward(module, query[b:b + 1, :, i:i + 1], key[b:b + 1, :, :n], value[b:b + 1, :, :n],
                                      None, **kwargs)[0] for i, n in enumerate(lengths)]
        out.append(torch.cat(row, dim=1))
    return torch.cat(out, dim=0), None


AttentionInterface.register(NAME, rowwise_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)  # boolean masks, as for SDPA


def enable(model):
    """Switch an SDPA (or eager) model to row-invariant attention, in place."""
    model.set_attn_implementation(NAME)
    return model
