#!/usr/bin/env bash
# Builds scripts/llama_logits.cpp against the llama.cpp of ../shared/scripts/llama-ref.sh
# (the build of $LLAMA_REF_TIER, default native) into $MCC_CACHE/bin/llama_logits-TIER and
# prints its path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
BIN=$(bash "$here/../../shared/scripts/llama-ref.sh")
SRC=$(dirname "$(dirname "$BIN")")
out="$CACHE/bin/llama_logits-${LLAMA_REF_TIER:-native}"
mkdir -p "$CACHE/bin"
# Rebuilt when the source is newer or the libraries it was linked against (its rpath,
# recorded beside it) are elsewhere now.
if [ ! -x "$out" ] || [ "$here/llama_logits.cpp" -nt "$out" ] \
  || [ "$(cat "$out.lib-dir" 2>/dev/null)" != "$BIN" ]; then
  g++ -O2 -std=c++17 "$here/llama_logits.cpp" -I"$SRC/include" -I"$SRC/ggml/include" \
    -L"$BIN" -Wl,-rpath,"$BIN" -lllama -lggml -lggml-base -o "$out"
  echo "$BIN" > "$out.lib-dir"
fi
echo "$out"
