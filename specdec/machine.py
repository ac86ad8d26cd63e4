"""Where this process runs: the CPU's identity (what per-machine measurements are keyed by) and the cache
folder those measurements, and the converted offline weights, live in. Imports nothing of specdec."""
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

try:
    import fcntl
except ImportError:  # not POSIX (Windows): see write_cache
    fcntl = None


def cache_root() -> Path:
    """~/.cache/specdec, or $SPECDEC_CACHE."""
    return Path(os.environ.get("SPECDEC_CACHE") or Path.home() / ".cache" / "specdec").expanduser()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_key() -> str:
    """Where a measured linear plan or cost holds: this CPU, torch version and thread count."""
    return f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"


# -- per-machine JSON caches ------------------------------------------------------------------------------------
# Several processes may measure at once (two study runs, a test suite beside a benchmark): every write merges
# under an exclusive lock and replaces the file atomically (a unique temp file, then rename), so a reader never
# sees half a file and no writer loses another's entries. The lock is fcntl's, on POSIX; elsewhere writes are
# still atomic, but two processes writing at the same moment may drop one's entry (it is re-measured later).

def read_cache(name: str) -> dict:
    """The JSON object in cache_root()/name; {} when missing. A corrupt file is reported on stderr and
    treated as empty (the next write replaces it)."""
    path = cache_root() / name
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
    """Merge `entries` into the object at `key` of cache_root()/name, under the lock, atomically."""
    path = cache_root() / name
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
