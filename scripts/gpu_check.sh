#!/usr/bin/env bash
# One-shot GPU check: on a machine lent for 15 minutes (no hub access), check everything that needs a GPU
# in one go, within 10 minutes, and leave every result under OUT_DIR.
#   bash scripts/gpu_check.sh OUT_DIR          # a CUDA machine: install, tests on cuda, smoke study on cuda,
#                                              # latency + speculative-vs-baseline on random GPT-2 and
#                                              # Llama-3.2-3B/1B in float16 and bfloat16
#   bash scripts/gpu_check.sh --cpu OUT_DIR    # the same steps on cpu, tiny models (CI: about a minute)
#   bash scripts/gpu_check.sh --wheels DIR     # run HERE before sending: the wheels the GPU image lacks
# Installing: an existing torch (the machine's CUDA build) is kept. With no package registry there, carry
# the wheels: `bash scripts/gpu_check.sh --wheels .whl` here, then on the machine SPECDEC_WHEELS=.whl (or a
# .whl folder in the checkout) makes the install use only those.
# Every step is time-boxed and logged; a failing step does not stop the others (its log's end is printed).
# OUT_DIR ends with two files (the device tool brings back 8 at most): summary.md (each step's status and
# seconds, then the timing tables) and results.tar.gz (every log, raw row, provenance file and figure).
# Exit status: 0 when every step passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if [ "${1:-}" = "--wheels" ]; then  # linux x86-64, CPython 3.12 (the GPU image's python); no torch, no accelerate
  dir=${2:?usage: gpu_check.sh --wheels DIR}
  plat=(); for n in 2_28 2_27 2_17; do plat+=(--platform "manylinux_${n}_x86_64"); done
  "$PY" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
    --platform manylinux2014_x86_64 --platform any -d "$dir" \
    "transformers>=$("$PY" -c 'import re;print(re.search(r"transformers>=([\d.]+)",open("pyproject.toml").read())[1])'),<6" \
    gguf papermill ipykernel pytest
  rm -f "$dir"/numpy-*.whl  # the image has numpy; 16 MB less to carry
  du -sh "$dir"; exit 0
fi

mode=cuda
if [ "${1:-}" = "--cpu" ]; then mode=cpu; shift; fi
OUT=${1:?usage: gpu_check.sh [--cpu] OUT_DIR}
mkdir -p "$OUT/logs" "$OUT/work"
OUT=$(cd "$OUT" && pwd)
DEADLINE=$((SECONDS + ${GPU_CHECK_SECONDS:-570}))  # the whole script: 10 minutes less a margin
printf '| step | status | seconds |\n|---|---|---|\n' > "$OUT/summary.md"
failed=0

# step NAME SECONDS CMD...: run CMD with its output in logs/NAME.log, killed after SECONDS (or at the deadline)
step() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS)); [ "$left" -lt "$limit" ] && limit=$left
  local t0=$SECONDS status
  if [ "$limit" -le 5 ]; then status="skipped (out of time)"; failed=1
  else
    # SIGINT first: pytest then still prints the failures so far; bash -c: steps may be functions
    timeout -s INT -k 10 "$limit" bash -c '"$@"' _ "$@" > "$OUT/logs/$name.log" 2>&1
    case $? in 0) status=ok ;; 124|137) status="TIMEOUT after ${limit} s"; failed=1 ;; *) status="FAILED ($?)"; failed=1 ;; esac
  fi
  echo "| $name | $status | $((SECONDS - t0)) |" | tee -a "$OUT/summary.md"
  [ "$status" = ok ] || tail -n 20 "$OUT/logs/$name.log" 2>/dev/null | sed 's/^/    /'  # why, right here
}

install() {
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
  local wheels=${SPECDEC_WHEELS:-.whl}
  if [ -d "$wheels" ]; then  # no registry: only the carried wheels (the image's setuptools builds the package)
    "$PY" -m pip install -q --no-index --find-links "$wheels" --no-build-isolation -e ".[study,test]"
  else
    "$PY" -m pip install -q -e ".[study,test]"
  fi
  "$PY" -c "import specdec, torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'| transformers', transformers.__version__)"
}

environment() {
  nvidia-smi || true
  "$PY" -m pip list 2>/dev/null
  "$PY" -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name())"
}

export PY PYTHONUNBUFFERED=1; export -f install environment

if [ $mode = cuda ]; then
  # every failure, not the first (no -x); test_colab clones the checkout, which a copied tree is not
  tests=(-m pytest -q -p no:cacheprovider -rfE --tb=short --maxfail 25 --ignore tests/test_colab.py)
  "$PY" -c "import pytest_timeout" 2>/dev/null && tests+=(--timeout 60)
  "$PY" -c "import xdist" 2>/dev/null && tests+=(-n 12)  # one process took over 200 s; 12 took 150 s on an H200
  smoke=(--target cuda -p common.device=cuda)
  pairs=(gpt2-random llama-3.2-random); dtypes=(float16 bfloat16); tiny=(); budget=(90 150)
else
  tests=(-m pytest -q -x -p no:cacheprovider tests/test_arena.py)  # the step itself; CI runs the suite before
  # float32, not float16: cpu float16 is slow; one notebook of the smoke study (test_colab runs all five)
  smoke=(--target cpu --only 01_k_sweep); pairs=(tiny-gpt2 tiny-llama); dtypes=(float32 bfloat16); tiny=(--tiny)
  budget=(90 90)
fi

step install 120 install
step environment 30 environment
step tests 170 env SPECDEC_TEST_DEVICE=$mode "$PY" "${tests[@]}"
step smoke_study 130 "$PY" -m specdec.study "${smoke[@]}" --smoke --out "$OUT/work/smoke"
for i in "${!pairs[@]}"; do
  for dtype in "${dtypes[@]}"; do
    step "${pairs[$i]}-$dtype" "${budget[$i]}" "$PY" scripts/gpu_timings.py --pair "${pairs[$i]}" --device $mode \
      --dtype "$dtype" --out "$OUT/work/${pairs[$i]}-$dtype" "${tiny[@]}"
  done
done

for log in "$OUT"/logs/*-float*.log "$OUT"/logs/*-bfloat16.log; do  # the timing tables, for the reader
  [ -f "$log" ] && { echo; echo "## $(basename "$log" .log)"; tail -n 25 "$log"; } >> "$OUT/summary.md"
done
cp "$OUT/summary.md" "$OUT/logs/"
tar -C "$OUT" -czf "$OUT/results.tar.gz" logs work && rm -rf "$OUT/logs" "$OUT/work"
echo "summary: $OUT/summary.md, everything: $OUT/results.tar.gz"
exit $failed
