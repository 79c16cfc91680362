#!/usr/bin/env bash
# The test command (README): fetches the models and data the tests need, checks
# formatting and lints, then runs every test of the workspace. Needs network access to
# PyPI, crates.io and Rust's target downloads (musl, for `mcc build --static`) the first
# time only. MCC_CPU=avx512|avx2|scalar makes every binary run that kernel tier and
# every llama.cpp comparison use that tier's goldens.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh
python3 -c 'import gguf, numpy' 2>/dev/null || python3 -m pip install -q gguf==0.19.0 numpy
# The server suite (tests/serve, run by tests/e2e_serve.rs) drives it with OpenAI's client.
python3 -c 'import openai, pytest, requests, jsonschema, playwright' 2>/dev/null \
  || python3 -m pip install -q openai==3.63.0 pytest==9.2.0 requests==2.34.2 \
    jsonschema==4.26.0 playwright==1.65.3
# Its chat-page test drives Debian's Chromium through Playwright, and its replica test
# runs HAProxy; neither may skip here.
if ! command -v chromium >/dev/null || ! [ -x /usr/sbin/haproxy ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium haproxy >/dev/null
fi
export MCC_REQUIRE_CHROMIUM=1 MCC_REQUIRE_HAPROXY=1
# Rust's musl target, for the static build (tests/e2e_static.rs).
rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl \
  || rustup target add x86_64-unknown-linux-musl
# ptxas for the offline GPU checks (compiler/tests/ptx.rs), which must not skip here.
MCC_PTXAS="$(bash scripts/fetch-ptxas.sh)"
export MCC_PTXAS MCC_REQUIRE_PTXAS=1
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings
cargo test --workspace --all-targets "$@"
# The AVX2 tier's ops against ggml's AVX2 golden (ops::tests::ggml_golden) and their
# scalar references: the run above builds for this machine, which on an AVX-512 one
# checks only the AVX-512 twins bit for bit against ggml.
RUSTFLAGS="-C target-cpu=x86-64-v3" cargo test --release -p mcc-runtime --lib \
  --target-dir target/tier-avx2 -q -- ops::
