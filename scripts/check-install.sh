#!/usr/bin/env bash
# `cargo install` works: installs mcc from a copy of this checkout into a temporary root,
# moves the copy away, and builds SmolLM2 with the installed mcc from another directory.
# Its output must equal the output of the in-tree mcc's build of the same model.
# Run by scripts/test-full.sh; about 4 minutes on 2 cores (mcc's release build).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
model="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$model" ] || bash scripts/fetch-models.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/mcc-install.XXXXXX")
trap 'rm -rf "$work"' EXIT
git ls-files -z | tar --null -T - -cf - | (mkdir "$work/checkout" && tar -xf - -C "$work/checkout")
cargo install --quiet --locked --path "$work/checkout/compiler" --root "$work/root" \
  --target-dir "$CACHE/install-target"
mv "$work/checkout" "$work/moved-away"
mkdir "$work/elsewhere"
args=(-p "The capital of France is" -n 32 --temp 0 -t 2)
( cd "$work/elsewhere" && "$work/root/bin/mcc" build "$model" -o smollm2 )
installed=$("$work/elsewhere/smollm2" "${args[@]}" 2>/dev/null)
cargo build --quiet --release -p mcc
target/release/mcc build "$model" -o "$work/in-tree" --generated-dir "$work/generated"
in_tree=$("$work/in-tree" "${args[@]}" 2>/dev/null)
if [ "$installed" != "$in_tree" ]; then
  printf 'installed mcc: %q\nin-tree mcc:   %q\n' "$installed" "$in_tree" >&2
  echo "check-install: the installed mcc's binary differs from the in-tree one's" >&2
  exit 1
fi
echo "check-install: the installed mcc (checkout moved away) built SmolLM2; output equals the in-tree build's:"
echo "$installed"
