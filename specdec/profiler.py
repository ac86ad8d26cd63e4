"""Per-phase wall time (prefill / draft / verify / accept / rollback) with correct device syncs.

Kernels on CUDA and MPS run asynchronously, so a phase's time is only honest if the device is
synchronised at both ends. That sync costs time itself, so it happens only when profiling is on;
un-profiled runs are timed end to end (one sync at the end) by whoever measures throughput.
"""
import time
from collections import defaultdict
from contextlib import contextmanager

import torch


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
