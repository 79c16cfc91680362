#!/usr/bin/env bash
# Regenerates tests/golden/convert/: runs llama.cpp's convert_hf_to_gguf.py (from the
# llama.cpp sources in ~/.cache/mcc/llama.cpp, with their own gguf-py) on the synthetic
# checkpoints of scripts/make-hf-checkpoints.py and summarises each output
# (scripts/convert_golden.py). tests/e2e_convert.rs compares mcc convert with them.
#
# The reference needs torch, transformers and numpy; they go into a venv under
# ~/.cache/mcc/convert-venv (about 5 GB: PyPI's Linux torch wheel brings CUDA libraries,
# unused here), never into CI's path. The pins are llama.cpp's
# requirements-convert_hf_to_gguf.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
LLAMA="${MCC_LLAMA_SRC:-$HOME/.cache/mcc/llama.cpp}"
VENV="$HOME/.cache/mcc/convert-venv"
if ! "$VENV/bin/python" -c 'import torch, transformers, numpy, yaml' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch==2.11.0 "numpy~=2.2.6" "sentencepiece>=0.1.98,<0.3.0" \
    transformers==4.57.6 "protobuf>=4.21.0,<5.0.0" safetensors
fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python3 scripts/make-hf-checkpoints.py "$WORK/ck" --vocab "$LLAMA/models/ggml-vocab-llama-bpe.gguf"
OUT=tests/golden/convert
mkdir -p "$OUT"
# checkpoint and --outtype; the list is tests/e2e_convert.rs's CASES.
while read -r ck outtype; do
  PYTHONPATH="$LLAMA/gguf-py" "$VENV/bin/python" "$LLAMA/convert_hf_to_gguf.py" \
    "$WORK/ck/$ck" --outfile "$WORK/$ck-$outtype.gguf" --outtype "$outtype" \
    > "$WORK/$ck-$outtype.log" 2>&1 || { cat "$WORK/$ck-$outtype.log"; exit 1; }
  python3 scripts/convert_golden.py "$WORK/$ck-$outtype.gguf" > "$OUT/$ck-$outtype.txt"
  echo "$OUT/$ck-$outtype.txt: $(head -1 "$OUT/$ck-$outtype.txt")"
done <<'CASES'
tiny-llama-sharded-v0.1 f16
tiny-llama-sharded-v0.1 bf16
tiny-llama-sharded-v0.1 f32
Llama-3.1-Minitron-4B-Width-Base auto
tied-embd-chat f16
tied-embd-chat bf16
CASES
{
  echo "llama.cpp: $(git -C "$LLAMA" rev-parse HEAD 2>/dev/null || echo unknown)"
  "$VENV/bin/python" -c 'import torch, transformers, numpy; print("torch", torch.__version__, "transformers", transformers.__version__, "numpy", numpy.__version__, "cpu", torch.backends.cpu.get_cpu_capability())'
} > "$OUT/reference.txt"
