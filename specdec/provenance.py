"""Where a measurement came from: code version, library versions, hardware, and the run's parameters.

Every data file the study writes carries one of these, so a number can always be traced back to the
commit, the machine and the settings that produced it. No hostname or user name: the dicts are published.
"""
import datetime
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGE_DIR = Path(__file__).resolve().parent


def git_state(path=PACKAGE_DIR) -> dict:
    """Commit and dirty flag of the git checkout holding `path`; None for both outside a checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:  # not a checkout (an installed wheel), or a repo with no commit yet
            inside = git("rev-parse", "--is-inside-work-tree").stdout.strip() == "true"
            return dict(git_commit=None, git_dirty=True if inside else None)
        # --porcelain lists modified and untracked files; any line means the tree differs from the commit
        dirty = bool(git("status", "--porcelain", "--untracked-files=normal").stdout.strip())
        return dict(git_commit=head.stdout.strip(), git_dirty=dirty)
    except (OSError, subprocess.SubprocessError):  # no git binary
        return dict(git_commit=None, git_dirty=None)


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def device_name(device=None) -> str:
    """A human-readable name of the accelerator in use, else of the CPU."""
    kind = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else
        "mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    if kind == "cuda":
        return torch.cuda.get_device_name(torch.device(device) if device is not None else None)
    if kind == "mps":
        return "Apple MPS"
    return cpu_name()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _jsonable(value):
    """Parameters as JSON values: tuples to lists, torch dtypes/devices and other objects to strings."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def provenance(device=None, **params) -> dict:
    """A JSON-serialisable record of this process's code, environment and the given parameters.
    `device` (optional) picks which device's name is recorded; it is kept among the params too."""
    from . import __version__

    record = dict(
        started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_state(),
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=platform.platform(terse=True),
        torch=torch.__version__,
        transformers=_version("transformers"),
        numpy=_version("numpy"),
        specdec=__version__,
        cuda=torch.version.cuda,
        device_name=device_name(device),
        cpu=cpu_name(),
        torch_threads=torch.get_num_threads(),
        params=_jsonable(dict(params, **({} if device is None else {"device": device}))),
    )
    json.dumps(record)  # fail here, not in the caller's writer, if something slipped through
    return record


def start_run(out_dir, **params) -> str:
    """A new run id (UTC time + random suffix), its provenance written to <out_dir>/provenance-<run_id>.json;
    every row the run writes names that id."""
    import secrets

    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)
    path = Path(out_dir) / f"provenance-{run_id}.json"
    path.write_text(json.dumps(provenance(run_id=run_id, **params), indent=1))
    return run_id
