#!/usr/bin/env python3
"""Golden numbers from llama.cpp for the forward-pass fidelity checks, next to ours.

Modes, each writing JSON under tests/golden/<tier>/ppl/ (scripts/reftier.py: every mode
takes --tier avx512|avx2, default this machine's best tier):

  ppl-golden.py ppl [--ctx 512 2048] [--chunks-512 K] [--chunks-2048 K] [--types T ...]
      Perplexity of the SmolLM2-135M quant ladder ($MCC_CACHE/models/ladder/, made by
      scripts/make-models.sh) over $MCC_CACHE/data/ppl-text.txt (scripts/make-ppl-text.py):
      llama-perplexity on each file, and ours through `mcc ppl-table --format csv` (which
      compiles every file), at each -c. Writes smollm2-ladder.json (both engines' PPL and
      error, the relative difference) and prints Markdown tables for docs/perplexity.md.
      Without --chunks-N the whole text is scored.

  ppl-golden.py logits
      llama.cpp's logits (scripts/llama_logits.cpp, libllama's default context: f16 KV
      cache, flash attention auto, 512-token micro-batches) for SmolLM2-135M Q4_1 on
      prompts cut from the perplexity text: 58, ~180, 569, 919 and 3877 tokens, which cover
      the one-row attention kernel (< 64 tokens), the tiled prompt kernel, a short last
      micro-batch, and a long context. Stores per position only the top-3 ids and logits
      and the log-sum-exp, to 1e-4 (a full row is 49152 floats): every position of
      prompts under 256 tokens, every 4th (and the last 4) up to 1024, every 16th (and
      the last 4) beyond. Writes logits-smollm2-q4_1.json.

  ppl-golden.py llama [same options as ppl]
      Only llama-perplexity's runs of `ppl`, into $MCC_CACHE/ppl-cache/ (which `ppl`
      reuses): the long llama.cpp side can run ahead, e.g. under `nice`, while ours is
      still being worked on. 100K-token runs: --chunks-512 196 --chunks-2048 49.

  ppl-golden.py ppl-ub3 [--chunks 2] [--types T ...]
      The same files at -c 512 with 3-token micro-batches on both sides (llama-perplexity
      -ub 3, our -b 3): llama.cpp then runs its row-by-row matmul and one-row attention
      for every type, so any difference left is ours. Writes smollm2-ladder-ub3.json.

  ppl-golden.py ppl-ci
      The cheap perplexity check the tests run: llama-perplexity on SmolLM2 Q4_1 at -c 512
      with --chunks 4. Writes ppl-ci.json.

llama.cpp tools come from ../shared/scripts/llama-ref.sh (or LLAMA_BIN=dir); mcc from
target/release/mcc (cargo build --release -p mcc). Threads: THREADS (default 2).
"""
import argparse
import hashlib
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np

from reftier import golden_dir, llama_bin, take_tier

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("MCC_CACHE", pathlib.Path.home() / ".cache/mcc"))
TIER = take_tier(sys.argv)
TEXT = CACHE / "data/ppl-text.txt"
LADDER = CACHE / "models/ladder"
STEM = "SmolLM2-135M-Instruct"
Q4_1 = CACHE / "models" / f"{STEM}.Q4_1.gguf"
TYPES = ["F16", "Q8_0", "Q6_K", "Q4_K_M", "Q4_1", "IQ4_XS", "Q3_K_M", "IQ2_XS", "IQ1_S"]
THREADS = os.environ.get("THREADS", "2")
FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def text_info():
    if not TEXT.is_file():
        subprocess.run([sys.executable, str(ROOT / "scripts/make-ppl-text.py")], check=True)
    data = TEXT.read_bytes()
    return {"file": "ppl-text.txt", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def llama_perplexity(model, ctx, chunks):
    """llama-perplexity's (PPL, error, seconds) on `model`, cached in $MCC_CACHE/ppl-cache
    by file, size, context, chunks, text and threads: long runs are made once (the
    `llama` step can make them ahead, in the background) and reused by `ppl`."""
    key = (f"{model.name}-{model.stat().st_size}-c{ctx}-k{chunks or 'all'}"
           f"-{text_info()['sha256'][:12]}-t{THREADS}-{TIER}")
    cached = CACHE / "ppl-cache" / f"{key}.json"
    if cached.is_file():
        r = json.loads(cached.read_text())
        return r["ppl"], r["err"], r["seconds"]
    cmd = [str(llama_bin() / "llama-perplexity"), "-m", str(model), "-f", str(TEXT),
           "-c", str(ctx), "-t", THREADS]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    text = out.stdout + out.stderr
    m = FINAL.search(text)
    if out.returncode != 0 or not m:
        sys.exit(f"llama-perplexity failed on {model}:\n{text[-3000:]}")
    ppl, err, secs = float(m.group(1)), float(m.group(2)), time.time() - t0
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(json.dumps({"ppl": ppl, "err": err, "seconds": secs, "cmd": cmd}) + "\n")
    return ppl, err, secs


def cmd_llama(args):
    """Only llama-perplexity's side of `ppl`, into the cache."""
    text_info()
    for ctx in args.ctx:
        chunks = getattr(args, f"chunks_{ctx}", None)
        for t in args.types:
            ppl, err, secs = llama_perplexity(LADDER / f"{STEM}.{t}.gguf", ctx, chunks)
            print(f"-c {ctx} {t}: llama.cpp {ppl:.4f} +/- {err:.4f} ({secs:.0f} s)", file=sys.stderr)


def mcc_table(models, ctx, chunks):
    mcc = ROOT / "target/release/mcc"
    cmd = [str(mcc), "ppl-table", *map(str, models), "-f", str(TEXT), "-c", str(ctx),
           "-t", THREADS, "--format", "csv"]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    t0 = time.time()
    out = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if out.returncode != 0:
        sys.exit(f"mcc ppl-table failed (exit {out.returncode})")
    lines = out.stdout.strip().splitlines()
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:]]
    return rows, time.time() - t0


