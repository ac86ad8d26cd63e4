"""Zero copy: arena buffers never move, and rollback is a pointer move whatever is rejected."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import specdec
from specdec.arena import Arena
from specdec.engine import Decoder
from conftest import perturbed, tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [42]]


def test_storage_never_moves_during_generation(monkeypatch):
    target = tiny_llama()
    draft = perturbed(target, 0.03)
    seen = []
    step = Decoder.step

    def recording_step(self):
        step(self)
        seen.append(self.arena.storage_pointers() + self.drafter.arena.storage_pointers() + [self.seq.data_ptr()])

    monkeypatch.setattr(Decoder, "step", recording_step)
    result = specdec.generate(target, PROMPTS, draft=draft, k=4, max_new_tokens=30, eos_token_id=[])
    assert len(seen) > 5 and 0 < result.stats["acceptance_rate"] < 1
    assert len(seen[0]) == 1 + 2 * 3 + 1 + 2 * 3 + 1  # lengths + K/V per layer, both models, + token buffer
    assert all(ptrs == seen[0] for ptrs in seen)


class OpLog(TorchDispatchMode):
    """Records every aten op with the sizes of the tensors it touches."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        sizes = [a.numel() for a in args if isinstance(a, torch.Tensor)]
        self.ops.append((str(func), max(sizes, default=0)))
        return func(*args, **(kwargs or {}))


def filled_arena(batch=3, capacity=64):
    model = tiny_llama()
    arena = Arena(model, batch, capacity)
    with torch.no_grad():
        arena.forward(torch.randint(0, 90, (batch, 20)))
    arena.point_to(torch.full((batch,), 20), 20)
    with torch.no_grad():  # a verify block of K+1 = 7 tokens, not yet accepted
        arena.forward(torch.randint(0, 90, (batch, 7)))
    return arena


@pytest.mark.parametrize("rejected", [0, 3, 6])
def test_rollback_is_constant_time_and_touches_no_kv(rejected):
    arena = filled_arena()
    before = [layer.keys.clone() for layer in arena.layers]
    kept = 7 - rejected
    lengths = torch.full((3,), 20 + kept)
    with OpLog() as log:
        arena.point_to(lengths, 20 + kept)
    # One tiny op whatever was rejected: nothing the size of the KV buffers runs.
    assert [op for op, _ in log.ops] == ["aten.copy_.default"]
    assert max(size for _, size in log.ops) == 3
    assert all(torch.equal(a, layer.keys) for a, layer in zip(before, arena.layers))
    assert arena.lengths.tolist() == [20 + kept] * 3


def test_prompt_too_long_for_arena_is_an_error_not_an_overwrite():
    model = tiny_llama()
    arena = Arena(model, 1, 8)
    with pytest.raises(RuntimeError, match="overflow"):
        arena.forward(torch.zeros(1, 9, dtype=torch.long))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA memory accounting needs a CUDA device")
def test_cuda_memory_is_flat_after_first_iteration(monkeypatch):
    target = tiny_llama().float().cuda()
    draft = perturbed(target, 0.03)
    seen = []
    step = Decoder.step

    def recording_step(self):
        step(self)
        torch.cuda.synchronize()
        seen.append(torch.cuda.memory_allocated())

    monkeypatch.setattr(Decoder, "step", recording_step)
    specdec.generate(target, PROMPTS, draft=draft, k=4, max_new_tokens=40, eos_token_id=[])
    assert max(seen[1:]) == min(seen[1:])
