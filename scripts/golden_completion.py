#!/usr/bin/env python3
"""Greedy continuations from llama.cpp, the reference our binaries must reproduce.

Runs `llama-completion --temp 0` on every prompt of tests/golden/prompts.json for one
GGUF and writes tests/golden/<tier>/<label>.json (scripts/reftier.py): {"model": file name, "n_predict": N,
"cases": [{"prompt": ..., "continuation": ...}]}. llama-completion ends its output with
"\n\n", which is not part of the continuation and is removed.

Usage: scripts/golden_completion.py MODEL.gguf LABEL [N_PREDICT] [--tier avx512|avx2]
  (llama.cpp tools from ../shared/scripts/llama-ref.sh, or LLAMA_BIN=dir)
"""
import json
import pathlib
import subprocess
import sys

from reftier import golden_dir, llama_bin, take_tier

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    tier = take_tier(sys.argv)
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
    (golden_dir(tier) / f"{label}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
