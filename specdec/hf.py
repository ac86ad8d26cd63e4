"""specdec inside `model.generate`: a callable for transformers' `custom_generate`.

    from specdec.hf import speculative
    out = model.generate(**inputs, max_new_tokens=64, custom_generate=speculative, draft_model=draft)
    out = model.generate(**inputs, max_new_tokens=64, custom_generate=speculative, draft_model="prompt_lookup")
    model.specdec_stats   # acceptance_rate, tokens_per_target_forward, k, k_per_iteration, ... of that call

`generate` merges the call's options with the model's own generation config, builds the logits
processors and stopping criteria, the attention mask (None when it is all ones) and `max_length`, then
calls `speculative` instead of its decoding loop. Those prepared lists are the source of truth: each
processor and criterion is one the engine reproduces exactly (by an allow-list of types), or the call is
refused with a ValueError before any forward. The output is what `generate` returns: [B, prompt + new]
with rows that ended at EOS padded with pad_token_id, or a GenerateDecoderOnlyOutput with
return_dict_in_generate=True. Greedy output equals `generate` without custom_generate; sampled output has
its distribution, seeded from torch's global RNG (torch.manual_seed reproduces a call, as with HF).

Streaming: transformers 5.24 does not hand `streamer=` to a custom_generate callable; it calls
`streamer.put(prompt)` itself and never `end()`. So `streamer=` is refused (after that first put, before any
forward); pass `specdec_streamer=` instead, which gets row 0's prompt, its tokens as they are accepted, then end().
"""
import sys

import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper,
)
from transformers.generation.stopping_criteria import EosTokenCriteria, MaxLengthCriteria
from transformers.generation.utils import GenerateDecoderOnlyOutput

from .engine import generate

# The processors the engine applies exactly, in the order generate builds them (the penalty before the warpers).
PROCESSORS = (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)
CRITERIA = (MaxLengthCriteria, EosTokenCriteria)
# generate's other processors and criteria, by the option that adds them, to name it in the refusal.
SOURCES = dict(
    MinLengthLogitsProcessor="min_length (or min_new_tokens)", MinNewTokensLengthLogitsProcessor="min_new_tokens",
    MinPLogitsWarper="min_p", TypicalLogitsWarper="typical_p", EpsilonLogitsWarper="epsilon_cutoff",
    EtaLogitsWarper="eta_cutoff", TopHLogitsWarper="top_h", NoRepeatNGramLogitsProcessor="no_repeat_ngram_size",
    NoBadWordsLogitsProcessor="bad_words_ids", SequenceBiasLogitsProcessor="sequence_bias",
    PrefixConstrainedLogitsProcessor="prefix_allowed_tokens_fn", ForcedBOSTokenLogitsProcessor="forced_bos_token_id",
    ForcedEOSTokenLogitsProcessor="forced_eos_token_id", SuppressTokensLogitsProcessor="suppress_tokens",
    SuppressTokensAtBeginLogitsProcessor="begin_suppress_tokens", InfNanRemoveLogitsProcessor="remove_invalid_values",
    ExponentialDecayLengthPenalty="exponential_decay_length_penalty", LogitNormalization="renormalize_logits",
    UnbatchedClassifierFreeGuidanceLogitsProcessor="guidance_scale", MaxTimeCriteria="max_time",
    StopStringCriteria="stop_strings",
)
# Options that add no processor or criterion but change what generate does: (name, its default, what to do).
OPTIONS = [
    ("num_beams", 1, "beam search is not sampling from the target; drop num_beams"),
    ("num_beam_groups", 1, "group beam search is not sampling from the target; drop num_beam_groups"),
    ("constraints", None, "constrained beam search is not sampling from the target; drop constraints"),
    ("force_words_ids", None, "constrained beam search is not sampling from the target; drop force_words_ids"),
    ("penalty_alpha", 0.0, "contrastive search is not sampling from the target; drop penalty_alpha"),
    ("dola_layers", None, "DoLa changes the target's distribution; drop dola_layers"),
    ("num_return_sequences", 1, "repeat each prompt row instead (one sequence per row)"),
    ("output_scores", False, "the engine keeps no per-step scores; use model.specdec_stats for its counters"),
    ("output_logits", False, "the engine keeps no per-step logits; run the target on the output for them"),
    ("output_attentions", False, "run the target on the output with output_attentions=True"),
    ("output_hidden_states", False, "run the target on the output with output_hidden_states=True"),
    ("prompt_lookup_num_tokens", None, "use draft_model='prompt_lookup'"),
    ("use_mtp", False, "pass a draft_model"),
    ("assistant_early_exit", None, "pass a draft_model"),
    ("token_healing", False, "heal the prompt's last token before calling generate"),
]
KNOWN_INPUTS = {"attention_mask", "position_ids", "cache", "use_cache", "logits_to_keep"}  # what generate itself adds
LOSSY_CACHES = {"quantized"}  # cache implementations that change the logits; the others are exact


