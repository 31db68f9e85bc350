# Everyday commands. `just --list` shows them. Run inside the virtualenv (.venv).

set shell := ["bash", "-euo", "pipefail", "-c"]

# install everything into the active venv: engram-core built from source by maturin,
# llama.cpp from its cached wheel (ops/brain), arlocal with npm (ops/arlocal)
setup:
    ops/install-offline.sh
    pip install -q ./engram-core -e '.[dev,brain,lora]'
    bash ops/arlocal/setup.sh

# the main job on the embedded defaults: a devnet (miners, a validator, the local chain)
run:
    engram devnet

# every test: the Rust crate's own tests and vectors, then pytest (real NATS, model, index)
test:
    cargo test -q --manifest-path engram-core/Cargo.toml --no-default-features
    pytest

# arlocal, a local Arweave gateway (npm), for the blob tests and `engram devnet --blobs`;
# cached under ~/.cache/engram-ci/arlocal (the first install builds sqlite3: ~4 min)
arlocal-setup:
    bash ops/arlocal/setup.sh

# lints and types
lint:
    ruff check engram streams tests
    ruff format --check engram streams tests
    mypy
    cargo fmt --manifest-path engram-core/Cargo.toml --check
    cargo clippy -q --manifest-path engram-core/Cargo.toml --all-targets -- -D warnings

# benchmarks: each prints one JSON object on its last line
bench:
    engram bench bus --events 20000 --json
    engram bench core --rows 100000 --dim 384 --json
    engram bench floats --count 5000000 --json
    engram bench ingest --docs 5000 --json
    engram bench validator --miners 64 --json
    engram bench brain --json
