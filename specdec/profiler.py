"""Per-phase wall time (prefill / draft / verify / accept / rollback) with correct device syncs.

Kernels on CUDA and MPS run asynchronously, so a phase's time is only honest if the device is
synchronised at both ends. That sync costs time itself, so it happens only when profiling is on;
un-profiled runs are timed end to end (one sync at the end) by whoever measures throughput.
"""
import re
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from .arena import Arena

CONTEXT = 64     # cached tokens before a timed forward: about what a short prompt's decode steps attend over
DENSE_MOST = 17  # new tokens a Forwards takes by default: a verify over K + 1 <= 16 and then some


def synchronize(device) -> None:
    """Wait until all queued work on `device` is done (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


class Profiler:
    def __init__(self, device, enabled: bool):
        self.device = device
        self.enabled = enabled
        self.seconds = defaultdict(float)

    @contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        synchronize(self.device)
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self.seconds[name] += time.perf_counter() - start

    def stats(self) -> dict:
        """{"<phase>_s": seconds} for every phase seen."""
        return {f"{name}_s": secs for name, secs in self.seconds.items()}


# -- peak memory (DESIGN.md section 3) --------------------------------------------------------------------

def reset_peak_memory(device):
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    elif device.type == "cpu":
        try:  # Linux: "5" resets the process's peak RSS (VmHWM) to its current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass  # then ru_maxrss below is the peak since process start


def peak_memory_mib(device) -> float:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


class Forwards:
    """Timed forwards as a generation runs them: over new tokens after CONTEXT cached ones, through the engine's KV
    arena (a quantized model's layers take their one-call path only there; without a cache they run the slower
    general one). The pointers never move, so every call writes the same slots."""

    def __init__(self, model, batch=1, most=DENSE_MOST):
        self.model, self.batch = model, batch
        self.arena = Arena(model, batch, CONTEXT + most)
        self.arena.forward(torch.zeros(batch, CONTEXT, dtype=torch.long, device=model.device), keep=1)
        self.arena.point_to(torch.full((batch,), CONTEXT, device=model.device), CONTEXT, aligned=True)

    def __call__(self, tokens, keep=1) -> float:
        """Seconds of one forward over [batch, tokens] new tokens (logits of the last `keep`; 0: all)."""
        ids = torch.zeros(self.batch, tokens, dtype=torch.long, device=self.model.device)
        t = time.perf_counter()
        self.arena.forward(ids, keep=keep)
        synchronize(self.model.device)
        return time.perf_counter() - t


def draft_forwards(forwards: Forwards):
    """A draft's forwards over one token (most draft steps) and over two (a round's first step after a fully
    accepted round), once each: what a draft's speed is judged by."""
    forwards(1)
    forwards(2)