def cmd_ppl(args):
    info = text_info()
    models = [LADDER / f"{STEM}.{t}.gguf" for t in args.types]
    missing = [m for m in models if not m.is_file()]
    if missing:
        sys.exit("missing (run scripts/make-models.sh): " + ", ".join(map(str, missing)))
    path = OUT / args.out
    golden = json.loads(path.read_text()) if path.is_file() else {}
    golden.update({"text": info, "model": STEM, "threads": int(THREADS)})
    runs = {r["ctx"]: r for r in golden.get("runs", [])}
    for ctx in args.ctx:
        chunks = getattr(args, f"chunks_{ctx}", None)
        ours, ours_s = mcc_table(models, ctx, chunks)
        by_quant = {r["Quant"]: r for r in ours}
        rows = []
        llama_s = 0.0
        for t, m in zip(args.types, models):
            ppl, err, secs = llama_perplexity(m, ctx, chunks)
            llama_s += secs
            o = by_quant[t]
            mine = float(o["PPL"])
            rows.append({
                "quant": t, "file": m.name, "bytes": m.stat().st_size,
                "llama_cpp": {"ppl": ppl, "err": err},
                "mcc": {"ppl": mine, "err": float(o["PPL error rate"])},
                "rel_diff": (mine - ppl) / ppl,
            })
            print(f"-c {ctx} {t}: llama.cpp {ppl:.4f} mcc {mine:.4f}", file=sys.stderr)
        # rows of other types from an earlier run with the same chunks stay
        kept = [r for r in runs.get(ctx, {}).get("rows", [])
                if runs[ctx].get("chunks") == chunks and r["quant"] not in args.types]
        runs[ctx] = {"ctx": ctx, "chunks": chunks, "tokens_scored_per_chunk": ctx // 2,
                     "seconds": {"mcc_incl_builds": round(ours_s), "llama_cpp": round(llama_s)},
                     "rows": kept + rows}
        golden["runs"] = [runs[c] for c in sorted(runs)]
        OUT.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(golden, indent=1) + "\n")
        print(markdown(runs[ctx]))
    print(f"wrote {path}", file=sys.stderr)


