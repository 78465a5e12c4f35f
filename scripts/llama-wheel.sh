#!/usr/bin/env bash
# Build the pinned llama-cpp-python wheel once per (CPU, CMAKE_ARGS, Python) and print its path.
#
#   scripts/llama-wheel.sh PYTHON
#
# The build is native (-march=native), but without Intel AMX: ggml's AMX matmul kernels in the pinned
# llama.cpp crash (SIGSEGV in ggml_backend_amx_mul_mat) on Gemma 3 on AMX-capable Xeons, in llama-server
# as in the Python binding; AVX-512 and VNNI stay on. Wheels are cached under
# ${XDG_CACHE_HOME:-~/.cache}/llmhost/wheels/<key>: pip's own wheel cache ignores CMAKE_ARGS, so a
# wheel built with other flags (or on another CPU) would otherwise be reused as it is.
set -euo pipefail

PY="${1:?usage: scripts/llama-wheel.sh PYTHON}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="$(sed -n 's/.*"llama-cpp-python==\([^"]*\)".*/\1/p' "$ROOT/pyproject.toml" | head -n1)"
[[ -n "$VERSION" ]] || { echo "llama-wheel.sh: no llama-cpp-python pin in pyproject.toml" >&2; exit 1; }

source "$ROOT/scripts/llama-cmake-args.sh"
ARGS="$(llama_cmake_args)"

KEY="$( { echo "$VERSION $ARGS"; uname -m; "$PY" -c 'import sys; print(sys.version)';
          grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true; } | sha256sum | cut -c1-16)"
DIR="${XDG_CACHE_HOME:-$HOME/.cache}/llmhost/wheels/$KEY"
WHEEL="$(ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$WHEEL" ]]; then
    mkdir -p "$DIR"
    echo "building llama-cpp-python $VERSION (CMAKE_ARGS=$ARGS); this takes several minutes" >&2
    CMAKE_ARGS="$ARGS" "$PY" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$VERSION" -w "$DIR.tmp" >&2
    mv "$DIR.tmp"/llama_cpp_python-"$VERSION"-*.whl "$DIR"/
    rm -rf "$DIR.tmp"
    WHEEL="$(ls "$DIR"/llama_cpp_python-"$VERSION"-*.whl | head -n1)"
fi
echo "$WHEEL"
