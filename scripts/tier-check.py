#!/usr/bin/env python3
"""One binary, built once, on every kernel tier this machine runs, against llama.cpp.

Builds MODEL once with mcc's default build (every kernel tier), then:
  1. for each SIMD tier the CPU runs, the binary forced to it (MCC_CPU) continues the
     prompts of tests/golden/prompts.json greedily, and llama.cpp built for that tier
     (scripts/reftier.py) does the same: the texts must be equal;
  2. the scalar tier against the AVX2 tier of the same binary over a teacher-forced
     prompt of 256+ tokens: the largest logit difference, and where top-1 differs, the
     AVX2 tier's top-2 gap there. Pass: every difference within 2R and every flip at a
     gap within 2G, R and G being llama.cpp's own AVX-512-vs-AVX2 spread on SmolLM2 Q4_1
     (tests/e2e_tiers.rs derives them from the committed goldens; given here with
     --spread R,G, default 1.126,0.244).

Usage: scripts/tier-check.py MODEL.gguf [--n-predict N] [--prompts K] [--spread R,G]
  (mcc from target/release/mcc; llama.cpp from ../shared/scripts/llama-ref.sh per tier)
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

import reftier

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("MCC_CACHE", pathlib.Path.home() / ".cache/mcc"))
WORK = CACHE / "tier-check"


def run(cmd, env=None):
    return subprocess.run(cmd, check=True, capture_output=True, env=env).stdout


def mcc_text(exe, tier, prompt, n):
    env = dict(os.environ, MCC_CPU=tier)
    return run([str(exe), "-p", prompt, "-n", str(n), "--temp", "0", "-t", "2"], env).decode()


def llama_text(tier, model, prompt, n):
    bin_dir = reftier.tier_bin(tier)
    out = run([f"{bin_dir}/llama-completion", "-m", str(model), "-p", prompt, "-n", str(n),
               "--temp", "0", "-no-cnv", "--no-display-prompt", "--simple-io", "-t", "2",
               "--no-warmup"]).decode()
    # llama-completion ends its output with "\n\n", after " [end of text]\n" when the
    # model chose end of text; neither is part of the continuation
    out = out[:-2] if out.endswith("\n\n") else out
    return out.removesuffix(" [end of text]\n")


def logits(exe, tier, prompt_file):
    out = WORK / f"{exe.name}-{tier}.bin"
    run([str(exe), "logits", "-f", str(prompt_file), "-o", str(out), "-t", "2"],
        dict(os.environ, MCC_CPU=tier))
    b = out.read_bytes()
    n, v = np.frombuffer(b[:8], np.uint32)
    return np.frombuffer(b[8 + 4 * n:], np.float32).reshape(n, v)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=pathlib.Path)
    ap.add_argument("--n-predict", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--spread", default="1.126,0.244")
    args = ap.parse_args()
    r, g = map(float, args.spread.split(","))
    WORK.mkdir(parents=True, exist_ok=True)
    exe = WORK / args.model.stem.replace(".", "-").lower()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "mcc"], cwd=ROOT, check=True)
    run([str(ROOT / "target/release/mcc"), "build", str(args.model), "-o", str(exe)])
    tiers = ["avx512", "avx2"] if reftier.best_tier() == "avx512" else ["avx2"]
    prompts = json.loads((ROOT / "tests/golden/prompts.json").read_text())[:args.prompts]
    ok = True
    for tier in tiers:
        same = 0
        for p in prompts:
            ours = mcc_text(exe, tier, p, args.n_predict)
            theirs = llama_text(tier, args.model, p, args.n_predict)
            same += ours == theirs
            if ours != theirs:
                print(f"  {tier}: {p[:30]!r}\n    llama.cpp {theirs!r}\n    mcc       {ours!r}")
        print(f"{args.model.name}: {tier} tier greedy text = llama.cpp {tier} build on "
              f"{same}/{len(prompts)} prompts x {args.n_predict} tokens")
        ok &= same == len(prompts)
    text = (CACHE / "data/ppl-text.txt").read_text(encoding="utf-8")
    prompt_file = WORK / "prompt-256.txt"
    prompt_file.write_text(text[30000:31400], encoding="utf-8")
    a, s = logits(exe, "avx2", prompt_file), logits(exe, "scalar", prompt_file)
    diff = np.abs(a.astype(np.float64) - s).max(axis=1)
    top_a, top_s = a.argmax(1), s.argmax(1)
    srt = np.sort(a, axis=1)
    gap = srt[:, -1] - srt[:, -2]
    flips = np.nonzero(top_a != top_s)[0]
    worst_gap = float(gap[flips].max()) if len(flips) else 0.0
    print(f"{args.model.name}: scalar vs avx2 over {len(a)} teacher-forced tokens: max abs "
          f"logit diff {diff.max():.3f} (limit 2R = {2 * r:.3f}), top-1 differs at "
          f"{len(flips)} positions, at avx2 top-2 gaps up to {worst_gap:.3f} "
          f"(limit 2G = {2 * g:.3f})")
    ok &= diff.max() <= 2 * r and worst_gap <= 2 * g
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
