"""The door of `generate`: every user-supplied input checked and converted once, before any model work, with a
message that names the problem and the fix (never a silent wrong answer)."""
import operator

import torch

from .arena import unservable

VERIFY_MODES = ("parallel", "naive")  # one (K+1)-token target forward per round, or K+1 one-token forwards


def prompt_rows(input_ids, attention_mask=None) -> list[list[int]]:
    """Prompts as plain lists (padding removed): from a [B, P] tensor with an optional
    left- or right-padded attention_mask, or from a list of lists of different lengths."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids has dtype {input_ids.dtype}; token ids must be integers: pass the "
                             f"tokenizer's LongTensor, or convert with input_ids.long() if the values are ids")
        if input_ids.dim() == 1:
            input_ids = input_ids[None]
            attention_mask = None if attention_mask is None else torch.as_tensor(attention_mask).reshape(1, -1)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, prompt_len]; got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            return input_ids.tolist()
        attention_mask = torch.as_tensor(attention_mask)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask shape {tuple(attention_mask.shape)} does not match input_ids "
                             f"shape {tuple(input_ids.shape)}; pass the mask the tokenizer returned with these ids")
        rows = []
        for b, (ids, mask) in enumerate(zip(input_ids.tolist(), attention_mask.tolist())):
            real = [i for i, m in enumerate(mask) if m]
            if real and real[-1] - real[0] + 1 != len(real):
                raise ValueError(f"attention_mask row {b} has holes; only left or right padding is supported")
            rows.append([ids[i] for i in real])
        return rows
    if attention_mask is not None:
        raise ValueError("attention_mask is only for tensor input_ids; a list of lists needs no padding")
    if not isinstance(input_ids, (list, tuple)) or not all(isinstance(r, (list, tuple)) for r in input_ids):
        raise ValueError("input_ids must be a LongTensor [batch, prompt_len] or a list of lists of token ids")
    try:
        return [[operator.index(t) for t in r] for r in input_ids]
    except TypeError:
        raise ValueError("input_ids rows must hold integer token ids (got a float or other non-integer)") from None


def position_limit(model) -> int | None:
    """The most positions the model was built for (None: no limit stated)."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


def vocab_size(model) -> int:
    """Size of the model's output distribution (may exceed the tokenizer's length, e.g. Qwen); a quantized draft's
    head that names only the first ids of it (specdec.quantize.DRAFT_HEAD) counts the whole."""
    out = model.get_output_embeddings()
    if out is None:
        return model.config.get_text_config().vocab_size
    # out_features first: a quantized head's weight is its packed codes, whose rows are not its outputs
    return getattr(out, "vocabulary", None) or getattr(out, "out_features", None) or out.weight.shape[0]


def check_arguments(target, draft, rows, k, max_new_tokens, temperature, top_k, top_p, verify, same_tokenizer=False):
    """Refuse bad input before any model work, with a message that names the fix."""
    models = [("target", target)] + ([("draft", draft)] if isinstance(draft, torch.nn.Module) else [])
    for name, model in models:
        why = unservable(model)
        if why:
            raise ValueError(f"the {name} cannot be served: {why}")
    if not rows:
        raise ValueError("input_ids has no rows; pass at least one prompt")
    for b, r in enumerate(rows):
        if not r:
            raise ValueError(f"prompt row {b} is empty; every row needs at least one token (e.g. BOS)")
    n_vocab = target.get_input_embeddings().num_embeddings
    for b, r in enumerate(rows):
        bad = [t for t in r if not 0 <= t < n_vocab]
        if bad:
            raise ValueError(f"prompt row {b} has token ids {bad[:5]} outside the target vocabulary "
                             f"[0, {n_vocab}); tokenize with the target model's tokenizer")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int; got {max_new_tokens!r}")
    if isinstance(draft, str) and draft != "prompt_lookup":
        raise ValueError(f"draft={draft!r} is unknown; pass a model, 'prompt_lookup', a drafter object or None")
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r} is unknown; use one of {VERIFY_MODES}")
    if temperature is None or temperature < 0:
        raise ValueError(f"temperature={temperature!r} must be >= 0 (0 means greedy)")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k={top_k!r} must be a positive int or None")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p!r} must be in (0, 1], or None to disable it")
    if isinstance(draft, torch.nn.Module):
        if draft.device != target.device:
            raise ValueError(f"target is on {target.device} but draft is on {draft.device}; "
                             f"move both to one device, e.g. draft.to('{target.device}')")
        v_draft, v_target = vocab_size(draft), vocab_size(target)
        if v_draft != v_target and not same_tokenizer:
            raise ValueError(f"draft vocabulary ({v_draft} tokens) differs from the target's ({v_target}); use a "
                             f"draft from the same model family (same tokenizer); if they do share one tokenizer and "
                             f"only pad their output layers differently, pass same_tokenizer=True (load_pair checks "
                             f"it: pair.same_tokenizer)")
        if v_draft > v_target:
            raise ValueError(f"draft output size ({v_draft}) exceeds the target's ({v_target}): the draft could "
                             f"propose ids the target cannot score; use the model with more output rows as target")
    need = max(len(r) for r in rows) + max_new_tokens + k + 1
    for name, model in models:
        limit = position_limit(model)
        if limit is not None and need > limit:
            raise ValueError(f"prompt ({max(len(r) for r in rows)}) + max_new_tokens ({max_new_tokens}) + k ({k}) "
                             f"+ 1 = {need} exceeds the {name}'s position limit {limit}; "
                             f"shorten the prompt or lower max_new_tokens")


def eos_ids(target, eos_token_id) -> set:
    """EOS ids to stop on: the given int/list, else the model's generation config (like HF generate)."""
    if eos_token_id is None:
        config = getattr(target, "generation_config", None)
        eos_token_id = getattr(config, "eos_token_id", None)
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
