#!/usr/bin/env python3
"""Golden dot products from llama.cpp's own CPU backend, for the i-quant formats.

For each IQ type, writes runtime/src/quant/golden_dot/<TYPE>.bin:
    u32 LE  n_blocks        weight blocks per row
    u32 LE  n_acts          activation rows
    n_blocks * block_bytes  one row of random weight blocks (random quants, sane scales)
    n_acts times:
        act blocks          the row's activations, quantized by ggml's quantize_row_q8_K /
                            quantize_row_q8_0 (its x86 path on this CPU)
        f32 LE              ggml_vec_dot_<type>_q8_K / _q8_0 of the weight row with them

ggml's dots are called straight from libggml-cpu.so (the build llama.cpp's tools use), so
the file pins the exact f32 result llama.cpp computes on this machine: the Rust AVX2
kernels must reproduce it bit for bit, and the scalar references closely.

Usage: python3 scripts/iq_dot_golden.py [llama.cpp/build/bin]
       (default ~/.cache/mcc/llama.cpp/build/bin; needs numpy, and an x86-64 build with
       AVX2 so the recorded results are those of the AVX2 kernels)
"""
import ctypes
import pathlib
import struct
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "runtime/src/quant/golden_dot"
DEFAULT_LIB = pathlib.Path.home() / ".cache/mcc/llama.cpp/build/bin"

# name: (block bytes, weights per block, byte offsets of f16 scales, activation format)
TYPES = {
    "IQ1_S": (50, 256, [0], "q8_K"),
    "IQ1_M": (56, 256, [], "q8_K"),
    "IQ2_XXS": (66, 256, [0], "q8_K"),
    "IQ2_XS": (74, 256, [0], "q8_K"),
    "IQ2_S": (82, 256, [0], "q8_K"),
    "IQ3_XXS": (98, 256, [0], "q8_K"),
    "IQ3_S": (110, 256, [0], "q8_K"),
    "IQ4_NL": (18, 32, [0], "q8_0"),
    "IQ4_XS": (136, 256, [0], "q8_K"),
}
ACT_BYTES = {"q8_K": (292, 256), "q8_0": (34, 32)}
N_ACTS = 4


def sane_f16(rng, n):
    return (rng.uniform(1e-3, 0.1, n) * rng.choice([-1.0, 1.0], n)).astype(np.float16)


def weight_blocks(rng, name, n_blocks):
    nbytes, _, scales, _ = TYPES[name]
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in scales:
        raw[:, off:off + 2] = sane_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "IQ1_M":
        # the f16 scale lives in the top nibbles of the four u16 scale words at byte 48
        d = sane_f16(rng, n_blocks).view(np.uint16)
        sc = raw[:, 48:56].copy().view(np.uint16)
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        raw[:, 48:56] = sc.view(np.uint8)
    return raw.reshape(-1)


def activations(rng, n):
    x = rng.normal(0, 1.7, n).astype(np.float32)
    x[::97] *= 5.0  # a few outliers, as residual-stream activations have
    return x


def main():
    libdir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_LIB
    ggml_base = ctypes.CDLL(str(libdir / "libggml-base.so"), mode=ctypes.RTLD_GLOBAL)
    cpu = ctypes.CDLL(str(libdir / "libggml-cpu.so"))
    del ggml_base
    cpu.ggml_cpu_init()  # fills the f16 -> f32 table the kernels read
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261130)
    for name, (nbytes, elems, _, act) in TYPES.items():
        # 4608 weights: 18 super-blocks, or 144 IQ4_NL blocks; IQ4_NL also gets an odd
        # count (145) so the kernel's single-block tail is covered.
        n_blocks = 4608 // elems + (1 if name == "IQ4_NL" else 0)
        n = n_blocks * elems
        w = weight_blocks(rng, name, n_blocks)
        act_bytes, act_elems = ACT_BYTES[act]
        quantize = getattr(cpu, f"quantize_row_{act}")
        quantize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        dot = getattr(cpu, f"ggml_vec_dot_{name.lower()}_{act}")
        dot.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p,
                        ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        out = bytearray(struct.pack("<II", n_blocks, N_ACTS)) + w.tobytes()
        for _ in range(N_ACTS):
            x = activations(rng, n)
            q = np.zeros(n // act_elems * act_bytes, dtype=np.uint8)
            quantize(x.ctypes.data, q.ctypes.data, n)
            s = np.zeros(1, dtype=np.float32)
            dot(n, s.ctypes.data, 0, w.ctypes.data, 0, q.ctypes.data, 0, 1)
            out += q.tobytes() + s.astype("<f4").tobytes()
        (OUT / f"{name}.bin").write_bytes(bytes(out))
        print(f"{name}: {n_blocks} blocks x {N_ACTS} activation rows")


if __name__ == "__main__":
    main()
