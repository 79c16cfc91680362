#!/usr/bin/env bash
# The GPU path's checks on a machine with an NVIDIA GPU, in two halves:
#
#   scripts/gpu-device-check.sh prepare   # here (Rust, llama.cpp, gguf-py): builds target/gpu-check/
#   scripts/gpu-device-check.sh run       # on the GPU machine, with target/gpu-check/ carried
#
# The GPU machine of this project has CUDA, Python, CuPy and NumPy but no Rust toolchain
# and no network, and at most 64 MiB travel with the working tree. So `prepare` builds
# here everything that needs Rust or the models, small enough to travel:
#   - all_types.ptx: a matvec (y = Wx), a residual matvec (y += Wx) and an embedding
#     lookup for every quant type (22), with random weights, activations and float64
#     reference results from gguf-py's dequantization (kernels/);
#   - minitron.ptx: the kernels `mcc build --gpu` emits for the Minitron-shaped Q4_K_M
#     model (3072 wide, 32 layers, heads of 128, FFN 9216);
#   - three small models built with `mcc build --gpu` (random weights): tiny F32, tiny
#     Q4_1 (SmolLM2's weight type), and a 4-layer Q4_K_M with heads of 128, rope_freqs
#     and a tied output (bin/).
# `run` (under 8 minutes; every step has its own timeout) then prints:
#   1. per quant type: the kernels' largest error against the reference;
#   2. per model: GPU logits against the CPU path of the same binary (--gpu-layers 0),
#      the split path (--gpu-layers 1) too, greedy text GPU vs CPU, and bench pp512/tg128;
#   3. the Minitron decode matrix chain (all 32 layers' 6 matrix kernels, gate and up
#      fused, and the output, as one CUDA graph over random weights of the real sizes):
#      time per token, GB/s and the fraction of the H200's 4.8 TB/s, the same for the
#      prefill matmuls, and per kernel.
# The full SmolLM2 (98 MB) and Minitron (2.7 GB) binaries cannot travel; 2 and 3 stand
# in for them (docs/gpu.md).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/gpu-check

prepare() {
    local cache="${MCC_CACHE:-$HOME/.cache/mcc}"
    local quantize="${LLAMA_QUANTIZE:-$cache/llama.cpp/build/bin/llama-quantize}"
    rm -rf "$OUT"
    mkdir -p "$OUT/bin" "$OUT/kernels" "$OUT/models"
    cargo build --release -q -p mcc
    local mcc=target/release/mcc
    MCC_PTX_OUT="$PWD/$OUT" cargo test -q -p mcc --test ptx -- every_supported_type_assembles minitron_q4_k_m
    python3 - "$OUT" <<'PY'
import json, sys, pathlib
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

out = pathlib.Path(sys.argv[1]) / "kernels"
rows, cols, token = 100, 512, 37
rng = np.random.default_rng(20261129)
x = rng.standard_normal(cols).astype(np.float32)
y0 = rng.standard_normal(96).astype(np.float32)
x.tofile(out / "x.f32")
y0.tofile(out / "y0.f32")
types = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
         "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
         "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"]
