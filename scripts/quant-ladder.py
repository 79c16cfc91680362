#!/usr/bin/env python3
"""The quantization ladder: SmolLM2-135M-Instruct in all 28 file types of the seed table
(scripts/make-models.sh makes them), each compiled by mcc and checked against llama.cpp.

Steps (each takes an optional list of types; the default is all 28):

  goldens  llama-completion --temp 0, 3 prompts x 32 tokens, into
           tests/golden/<tier>/ladder/<TYPE>.json. Each case also records, for every generated
           token, its byte end in the continuation and llama.cpp's own gap between its
           two largest logits where it chose that token (from llama_logits over
           prompt + continuation), plus the gap for the token after the last one. A
           divergence at a token whose gap is under 1e-3 is a near-tie: any summation
           order may flip it, so it is not a bug. tests/e2e_quant_ladder.rs reads these.
  check    builds each file with mcc, runs it greedy on the golden prompts, and compares
           logits with llama_logits over prompt + golden continuation: the largest
           absolute difference at any position, and at the first token where our
           argmax leaves llama.cpp's text, llama.cpp's top-2 gap there. Results go to
           $MCC_CACHE/ladder-work/check.json.
  bench    decode speed at 2 threads: ours (generation of 128 tokens, eval rate from
           stderr, mean of 3 runs) and llama-bench tg128 (-r 3) on the same file, one
           after the other. Results go to $MCC_CACHE/ladder-work/bench.json.
  table    the Markdown table of docs/quant-ladder.md from check.json and bench.json.

Usage: scripts/quant-ladder.py STEP [TYPE...] [--tier avx512|avx2]
  (the kernel tier both engines run, scripts/reftier.py: default this machine's best)
  (llama.cpp tools from ../shared/scripts/llama-ref.sh or LLAMA_BIN=dir; mcc from
   target/release/mcc, built first with cargo build --release -p mcc)
"""
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import numpy as np

from reftier import golden_dir, llama_bin, take_tier

ROOT = pathlib.Path(__file__).resolve().parent.parent
CACHE = pathlib.Path(os.environ.get("MCC_CACHE", pathlib.Path.home() / ".cache/mcc"))
MODELS = CACHE / "models/ladder"
TIER = take_tier(sys.argv)
WORK = CACHE / "ladder-work" / TIER
BUILDS = CACHE / "ladder-builds"
STEM = "SmolLM2-135M-Instruct"
TYPES = ["IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "Q2_K_S", "Q2_K", "IQ3_XXS",
         "IQ3_XS", "Q3_K_S", "IQ3_S", "IQ3_M", "Q3_K_M", "Q3_K_L", "IQ4_XS", "Q4_0", "IQ4_NL",
         "Q4_K_S", "Q4_K_M", "Q4_1", "Q5_K_S", "Q5_0", "Q5_K_M", "Q5_1", "Q6_K", "Q8_0", "F16"]
# Three of tests/golden/prompts.json: plain prose, a story, and the chat template (special
# tokens in the prompt, end of turn as a possible stop).
PROMPT_INDICES = [0, 1, 3]
N_PREDICT = 32
NEAR_TIE = 1e-3
THREADS = "2"


