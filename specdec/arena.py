"""The zero-copy KV arena: one pre-allocated buffer per layer, one length pointer per row.

Slot s of row b holds the token at position s of that row (prompts start at slot 0), so the
position of a new token is simply its slot. A forward over T new tokens writes them in place at
slots lengths[b] .. lengths[b]+T-1; the engine then moves the pointers: accepting n tokens is
`lengths[b] += n`, rejecting is not moving. Stale slots beyond a row's length are hidden by the
mask and overwritten by the next write. Nothing is concatenated, sliced-and-copied or re-padded.

Masks, the cheapest each forward can take. When every row has the same length ("aligned": batch 1,
equal prompts, prefill) no slot in the live view is stale, so the model gets attention_mask=None and
transformers builds its own mask from the cache's sizes: none at all for one token or for prefill
on SDPA (is_causal; fused kernels and SDPA's native grouped-query attention stay usable), its own
causal or sliding-window mask otherwise. Ragged rows get one boolean [B, 1, T, S] mask per layer
type (an additive float mask for eager attention): causal, own length, and the layer's window.
"""
import inspect

import torch
from transformers.cache_utils import Cache, CacheLayerMixin, get_layer_types_and_kwargs

ROWWISE = "specdec_rowwise"  # specdec.attention's row-invariant SDPA (boolean masks, as SDPA)
SERVED_ATTENTION = ("eager", "sdpa", ROWWISE)
SERVED_LAYERS = ("full_attention", "sliding_attention")


def layer_windows(model) -> list:
    """Per layer: its sliding window (a token sees itself and window-1 earlier ones), or None for full
    attention. Read by transformers' own rule (`layer_types`, else `sliding_window`)."""
    types, kwargs = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    return [kw.get("sliding_window") if t == "sliding_attention" else None for t, kw in zip(types, kwargs)]


def unservable(model):
    """Why the arena cannot serve `model` (a sentence naming what to use instead), or None."""
    config = model.config.get_text_config(decoder=True)
    params = inspect.signature(type(model).forward).parameters
    if "cache" not in params or "position_ids" not in params:
        return (f"{type(model).__name__} keeps no standard transformers KV cache (recurrent/state-space model); "
                f"specdec serves attention-only causal LMs: use Hugging Face generate(assistant_model=...) instead")
    types, _ = get_layer_types_and_kwargs(config)
    other = sorted(set(types) - set(SERVED_LAYERS))
    if other:
        return (f"{type(model).__name__} has {other} layers (recurrent, convolutional or other non-attention "
                f"state) that a KV arena cannot roll back; specdec serves models whose layers are all "
                f"{' or '.join(SERVED_LAYERS)}: use Hugging Face generate(assistant_model=...) for this model")
    impl = config._attn_implementation
    if impl not in SERVED_ATTENTION:
        return (f"attn_implementation={impl!r} is not served by the KV arena (it needs per-row boolean/additive "
                f"masks); load the model with attn_implementation='sdpa' (or 'eager'), "
                f"e.g. model.set_attn_implementation('sdpa')")
    return None


class ArenaLayer(CacheLayerMixin):
    """Keys/values of one layer, [B, H_kv, capacity, D], allocated on the first (prefill) write."""

    def __init__(self, arena: "Arena", window=None):
        super().__init__()
        self.arena = arena
        self.is_sliding = window is not None  # transformers reads this when it builds masks itself

    def lazy_initialization(self, key_states, value_states):
        # Allocated from the first write so that heads, head size, dtype and device come from the
        # model itself, whatever its architecture; this happens once, in prefill.
        batch, heads, _, _ = key_states.shape
        self.keys = key_states.new_zeros(batch, heads, self.arena.capacity, key_states.shape[-1])
        self.values = value_states.new_zeros(batch, heads, self.arena.capacity, value_states.shape[-1])
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        # One scatter for all rows: row b's T new entries go to its own slots.
        slots = self.arena.write_slots[:, None, :, None]
        self.keys.scatter_(2, slots.expand_as(key_states), key_states)
        self.values.scatter_(2, slots.expand_as(value_states), value_states)
        live = self.arena.kv_length  # views of the live prefix, not copies
        return self.keys[:, :, :live], self.values[:, :, :live]

    def get_mask_sizes(self, query_length):
        return self.arena.kv_length, 0

    def get_seq_length(self):
        return self.arena.longest

    def get_max_length(self):
        return self.arena.capacity


