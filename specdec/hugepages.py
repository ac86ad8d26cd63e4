"""A quantized model's packed weights side by side in one buffer on huge pages, in the order a forward reads them.

    hugepages.place(linears)   # specdec.quantize does it for every model it quantizes on CPU

Why: a 4-bit decode step of Qwen2.5-1.5B streams 0.8 GB of packed weights in ~110 calls of 0.4-15 MB (the 0.5B
draft's: 0.4-5 MB). On 4 KiB pages a stream crosses a page every 4 KiB: a TLB miss each, and the hardware
prefetchers stop at every page boundary, so small calls never reach full speed. On 2 MiB pages (Linux's transparent
huge pages, asked for with madvise, THP's default mode on most distributions) they cross one every 2 MiB. Measured
on the Zen 4 (AuthenticAMD family 25 model 17), int4 pair (groups of 128), whole forwards on the KV arena, 8 paired
passes: a one-token forward took 0.956x the time for the target and 0.950x for the draft, 4 tokens 0.98x, 8 tokens
1.00x (compute-bound there). llama.cpp, the study's outside reference, runs on huge pages too
(specdec.study.llamacpp_run).

Where the OS has no madvise or no huge pages (not Linux, THP set to "never"), the buffer is ordinary memory: the
same bits at ordinary speed. Placing a weight moves it and changes none of its bits.
"""
import mmap

import torch

HUGE = 2 << 20  # bytes of an x86-64 huge page
ALIGN = 64      # each weight starts on a cache line, as torch's allocator starts a tensor


def buffer(nbytes) -> torch.Tensor:
    """uint8 [nbytes], 2 MiB-aligned, on private anonymous memory the OS is asked to back with huge pages."""
    advice, private = getattr(mmap, "MADV_HUGEPAGE", None), getattr(mmap, "MAP_PRIVATE", None)
    if advice is None or private is None:
        return torch.empty(nbytes, dtype=torch.uint8)
    # private: a shared anonymous mapping is shmem, which THP's madvise mode leaves on 4 KiB pages
    region = mmap.mmap(-1, nbytes + HUGE, flags=private | mmap.MAP_ANONYMOUS)
    try:
        region.madvise(advice)
    except OSError:  # a kernel without transparent huge pages: ordinary pages
        pass
    whole = torch.frombuffer(region, dtype=torch.uint8)  # keeps `region` mapped while any view of it lives
    start = -whole.data_ptr() % HUGE
    return whole[start:start + nbytes]


def gather(tensors) -> list:
    """Copies of contiguous `tensors`, each on a 64-byte boundary, back to back in one buffer in the order given."""
    sizes = [t.numel() * t.element_size() for t in tensors]
    spans = [-(-n // ALIGN) * ALIGN for n in sizes]
    whole = buffer(sum(spans))
    copies, start = [], 0
    for t, n, span in zip(tensors, sizes, spans):
        copy = whole[start:start + n].view(t.dtype).view(t.shape)
        copy.copy_(t)
        copies.append(copy)
        start += span
    return copies


def place(linears) -> None:
    """Move the packed weights (codes and scales) of `linears`, CPU QuantLinear modules in the order a forward calls
    them, into one buffer; a fused set of siblings (specdec.qkernel.Fused) moves once, its members keep views."""
    parts, fused = [], []  # (holder, attribute) of each tensor to move; the fused sets met
    for m in linears:
        if m.group is None:
            parts += [(m, "qweight"), (m, "scales")]
        elif m.group not in fused:
            fused.append(m.group)
            parts += [(m.group, "codes"), (m.group, "scales")]
    copies = gather([getattr(holder, name) for holder, name in parts]) if parts else []
    for (holder, name), copy in zip(parts, copies):
        setattr(holder, name, copy)  # a module's buffer, or a fused set's tensor
    for group in fused:
        group.share()