for name in types:
    t = T[name]
    elems, nbytes = gguf.GGML_QUANT_SIZES[t]
    if name in ("F32", "F16", "BF16"):
        w = (rng.standard_normal((rows, cols)) * 0.1).astype(np.float32)
        if name == "F32":
            raw = w.view(np.uint8)
        elif name == "F16":
            raw = w.astype(np.float16).view(np.uint8)
        else:
            raw = (w.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        raw = np.ascontiguousarray(raw).reshape(rows, -1)
    else:
        raw = rng.integers(0, 256, (rows, cols // elems * nbytes), dtype=np.uint8)
        # Random scales include infinities and huge values: zero those blocks.
        blocks = raw.reshape(rows, cols // elems, nbytes)
        deq = dequantize(raw, t).reshape(rows, cols // elems, elems)
        bad = ~np.isfinite(deq).all(axis=2) | (np.abs(np.nan_to_num(deq)) > 1e3).any(axis=2)
        blocks[bad] = 0
        raw = blocks.reshape(rows, -1)
    w = dequantize(raw, t).reshape(rows, cols).astype(np.float64)
    raw.tofile(out / f"{name}.w")
    (w[:96] @ x.astype(np.float64)).tofile(out / f"{name}.y")
    (np.abs(w[:96]) @ np.abs(x.astype(np.float64))).tofile(out / f"{name}.mag")
    w[token].astype(np.float32).tofile(out / f"{name}.e")
json.dump({"types": types, "rows": rows, "cols": cols, "token": token, "mv_rows": 96},
          open(out / "manifest.json", "w"))
print(f"kernels: {len(types)} types")
PY
    # Three small models (random weights) with the GPU path.
    "$mcc" synth -o "$OUT/models/tiny-f32.gguf" --name tiny-f32 >/dev/null
    "$mcc" synth -o "$OUT/models/tiny-f16.gguf" --type f16 --name tiny-q4_1 >/dev/null
    "$quantize" "$OUT/models/tiny-f16.gguf" "$OUT/models/tiny-q4_1.gguf" Q4_1 >/dev/null 2>&1
    "$mcc" synth -o "$OUT/models/mini-f16.gguf" --type f16 --name mini-q4_k_m \
        --n-embd 768 --n-layer 4 --n-head 6 --n-head-kv 2 --head-dim 128 --n-ff 2048 \
        --n-vocab 2048 --n-ctx 2048 --rope-scaling llama3 --tied >/dev/null
    "$quantize" "$OUT/models/mini-f16.gguf" "$OUT/models/mini-q4_k_m.gguf" Q4_K_M >/dev/null 2>&1
    for m in tiny-f32 tiny-q4_1 mini-q4_k_m; do
        # x86-64-v3: any AVX2 machine; ctx 1024 holds pp512 + tg128.
        "$mcc" build "$OUT/models/$m.gguf" --gpu --target-cpu x86-64-v3 --ctx 1024 \
            -o "$OUT/bin/$m" --generated-dir "$OUT/generated" >/dev/null
    done
    rm -rf "$OUT/models" "$OUT/generated"
    python3 -c "print(' '.join(['The quick brown fox jumps over the lazy dog.'] * 12))" >"$OUT/prompt.txt"
    du -sh "$OUT"
    echo "prepared $OUT: carry it (run: scripts/gpu-device-check.sh run)"
}

# Step 1: every quant type's kernels against gguf-py's dequantization.
check_kernels() {
    cat >"$TMP/kernels.py" <<'PY'
import json, sys, pathlib
import numpy as np
import cupy as cp

base = pathlib.Path(sys.argv[1])
k = base / "kernels"
m = json.load(open(k / "manifest.json"))
def load_module(path):
    # RawModule loads PTX files through cuModuleLoad; the lower-level Module is the
    # fallback (cuModuleLoadData on the NUL-terminated text).
    try:
        return cp.RawModule(path=str(path))
    except Exception as e:
        print(f"RawModule({path.name}) failed ({e}); loading with cupy.cuda.function.Module")
        m = cp.cuda.function.Module()
        m.load(path.read_bytes() + b"\0")
        return m

mod = load_module(base / "all_types.ptx")
x = cp.asarray(np.fromfile(k / "x.f32", np.float32))
y0 = np.fromfile(k / "y0.f32", np.float32)
params = cp.asarray(np.array([m["token"], 0, 0, 0], np.uint32))
n, fails = m["mv_rows"], 0
print(f"{'type':8} {'mv err':>10} {'mva err':>10} {'embed err':>10}")
for name in m["types"]:
    low = name.lower()
    w = cp.asarray(np.fromfile(k / f"{name}.w", np.uint8))
    want = np.fromfile(k / f"{name}.y", np.float64)
    mag = np.fromfile(k / f"{name}.mag", np.float64)
    y = cp.zeros(n, cp.float32)
    mod.get_function(f"mv_{low}")(((n + 3) // 4,), (128,), (w, x, y))
    err_mv = float(np.max(np.abs(cp.asnumpy(y) - want) / (mag + 1e-30)))
    y = cp.asarray(y0.copy())
    mod.get_function(f"mva_{low}")(((n + 3) // 4,), (128,), (w, x, y))
    err_mva = float(np.max(np.abs(cp.asnumpy(y) - (y0 + want)) / (mag + np.abs(y0) + 1e-30)))
    e = cp.zeros(m["cols"], cp.float32)
    mod.get_function(f"embed_{low}")((1,), (128,), (w, params, e))
    ref = np.fromfile(k / f"{name}.e", np.float32)
    err_e = float(np.max(np.abs(cp.asnumpy(e) - ref) / (np.abs(ref) + 1e-30)))
    ok = err_mv < 1e-5 and err_mva < 1e-5 and err_e < 1e-6
    fails += not ok
    print(f"{name:8} {err_mv:10.2e} {err_mva:10.2e} {err_e:10.2e} {'ok' if ok else 'FAIL'}")
print(f"kernels: {len(m['types']) - fails} of {len(m['types'])} types ok")
PY
    timeout 120 python3 "$TMP/kernels.py" "$OUT" || echo "kernel check failed or timed out"
}

# Step 2: the built binaries, GPU against the CPU path of the same binary.
compare_logits() {
    python3 - "$@" <<'PY'
import sys
import numpy as np

def load(path):
    raw = open(path, "rb").read()
    n, v = np.frombuffer(raw[:8], np.uint32)
    return np.frombuffer(raw[8 + 4 * n:], np.float32).reshape(n, v)

ref = load(sys.argv[1])
for path in sys.argv[2:]:
    got = load(path)
    scale = np.abs(ref).max(axis=1, keepdims=True)
    err = float(np.max(np.abs(got - ref) / scale))
    top1 = float(np.mean(got.argmax(1) == ref.argmax(1)))
    print(f"  {path.rsplit('/', 1)[-1]:>12}: max |logit diff| / max |logit| = {err:.2e}, top-1 agreement {top1:.1%} over {ref.shape[0]} positions")
PY
}

check_binaries() {
    local tmp="$TMP"
    for bin in "$OUT"/bin/*; do
        local m
        m="$(basename "$bin")"
        echo "== $m"
        if ! timeout 60 "$bin" info >/dev/null 2>"$tmp/err"; then
            echo "  cannot run here: $(head -c 300 "$tmp/err")"
            continue
        fi
        timeout 120 "$bin" logits -f "$OUT/prompt.txt" -o "$tmp/cpu.bin" --gpu-layers 0
        timeout 120 "$bin" logits -f "$OUT/prompt.txt" -o "$tmp/gpu.bin" 2>"$tmp/gpu.err" || true
        grep -h "^mcc:" "$tmp/gpu.err" | sed 's/^/  /' || true
        timeout 120 "$bin" logits -f "$OUT/prompt.txt" -o "$tmp/split.bin" --gpu-layers 1 2>/dev/null || true
        compare_logits "$tmp/cpu.bin" "$tmp/gpu.bin" "$tmp/split.bin" || true
        local prompt="Once upon a time"
        timeout 60 "$bin" -p "$prompt" -n 48 --temp 0 --gpu-layers 0 >"$tmp/cpu.txt" 2>/dev/null || true
        timeout 60 "$bin" -p "$prompt" -n 48 --temp 0 >"$tmp/gpu.txt" 2>/dev/null || true
        if cmp -s "$tmp/cpu.txt" "$tmp/gpu.txt"; then
            echo "  greedy 48 tokens: identical text on GPU and CPU"
        else
            echo "  greedy 48 tokens: texts differ (random weights have near-ties; see the logits above)"
        fi
        timeout 120 "$bin" bench -p 512 -n 128 -r 3 2>/dev/null | tail -2 | sed 's/^/  /' || true
    done
}

# Step 3: Minitron's decode matvecs as one CUDA graph over random weights.
bandwidth() {
    cat >"$TMP/bandwidth.py" <<'PY'
import re, sys, pathlib
import numpy as np
import cupy as cp

base = pathlib.Path(sys.argv[1])
ptx = (base / "minitron.ptx").read_text()
try:
    mod = cp.RawModule(path=str(base / "minitron.ptx"))
except Exception as e:
    print(f"RawModule(minitron.ptx) failed ({e}); loading with cupy.cuda.function.Module")
    mod = cp.cuda.function.Module()
    mod.load((base / "minitron.ptx").read_bytes() + b"\0")
bpb = {"q4_k": 144, "q6_k": 210}
n_layer, n_embd, q_dim, kv, n_ff = 32, 3072, 4096, 1024, 9216
def more_bits(i, n):  # llama.cpp's Q4_K_M rule for attn_v / ffn_down
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2
# (decode kernel, prefill kernel, weights as (type, rows, cols), input, output)
def mat(t, r, c, src, dst, acc=False):
    pre = "mva" if acc else "mv"
    return (f"{pre}_{t}_{r}x{c}", f"{pre.replace('mv', 'mm')}_{t}_{r}x{c}", [(t, r, c)], src, dst)
plan = []
for l in range(n_layer):
    v = "q6_k" if more_bits(l, n_layer) else "q4_k"
    plan += [mat("q4_k", q_dim, n_embd, "xn", "q"), mat("q4_k", kv, n_embd, "xn", "k"),
             mat(v, kv, n_embd, "xn", "v"), mat("q4_k", n_embd, q_dim, "att", "x", True),
             (f"mvg_q4_k_q4_k_{n_ff}x{n_embd}", f"mmg_q4_k_q4_k_{n_ff}x{n_embd}",
              [("q4_k", n_ff, n_embd), ("q4_k", n_ff, n_embd)], "xn", "gate"),
             mat(v, n_embd, n_ff, "gate", "x", True)]
out = re.findall(r"\.visible \.entry mv_q6_k_(\d+)x" + str(n_embd) + r"\(", ptx)
n_vocab = max(int(r) for r in out)  # rows of the output matrix
plan.append(mat("q6_k", n_vocab, n_embd, "xn", "logits"))
TILE = 8  # tokens per prefill matmul (runtime PREFILL_TILE)
acts = {a: cp.zeros(TILE * n, cp.float32) for a, n in
        [("x", n_embd), ("xn", n_embd), ("att", q_dim), ("q", q_dim), ("k", kv), ("v", kv),
         ("gate", n_ff), ("logits", n_vocab)]}
acts["xn"][:] = cp.random.standard_normal(TILE * n_embd, dtype=cp.float32)
launches, mm_launches, total = [], [], 0
for decode, prefill, ws, src, dst in plan:
    bufs, nbytes = [], 0
    for t, r, c in ws:
        n = r * (c // 256) * bpb[t]
        bufs.append(cp.random.randint(0, 256, n, dtype=cp.uint8))
        nbytes += n
    grid = (ws[0][1] + 3) // 4
    args = (*bufs, acts[src], acts[dst])
    launches.append((decode, mod.get_function(decode), grid, args, nbytes))
    mm_launches.append((prefill, mod.get_function(prefill), grid, args, nbytes))
    total += nbytes
stream = cp.cuda.Stream(non_blocking=True)
def graph_of(items, reps=1):
    with stream:
        stream.begin_capture()
        for _ in range(reps):
            for _, f, grid, args, _ in items:
                f((grid,), (128,), args)
        return stream.end_capture()
def timed(g, n):
    for _ in range(3):
        g.launch(stream)
    e0, e1 = cp.cuda.Event(), cp.cuda.Event()
    e0.record(stream)
    for _ in range(n):
        g.launch(stream)
    e1.record(stream)
    e1.synchronize()
    return cp.cuda.get_elapsed_time(e0, e1) / 1e3 / n
per_token = timed(graph_of(launches), 20)
gbs = total / per_token / 1e9
print(f"Minitron Q4_K_M decode matrices: {total / 2**30:.2f} GiB of weights, {len(launches)} kernels per token")
print(f"  {per_token * 1e3:.3f} ms per token = {1 / per_token:.1f} tok/s upper bound, {gbs:.0f} GB/s = {gbs / 4800:.1%} of 4.8 TB/s")
per_tile = timed(graph_of(mm_launches), 10)
print(f"  prefill matmuls ({TILE} tokens per weight pass): {per_tile * 1e3:.3f} ms per tile = {TILE / per_tile:.0f} tok/s upper bound")
for items in (launches, mm_launches):
    for name in dict.fromkeys(i[0] for i in items):
        item = next(i for i in items if i[0] == name)
        t = timed(graph_of([item], reps=20), 5) / 20
        print(f"  {name:30} {item[4] / 2**20:8.1f} MiB  {t * 1e6:8.1f} us  {item[4] / t / 1e9:6.0f} GB/s")
PY
    timeout 180 python3 "$TMP/bandwidth.py" "$OUT" || echo "bandwidth check failed or timed out"
}

run() {
    [[ -d "$OUT" ]] || { echo "no $OUT: run 'scripts/gpu-device-check.sh prepare' first and carry it" >&2; exit 1; }
    TMP="$(mktemp -d)"
    trap 'rm -rf "$TMP"' EXIT
    # Container runtimes mount the driver here; the binaries also look there themselves.
    export LD_LIBRARY_PATH="/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    nvidia-smi -L || true
    echo "## 1. kernels per quant type"
    check_kernels
    echo "## 2. models built with mcc build --gpu: GPU vs CPU of the same binary"
    check_binaries
    echo "## 3. Minitron Q4_K_M decode matvecs (random weights)"
    bandwidth
}

case "${1:-}" in
    prepare) prepare ;;
    run) run ;;
    *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
