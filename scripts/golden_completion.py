#!/usr/bin/env python3
"""Greedy continuations from llama.cpp, the reference our binaries must reproduce.

Runs `llama-completion --temp 0` on every prompt of tests/golden/prompts.json for one
GGUF and writes tests/golden/<label>.json: {"model": file name, "n_predict": N,
"cases": [{"prompt": ..., "continuation": ...}]}. llama-completion ends its output with
"\n\n", which is not part of the continuation and is removed.

Usage: scripts/golden_completion.py MODEL.gguf LABEL [N_PREDICT]
  (llama.cpp tools from ../shared/scripts/llama-ref.sh, or LLAMA_BIN=dir)
"""
import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def llama_bin():
    if os.environ.get("LLAMA_BIN"):
        return pathlib.Path(os.environ["LLAMA_BIN"])
    ref = ROOT.parent / "shared/scripts/llama-ref.sh"
    return pathlib.Path(subprocess.run(["bash", str(ref)], check=True, capture_output=True, text=True).stdout.strip())


def main():
    model, label = sys.argv[1], sys.argv[2]
    n_predict = int(sys.argv[3]) if len(sys.argv) > 3 else 64
    prompts = json.loads((ROOT / "tests/golden/prompts.json").read_text())
    exe = llama_bin() / "llama-completion"
    cases = []
    for prompt in prompts:
        out = subprocess.run(
            [str(exe), "-m", model, "-p", prompt, "-n", str(n_predict), "--temp", "0", "-no-cnv",
             "--no-display-prompt", "--simple-io", "-t", "2", "--no-warmup"],
            check=True, capture_output=True).stdout.decode("utf-8")
        assert out.endswith("\n\n"), repr(out[-20:])
        cases.append({"prompt": prompt, "continuation": out[:-2]})
        print(f"{prompt[:30]!r} -> {out[:-2][:60]!r}", file=sys.stderr)
    golden = {"model": pathlib.Path(model).name, "n_predict": n_predict, "cases": cases}
    (ROOT / f"tests/golden/{label}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
