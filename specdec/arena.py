"""The zero-copy KV arena: one pre-allocated buffer per layer, one length pointer per row.

Slot s of row b holds the token at position s of that row (prompts start at slot 0), so the
position of a new token is simply its slot. A forward over T new tokens writes them in place at
slots lengths[b] .. lengths[b]+T-1; the engine then moves the pointers: accepting n tokens is
`lengths[b] += n`, rejecting is not moving. Stale slots beyond a row's length are hidden by the
mask and overwritten by the next write. Nothing is concatenated, sliced-and-copied or re-padded.
"""
import torch
from transformers.cache_utils import Cache, CacheLayerMixin


class ArenaLayer(CacheLayerMixin):
    """Keys/values of one layer, [B, H_kv, capacity, D], allocated on the first (prefill) write."""

    is_sliding = False

    def __init__(self, arena: "Arena"):
        super().__init__()
        self.arena = arena

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
        num_layers = model.config.get_text_config().num_hidden_layers
        super().__init__(layers=[ArenaLayer(self) for _ in range(num_layers)])
        self.model = model
        self.capacity = capacity
        self.device = model.device
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=self.device)
        # Host-side max of `lengths`: it sizes the live views without a device sync per forward.
        self.longest = 0
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
        visible = self.slot_ids[: self.kv_length] <= positions[:, :, None]  # [B, T, S] causal + own length
        # Additive float mask in the model's dtype: both eager and SDPA attention accept it as-is.
        mask = torch.zeros(visible.shape, dtype=self.model.dtype, device=self.device)
        mask.masked_fill_(~visible, torch.finfo(self.model.dtype).min)
        out = self.model(
            input_ids=tokens, position_ids=positions, attention_mask=mask[:, None],
            cache=self, use_cache=True, logits_to_keep=keep,
        )
        return out.logits

    def point_to(self, lengths: torch.Tensor, longest: int):
        """Set every row's length (the rollback and the accept are both just this)."""
        self.lengths.copy_(lengths)
        self.longest = longest

    def advance(self, num_new: int):
        """All rows keep the `num_new` tokens just written (draft steps)."""
        self.lengths += num_new
        self.longest += num_new

    def storage_pointers(self) -> list[int]:
        """data_ptr() of every buffer: tests check these never change during a generation."""
        ptrs = [self.lengths.data_ptr()]
        for layer in self.layers:
            if layer.is_initialized:
                ptrs += [layer.keys.data_ptr(), layer.values.data_ptr()]
        return ptrs
