"""A quantized model's packed weights in one buffer on huge pages (specdec.hugepages): every weight moves into it in
forward order, fused siblings keep views of their fused weight, the model computes the same bits, and on Linux with
transparent huge pages the buffer is one the kernel may back with them."""
import re
from pathlib import Path

import pytest
import torch

from specdec import hugepages, qkernel
from specdec.arena import Arena
from specdec.quantize import QuantLinear, quantize
from conftest import cpu_only, tiny_llama

pytestmark = cpu_only
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_gather_copies_each_tensor_in_order_on_cache_lines_from_a_huge_page_boundary():
    tensors = [torch.randn(3, 5), torch.arange(7, dtype=torch.int16), torch.randint(0, 255, (130,), dtype=torch.uint8)]
    copies = hugepages.gather(tensors)
    assert all(torch.equal(c, t) and c.dtype == t.dtype and c.shape == t.shape for c, t in zip(copies, tensors))
    starts = [c.data_ptr() for c in copies]
    assert starts[0] % hugepages.HUGE == 0 and all(s % hugepages.ALIGN == 0 for s in starts)
    assert starts == sorted(starts) and starts[-1] - starts[0] < 2 * hugepages.ALIGN + 3 * 5 * 4 + 7 * 2
    assert len({c.untyped_storage().data_ptr() for c in copies}) == 1  # one buffer


def thp_eligible(address) -> bool:
    """/proc/self/smaps' THPeligible for the mapping holding `address`."""
    mappings = re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", Path("/proc/self/smaps").read_text())
    for mapping in mappings:
        lo, hi = (int(x, 16) for x in mapping.split()[0].split("-"))
        if lo <= address < hi:
            return re.search(r"THPeligible:\s+1", mapping) is not None
    raise AssertionError(f"no mapping holds {address:#x}")


@pytest.mark.skipif(not THP.exists() or "[never]" in THP.read_text(),
                    reason="no transparent huge pages on this OS (not Linux, or THP set to never)")
def test_the_buffer_may_be_backed_by_huge_pages():
    weights = hugepages.buffer(4 * hugepages.HUGE)
    assert thp_eligible(weights.data_ptr())
    assert not thp_eligible(torch.empty(4 * hugepages.HUGE, dtype=torch.uint8).data_ptr()) or \
        "[always]" in THP.read_text()  # madvise mode: only what asks for them


@pytest.mark.parametrize("kernel", ["specdec", "aten"])
def test_a_quantized_model_reads_its_weights_from_one_buffer_and_computes_the_same_bits(kernel, monkeypatch):
    if kernel == "specdec" and not qkernel.available():
        pytest.skip(f"no kernel here: {qkernel.why_not()}")
    placed = quantize(tiny_llama(layers=2).float(), "int4", 32, kernel=kernel)
    monkeypatch.setattr(hugepages, "place", lambda linears: None)
    unplaced = quantize(tiny_llama(layers=2).float(), "int4", 32, kernel=kernel)
    linears = [m for m in placed.modules() if isinstance(m, QuantLinear)]
    storages = {t.untyped_storage().data_ptr() for m in linears for t in (m.qweight, m.scales)}
    assert len(linears) > 1 and len(storages) == 1
    assert len({t.untyped_storage().data_ptr() for m in unplaced.modules() if isinstance(m, QuantLinear)
                for t in (m.qweight, m.scales)}) > 1
    codes = [m.qweight.data_ptr() for m in linears]
    assert codes == sorted(codes)  # forward order: one stream
    for m in linears:
        if m.group is not None:  # a fused member: a view of its set's weight, which moved
            assert m.qweight.untyped_storage().data_ptr() == m.group.codes.untyped_storage().data_ptr()
    ids = torch.tensor([[3, 14, 15, 92, 65, 35]])
    with torch.inference_mode():
        got = [Arena(model, 1, 16).forward(ids, keep=0) for model in (placed, unplaced)]
    assert torch.equal(got[0], got[1])
