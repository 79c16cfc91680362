#!/usr/bin/env bash
# Builds scripts/llama_dump_tensors.cpp against the llama.cpp of ../shared/scripts/llama-ref.sh
# into $MCC_CACHE/bin/llama_dump_tensors and runs it with the given arguments:
#   scripts/dump-tensors.sh MODEL.gguf TEXT.txt N_THREADS OUT_DIR PREFIX...
# (see the .cpp for the output format).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
BIN=$(bash "$here/../../shared/scripts/llama-ref.sh")
SRC=$(dirname "$(dirname "$BIN")")
exe="$CACHE/bin/llama_dump_tensors"
mkdir -p "$CACHE/bin"
if [ ! -x "$exe" ] || [ "$here/llama_dump_tensors.cpp" -nt "$exe" ]; then
  g++ -O2 -std=c++17 "$here/llama_dump_tensors.cpp" -I"$SRC/include" -I"$SRC/ggml/include" \
    -L"$BIN" -Wl,-rpath,"$BIN" -lllama -lggml -lggml-base -o "$exe"
fi
mkdir -p "$4"
exec "$exe" "$@"
