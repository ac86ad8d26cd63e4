"""Where a measurement came from: code version, library versions, hardware, and the run's parameters.

Every data file the study writes carries one of these, so a number can always be traced back to the
commit, the machine and the settings that produced it. No hostname or user name: the dicts are published.
"""
import datetime
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from .. import __version__
from ..machine import cpu_features, cpu_name, machine_key

CODE_DIR = Path(__file__).resolve().parent  # the code that runs: its checkout's commit is what provenance records
TARGET_DIR = CODE_DIR / "targets"          # one YAML per hardware target


def outputs() -> tuple:
    """What the study writes: a checkout holding fresh results is not "dirty" code. data/prompts and
    data/reference are inputs, so only the per-target result folders are excluded."""
    return ("figures", "smoke", *(f"data/{t.stem}" for t in TARGET_DIR.glob("*.yaml")))


def git_state(path=CODE_DIR) -> dict:
    """Commit, dirty flag and a hash of the uncommitted source changes (tracked diff + untracked files, the
    study's output folders excluded) of the checkout holding `path`; None for all outside a checkout."""
    def git(*args):
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=30)
    none = dict(git_commit=None, git_dirty=None, git_diff_sha256=None)
    try:
        head = git("rev-parse", "HEAD")
        if head.returncode != 0:  # not a checkout (an installed wheel), or a repo with no commit yet
            return none
        top = Path(git("rev-parse", "--show-toplevel").stdout.strip())
        spec = ["--", ":/", *(f":(exclude,top){o}" for o in outputs())]
        diff = git("diff", "HEAD", "--binary", *spec).stdout
        untracked = git("ls-files", "--others", "--exclude-standard", "--full-name", *spec).stdout.split()
        if not diff and not untracked:
            return dict(git_commit=head.stdout.strip(), git_dirty=False, git_diff_sha256=None)
        digest = hashlib.sha256(diff.encode())
        for name in sorted(untracked):  # new files are part of the code that ran, too
            digest.update(name.encode())
            digest.update((top / name).read_bytes() if (top / name).is_file() else b"")
        return dict(git_commit=head.stdout.strip(), git_dirty=True, git_diff_sha256=digest.hexdigest())
    except (OSError, subprocess.SubprocessError):  # no git binary
        return none


# Every package whose version can change a number or a figure of the study.
PACKAGES = ("transformers", "accelerate", "tokenizers", "huggingface-hub", "safetensors", "gguf", "numpy", "scipy",
            "pandas", "matplotlib", "seaborn", "papermill")


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
    record = dict(
        started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **git_state(),
        python=platform.python_version(),
        implementation=sys.implementation.name,
        platform=platform.platform(terse=True),
        torch=torch.__version__,
        **{name.replace("-", "_"): _version(name) for name in PACKAGES},
        specdec=__version__,
        cuda=torch.version.cuda,
        device_name=device_name(device),
        cpu=cpu_name(),
        cpu_features=cpu_features(),
        cpu_cores=os.cpu_count(),
        machine_key=machine_key(),  # what the linear plans and cost curves of this machine are keyed by
        torch_threads=torch.get_num_threads(),
        params=_jsonable(dict(params, **({} if device is None else {"device": device}))),
    )
    json.dumps(record)  # fail here, not in the caller's writer, if something slipped through
    return record
