#!/usr/bin/env python3
"""Golden dequantization vectors from an independent implementation (gguf-py).

For every ggml type of the seed table, writes runtime/src/quant/golden/<TYPE>.bin:
    u32 little-endian  n_blocks
    n_blocks * block_bytes      raw blocks: random quants, sane scales
    n_blocks * block_elems f32  gguf.quants.dequantize() of those blocks

Random bytes are valid quants for every type (grid indices of the IQ types cover their
whole range), so only the float scale fields are rewritten to sane values: the f16 fields
listed in SCALES, and IQ1_M's scale that is packed into the top nibbles of its scales.

Usage: pip install gguf==0.19.0 numpy && python3 scripts/quant_golden.py
"""
import pathlib
import struct

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T
from gguf.quants import dequantize

OUT = pathlib.Path(__file__).resolve().parent.parent / "runtime/src/quant/golden"

# byte offsets of f16 scale fields inside one block
SCALES = {
    "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0],
    "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208],
    "IQ2_XXS": [0], "IQ2_XS": [0], "IQ2_S": [0], "IQ3_XXS": [0], "IQ3_S": [0],
    "IQ1_S": [0], "IQ4_NL": [0], "IQ4_XS": [0],
}
TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
         "Q4_K", "Q5_K", "Q6_K", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
         "IQ3_XXS", "IQ3_S", "IQ4_NL", "IQ4_XS"]


def sane_f16(rng, n):
    mag = rng.uniform(1e-3, 0.1, n) * rng.choice([-1.0, 1.0], n)
    return mag.astype(np.float16)


def make_blocks(rng, name, n_blocks):
    qtype = T[name]
    elems, nbytes = GGML_QUANT_SIZES[qtype]
    if name == "F32":
        return rng.normal(0, 1, n_blocks).astype(np.float32).view(np.uint8)
    if name == "F16":
        return rng.normal(0, 1, n_blocks).astype(np.float16).view(np.uint8)
    if name == "BF16":
        f = rng.normal(0, 1, n_blocks).astype(np.float32).view(np.uint32)
        return (f >> 16).astype(np.uint16).view(np.uint8)
    raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
    for off in SCALES.get(name, []):
        raw[:, off:off + 2] = sane_f16(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if name == "IQ1_M":
        # scales: 4 x u16 at byte 48; the f16 scale is the top nibble of each, low first
        d = sane_f16(rng, n_blocks).view(np.uint16)
        sc = raw[:, 48:56].copy().view(np.uint16)
        for i in range(4):
            sc[:, i] = (sc[:, i] & 0x0FFF) | (((d >> (4 * i)) & 0xF) << 12)
        raw[:, 48:56] = sc.view(np.uint8)
    return raw.reshape(-1)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261129)
    for name in TYPES:
        elems, _ = GGML_QUANT_SIZES[T[name]]
        n_blocks = 2048 // elems if elems < 256 else 8
        if elems == 1:
            n_blocks = 256
        blocks = make_blocks(rng, name, n_blocks)
        values = dequantize(blocks, T[name]).astype(np.float32).reshape(-1)
        assert values.size == n_blocks * elems and np.isfinite(values).all(), name
        (OUT / f"{name}.bin").write_bytes(
            struct.pack("<I", n_blocks) + blocks.tobytes() + values.astype("<f4").tobytes())
        print(f"{name}: {n_blocks} blocks")


if __name__ == "__main__":
    main()