def markdown(run):
    rows = sorted(run["rows"], key=lambda r: r["bytes"])
    base = next((r for r in rows if r["quant"] == "F16"), None)
    out = [f"-c {run['ctx']}, {run['chunks'] or 'all'} chunks",
           "", "| Quant | Size (MB) | PPL (mcc) | PPL (llama.cpp) | Δ | Size (%) | Accuracy (%) | PPL error rate |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        size = r["bytes"] / 2**20
        pct = f"{100 * r['bytes'] / base['bytes']:.2f}" if base else ""
        acc = f"{100 * base['mcc']['ppl'] / r['mcc']['ppl']:.2f}" if base else ""
        out.append(f"| {r['quant']} | {size:.1f} | {r['mcc']['ppl']:.4f} | {r['llama_cpp']['ppl']:.4f} | "
                   f"{100 * r['rel_diff']:+.3f}% | {pct} | {acc} | {r['mcc']['err']:.4f} |")
    return "\n".join(out) + "\n"


def cmd_ppl_small_batches(args):
    """Both engines with micro-batches of 3 tokens, where llama.cpp multiplies every
    weight type row by row (vec_dot) and attends with its one-row kernel: separates
    differences of the forward pass from llama.cpp's batched (4+ row) matmul kernels."""
    info = text_info()
    rows = []
    for t in args.types:
        m = LADDER / f"{STEM}.{t}.gguf"
        exe = CACHE / "ppl-table" / f"ppl-{STEM}.{t}"
        if not exe.is_file():
            sys.exit(f"{exe} missing: run `ppl-golden.py ppl` first (mcc ppl-table builds it)")
        cmd = [str(llama_bin() / "llama-perplexity"), "-m", str(m), "-f", str(TEXT), "-c", "512",
               "-b", "512", "-ub", "3", "--chunks", str(args.chunks), "-t", THREADS]
        out = subprocess.run(cmd, capture_output=True, text=True)
        ref = FINAL.search(out.stdout + out.stderr)
        out = subprocess.run([str(exe), "perplexity", "-f", str(TEXT), "-c", "512", "-b", "3",
                              "--chunks", str(args.chunks), "-t", THREADS], capture_output=True, text=True)
        ours = FINAL.search(out.stdout)
        if not (ref and ours):
            sys.exit(f"{t}: a run failed")
        rows.append({"quant": t, "llama_cpp": float(ref.group(1)), "mcc": float(ours.group(1))})
        print(f"{t}: llama.cpp -ub 3 {ref.group(1)} mcc -b 3 {ours.group(1)}", file=sys.stderr)
    data = {"text": info, "ctx": 512, "chunks": args.chunks, "micro_batch": 3, "rows": rows}
    (OUT / "smollm2-ladder-ub3.json").write_text(json.dumps(data, indent=1) + "\n")


def cmd_ppl_ci(_args):
    info = text_info()
    ppl, err, _ = llama_perplexity(Q4_1, 512, 4)
    data = {"text": info, "model": Q4_1.name, "ctx": 512, "chunks": 4,
            "llama_cpp": {"ppl": ppl, "err": err}}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ppl-ci.json").write_text(json.dumps(data, indent=1) + "\n")
    print(data)


def prompts():
    """Prompts cut from the perplexity text at fixed byte offsets: (label, text)."""
    text = TEXT.read_text(encoding="utf-8")
    spans = [("short", 280), ("tiled", 850), ("short-tail", 2600), ("two-batches", 4300),
             ("long", 17500)]
    return [(label, text[10000:10000 + n]) for label, n in spans]


def load_logits(path):
    b = path.read_bytes()
    n, v = np.frombuffer(b[:8], np.uint32)
    ids = np.frombuffer(b[8:8 + 4 * n], np.uint32)
    return ids, np.frombuffer(b[8 + 4 * n:], np.float32).reshape(n, v)


def cmd_logits(args):
    tool = subprocess.run(["bash", str(ROOT / "scripts/build-llama-logits.sh")], check=True,
                          capture_output=True, text=True).stdout.strip()
    cases = []
    for label, prompt in prompts():
        p = CACHE / f"test-builds/golden-prompt-{label}-{TIER}.txt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(prompt, encoding="utf-8")
        out = p.with_suffix(".bin")
        if not (args.reuse and out.is_file()):
            subprocess.run([tool, str(Q4_1), str(p), "4096", THREADS, str(out)], check=True)
        ids, logits = load_logits(out)
        n = len(ids)
        # Every position of short prompts; a stride (and the last 4) for longer ones.
        stride = 1 if n < 256 else 4 if n <= 1024 else 16
        positions = sorted(set(range(0, n, stride)) | set(range(max(n - 4, 0), n)))
        rows = []
        for i in positions:
            row = logits[i].astype(np.float64)
            top = np.argsort(-row, kind="stable")[:args.top_k]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            rows.append({"pos": i, "ids": [int(t) for t in top],
                         "logits": [round(float(row[t]), 4) for t in top], "lse": round(lse, 4)})
        cases.append({"label": label, "prompt": prompt, "n_tokens": n,
                      "ids": [int(t) for t in ids], "rows": rows})
        print(f"{label}: {n} tokens, {len(rows)} rows", file=sys.stderr)
    data = {"model": Q4_1.name, "tool": "scripts/llama_logits.cpp, n_ctx 4096",
            "top_k": args.top_k, "cases": cases}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "logits-smollm2-q4_1.json").write_text(json.dumps(data, separators=(",", ":")) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("ppl")
    p.add_argument("--out", default="smollm2-ladder.json",
                   help="file under tests/golden/ppl (100K-token runs: smollm2-ladder-100k.json)")
    p.add_argument("--ctx", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--chunks-512", type=int, dest="chunks_512")
    p.add_argument("--chunks-2048", type=int, dest="chunks_2048")
    p.add_argument("--types", nargs="+", default=TYPES)
    p.set_defaults(func=cmd_ppl)
    p = sub.add_parser("llama")
    p.add_argument("--ctx", type=int, nargs="+", default=[512, 2048])
    p.add_argument("--chunks-512", type=int, dest="chunks_512")
    p.add_argument("--chunks-2048", type=int, dest="chunks_2048")
    p.add_argument("--types", nargs="+", default=TYPES)
    p.set_defaults(func=cmd_llama)
    p = sub.add_parser("ppl-ub3")
    p.add_argument("--chunks", type=int, default=2)
    p.add_argument("--types", nargs="+", default=TYPES)
    p.set_defaults(func=cmd_ppl_small_batches)
    p = sub.add_parser("ppl-ci")
    p.set_defaults(func=cmd_ppl_ci)
    p = sub.add_parser("logits")
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--reuse", action="store_true", help="reuse llama_logits outputs already in $MCC_CACHE/test-builds")
    p.set_defaults(func=cmd_logits)
    args = ap.parse_args()
    global OUT
    OUT = golden_dir(TIER, "ppl")
    args.func(args)


if __name__ == "__main__":
    main()
