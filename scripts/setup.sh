#!/usr/bin/env bash
# Set up specdec on a fresh machine: torch (kept if already installed, e.g. on Colab), the package
# with its test extra, and the offline model weights of the named pairs (default: the cpu study's
# pair and the small real model the slow tests use). Safe to rerun: every step skips done work.
#   bash scripts/setup.sh                     # qwen2.5-coder + smollm2-135m
#   bash scripts/setup.sh smollm2-135m        # only the small one (CI)
#   bash scripts/setup.sh none                # no weights
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # Pinned on purpose: here this is the CPU build; an unpinned torch pulls a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
fi
# Every other dependency comes from pyproject.toml: the engine, the study extra, the test extra (environment.yml lists the same ones), so the three agree.
"$PY" -m pip install -q -e ".[study,test]"
# specdec's quantized linear kernel (C++, built against this torch into the cache folder); where it cannot be
# built, this says why and torch's int4/int8 kernels serve quantized models.
"$PY" -m specdec kernel
pairs=("$@")
[ ${#pairs[@]} -eq 0 ] && pairs=(qwen2.5-coder smollm2-135m)
if [ "${pairs[0]}" != "none" ]; then
  "$PY" -m specdec.models fetch "${pairs[@]}"
fi
