#!/usr/bin/env bash
# Encoding speed of the Llama 3 vocabulary on 1 MB of text: mcc's tokenizer against
# llama.cpp's llama-tokenize on the same file, and the two id lists compared.
# The text is tests/data/tokenizer_cases.txt repeated to 1 MB.
# llama-tokenize's time is its wall time minus that of the same command on a 1-byte file
# (vocabulary load and process start), best of 3.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LLAMA="${MCC_LLAMA_SRC:-$HOME/.cache/mcc/llama.cpp}"
VOCAB="$LLAMA/models/ggml-vocab-llama-bpe.gguf"
TOOL="$LLAMA/build/bin/llama-tokenize"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

python3 - "$ROOT/tests/data/tokenizer_cases.txt" "$WORK/text.txt" <<'PY'
import sys
src = open(sys.argv[1], encoding="utf-8").read()
out, size = [], 0
while size < 1_000_000:
    out.append(src)
    size += len(src.encode())
text = "".join(out)
cut = text.encode()[:1_000_000].decode("utf-8", "ignore")
open(sys.argv[2], "w", encoding="utf-8").write(cut)
PY
printf 'x' > "$WORK/one.txt"

best() { # best wall seconds of 3 runs of "$@"
    local b=999
    for _ in 1 2 3; do
        local s e
        s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N)
        b=$(python3 -c "print(min($b, $e - $s))")
    done
    echo "$b"
}
full=$(best "$TOOL" -m "$VOCAB" -f "$WORK/text.txt" --ids --no-escape --log-disable)
base=$(best "$TOOL" -m "$VOCAB" -f "$WORK/one.txt" --ids --no-escape --log-disable)
"$TOOL" -m "$VOCAB" -f "$WORK/text.txt" --ids --no-escape --log-disable > "$WORK/ids.txt"
bytes=$(stat -c %s "$WORK/text.txt")
python3 -c "t = $full - $base; print(f'llama-tokenize: {$bytes} bytes in {t*1e3:.1f} ms (wall {$full:.3f} s - load {$base:.3f} s): {$bytes/t/1e6:.2f} MB/s')"

cd "$ROOT"
MCC_TOKENIZER_BENCH_TEXT="$WORK/text.txt" MCC_TOKENIZER_BENCH_IDS="$WORK/ids.txt" \
    cargo test --release -q -p mcc-e2e --test tokenizer_vectors llama3_encode_speed -- --ignored --nocapture 2>&1 \
    | grep -E "mcc encode|panicked|differ|test result"