def llama_logits_exe():
    out = subprocess.run(["bash", str(ROOT / "scripts/build-llama-logits.sh")], check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def model_path(t):
    return MODELS / f"{STEM}.{t}.gguf"


def read_logits(path):
    """(ids, logits[n_tokens, n_vocab]) from the u32 n, u32 vocab, ids, f32 format."""
    raw = pathlib.Path(path).read_bytes()
    n, vocab = np.frombuffer(raw[:8], dtype="<u4")
    ids = np.frombuffer(raw[8:8 + 4 * n], dtype="<u4")
    logits = np.frombuffer(raw[8 + 4 * n:], dtype="<f4").reshape(n, vocab)
    return ids.astype(np.int64), logits


def top2(row):
    """(best id, gap between the two largest values)."""
    i = int(np.argmax(row))
    two = np.partition(row, -2)[-2:]
    return i, float(two[1] - two[0])


def llama_logits(exe, model, text, tag):
    WORK.mkdir(parents=True, exist_ok=True)
    src, out = WORK / f"{tag}.txt", WORK / f"{tag}.llama.bin"
    src.write_bytes(text.encode("utf-8"))
    subprocess.run([exe, str(model), str(src), "512", THREADS, str(out)], check=True)
    return read_logits(out)


def our_logits(binary, text, tag):
    src, out = WORK / f"{tag}.txt", WORK / f"{tag}.mcc.bin"
    src.write_bytes(text.encode("utf-8"))
    subprocess.run([str(binary), "logits", "-f", str(src), "-o", str(out), "-t", THREADS],
                   check=True, capture_output=True)
    return read_logits(out)


class Pieces:
    """Token id -> bytes for the model's byte-level BPE vocabulary (gpt2 family): each
    vocabulary string spells bytes through the printable map that GPT-2 defined (bytes
    that print as themselves keep their code point, the others start at U+0100)."""

    def __init__(self, model):
        import gguf
        reader = gguf.GGUFReader(str(model))
        field = reader.fields["tokenizer.ggml.tokens"]
        self.tokens = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        kinds = reader.fields["tokenizer.ggml.token_type"]
        self.kinds = [int(kinds.parts[i][0]) for i in kinds.data]
        printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        self.char_to_byte = {chr(b): b for b in printable}
        extra = 0
        for b in range(256):
            if b not in printable:
                self.char_to_byte[chr(0x100 + extra)] = b
                extra += 1

    def piece(self, token):
        if self.kinds[token] != 1:  # control and user-defined tokens print nothing / as is
            return b"" if self.kinds[token] == 3 else self.tokens[token].encode("utf-8")
        return bytes(self.char_to_byte[c] for c in self.tokens[token])


def greedy_logits_exe():
    """Builds scripts/llama_greedy_logits.cpp against llama.cpp's libraries, once."""
    bin_dir = llama_bin()
    src_dir = bin_dir.parent.parent
    src = ROOT / "scripts/llama_greedy_logits.cpp"
    exe = CACHE / f"bin/llama_greedy_logits-{TIER}"
    # the libraries it was linked against (its rpath): rebuilt when they moved
    lib_dir = CACHE / f"bin/llama_greedy_logits-{TIER}.lib-dir"
    stale = (not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime
             or not lib_dir.exists() or lib_dir.read_text() != str(bin_dir))
    if stale:
        exe.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["g++", "-O2", "-std=c++17", str(src), f"-I{src_dir}/include",
                        f"-I{src_dir}/ggml/include", f"-L{bin_dir}", f"-Wl,-rpath,{bin_dir}",
                        "-lllama", "-lggml", "-lggml-base", "-o", str(exe)], check=True)
        lib_dir.write_text(str(bin_dir))
    return exe


def goldens(types):
    """llama-completion's text, and from llama_greedy_logits (the same decoding through
    libllama) the token ids and the logits that chose each token."""
    exe = llama_bin() / "llama-completion"
    greedy = greedy_logits_exe()
    prompts = json.loads((ROOT / "tests/golden/prompts.json").read_text())
    WORK.mkdir(parents=True, exist_ok=True)
    for t in types:
        model = model_path(t)
        pieces = Pieces(model)
        cases = []
        for k in PROMPT_INDICES:
            prompt = prompts[k]
            out = subprocess.run(
                [str(exe), "-m", str(model), "-p", prompt, "-n", str(N_PREDICT), "--temp", "0",
                 "-no-cnv", "--no-display-prompt", "--simple-io", "-t", THREADS, "--no-warmup"],
                check=True, capture_output=True).stdout
            # llama-completion ends its output with "\n\n", after " [end of text]\n" when the
            # model chose end of text; neither is part of the continuation.
            assert out.endswith(b"\n\n"), (t, out[-20:])
            out = out[:-2]
            eot = out.endswith(b" [end of text]\n")
            want = out.removesuffix(b" [end of text]\n")
            cont = want.decode("utf-8")

            src, dump = WORK / f"golden-{t}.txt", WORK / f"golden-{t}.greedy.bin"
            src.write_bytes(prompt.encode("utf-8"))
            n_p = int(subprocess.run([str(greedy), str(model), str(src), str(N_PREDICT), THREADS,
                                      str(dump)], check=True, capture_output=True, text=True).stdout)
            ids, rows = read_logits(dump)
            gen = [int(i) for i in ids[n_p:]]
            spelled = b"".join(pieces.piece(i) for i in gen)
            if spelled != want:
                raise SystemExit(f"{t} {prompt[:20]!r}: libllama's greedy decoding spells "
                                 f"{spelled[:60]!r}, llama-completion wrote {want[:60]!r}")
            if eot != (len(gen) < N_PREDICT):
                raise SystemExit(f"{t}: {len(gen)} tokens but end of text {eot}")
            ends, at = [], 0
            for i in gen:
                at += len(pieces.piece(i))
                ends.append(at)
            # gaps[j]: where token j was chosen; the last: the choice after the last token.
            gaps = [top2(rows[n_p - 1 + j])[1] for j in range(len(gen) + 1)]
            cases.append({"prompt": prompt, "continuation": cont, "ids": gen, "ends": ends,
                          "gaps": [float(f"{g:.6g}") for g in gaps]})
            print(f"{t:8} {prompt[:24]!r:28} {len(gen):2} tokens, smallest gap "
                  f"{min(gaps):.3g}: {cont[:40]!r}", file=sys.stderr)
        golden = {"model": model.name, "type": t, "n_predict": N_PREDICT,
                  "near_tie": NEAR_TIE, "cases": cases}
        (GOLDEN / f"{t}.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")


