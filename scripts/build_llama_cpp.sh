#!/usr/bin/env bash
# Optional: build llama.cpp's llama-completion, llama-speculative-simple and llama-perplexity, the outside
# reference notebook 06 times and scores (specdec.study.llamacpp). Nothing in specdec needs them. The sources are the llama.cpp that the
# llama-cpp-python sdist vendors (a pinned version from PyPI, so this works wherever pip does); needs cmake and a
# C/C++ compiler. 155 s on a 2-core AMD EPYC, the download included. Prints the folder to put in SPECDEC_LLAMA_CPP.
#   bash scripts/build_llama_cpp.sh                  # into ~/.cache/specdec/llama.cpp
#   bash scripts/build_llama_cpp.sh /opt/llama.cpp   # elsewhere
set -euo pipefail
VERSION=0.3.36  # llama-cpp-python's sdist; its vendor/llama.cpp is what gets built
DEST=${1:-${SPECDEC_CACHE:-$HOME/.cache/specdec}/llama.cpp}
PY=${PYTHON:-python3}
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "build_llama_cpp: $tool not found: install cmake and a C/C++ compiler (e.g. apt install cmake g++)" >&2; exit 1; }
done
mkdir -p "$DEST"
if [ ! -d "$DEST/src" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp" 2>&1 | grep -v "^WARNING: Location" || true
  [ -f "$tmp/llama_cpp_python-$VERSION.tar.gz" ] || { echo "build_llama_cpp: could not download llama-cpp-python==$VERSION's sdist" >&2; exit 1; }
  tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$tmp"
  # The whole sdist, not only vendor/llama.cpp: its git metadata (.git/modules) gives the binaries' --version
  # the llama.cpp commit they were built from.
  mv "$tmp/llama_cpp_python-$VERSION" "$DEST/src.partial"
  mv "$DEST/src.partial" "$DEST/src"  # whole or absent: a rerun after a failed download starts over
fi
log="$DEST/build.log"  # the compiler's output (thousands of warnings): read it only if the build fails
# Built for this CPU (-march=native), except where it has AMX: there ggml's AMX backend, which a native build turns
# on, crashed every binary (SIGSEGV in ggml_backend_amx_mul_mat, on an Intel Xeon, family 6 model 167, 2 cores), so
# the build names this CPU's other vector extensions itself and leaves AMX out; the repacked AVX-512 kernels serve.
ISA=(-DGGML_NATIVE=ON)
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
  ISA=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=ON
       -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON)
fi
if ! { cmake -S "$DEST/src/vendor/llama.cpp" -B "$DEST/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF \
         -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF "${ISA[@]}" &&
       cmake --build "$DEST/build" -j "$(nproc 2>/dev/null || echo 2)" --target llama-completion llama-speculative-simple llama-perplexity
     } >"$log" 2>&1; then
  tail -30 "$log" >&2
  echo "build_llama_cpp: the build failed; the whole log is $log" >&2
  exit 1
fi
"$DEST/build/bin/llama-completion" --version 2>&1 | grep -m1 version
echo "export SPECDEC_LLAMA_CPP=$DEST/build/bin"
