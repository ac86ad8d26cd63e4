"""The outside references a sweep times beside specdec: Hugging Face `generate` (the target alone) and assisted
generation (`assistant_model=`, at a fixed K or at HF's own defaults), on the same left-padded prompts; the
specdec_path modes (specdec.study.modes) run them on specdec's linear path, with specdec's draft."""
import contextlib
import time

import torch

from .. import calibration
from ..inputs import eos_ids
from ..linear import fast_linears
from ..profiler import synchronize
from .modes import HF_ASSISTED_DEFAULTS, MODES


def run_hf(pair, cell, rows, temperature, seed, top_p=None, ignore_eos=False) -> tuple[list, dict]:
    """Hugging Face generate (or assisted generation) on left-padded rows, timed end to end. `ignore_eos`: every
    row runs exactly max_new_tokens."""
    tok, device, n = pair.tokenizer, pair.device, cell["max_new_tokens"]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
    kw = dict(max_new_tokens=n, pad_token_id=tok.pad_token_id, do_sample=temperature > 0)
    if ignore_eos:
        # No stopping at EOS rather than min_new_tokens=n, which would mask EOS out of the distribution. generate
        # fills an eos_token_id of None from the model's generation_config; an empty list stays, and stops nothing
        # (it is also what the assistant's candidate generator inherits).
        kw.update(eos_token_id=[])
    if temperature > 0:  # plain temperature sampling, like specdec's (HF's default top_k=50 switched off)
        kw.update(temperature=temperature, top_k=0, top_p=1.0 if top_p is None else top_p)
        torch.manual_seed(seed or 0)
    mode = MODES[cell["mode"]]
    assistant = None
    if mode.needs_draft:  # specdec's own draft on its path; else as HF's users load it, in the target's dtype
        assistant = pair.draft_in_target_dtype() if mode.assistant_in_target_dtype else pair.draft
    if mode.policy == "fixed":
        # HF reads K from the assistant's generation_config (and, by default, adapts it from call to call):
        # set it before every call, with no schedule and no confidence-based early stop, so K is fixed.
        assistant.generation_config.update(num_assistant_tokens=cell["k"], num_assistant_tokens_schedule="constant",
                                           assistant_confidence_threshold=0)
    elif assistant is not None:  # what a user gets: HF's defaults (reset, as a fixed-K cell may have run before)
        assistant.generation_config.update(**HF_ASSISTED_DEFAULTS)
    # Entered before the clock starts, as specdec's generate does: patching the linears is not decoding.
    with fast_linears([pair.target, assistant]) if mode.specdec_path else contextlib.nullcontext():
        synchronize(device)
        start = time.perf_counter()
        with torch.inference_mode():
            out = pair.target.generate(ids, attention_mask=mask, assistant_model=assistant, **kw)
        synchronize(device)
        seconds = time.perf_counter() - start
    new_rows = out[:, width:].tolist()
    tokens = new_rows if ignore_eos else [cut_at_eos(row, eos_ids(pair.target, None)) for row in new_rows]
    new = sum(map(len, tokens))
    stats = dict(new_tokens=new, seconds=seconds, throughput=new / seconds)
    if mode.specdec_path:  # the linear plans it ran under, recorded as specdec's rows record theirs
        stats["calibration_id"] = calibration.snapshot()["id"]
    if assistant is None:  # plain greedy/sampled decoding: one forward per step, the prefill gives the first token
        stats.update(target_forwards=max(map(len, tokens)), tokens_per_target_forward=new / max(map(len, tokens)))
    return tokens, stats


def cut_at_eos(tokens, eos) -> list:
    """A row's new tokens up to and including the first EOS (after it HF writes padding)."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[: i + 1]
    return tokens