def build(t):
    name = f"smollm2-{t.lower()}"
    exe = BUILDS / name
    BUILDS.mkdir(parents=True, exist_ok=True)
    subprocess.run([str(ROOT / "target/release/mcc"), "build", str(model_path(t)), "-o", str(exe),
                    "--generated-dir", str(BUILDS / "generated")], check=True, capture_output=True)
    return exe


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def source_commit():
    """The commit mcc was built from, with "+dirty" when the runtime, compiler or templates
    differ from it in the working tree."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "runtime",
                            "compiler", "templates"], check=True, capture_output=True,
                           text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")


def check(types):
    logits_exe = llama_logits_exe()
    greedy = greedy_logits_exe()
    path = WORK / "check.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for t in types:
        golden = json.loads((GOLDEN / f"{t}.json").read_text())
        exe = build(t)
        model = model_path(t)
        verdicts, batch_diff, decode_diff = [], 0.0, 0.0
        for c in golden["cases"]:
            out = subprocess.run([str(exe), "-p", c["prompt"], "-n", str(golden["n_predict"]),
                                  "--temp", "0", "-t", THREADS], check=True, capture_output=True)
            want, got = c["continuation"].encode("utf-8"), out.stdout
            full = c["prompt"] + c["continuation"]
            # Whole text in one batch on both sides (prefill kernels)...
            ids_ref, ref = llama_logits(logits_exe, model, full, f"check-{t}")
            ids_our, our = our_logits(exe, full, f"check-{t}")
            if list(ids_ref) != list(ids_our):
                raise SystemExit(f"{t}: token ids differ between llama_logits and ours")
            batch_diff = max(batch_diff, float(np.max(np.abs(ref - our))))
            # ...and one token per forward pass on both sides (decode kernels).
            subprocess.run([str(greedy), str(model), str(WORK / f"check-{t}.txt"), "0", THREADS,
                            str(WORK / f"check-{t}.llama1.bin"), "1"], check=True, capture_output=True)
            _, ref1 = read_logits(WORK / f"check-{t}.llama1.bin")
            subprocess.run([str(exe), "logits", "-f", str(WORK / f"check-{t}.txt"), "-o",
                            str(WORK / f"check-{t}.mcc1.bin"), "-t", THREADS, "-b", "1"],
                           check=True, capture_output=True)
            _, our1 = read_logits(WORK / f"check-{t}.mcc1.bin")
            diff1 = float(np.max(np.abs(ref1 - our1)))
            decode_diff = max(decode_diff, diff1)
            if got == want:
                verdicts.append({"match": "identical"})
                continue
            at = common_prefix(got, want)
            k = next((j for j, e in enumerate(c["ends"]) if e > at), len(c["ends"]))
            pos = len(ids_ref) - len(c["ids"]) - 1 + k
            ref_best, ref_gap = top2(ref1[pos])
            second = int(np.argsort(ref1[pos])[-2])
            our_best, our_gap = top2(our1[pos])
            near = c["gaps"][k] < NEAR_TIE
            verdicts.append({"match": "near-tie" if near else "mismatch", "token": k,
                             "golden_gap": c["gaps"][k], "llama_decode_gap": ref_gap,
                             "llama_top2": [ref_best, second], "our_top1": our_best,
                             "our_gap": our_gap,
                             "diff_here": float(np.max(np.abs(ref1[pos] - our1[pos]))),
                             "want": want[at:at + 24].decode("utf-8", "replace"),
                             "got": got[at:at + 24].decode("utf-8", "replace")})
        results[t] = {"size_mb": model.stat().st_size / 1e6, "batch_diff": batch_diff,
                      "decode_diff": decode_diff, "cases": verdicts, "commit": source_commit()}
        short = ", ".join(v["match"] if v["match"] == "identical" else
                          f"{v['match']} at token {v['token']} (gap {v['golden_gap']:.2g})"
                          for v in verdicts)
        print(f"{t:8} max|dlogit| batch {batch_diff:.3g} decode {decode_diff:.3g}  {short}",
              file=sys.stderr)
        path.write_text(json.dumps(results, indent=1))


def bench(types):
    bench_exe = llama_bin() / "llama-bench"
    results = json.loads((WORK / "bench.json").read_text()) if (WORK / "bench.json").exists() else {}
    for t in types:
        exe = BUILDS / f"smollm2-{t.lower()}"
        if not exe.exists():
            exe = build(t)
        ours, runs = [], []
        for _ in range(3):
            err = subprocess.run([str(exe), "-p", "Once upon a time", "-n", "128", "--temp", "0",
                                  "-t", THREADS], check=True, capture_output=True).stderr.decode()
            m = re.search(r"^eval time .*/\s*(\d+) runs .*?([\d.]+) tokens per second\)", err, re.M)
            runs.append(int(m.group(1)))
            ours.append(float(m.group(2)))
        out = subprocess.run([str(bench_exe), "-m", str(model_path(t)), "-p", "0", "-n", "128",
                              "-t", THREADS, "-r", "3", "-o", "json"], check=True, capture_output=True)
        ref = json.loads(out.stdout)[0]
        results[t] = {"ours_tg": statistics.mean(ours), "ours_runs": min(runs),
                      "llama_tg": ref["avg_ts"], "llama_sd": ref["stddev_ts"]}
        print(f"{t:8} ours {results[t]['ours_tg']:7.1f} tok/s ({min(runs)} tokens)  "
              f"llama-bench {ref['avg_ts']:7.1f} ± {ref['stddev_ts']:.1f}", file=sys.stderr)
        (WORK / "bench.json").write_text(json.dumps(results, indent=1))


def table(types):
    check_r = json.loads((WORK / "check.json").read_text())
    bench_r = json.loads((WORK / "bench.json").read_text()) if (WORK / "bench.json").exists() else {}
    # Speed columns only when bench.json has figures for some of these types.
    speeds = any(t in bench_r for t in types)
    head = "| type | file MB | greedy text vs llama.cpp (3 prompts x 32 tokens) | max abs logit diff, batch / decode |"
    rule = "|---|---:|---|---:|"
    if speeds:
        head += " ours tg t/s (2 thr) | llama-bench tg t/s (2 thr) | ratio |"
        rule += "---:|---:|---:|"
    print(head)
    print(rule)
    commits = sorted({check_r[t].get("commit", "?") for t in types if t in check_r})
    for t in types:
        if t not in check_r:
            continue
        c = check_r[t]
        parts = []
        for i, v in enumerate(c["cases"]):
            if v["match"] == "identical":
                continue
            parts.append(f"prompt {i + 1}: {v['match']} at token {v['token']}, llama top-2 gap "
                         f"{v['golden_gap']:.2g}")
        match = "identical" if not parts else "; ".join(parts)
        row = f"| {t} | {c['size_mb']:.1f} | {match} | {c['batch_diff']:.2g} / {c['decode_diff']:.2g} |"
        if speeds:
            b = bench_r.get(t)
            row += (f" {b['ours_tg']:.1f} | {b['llama_tg']:.1f} | {b['ours_tg'] / b['llama_tg']:.2f} |"
                    if b else " - | - | - |")
        print(row)
    print(f"\nmcc built from: {', '.join(commits)}")


def main():
    global GOLDEN
    GOLDEN = golden_dir(TIER, "ladder")
    step, types = sys.argv[1], sys.argv[2:] or TYPES
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise SystemExit(f"unknown types {unknown}; known: {' '.join(TYPES)}")
    {"goldens": goldens, "check": check, "bench": bench, "table": table}[step](types)


if __name__ == "__main__":
    main()
