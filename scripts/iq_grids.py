#!/usr/bin/env python3
"""Generates runtime/src/quant/iq_grids.rs: the lattice grids and small tables of the
i-quant formats, as data, read from llama.cpp's ggml/src/ggml-common.h.

The header is the authority (it is what ggml's kernels index). gguf-py carries its own
independent copy of every grid (packed two or three bits per entry in hex strings); this
script checks that both agree entry by entry, and writes an FNV-1a checksum of each grid
as gguf-py decodes it into the Rust file, so a Rust test can catch a hand edit.

Usage: python3 scripts/iq_grids.py [path/to/ggml-common.h]
       (default: ~/.cache/mcc/llama.cpp/ggml/src/ggml-common.h; needs the `gguf` package)
"""
import pathlib
import re
import subprocess
import sys

import numpy as np
from gguf import quants

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "runtime/src/quant/iq_grids.rs"
DEFAULT_HEADER = pathlib.Path.home() / ".cache/mcc/llama.cpp/ggml/src/ggml-common.h"

# (header name, Rust name, element type, entry count, gguf-py class or None, doc)
TABLES = [
    ("ksigns_iq2xs", "KSIGNS_IQ2XS", "u8", 128, None,
     "Sign patterns of eight weights from seven stored bits: entry `i` is `i` with bit 7\n"
     "/// set to the parity of `i`, so every pattern has an even number of minus signs\n"
     "/// (bit `j` set = weight `j` negative)."),
    ("kvalues_iq4nl", "KVALUES_IQ4NL", "i8", 16, None,
     "The 16 non-linear levels of IQ4_NL / IQ4_XS, indexed by a 4-bit quant."),
    ("iq2xxs_grid", "IQ2XXS_GRID", "u64", 256, "IQ2_XXS",
     "IQ2_XXS lattice: 256 points of 8 magnitudes in {8, 25, 43}, byte `j` = weight `j`."),
    ("iq2xs_grid", "IQ2XS_GRID", "u64", 512, "IQ2_XS",
     "IQ2_XS lattice: 512 points of 8 magnitudes in {8, 25, 43}, byte `j` = weight `j`."),
    ("iq2s_grid", "IQ2S_GRID", "u64", 1024, "IQ2_S",
     "IQ2_S lattice: 1024 points of 8 magnitudes in {8, 25, 43}, byte `j` = weight `j`."),
    ("iq3xxs_grid", "IQ3XXS_GRID", "u32", 256, "IQ3_XXS",
     "IQ3_XXS lattice: 256 points of 4 magnitudes in {4, 12, ..., 52, 62}, byte `j` =\n"
     "/// weight `j`."),
    ("iq3s_grid", "IQ3S_GRID", "u32", 512, "IQ3_S",
     "IQ3_S lattice: 512 points of 4 magnitudes in {1, 3, ..., 15}, byte `j` = weight `j`."),
    ("iq1s_grid", "IQ1S_GRID", "u64", 2048, "IQ1_S",
     "IQ1_S / IQ1_M lattice: 2048 points of 8 signed values in {-1, 0, 1}, byte `j` (as\n"
     "/// i8) = weight `j`."),
]


def parse_table(text, name):
    m = re.search(r"GGML_TABLE_BEGIN\(\s*\w+\s*,\s*" + name + r"\s*,[^)]*\)(.*?)GGML_TABLE_END\(\)", text, re.S)
    if m is None:
        sys.exit(f"{name}: not found in header")
    return [int(tok, 0) for tok in re.findall(r"-?(?:0x[0-9a-fA-F]+|\d+)", m.group(1))]


def gguf_py_grid(cls_name, elem_bytes):
    """The grid as gguf-py decodes it, repacked into the header's integer form."""
    cls = getattr(quants, cls_name)
    cls.init_grid()
    g = cls.grid.reshape(-1, elem_bytes).astype(np.int64)
    byte_vals = (g & 0xFF).astype(np.uint64)  # -1 -> 0xff
    shifts = np.arange(elem_bytes, dtype=np.uint64) * np.uint64(8)
    return [int(v) for v in (byte_vals << shifts).sum(axis=1, dtype=np.uint64)]


