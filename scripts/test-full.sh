#!/usr/bin/env bash
# The full test run: everything scripts/test.sh runs, plus the tests that need llama.cpp's
# tools and models made with them (the quant ladder, the Minitron-shaped Q4_K_M). Those
# are #[ignore]d in the default run because making their inputs takes longer than CI
# allows (llama.cpp builds in ~20 minutes, the models in ~30 more on 2 cores); once made,
# they live in ~/.cache/mcc and later runs reuse them. Last, scripts/check-install.sh:
# `cargo install` of mcc, and a build with it after the checkout moved away.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/fetch-models.sh
bash ../shared/scripts/llama-ref.sh >/dev/null
bash scripts/make-minitron.sh
[ -x scripts/make-models.sh ] && bash scripts/make-models.sh
bash scripts/test.sh -- --include-ignored
# mcc quantize against llama-quantize's ladder files, every type: a debug build checks
# only F16 and Q8_0 (the K-quant searches take minutes unoptimised).
cargo test --release --test e2e_quantize
# mcc build --quant Q4_K_M against the build of llama-quantize's file, linked.
cargo test --release --test e2e_build_quant -- --include-ignored smollm2
bash scripts/check-install.sh
