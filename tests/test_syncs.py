"""The hot path: at most one device -> host read per round, and no host -> device tensor per round.

On a CPU no copy ever crosses a bus, so the test counts what would synchronise on an accelerator:
aten ops that read a value to the host (`.item()`, `bool(t)`, data-dependent shapes), copies to the
cpu, Python-level `.tolist()` / `.numpy()` (which dispatch nothing on CPU tensors), and tensors
built from host data (`torch.tensor([...])`, aten.lift_fresh)."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import specdec
from specdec.engine import Decoder
from conftest import perturbed, tiny_llama

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [3, 4], [42, 43, 44]]
HOST_READS = {"aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default", "aten.nonzero.default", "aten.masked_select.default",
              "aten.unique_consecutive.default", "aten._unique2.default", "aten.equal.default"}


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.reads, self.uploads, self.depth = 0, 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name in HOST_READS:
            self.reads += 1
        if name in ("aten._to_copy.default", "aten.copy_.default"):
            src, dst = (args[0], kwargs.get("device")) if "to_copy" in name else (args[1], args[0].device)
            if dst is not None and torch.device(dst).type == "cpu" and src.device.type != "cpu":
                self.reads += 1
        out = func(*args, **kwargs)
        # A 0-dim host tensor (e.g. `t[i] = 0` in transformers' top-p warper) is a kernel argument, not a copy.
        if name == "aten.lift_fresh.default" and out.dim() > 0:
            self.uploads += 1
        return out


def per_round(monkeypatch, **kwargs):
    """(host reads, host -> device tensors) of every decoding round of one generation."""
    counter, rounds = SyncCounter(), []
    for method in ("tolist", "numpy"):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, **k):
            # Once per call: under a default-device mode (the suite off the cpu) the mode calls this again inside
            counter.reads += counter.depth == 0
            counter.depth += 1
            try:
                return _original(self, *a, **k)
            finally:
                counter.depth -= 1

        monkeypatch.setattr(torch.Tensor, method, counted)
    step = Decoder.step

    def counted_step(self):
        before = counter.reads, counter.uploads
        step(self)
        rounds.append((counter.reads - before[0], counter.uploads - before[1]))

    monkeypatch.setattr(Decoder, "step", counted_step)
    target = tiny_llama()
    kwargs.setdefault("draft", perturbed(target, 0.03))
    with counter:
        result = specdec.generate(target, PROMPTS, max_new_tokens=20, eos_token_id=[], **kwargs)
    assert len(rounds) == result.stats["iterations"] > 3
    return rounds


CASES = [dict(k=3), dict(k=3, temperature=1.0, seed=0), dict(k=2, temperature=0.8, top_k=20, top_p=0.9, seed=1),
         dict(k=4, draft="prompt_lookup"), dict(k=4, draft="prompt_lookup", temperature=1.0, seed=2),
         dict(draft=None), dict(draft=None, temperature=1.0, seed=3), dict(k=3, verify="naive")]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_one_host_read_per_round(monkeypatch, case):
    rounds = per_round(monkeypatch, **CASES[case])
    assert {reads for reads, _ in rounds} == {1}
    assert {uploads for _, uploads in rounds} == {0}


@pytest.mark.parametrize("extra", ["item", "tolist", "tensor"])
def test_an_extra_sync_in_the_loop_is_caught(monkeypatch, extra):
    """The counter has power: one more `.item()`, `.tolist()` or torch.tensor(...) per round shows."""
    from specdec import engine

    kept = engine.Decoder.kept_on_device

    def with_extra(self, accepted, new):
        if extra == "item":
            accepted.sum().item()
        elif extra == "tolist":
            accepted.tolist()
        else:
            torch.tensor([1, 2], device=self.device)
        return kept(self, accepted, new)

    monkeypatch.setattr(engine.Decoder, "kept_on_device", with_extra)
    rounds = per_round(monkeypatch, k=3)
    if extra == "tensor":
        assert all(uploads == 1 for _, uploads in rounds)
    else:
        assert all(reads == 2 for reads, _ in rounds)