def speculative(model, input_ids, logits_processor, stopping_criteria, generation_config, draft_model=None,
                k="auto", same_tokenizer=False, specdec_streamer=None, **model_kwargs):
    """custom_generate=speculative: `generate`'s prepared call run by specdec.engine.generate.
    draft_model: a model sharing the target's tokenizer, "prompt_lookup", a drafter object, or None (the
    target alone, through the engine). k: an int, "auto" (default), "adaptive" or a policy object.
    same_tokenizer, specdec_streamer: as specdec.generate's same_tokenizer and streamer."""
    caller = generate_locals()
    refuse_what_cannot_be_honoured(model, input_ids, logits_processor, stopping_criteria, generation_config,
                                   model_kwargs, caller)
    mask = model_kwargs.get("attention_mask")
    settings = sampler_settings(logits_processor, mask, input_ids.shape[0], generation_config.do_sample)
    eos = next((c.eos_token_id for c in stopping_criteria if isinstance(c, EosTokenCriteria)), None)
    eos = [] if eos is None else torch.as_tensor(eos).flatten().tolist()
    pad = generation_config._pad_token_tensor
    if eos and pad is None:  # generate itself fails here: it pads finished rows with pad_token_id
        raise ValueError("stopping at EOS pads finished rows with pad_token_id, and none is set: pass pad_token_id=...")
    max_new = stopping_criteria.max_length - input_ids.shape[1]  # max_length counts the (padded) prompt, as in HF
    # Seeded like HF: the engine's generator is seeded from torch's global RNG (greedy draws nothing).
    seed = torch.randint(2**62, (), device="cpu").item() if settings["temperature"] else None
    result = generate(model, input_ids, attention_mask=mask, draft=draft_model, k=k, max_new_tokens=max_new,
                      seed=seed, eos_token_id=eos, streamer=specdec_streamer, same_tokenizer=same_tokenizer,
                      **settings)
    model.specdec_stats = result.stats
    sequences = torch.cat([input_ids, padded(result.tokens, pad, input_ids.device)], 1)
    if generation_config.return_dict_in_generate:
        return GenerateDecoderOnlyOutput(sequences=sequences)
    return sequences


def padded(tokens, pad, device):
    """Rows of new tokens as one [B, longest] tensor, rows that stopped early padded as generate pads them.
    (Without EOS every row has max_new tokens, so no pad is needed and none may be set.)"""
    width = max(len(t) for t in tokens)
    out = torch.full((len(tokens), width), 0 if pad is None else int(pad), dtype=torch.long, device=device)
    for b, t in enumerate(tokens):
        out[b, : len(t)] = torch.tensor(t, dtype=torch.long, device=device)
    return out


def generate_locals() -> dict:
    """The calling `generate`'s locals: it keeps `streamer` and `assistant_model` from a custom_generate
    callable (transformers 5.24 passes only the callable's own keywords), so look there to refuse them."""
    frame = sys._getframe(2)
    for _ in range(3):  # generate calls the callable directly; allow a wrapper or two in between
        if frame is None:
            break
        if frame.f_code.co_name == "generate" and frame.f_globals.get("__name__") == "transformers.generation.utils":
            return frame.f_locals
        frame = frame.f_back
    return {}


