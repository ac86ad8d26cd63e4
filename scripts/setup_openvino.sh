#!/usr/bin/env bash
# Optional: OpenVINO GenAI, notebook 06's second outside reference (specdec.study.openvino_run). Nothing in specdec
# needs it. It gets a virtual environment of its own (optimum-intel, which exports models to OpenVINO's format, pins
# an older transformers than specdec's), and the offline pair (scripts/setup.sh caches it) is exported there once:
# int4 weights in groups of 128 on every decoder linear (NNCF's recipe keeps the embeddings and the LM head int8).
# 2 min 58 s and 3.1 GB on a 2-core AMD EPYC (the packages already in pip's cache). Prints the folder to put in
# SPECDEC_OPENVINO.
#   PYTHON=.venv/bin/python bash scripts/setup_openvino.sh           # into ~/.cache/specdec/openvino
#   PYTHON=.venv/bin/python bash scripts/setup_openvino.sh /opt/ov   # elsewhere
set -euo pipefail
DEST=${1:-${SPECDEC_CACHE:-$HOME/.cache/specdec}/openvino}
PY=${PYTHON:-python3}  # specdec's environment: it knows the pair and where its safetensors are
PAIR=${PAIR:-qwen2.5-coder}
# torch pinned to the CPU build specdec uses. optimum-intel goes in without its dependencies, which are listed here
# instead: it requires torchvision, whose PyPI wheels are built against CUDA torch; beside the CPU build its operators
# fail to load ("operator torchvision::nms does not exist") and transformers then fails to import. Exporting a text
# model does not use it.
PACKAGES=(torch==2.13.0 optimum==2.3.0 transformers==5.5.4 nncf==3.4.0 openvino==2026.4.1 openvino-tokenizers==2026.4.1.0
          openvino-genai==2026.4.1.0 requests setuptools)
mkdir -p "$DEST"
[ -x "$DEST/venv/bin/python" ] || python3 -m venv "$DEST/venv"
{ "$DEST/venv/bin/python" -m pip install -q "${PACKAGES[@]}" &&
  "$DEST/venv/bin/python" -m pip install -q --no-deps optimum-intel==2.2.0; } 2>&1 | grep -v "^WARNING: Location" || true
"$DEST/venv/bin/python" -c "import openvino_genai, optimum.intel" ||
  { echo "setup_openvino: installing ${PACKAGES[*]} optimum-intel==2.2.0 failed" >&2; exit 1; }
MODELS=($("$PY" -c "from specdec.models import PAIRS; p = PAIRS['$PAIR']; print(p['target'], p['draft'])")) ||
  { echo "setup_openvino: $PY could not name $PAIR's models (is specdec installed there? PYTHON=.venv/bin/python)" >&2; exit 1; }
for model in "${MODELS[@]}"; do
  out="$DEST/$model-int4"
  [ -f "$out/openvino_model.xml" ] && continue
  src=$("$PY" -c "from specdec import weights; print(weights.ensure_cached('$model'))")
  rm -rf "$out.partial"
  if ! "$DEST/venv/bin/optimum-cli" export openvino --model "$src" --task text-generation-with-past \
       --weight-format int4 --group-size 128 --ratio 1.0 "$out.partial" >"$DEST/export-$model.log" 2>&1; then
    tail -20 "$DEST/export-$model.log" >&2
    echo "setup_openvino: exporting $model failed (the whole log: $DEST/export-$model.log)" >&2
    exit 1
  fi
  mv "$out.partial" "$out"  # whole or absent: a rerun after a failure exports again
done
echo "$DEST"
