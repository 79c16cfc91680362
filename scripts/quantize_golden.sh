#!/usr/bin/env bash
# Golden model-file quantizations (runtime/src/quant/golden_quantize/) from llama.cpp's
# libggml-base, the library llama-quantize quantizes with. See scripts/quantize_golden.c.
# Usage (from the repository root): scripts/quantize_golden.sh [OUT_DIR [EXTRA_ROWS]]
# Needs the reference build of ../shared/scripts/llama-ref.sh; only its libggml-base is
# used, so when that is missing this builds just that target (seconds, not the full
# 20-minute build).
set -euo pipefail
L=${MCC_CACHE:-$HOME/.cache/mcc}/llama.cpp
OUT=${1:-runtime/src/quant/golden_quantize}
if [ ! -f "$L/build/bin/libggml-base.so" ]; then
  if [ -f "$L/build/build.ninja" ]; then
    cmake --build "$L/build" --target ggml-base >&2
  else
    bash "$(dirname "$0")/../../shared/scripts/llama-ref.sh" >/dev/null
  fi
fi
mkdir -p "$OUT"
BIN=$(mktemp -d)/quantize_golden
gcc -O2 -Wall -Wextra -I"$L/ggml/include" "$(dirname "$0")/quantize_golden.c" \
  -L"$L/build/bin" -lggml-base -Wl,-rpath,"$L/build/bin" -lm -o "$BIN"
"$BIN" "$OUT" "${2:-0}"
rm -rf "$(dirname "$BIN")"
