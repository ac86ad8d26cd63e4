"""Where this process runs: the CPU's identity (what per-machine measurements are keyed by) and the cache
folder those measurements, and the converted offline weights, live in. Imports nothing of specdec."""
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

try:
    import fcntl
except ImportError:  # not POSIX (Windows): see write_cache
    fcntl = None


def cache_root() -> Path:
    """~/.cache/specdec, or $SPECDEC_CACHE."""
    return Path(os.environ.get("SPECDEC_CACHE") or Path.home() / ".cache" / "specdec").expanduser()


def measurement_root() -> Path:
    """Where this machine's measurements (linear plans, cost curves, draft precisions) are cached:
    $SPECDEC_MEASUREMENTS, else cache_root(). The test suite points it at a folder of its own, so a test run never
    decides a user's calibration."""
    return Path(os.environ.get("SPECDEC_MEASUREMENTS") or cache_root()).expanduser()


def cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (Linux; the name matched exactly: "model" is not
    "model name"), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def cpu_name() -> str:
    return cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


# The CPU features that decide which kernels run (and how fast): two CPUs with one model name can differ in them.
FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def cpu_features() -> str:
    """The FEATURES this CPU has, from /proc/cpuinfo; elsewhere torch's own reading of the vector unit."""
    flags = cpuinfo("flags")
    if flags is None:
        return f"torch: {torch.backends.cpu.get_cpu_capability()}"
    return " ".join(f for f in FEATURES if f in flags.split()) or "none of " + "/".join(FEATURES)


def cpu_identity() -> str:
    """Vendor, family, model and stepping (x86 Linux): two CPUs sold under one name (an AMD EPYC Zen 4, family 25,
    and a Zen 5, family 26) differ here, and their kernels run at different speeds."""
    fields = [cpuinfo(f) for f in ("vendor_id", "cpu family", "model", "stepping")]
    if all(f is None for f in fields):
        return platform.machine() or "unknown"
    return "{} family {} model {} stepping {}".format(*fields)


def machine_key() -> str:
    """Where a measured linear plan or cost holds: this CPU (name, vendor/family/model/stepping, kernel-deciding
    features, cores), torch version and thread count."""
    return (f"{cpu_name()} ({cpu_identity()}) [{cpu_features()}] {os.cpu_count()} cores | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads")


def cpu_clock() -> tuple:
    """(wall time, this process's CPU seconds, the whole machine's busy CPU seconds): see others_since."""
    total = psutil.cpu_times()
    return time.monotonic(), sum(psutil.Process().cpu_times()[:2]), total.user + total.system + getattr(total, "nice", 0.0)


def others_since(clock, window=0.0) -> float:
    """Cores' worth of CPU time other processes (this one excluded) used since `clock` (cpu_clock()), over at least
    `window` seconds (CPU time is counted in ticks of ~10 ms: over a short run one tick reads as a large share): a
    measurement taken while this is high measures the contention, not the machine."""
    now = cpu_clock()
    return max(0.0, (now[2] - clock[2]) - (now[1] - clock[1])) / max(now[0] - clock[0], window, 1e-9)


def others_cpu(seconds=0.3) -> float:
    """others_since over the next `seconds`."""
    clock = cpu_clock()
    time.sleep(seconds)
    return others_since(clock)


BUSY_CORES = 0.5  # other processes' CPU use, in cores, above which a measurement of kernels or costs is not trusted


def busy() -> bool:
    """Other processes use more than BUSY_CORES: too busy to measure kernels or costs."""
    return others_cpu() > BUSY_CORES


def fastest(call, passes) -> float:
    """Seconds of the fastest of `passes` adjacent calls, after one untimed call (it touches the pages): adjacent
    passes share the machine's state, and the fastest is the one least interrupted."""
    call()
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


# -- per-machine JSON caches ------------------------------------------------------------------------------------
# Several processes may measure at once (two study runs, a test suite beside a benchmark): every write merges
# under an exclusive lock and replaces the file atomically (a unique temp file, then rename), so a reader never
# sees half a file and no writer loses another's entries. The lock is fcntl's, on POSIX; elsewhere writes are
# still atomic, but two processes writing at the same moment may drop one's entry (it is re-measured later).

def read_cache(name: str) -> dict:
    """The JSON object in measurement_root()/name; {} when missing. A corrupt file is reported on stderr and
    treated as empty (the next write replaces it)."""
    path = measurement_root() / name
    try:
        text = path.read_text()
    except OSError:
        return {}
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except ValueError as e:
        print(f"specdec: the cache file {path} is corrupt ({e}); it is measured again and replaced", file=sys.stderr)
        return {}


def write_cache(name: str, key: str, entries: dict):
    """Merge `entries` into the object at `key` of measurement_root()/name, under the lock, atomically."""
    path = measurement_root() / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        data = read_cache(name)
        data.setdefault(key, {}).update(entries)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