def refuse_what_cannot_be_honoured(model, input_ids, processors, criteria, config, model_kwargs, caller):
    """Every option the engine cannot reproduce exactly raises here, before any forward, naming it."""
    def refuse(option, instead):
        raise ValueError(f"custom_generate=speculative cannot honour {option} exactly: {instead}, or call "
                         f"generate without custom_generate")

    if caller.get("streamer") is not None:
        refuse("streamer= (transformers does not pass it to a custom_generate callable, and it has already "
               "received the prompt)", "pass specdec_streamer= instead")
    if caller.get("assistant_model") is not None:
        refuse("assistant_model= (HF's assisted generation)", "pass the draft as draft_model=")
    if model.config.is_encoder_decoder:
        refuse("an encoder-decoder model", "specdec serves decoder-only causal LMs")
    for name, default, instead in OPTIONS:
        value = getattr(config, name, None)
        if value not in (None, default):
            refuse(f"{name}={value!r}", instead)
    if config.cache_implementation in LOSSY_CACHES:
        refuse(f"cache_implementation={config.cache_implementation!r} (it changes the logits)",
               "drop cache_implementation (the engine keeps its own exact KV arena)")
    for item in list(processors) + list(criteria):
        if not isinstance(item, PROCESSORS + CRITERIA):
            name = type(item).__name__
            option = f"`{SOURCES[name]}` ({name})" if name in SOURCES else f"the custom {name}"
            refuse(option, "the engine applies repetition_penalty, temperature, top_k and top_p (and stops at "
                           "max_new_tokens/max_length and EOS); drop it")
    cache = model_kwargs.get("cache")
    if getattr(cache, "_is_user_defined", False):
        refuse("a cache passed in (continuing a generation)", "pass the whole prompt without a cache")
    extra = sorted(k for k, v in model_kwargs.items() if k not in KNOWN_INPUTS and v is not None)
    if extra:
        refuse(f"the model inputs {extra}", "the engine calls the model with token ids, positions and its own cache "
                                            "only; drop them")
    mask = model_kwargs.get("attention_mask")
    if mask is not None and not bool(mask[:, -1].all()):
        refuse("a right-padded batch", "pad on the left (tokenizer.padding_side = 'left'), as generate expects")
    positions = model_kwargs.get("position_ids")
    if positions is not None and not torch.equal(positions.expand(input_ids.shape), default_positions(input_ids, mask)):
        refuse("position_ids= of your own", "drop position_ids: the engine numbers each row's tokens from 0")


def default_positions(input_ids, mask):
    """The position ids generate derives from the mask (_prepare_position_ids_for_generation)."""
    mask = torch.ones_like(input_ids) if mask is None else mask
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


def sampler_settings(processors, mask, batch, do_sample) -> dict:
    """The engine's temperature, top_k, top_p and repetition_penalty from generate's prepared processors,
    refusing any that the engine would not rebuild identically (other arguments, other order)."""
    kinds = [type(p) for p in processors]
    if kinds != sorted(set(kinds), key=PROCESSORS.index):
        raise ValueError(f"custom_generate=speculative applies repetition penalty, temperature, top-k and top-p once "
                         f"each, in that order (generate's); got {[k.__name__ for k in kinds]}: pass each option once "
                         f"as a generate argument instead of a logits_processor=")
    found = {type(p): p for p in processors}
    settings = dict(temperature=0.0, top_k=None, top_p=None, repetition_penalty=None)
    penalty = found.get(RepetitionPenaltyLogitsProcessor)
    if penalty is not None:
        # generate's own penalty skips the left padding (prompt_ignore_length = pad count per row); the engine
        # sees rows without their padding, so it reproduces exactly that and nothing else.
        cpu = torch.device("cpu")  # compared on the host, whatever torch's default device
        pads = torch.zeros(batch, dtype=torch.long, device=cpu) if mask is None else \
            (mask != 0).int().argmax(1).long().cpu()
        ignore = penalty.prompt_ignore_length
        ignore = torch.full((batch,), 0 if ignore is None else ignore, device=cpu) \
            if isinstance(ignore, (int, type(None))) else ignore.long().cpu()
        if not torch.equal(ignore, pads):
            raise ValueError(f"custom_generate=speculative cannot honour a RepetitionPenaltyLogitsProcessor with "
                             f"prompt_ignore_length={penalty.prompt_ignore_length!r}: it counts only each row's real "
                             f"tokens (generate's own penalty); pass repetition_penalty={penalty.penalty} instead")
        settings["repetition_penalty"] = penalty.penalty
    if not do_sample:
        # Greedy: warpers passed through logits_processor= keep the argmax (and generate adds none), so they
        # change nothing and the engine needs none.
        return settings
    rebuilt = dict(temperature=TemperatureLogitsWarper, top_k=TopKLogitsWarper, top_p=TopPLogitsWarper)
    settings["temperature"] = 1.0
    for name, cls in rebuilt.items():
        warper = found.get(cls)
        if warper is None:
            continue
        value = getattr(warper, name)
        if vars(warper) != vars(cls(value)):  # e.g. a filter_value or min_tokens_to_keep the engine would not use
            raise ValueError(f"custom_generate=speculative cannot honour {vars(warper)} of {cls.__name__} exactly: "
                             f"pass {name}={value} as a generate argument instead")
        settings[name] = value
    return settings