def fnv1a64(values, width):
    h = 0xCBF29CE484222325
    for v in values:
        for b in (v & ((1 << (8 * width)) - 1)).to_bytes(width, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fmt_values(values, ty):
    if ty == "u64":
        items, per_line = [f"0x{v:016x}" for v in values], 4
    elif ty == "u32":
        items, per_line = [f"0x{v:08x}" for v in values], 8
    else:
        items, per_line = [str(v) for v in values], 16
    lines = [", ".join(items[i:i + per_line]) + "," for i in range(0, len(items), per_line)]
    return "\n".join("    " + line for line in lines)


def main():
    header = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_HEADER
    text = header.read_text()
    width = {"u8": 1, "i8": 1, "u32": 4, "u64": 8}
    parts = [HEAD]
    for cname, rname, ty, count, gguf_cls, doc in TABLES:
        values = parse_table(text, cname)
        assert len(values) == count, f"{cname}: {len(values)} entries, expected {count}"
        if cname == "ksigns_iq2xs":
            assert list(quants.IQ2_XXS.ksigns) == values, f"{cname}: header and gguf-py disagree"
        if cname == "kvalues_iq4nl":
            assert list(quants.IQ4_NL.kvalues) == values, f"{cname}: header and gguf-py disagree"
        if gguf_cls is not None:
            ref = gguf_py_grid(gguf_cls, width[ty])
            assert ref == values, f"{cname}: header and gguf-py disagree"
            parts.append(f"/// FNV-1a 64 of [`{rname}`] as gguf-py decodes it (little-endian entries).\n"
                         f"pub const {rname}_FNV1A: u64 = 0x{fnv1a64(ref, width[ty]):016x};\n")
        parts.append(f"/// {doc}\n#[rustfmt::skip]\npub static {rname}: [{ty}; {count}] = [\n{fmt_values(values, ty)}\n];\n")
    parts.append(TAIL)
    OUT.write_text("\n".join(parts))
    subprocess.run(["rustfmt", "--edition", "2021", str(OUT)], check=True)
    print(f"wrote {OUT}")


HEAD = """\
//! Lattice grids and small tables of the i-quant formats (data, not code).
//!
//! Generated by `scripts/iq_grids.py` from llama.cpp's `ggml/src/ggml-common.h`, the
//! tables ggml's kernels index; the script checks every grid against gguf-py's
//! independent copy and records a checksum of it (`*_FNV1A`) that the tests below
//! recompute. Do not edit by hand: rerun the script.
//!
//! Layout: each grid entry packs one point of the lattice, one byte per weight, weight
//! `j` in byte `j` counting from the least significant (so a little-endian load of an
//! entry gives the weights in order). The 2-bit grids hold magnitudes; signs come from
//! [`KSIGNS_IQ2XS`] or explicit sign bits. The IQ1 grid holds signed bytes.
"""

TAIL = """\
/// [`KSIGNS_IQ2XS`] expanded to one byte per weight: `0xff` (-1) for a negative weight,
/// `0x01` for a positive one, so a SIMD sign instruction applies eight signs at once.
pub static KSIGNS_IQ2XS_BYTES: [u64; 128] = expand_signs();

const fn expand_signs() -> [u64; 128] {
    let mut out = [0u64; 128];
    let mut i = 0;
    while i < 128 {
        let bits = KSIGNS_IQ2XS[i];
        let mut j = 0;
        while j < 8 {
            let byte: u64 = if bits & (1 << j) != 0 { 0xff } else { 0x01 };
            out[i] |= byte << (8 * j);
            j += 1;
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fnv1a64<const W: usize>(entries: impl Iterator<Item = [u8; W]>) -> u64 {
        let mut h = 0xcbf2_9ce4_8422_2325u64;
        for bytes in entries {
            for b in bytes {
                h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }

    #[test]
    fn grids_match_gguf_py_checksums() {
        assert_eq!(fnv1a64(IQ2XXS_GRID.iter().map(|v| v.to_le_bytes())), IQ2XXS_GRID_FNV1A);
        assert_eq!(fnv1a64(IQ2XS_GRID.iter().map(|v| v.to_le_bytes())), IQ2XS_GRID_FNV1A);
        assert_eq!(fnv1a64(IQ2S_GRID.iter().map(|v| v.to_le_bytes())), IQ2S_GRID_FNV1A);
        assert_eq!(fnv1a64(IQ3XXS_GRID.iter().map(|v| v.to_le_bytes())), IQ3XXS_GRID_FNV1A);
        assert_eq!(fnv1a64(IQ3S_GRID.iter().map(|v| v.to_le_bytes())), IQ3S_GRID_FNV1A);
        assert_eq!(fnv1a64(IQ1S_GRID.iter().map(|v| v.to_le_bytes())), IQ1S_GRID_FNV1A);
    }

    #[test]
    fn grid_entries_use_only_their_levels() {
        let check = |bytes: &[u8], levels: &[u8], name: &str| {
            assert!(bytes.iter().all(|b| levels.contains(b)), "{name}: byte outside its levels");
        };
        for g in [&IQ2XXS_GRID[..], &IQ2XS_GRID[..], &IQ2S_GRID[..]] {
            g.iter().for_each(|v| check(&v.to_le_bytes(), &[8, 25, 43], "IQ2 grid"));
        }
        IQ3XXS_GRID.iter().for_each(|v| check(&v.to_le_bytes(), &[4, 12, 20, 28, 36, 44, 52, 62], "IQ3XXS"));
        IQ3S_GRID.iter().for_each(|v| check(&v.to_le_bytes(), &[1, 3, 5, 7, 9, 11, 13, 15], "IQ3S"));
        IQ1S_GRID.iter().for_each(|v| check(&v.to_le_bytes(), &[0xff, 0, 1], "IQ1S"));
    }

    #[test]
    fn signs_have_even_parity_and_expand_consistently() {
        for (i, (&s, &e)) in KSIGNS_IQ2XS.iter().zip(&KSIGNS_IQ2XS_BYTES).enumerate() {
            assert_eq!(s & 0x7f, i as u8);
            assert_eq!(s.count_ones() % 2, 0, "pattern {i} has odd parity");
            for j in 0..8 {
                let neg = s & (1 << j) != 0;
                assert_eq!(e.to_le_bytes()[j] as i8, if neg { -1 } else { 1 });
            }
        }
    }
}
"""

if __name__ == "__main__":
    main()
