#!/usr/bin/env bash
# Golden importance matrix for tests/e2e_imatrix.rs: the sha256 of llama-imatrix's file
# for the ladder's SmolLM2 F16 (scripts/make-models.sh) over 3 chunks of 512 tokens of
# its calibration text, run in the ladder folder so that the file records the dataset
# as `calibration.txt`. Written to tests/golden/TIER/imatrix-smollm2-f16.txt.
#
# --no-repack keeps F16 weights out of llama.cpp's extra buffers: on an AMX machine its
# native build would otherwise multiply them with its AMX buffer's kernels; without AMX
# (the machines the AVX-512 tier's goldens come from) F16 has no extra buffer, so the
# flag changes nothing there.
# Usage: scripts/imatrix-golden.sh --tier avx512|avx2
#   (llama.cpp built for that tier by ../shared/scripts/llama-ref.sh, LLAMA_REF_TIER=avx2
#   for the AVX2 one)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
[ "${1:-}" = --tier ] && [ -n "${2:-}" ] || { echo "usage: $0 --tier avx512|avx2" >&2; exit 2; }
tier=$2
case $tier in
  avx512) ref_tier=native ;;
  avx2) ref_tier=avx2 ;;
  *) echo "unknown tier $tier" >&2; exit 2 ;;
esac
BIN=$(LLAMA_REF_TIER=$ref_tier bash "$here/../../shared/scripts/llama-ref.sh")
LADDER=${MCC_CACHE:-$HOME/.cache/mcc}/models/ladder
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
(cd "$LADDER" && "$BIN/llama-imatrix" -m SmolLM2-135M-Instruct.F16.gguf -f calibration.txt \
  -o "$out/imatrix.gguf" -c 512 -b 512 --chunks 3 -t 2 --no-repack --no-ppl >"$out/log" 2>&1) \
  || { cat "$out/log" >&2; exit 1; }
dest="$here/../tests/golden/$tier/imatrix-smollm2-f16.txt"
{
  echo "llama-imatrix -m SmolLM2-135M-Instruct.F16.gguf -f calibration.txt -c 512 -b 512 --chunks 3 --no-repack --no-ppl"
  echo "sha256 $(sha256sum "$out/imatrix.gguf" | cut -d' ' -f1)"
  echo "bytes $(wc -c <"$out/imatrix.gguf")"
} >"$dest"
cat "$dest"
