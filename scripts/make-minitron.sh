#!/usr/bin/env bash
# Makes the Minitron-4B-shaped random-weight models of the compiler's end-to-end checks
# and benchmarks: mcc synth writes an F16 GGUF with Minitron-4B's shapes (3072 wide, 32
# layers, 32 query and 8 KV heads of 128, FFN 9216, untied output, Llama-3.1 RoPE
# scaling) and the Llama 3 vocabulary of llama.cpp's ggml-vocab-llama-bpe.gguf, then
# llama-quantize makes each requested type (default Q4_K_M: Q4_K with Q6_K for part of
# attn_v/ffn_down and for output.weight; Q8_0 for the benchmarks). The 9 GB F16 is
# deleted afterwards; synth-minitron.<TYPE>.gguf stays in $MCC_CACHE/models.
#
#   bash scripts/make-minitron.sh [TYPE...]   # prints each model's path; makes only
#                                             # the missing ones
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
LLAMA=${MCC_LLAMA_SRC:-$CACHE/llama.cpp}
MODELS=$CACHE/models
TYPES=("${@:-Q4_K_M}")
missing=()
for t in "${TYPES[@]}"; do
  [ -f "$MODELS/synth-minitron.$t.gguf" ] || missing+=("$t")
done
if [ ${#missing[@]} -gt 0 ]; then
  # llama-quantize runs ggml's plain-C quantizers (no imatrix here): either tier's build will do
  QUANTIZE=${LLAMA_BIN:-$(bash ../shared/scripts/llama-ref.sh)}/llama-quantize
  VOCAB=$LLAMA/models/ggml-vocab-llama-bpe.gguf
  for f in "$QUANTIZE" "$VOCAB"; do
    [ -e "$f" ] || { echo "make-minitron: $f is missing (../shared/scripts/llama-ref.sh builds llama.cpp)" >&2; exit 1; }
  done
  mkdir -p "$MODELS"
  F16=$MODELS/.synth-minitron.F16.gguf
  TMP=$MODELS/.synth-minitron.tmp.gguf
  trap 'rm -f "$F16" "$TMP"' EXIT
  cargo build --release -q -p mcc
  # Seed 42: the same script gives the same F16 file on any machine.
  target/release/mcc synth --preset minitron --type f16 --seed 42 --name synth-minitron \
    --vocab-from "$VOCAB" -o "$F16" >&2
  for t in "${missing[@]}"; do
    "$QUANTIZE" "$F16" "$TMP" "$t" "$(nproc)" >"$MODELS/.synth-minitron.quantize.log" 2>&1 \
      || { tail -20 "$MODELS/.synth-minitron.quantize.log" >&2; exit 1; }
    mv "$TMP" "$MODELS/synth-minitron.$t.gguf"
  done
fi
for t in "${TYPES[@]}"; do
  echo "$MODELS/synth-minitron.$t.gguf"
done
