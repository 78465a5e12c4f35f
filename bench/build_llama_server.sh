#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` from the llama.cpp vendored in the pinned llama-cpp-python sdist,
# once, and cache it under ~/.cache/llmhost-bench/llama-server-<version>/. Prints the binary's path.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
CACHE="${LLMHOST_BENCH_CACHE:-$HOME/.cache/llmhost-bench}/llama-server-$VERSION-noamx"
BIN="$CACHE/llama-server"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
WORK="$CACHE/src"
rm -rf "$WORK"
mkdir -p "$WORK"
"$PY" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$WORK" >&2
tar -xzf "$WORK"/llama_cpp_python-"$VERSION".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-$VERSION/vendor/llama.cpp"

# The same flags as llmhost's own build (scripts/llama-cmake-args.sh: native, no AMX), so the two compare
# like with like.
source "$ROOT/scripts/llama-cmake-args.sh"
eval "EXTRA=($(llama_cmake_args))"
cmake -S "$SRC" -B "$WORK/build" "${EXTRA[@]}" \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DGGML_NATIVE=ON -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build "$WORK/build" --target llama-server -j"${JOBS:-2}" >&2

cp "$WORK/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"
rm -rf "$WORK"
echo "$BIN"
