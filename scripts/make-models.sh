#!/usr/bin/env bash
# Makes the quantization ladder: SmolLM2-135M-Instruct in every file type of the seed
# table, from the Q4_1 file that scripts/fetch-models.sh fetches, into
# $MCC_CACHE/models/ladder/ (MCC_CACHE defaults to ~/.cache/mcc):
#
#   SmolLM2-135M-Instruct.F16.gguf      llama-quantize --allow-requantize Q4_1 -> F16
#   calibration.txt                     ~400 KB of real English: Debian's license texts
#                                       and git's release notes, files in sorted order
#   imatrix.gguf                        llama-imatrix of the F16 file over that text
#   SmolLM2-135M-Instruct.<TYPE>.gguf   llama-quantize F16 -> TYPE with that imatrix, for
#                                       the 27 types below
#
# The F16 file holds the Q4_1 file's values rounded to f16, and every rung is quantized
# from it, so all rungs share one set of weights. SmolLM2's rows are 576
# wide, not a multiple of 256, so for K and IQ types llama-quantize falls back to a
# legacy type for most tensors; whatever it writes is the file we test.
#
# Idempotent: a file that exists is kept (delete it to remake it). Each file is written
# under a .part name and renamed, so an interrupted run leaves nothing half made.
# Needs llama.cpp's tools (../shared/scripts/llama-ref.sh builds them, or LLAMA_BIN=dir).
# Usage: scripts/make-models.sh [TYPE...]     (default: all 27 types)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
BIN=${LLAMA_BIN:-$(bash "$here/../../shared/scripts/llama-ref.sh")}
THREADS=${THREADS:-2}
SRC="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
OUT="$CACHE/models/ladder"
STEM=SmolLM2-135M-Instruct

# The seed table's types, smallest first.
TYPES=(IQ1_S IQ1_M IQ2_XXS IQ2_XS IQ2_S IQ2_M Q2_K_S Q2_K IQ3_XXS IQ3_XS Q3_K_S IQ3_S
  IQ3_M Q3_K_M Q3_K_L IQ4_XS Q4_0 IQ4_NL Q4_K_S Q4_K_M Q4_1 Q5_K_S Q5_0 Q5_K_M Q5_1
  Q6_K Q8_0)
if [ $# -gt 0 ]; then TYPES=("$@"); fi

[ -f "$SRC" ] || bash "$here/fetch-models.sh"
mkdir -p "$OUT"

f16="$OUT/$STEM.F16.gguf"
if [ ! -f "$f16" ]; then
  echo "== F16 from $(basename "$SRC")" >&2
  "$BIN/llama-quantize" --allow-requantize "$SRC" "$f16.part" F16 "$THREADS" >"$OUT/F16.log" 2>&1
  mv "$f16.part" "$f16"
fi

# Calibration text: whole files in a fixed order, cut at 400,000 bytes.
text="$OUT/calibration.txt"
if [ ! -f "$text" ]; then
  {
    find /usr/share/common-licenses -maxdepth 1 -type f | LC_ALL=C sort
    find /usr/share/doc/git/RelNotes -maxdepth 1 -type f -name '*.txt' | LC_ALL=C sort -V
  } | while read -r f; do cat "$f"; printf '\n\n'; done >"$text.all"
  head -c 400000 "$text.all" >"$text.part"
  rm -f "$text.all"
  [ "$(wc -c <"$text.part")" -ge 200000 ] || { echo "calibration text too short: $(wc -c <"$text.part") bytes" >&2; exit 1; }
  mv "$text.part" "$text"
fi
echo "calibration text: $(wc -c <"$text") bytes, sha256 $(sha256sum "$text" | cut -c1-16)" >&2

imatrix="$OUT/imatrix.gguf"
if [ ! -f "$imatrix" ]; then
  echo "== imatrix over the calibration text (a few minutes)" >&2
  "$BIN/llama-imatrix" -m "$f16" -f "$text" -o "$imatrix.part.gguf" -c 512 -t "$THREADS" \
    --no-ppl >"$OUT/imatrix.log" 2>&1
  mv "$imatrix.part.gguf" "$imatrix"
fi

for t in "${TYPES[@]}"; do
  out="$OUT/$STEM.$t.gguf"
  [ -f "$out" ] && continue
  echo "== $t" >&2
  "$BIN/llama-quantize" --imatrix "$imatrix" "$f16" "$out.part" "$t" "$THREADS" >"$OUT/$t.log" 2>&1 \
    || { echo "llama-quantize $t failed, see $OUT/$t.log" >&2; exit 1; }
  mv "$out.part" "$out"
done
ls -l "$OUT"/*.gguf >&2