class Arena(Cache):
    """A transformers Cache for one model and one generation: `forward` runs the model over new
    tokens at each row's own slots; `point_to` moves the per-row length pointers."""

    def __init__(self, model, batch_size: int, capacity: int):
        # A window at least as long as the arena never hides anything: such layers are full here.
        windows = [w if w is not None and w < capacity else None for w in layer_windows(model)]
        super().__init__(layers=[ArenaLayer(self, w) for w in windows])
        self.model = model
        self.capacity = capacity
        self.device = model.device
        self.windows = sorted(set(windows), key=lambda w: w or 0)  # None (full) and/or one window
        # A dict {layer type: mask} only for models mixing layer types (their forward accepts one).
        self.mixed = len(self.windows) > 1
        self.eager = model.config.get_text_config(decoder=True)._attn_implementation == "eager"
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        # Host-side facts about `lengths`, so no forward needs a device read: the longest row sizes
        # the live views; `aligned` (all rows equally long) lets transformers pick the mask.
        self.longest = 0
        self.aligned = True
        self.host = [0] * batch_size  # `lengths` as host ints when the caller said so (point_to's host), else None
        self.slot_ids = torch.arange(capacity, device=self.device)
        self.write_slots = None
        self.kv_length = 0

    def forward(self, tokens: torch.Tensor, keep=0) -> torch.Tensor:
        """Logits [B, T, V] for `tokens` [B, T] placed after each row's length; `keep` is passed to the
        model as logits_to_keep (1: the last position only; a 1-D tensor: those positions), which
        spares the vocabulary projection of positions nobody reads.
        Writes their keys/values in place; does not move the pointers."""
        num_new = tokens.shape[1]
        self.kv_length = self.longest + num_new
        if self.kv_length > self.capacity:  # generate() sizes the arena so this cannot happen
            raise RuntimeError(f"KV arena overflow: {self.kv_length} slots needed, capacity {self.capacity}")
        positions = self.lengths[:, None] + self.slot_ids[:num_new]  # [B, T]; position == slot
        self.write_slots = positions
        out = self.model(
            input_ids=tokens, position_ids=positions, attention_mask=None if self.aligned else self.masks(positions),
            cache=self, use_cache=True, logits_to_keep=keep,
        )
        return out.logits

    def masks(self, positions):
        """Row b's query at position t sees slots <= t (causal and its own length: stale slots lie
        beyond) and, in a sliding layer, only slots > t - window. One [B, 1, T, S] mask per type."""
        slots = self.slot_ids[: self.kv_length]
        masks = {}
        for window in self.windows:
            seen = slots <= positions[:, None, :, None]
            if window is not None:
                seen &= slots > positions[:, None, :, None] - window
            if self.eager:  # eager attention adds its mask to the scores
                dtype = self.model.dtype
                seen = torch.full_like(seen, torch.finfo(dtype).min, dtype=dtype).masked_fill_(seen, 0)
            masks["full_attention" if window is None else "sliding_attention"] = seen
        return masks if self.mixed else next(iter(masks.values()))

    def point_to(self, lengths: torch.Tensor, longest: int, aligned: bool = False, host: list | None = None):
        """Set every row's length (the rollback and the accept are both just this). `aligned`: the
        caller knows every row has length `longest` (False is always safe). `host`: the same lengths as
        host ints, if the caller has them (kept in `self.host`, so an owner can read them without a device read)."""
        self.lengths.copy_(lengths)
        self.longest = longest
        self.aligned = aligned
        self.host = None if host is None else list(host)

    def advance(self, num_new: int):
        """All rows keep the `num_new` tokens just written (draft steps)."""
        self.lengths += num_new
        self.longest += num_new
        if self.host is not None:
            self.host = [n + num_new for n in self.host]

    def storage_pointers(self) -> list[int]:
        """data_ptr() of every buffer: tests check these never change during a generation."""
        ptrs = [self.lengths.data_ptr()]
        for layer in self.layers:
            if layer.is_initialized:
                ptrs += [layer.keys.data_ptr(), layer.values.data_ptr()]
        return ptrs
