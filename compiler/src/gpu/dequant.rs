//! Dequantization of every weight format as a small expression DAG, the one source of
//! truth for the GPU kernels: [`Unit::to_ptx`] prints it as PTX, and [`Unit::eval`]
//! interprets it on the CPU, so the tests check the exact arithmetic the kernels run
//! against the runtime's scalar `dequantize_ref` of each format, without a GPU.
//!
//! Every format in the seed table has blocks of 32, or of 256 = 8 x 32, weights (the
//! float types are cut into "blocks" of 32 here). A kernel therefore walks a row in
//! *units* of 32 consecutive weights: unit `u` of a row is sub-block `u % UPB` of
//! block `u / UPB`, with `UPB` units per block. A unit's program takes two run-time
//! values, the block's address and the sub-block index `sub`, and yields the 32
//! weights `w(sub, j)`, `j = 0..32`. `j` is a compile-time constant (the PTX is fully
//! unrolled), so byte offsets, nibble shifts and scale indices that depend on `j`
//! alone fold into immediates, and nodes that depend on `sub` alone (scales, minimums)
//! are shared by all 32 weights through hash-consing.
//!
//! Arithmetic: integer nodes are 32-bit with wrap-around, float nodes are f32 with
//! round-to-nearest and no contraction (`mul.rn` / `add.rn` / `sub.rn` in PTX), so the
//! interpreter and the GPU agree bit for bit.
//!
//! Cost: bytes of word-aligned blocks are read as u32 words and taken apart with
//! bit-field extracts, and a kernel's dot product uses the affine form of a unit
//! ([`Unit::dot_plan`]) where the format has one.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::gguf::GgmlType;

/// Index of a node in [`Unit::nodes`]; children always have smaller indices.
pub type Id = usize;

/// Width of a load from the block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Width {
    U8,
    /// Sign-extended byte.
    S8,
    /// Little-endian u16 (the offset must be even).
    U16,
    /// Little-endian u32 (the offset must be a multiple of 4).
    U32,
}

/// 32-bit integer operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Add,
    Sub,
    Mul,
    /// Logical shift right.
    Shr,
    Shl,
    And,
    Or,
    Xor,
    /// 1 if `a < b` (unsigned), else 0.
    Lt,
}

/// Constant tables the IQ formats index, stored as byte arrays in the PTX (`.u8` or
/// `.s8`): grids of 8 (IQ2, IQ1) or 4 (IQ3) magnitudes per index, entry `8 i + k` or
/// `4 i + k`. The values are ggml's tables, as the runtime holds them
/// (`mcc_runtime::quant::iq_grids`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// The 16 non-linear levels of IQ4_NL / IQ4_XS (signed).
    KvaluesIq4nl,
    /// The 128 sign bytes of the IQ2/IQ3 formats (7 bits with even parity as 8).
    KsignsIq2xs,
    Iq2xxsGrid,
    Iq2xsGrid,
    Iq2sGrid,
    Iq3xxsGrid,
    Iq3sGrid,
    /// Signed (-1, 0, 1) values.
    Iq1sGrid,
}

impl Table {
    /// PTX symbol of the table.
    pub fn symbol(self) -> &'static str {
        match self {
            Table::KvaluesIq4nl => "mcc_kvalues_iq4nl",
            Table::KsignsIq2xs => "mcc_ksigns_iq2xs",
            Table::Iq2xxsGrid => "mcc_iq2xxs_grid",
            Table::Iq2xsGrid => "mcc_iq2xs_grid",
            Table::Iq2sGrid => "mcc_iq2s_grid",
            Table::Iq3xxsGrid => "mcc_iq3xxs_grid",
            Table::Iq3sGrid => "mcc_iq3s_grid",
            Table::Iq1sGrid => "mcc_iq1s_grid",
        }
    }

    /// Whether entries are signed bytes (else unsigned).
    pub fn signed(self) -> bool {
        matches!(self, Table::KvaluesIq4nl | Table::Iq1sGrid)
    }

    /// The entries, as the integers a lookup yields.
    pub fn values(self) -> Vec<i32> {
        use mcc_runtime::quant::iq_grids as g;
        let bytes8 = |grid: &[u64]| -> Vec<i32> {
            grid.iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| b as i32)
                .collect()
        };
        let bytes4 = |grid: &[u32]| -> Vec<i32> {
            grid.iter()
                .flat_map(|v| v.to_le_bytes())
                .map(|b| b as i32)
                .collect()
        };
        match self {
            Table::KvaluesIq4nl => g::KVALUES_IQ4NL.iter().map(|&v| v as i32).collect(),
            Table::KsignsIq2xs => g::KSIGNS_IQ2XS.iter().map(|&v| v as i32).collect(),
            Table::Iq2xxsGrid => bytes8(&g::IQ2XXS_GRID),
            Table::Iq2xsGrid => bytes8(&g::IQ2XS_GRID),
            Table::Iq2sGrid => bytes8(&g::IQ2S_GRID),
            Table::Iq3xxsGrid => bytes4(&g::IQ3XXS_GRID),
            Table::Iq3sGrid => bytes4(&g::IQ3S_GRID),
            Table::Iq1sGrid => bytes8(&g::IQ1S_GRID)
                .into_iter()
                .map(|b| b as u8 as i8 as i32)
                .collect(),
        }
    }
}

/// One node of a unit program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Node {
    /// The sub-block index (run-time, `0..UPB`).
    SubIdx,
    Const(u32),
    /// A load of `width` at byte `imm` (+ the value of `base`, if any) of the block.
    Load(Width, Option<Id>, u32),
    Bin(Op, Id, Id),
    /// `cond != 0 ? a : b`.
    Sel(Id, Id, Id),
    /// Bits `pos .. pos + len` of `a` (`(a >> pos) & (2^len - 1)`, 0 past bit 31).
    Bfe(Id, Id, u32),
    /// Entry `index` of a table.
    Lookup(Table, Id),
    /// f32 from the low 16 bits as an IEEE half.
    F16(Id),
    /// f32 from the bits.
    Bits(Id),
    /// The bits of an f32 (an integer node).
    ToBits(Id),
    /// f32 from the value as a signed integer.
    IToF(Id),
    FMul(Id, Id),
    FAdd(Id, Id),
    FSub(Id, Id),
}

impl Node {
    /// Whether the node's value is an f32 (else a 32-bit integer).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            Node::F16(_)
                | Node::Bits(_)
                | Node::IToF(_)
                | Node::FMul(..)
                | Node::FAdd(..)
                | Node::FSub(..)
        )
    }
}

/// The program of one 32-weight unit of a format.
#[derive(Clone, Debug)]
pub struct Unit {
    pub nodes: Vec<Node>,
    /// The f32 node of each of the 32 weights.
    pub weights: [Id; 32],
}

/// Builds a unit program with hash-consing and constant folding.
#[derive(Default)]
struct Builder {
    nodes: Vec<Node>,
    seen: HashMap<Node, Id>,
    /// log2 of the alignment every block starts at: bytes loads at 4-byte aligned
    /// offsets of such blocks become one u32 load per 4 bytes.
    block_align: u32,
}

impl Builder {
    fn node(&mut self, n: Node) -> Id {
        if let Some(&id) = self.seen.get(&n) {
            return id;
        }
        self.nodes.push(n);
        self.seen.insert(n, self.nodes.len() - 1);
        self.nodes.len() - 1
    }

    fn konst(&self, id: Id) -> Option<u32> {
        match self.nodes[id] {
            Node::Const(v) => Some(v),
            _ => None,
        }
    }

    fn c(&mut self, v: u32) -> Id {
        self.node(Node::Const(v))
    }

    fn sub_idx(&mut self) -> Id {
        self.node(Node::SubIdx)
    }

    fn bin(&mut self, op: Op, a: Id, b: Id) -> Id {
        if let (Some(x), Some(y)) = (self.konst(a), self.konst(b)) {
            return self.c(eval_op(op, x, y));
        }
        match (op, self.konst(b)) {
            (Op::Add | Op::Sub | Op::Shr | Op::Shl | Op::Or, Some(0)) => return a,
            (Op::Mul, Some(1)) => return a,
            _ => {}
        }
        if op == Op::Add && self.konst(a) == Some(0) {
            return b;
        }
        self.node(Node::Bin(op, a, b))
    }

    fn add(&mut self, a: Id, b: Id) -> Id {
        self.bin(Op::Add, a, b)
    }
    fn addc(&mut self, a: Id, k: u32) -> Id {
        let k = self.c(k);
        self.add(a, k)
    }
    fn mulc(&mut self, a: Id, k: u32) -> Id {
        let k = self.c(k);
        self.bin(Op::Mul, a, k)
    }
    fn shr(&mut self, a: Id, b: Id) -> Id {
        self.bin(Op::Shr, a, b)
    }
    fn shrc(&mut self, a: Id, k: u32) -> Id {
        // The top bits of a constant-position extract are a shorter extract.
        if let Node::Bfe(x, pos, len) = self.nodes[a] {
            if let Some(p) = self.konst(pos) {
                if k < len {
                    let pos = self.c(p + k);
                    return self.node(Node::Bfe(x, pos, len - k));
                }
            }
        }
        let k = self.c(k);
        self.shr(a, k)
    }
    fn shlc(&mut self, a: Id, k: u32) -> Id {
        let k = self.c(k);
        self.bin(Op::Shl, a, k)
    }
    fn andc(&mut self, a: Id, k: u32) -> Id {
        let low_mask = k != 0 && k != u32::MAX && (k & (k + 1)) == 0;
        // (x >> s) & (2^n - 1) is one bit-field extract; a narrower mask of an extract
        // is a narrower extract.
        match self.nodes[a] {
            Node::Bin(Op::Shr, x, s) if low_mask => {
                return self.node(Node::Bfe(x, s, k.count_ones()));
            }
            Node::Bfe(x, pos, len) if low_mask && k.count_ones() <= len => {
                return self.node(Node::Bfe(x, pos, k.count_ones()));
            }
            _ => {}
        }
        let k = self.c(k);
        self.bin(Op::And, a, k)
    }

    /// log2 of a power of two the node's value is known to be a multiple of.
    fn align_of(&self, id: Id) -> u32 {
        match self.nodes[id] {
            Node::Const(0) => 31,
            Node::Const(k) => k.trailing_zeros(),
            Node::Bin(Op::Mul, a, b) => (self.align_of(a) + self.align_of(b)).min(31),
            Node::Bin(Op::Add, a, b) => self.align_of(a).min(self.align_of(b)),
            Node::Bin(Op::Shl, a, b) => match self.konst(b) {
                Some(k) => (self.align_of(a) + k).min(31),
                None => self.align_of(a),
            },
            _ => 0,
        }
    }
    fn or(&mut self, a: Id, b: Id) -> Id {
        self.bin(Op::Or, a, b)
    }
    fn subc(&mut self, a: Id, k: u32) -> Id {
        let k = self.c(k);
        self.bin(Op::Sub, a, k)
    }
    fn sel(&mut self, cond: Id, a: Id, b: Id) -> Id {
        match self.konst(cond) {
            Some(0) => b,
            Some(_) => a,
            None => self.node(Node::Sel(cond, a, b)),
        }
    }

    /// A load at byte offset `off` (a node) of the block; `base + constant` offsets keep
    /// the constant as the load's immediate.
    fn load(&mut self, w: Width, off: Id) -> Id {
        let (base, imm) = match self.nodes[off] {
            Node::Const(k) => (None, k),
            Node::Bin(Op::Add, a, b) if self.konst(b).is_some() => {
                (Some(a), self.konst(b).unwrap_or(0))
            }
            _ => (Some(off), 0),
        };
        // A byte of a word-aligned block: bits 8 (imm % 4) .. of the u32 around it.
        let base_align = base.map_or(31, |b| self.align_of(b));
        if w == Width::U8 && self.block_align >= 2 && base_align >= 2 {
            let word = self.node(Node::Load(Width::U32, base, imm & !3));
            let pos = self.c(8 * (imm & 3));
            return self.node(Node::Bfe(word, pos, 8));
        }
        self.node(Node::Load(w, base, imm))
    }
    fn ld(&mut self, w: Width, off: u32) -> Id {
        let off = self.c(off);
        self.load(w, off)
    }
    /// A load of `w` at byte `k + var` of the block.
    fn ld_at(&mut self, w: Width, var: Id, k: u32) -> Id {
        let off = self.addc(var, k);
        self.load(w, off)
    }
    /// Byte `k + var` of the block.
    fn ld8_at(&mut self, var: Id, k: u32) -> Id {
        let off = self.addc(var, k);
        self.load(Width::U8, off)
    }
    fn f16_at(&mut self, off: u32) -> Id {
        let bits = self.ld(Width::U16, off);
        self.node(Node::F16(bits))
    }
    fn itof(&mut self, a: Id) -> Id {
        self.node(Node::IToF(a))
    }
    fn fmul(&mut self, a: Id, b: Id) -> Id {
        self.node(Node::FMul(a, b))
    }
    fn fadd(&mut self, a: Id, b: Id) -> Id {
        self.node(Node::FAdd(a, b))
    }
    fn fsub(&mut self, a: Id, b: Id) -> Id {
        self.node(Node::FSub(a, b))
    }
}

fn eval_op(op: Op, a: u32, b: u32) -> u32 {
    match op {
        Op::Add => a.wrapping_add(b),
        Op::Sub => a.wrapping_sub(b),
        Op::Mul => a.wrapping_mul(b),
        Op::Shr => a.checked_shr(b).unwrap_or(0),
        Op::Shl => a.checked_shl(b).unwrap_or(0),
        Op::And => a & b,
        Op::Or => a | b,
        Op::Xor => a ^ b,
        Op::Lt => u32::from(a < b),
    }
}

/// The formats the GPU kernels support, in the seed table's order.
pub const SUPPORTED: [GgmlType; 22] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

/// Block geometry of a format as the kernels walk it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Bytes of one block (of 32 weights for the float types).
    pub block_bytes: u32,
    /// 32-weight units per block.
    pub units_per_block: u32,
}

/// The geometry of `t`, or `None` when the GPU has no kernel for it.
pub fn geometry(t: GgmlType) -> Option<Geometry> {
    if !SUPPORTED.contains(&t) {
        return None;
    }
    let elems = t.block_elems() as u32;
    let bytes = t.block_bytes() as u32;
    Some(if elems == 1 {
        Geometry {
            block_bytes: 32 * bytes,
            units_per_block: 1,
        }
    } else {
        Geometry {
            block_bytes: bytes,
            units_per_block: elems / 32,
        }
    })
}

/// The unit program of format `t`, or `None` when the GPU has no kernel for it.
pub fn unit(t: GgmlType) -> Option<Unit> {
    let geo = geometry(t)?;
    // Rows start 64-byte aligned and are whole blocks, so a block starts at a multiple
    // of the largest power of two dividing its size (up to 64).
    let mut b = Builder {
        block_align: geo.block_bytes.trailing_zeros().min(6),
        ..Builder::default()
    };
    let mut weights = [0; 32];
    for (j, w) in weights.iter_mut().enumerate() {
        *w = weight(&mut b, t, j as u32)?;
    }
    Some(Unit {
        nodes: b.nodes,
        weights,
    })
}

/// Nibble `j` of a 32-weight run stored as 16 bytes from `qs` (weight `j` low nibble of
/// byte `j`, weight `j + 16` high nibble of byte `j`), with `var` added to the offset.
fn nibble16(b: &mut Builder, var: Option<Id>, qs: u32, j: u32) -> Id {
    let byte = match var {
        Some(v) => b.ld8_at(v, qs + j % 16),
        None => b.ld(Width::U8, qs + j % 16),
    };
    if j < 16 {
        b.andc(byte, 0xf)
    } else {
        b.shrc(byte, 4)
    }
}

/// Bit `j` (0..32) of the 4 bytes at `at`.
fn bit_of4(b: &mut Builder, at: u32, j: u32) -> Id {
    let byte = b.ld(Width::U8, at + j / 8);
    let bit = b.shrc(byte, j % 8);
    b.andc(bit, 1)
}

/// Scale and minimum (6 bits each) of sub-block `s` of a Q4_K / Q5_K block, from the
/// 12 packed bytes at `at`: sub-blocks 0..4 keep theirs in the low 6 bits of bytes
/// `s` (scale) and `s + 4` (min); sub-blocks 4..8 have their low 4 bits in byte
/// `s + 4` (scale low nibble, min high nibble) and their top 2 bits in the top bits
/// of bytes `s - 4` (scale) and `s` (min).
fn scale_min_k4(b: &mut Builder, s: Id, at: u32) -> (Id, Id) {
    let s3 = b.andc(s, 3);
    let a = b.ld8_at(s3, at); // byte s (s < 4) or s - 4 (s >= 4)
    let bb = b.ld8_at(s3, at + 4); // byte s + 4 (s < 4) or s (s >= 4)
    let cc = b.ld8_at(s3, at + 8); // byte s + 4 (s >= 4)
    let lo_sc = b.andc(a, 63);
    let lo_m = b.andc(bb, 63);
    let c_lo = b.andc(cc, 0xf);
    let a_top = b.shrc(a, 6);
    let a_top = b.shlc(a_top, 4);
    let hi_sc = b.or(c_lo, a_top);
    let c_hi = b.shrc(cc, 4);
    let b_top = b.shrc(bb, 6);
    let b_top = b.shlc(b_top, 4);
    let hi_m = b.or(c_hi, b_top);
    let upper = b.shrc(s, 2);
    (b.sel(upper, hi_sc, lo_sc), b.sel(upper, hi_m, lo_m))
}

/// Weight `j` of the unit, as an f32 node; `None` for formats without a GPU kernel.
fn weight(b: &mut Builder, t: GgmlType, j: u32) -> Option<Id> {
    let s = b.sub_idx();
    Some(match t {
        GgmlType::F32 => {
            let bits = b.ld(Width::U32, 4 * j);
            b.node(Node::Bits(bits))
        }
        GgmlType::F16 => b.f16_at(2 * j),
        GgmlType::BF16 => {
            let h = b.ld(Width::U16, 2 * j);
            let bits = b.shlc(h, 16);
            b.node(Node::Bits(bits))
        }
        // d, qs[32] (i8): d * q
        GgmlType::Q8_0 => {
            let d = b.f16_at(0);
            let q = b.ld(Width::S8, 2 + j);
            let q = b.itof(q);
            b.fmul(q, d)
        }
        // d, qs[16]: (q - 8) * d
        GgmlType::Q4_0 => {
            let d = b.f16_at(0);
            let q = nibble16(b, None, 2, j);
            let q = b.subc(q, 8);
            let q = b.itof(q);
            b.fmul(q, d)
        }
        // d, m, qs[16]: d * q + m
        GgmlType::Q4_1 => {
            let (d, m) = (b.f16_at(0), b.f16_at(2));
            let q = nibble16(b, None, 4, j);
            let q = b.itof(q);
            let dq = b.fmul(d, q);
            b.fadd(dq, m)
        }
        // d, qh[4], qs[16]: (q - 16) * d, bit 4 of weight j is bit j of qh
        GgmlType::Q5_0 => {
            let d = b.f16_at(0);
            let lo = nibble16(b, None, 6, j);
            let hi = bit_of4(b, 2, j);
            let hi = b.shlc(hi, 4);
            let q = b.or(lo, hi);
            let q = b.subc(q, 16);
            let q = b.itof(q);
            b.fmul(q, d)
        }
        // d, m, qh[4], qs[16]: d * q + m
        GgmlType::Q5_1 => {
            let (d, m) = (b.f16_at(0), b.f16_at(2));
            let lo = nibble16(b, None, 8, j);
            let hi = bit_of4(b, 4, j);
            let hi = b.shlc(hi, 4);
            let q = b.or(lo, hi);
            let q = b.itof(q);
            let dq = b.fmul(d, q);
            b.fadd(dq, m)
        }
        // scales[16] (4-bit scale | 4-bit min), qs[64] (2-bit), d, dmin. Weight
        // 32s + j: q = (qs[32 (s/4) + j] >> 2 (s%4)) & 3, group g = 2s + j/16,
        // w = (d * sc) * q - dmin * m.
        GgmlType::Q2_K => {
            let (d, dmin) = (b.f16_at(80), b.f16_at(82));
            let h = b.shrc(s, 2);
            let qoff = b.mulc(h, 32);
            let byte = b.ld8_at(qoff, 16 + j);
            let k = b.andc(s, 3);
            let k2 = b.mulc(k, 2);
            let q = b.shr(byte, k2);
            let q = b.andc(q, 3);
            let g = b.mulc(s, 2);
            let sc = b.ld8_at(g, j / 16);
            let scale = b.andc(sc, 0xf);
            let min = b.shrc(sc, 4);
            let scale = b.itof(scale);
            let min = b.itof(min);
            let dscale = b.fmul(d, scale);
            let dmin = b.fmul(dmin, min);
            let q = b.itof(q);
            let v = b.fmul(dscale, q);
            b.fsub(v, dmin)
        }
        // hmask[32], qs[64] (2-bit), scales[12] (16 x 6-bit, offset 32), d. Weight
        // 32s + j: lo = (qs[32 (s/4) + j] >> 2 (s%4)) & 3, hi = hmask[j] bit 4 (s/4) +
        // s%4 = bit s, q = lo + 4 hi - 4; w = (d * sc) * q.
        GgmlType::Q3_K => {
            let d = b.f16_at(108);
            let h = b.shrc(s, 2);
            let qoff = b.mulc(h, 32);
            let byte = b.ld8_at(qoff, 32 + j);
            let k = b.andc(s, 3);
            let k2 = b.mulc(k, 2);
            let lo = b.shr(byte, k2);
            let lo = b.andc(lo, 3);
            let hm = b.ld(Width::U8, j);
            let hi = b.shr(hm, s);
            let hi = b.andc(hi, 1);
            let hi4 = b.shlc(hi, 2);
            let q = b.add(lo, hi4);
            let q = b.subc(q, 4);
            // Scale g = 2s + j/16: word w = s/2, byte g%4 = 2 (s%2) + j/16. Low 4 bits
            // from byte (g%4) + 4 (w%2) >> 4 (w/2); high 2 bits from byte 8 + g%4
            // >> 2w.
            let w = b.shrc(s, 1);
            let s1 = b.andc(s, 1);
            let gb = b.mulc(s1, 2);
            let gb = b.addc(gb, j / 16);
            let w1 = b.andc(w, 1);
            let w1 = b.mulc(w1, 4);
            let lo_at = b.add(gb, w1);
            let lo_byte = b.ld8_at(lo_at, 96);
            let w2 = b.shrc(w, 1);
            let w2 = b.mulc(w2, 4);
            let sc_lo = b.shr(lo_byte, w2);
            let sc_lo = b.andc(sc_lo, 0xf);
            let hi_byte = b.ld8_at(gb, 104);
            let wsh = b.mulc(w, 2);
            let sc_hi = b.shr(hi_byte, wsh);
            let sc_hi = b.andc(sc_hi, 3);
            let sc_hi = b.shlc(sc_hi, 4);
            let sc = b.or(sc_lo, sc_hi);
            let sc = b.subc(sc, 32);
            let sc = b.itof(sc);
            let scale = b.fmul(d, sc);
            let q = b.itof(q);
            b.fmul(scale, q)
        }
        // d, dmin, scales[12], qs[128]: weight 32s + j is nibble s%2 of byte
        // 32 (s/2) + j; w = (d * sc) * q - dmin * m.
        GgmlType::Q4_K | GgmlType::Q5_K => {
            let (d, dmin) = (b.f16_at(0), b.f16_at(2));
            let (sc, m) = scale_min_k4(b, s, 4);
            let qs = if t == GgmlType::Q4_K { 16 } else { 48 };
            let c = b.shrc(s, 1);
            let coff = b.mulc(c, 32);
            let byte = b.ld8_at(coff, qs + j);
            let odd = b.andc(s, 1);
            let sh = b.mulc(odd, 4);
            let q = b.shr(byte, sh);
            let mut q = b.andc(q, 0xf);
            if t == GgmlType::Q5_K {
                // bit 4 of weight 32s + j: bit s of qh[j]
                let qh = b.ld(Width::U8, 16 + j);
                let hi = b.shr(qh, s);
                let hi = b.andc(hi, 1);
                let hi = b.shlc(hi, 4);
                q = b.or(q, hi);
            }
            let sc = b.itof(sc);
            let m = b.itof(m);
            let scale = b.fmul(d, sc);
            let offset = b.fmul(dmin, m);
            let q = b.itof(q);
            let v = b.fmul(scale, q);
            b.fsub(v, offset)
        }
        // ql[128], qh[64], scales[16] (i8), d. Weight 32s + j with h = s/4, k = s%4:
        // low 4 bits from ql[64h + 32 (k%2) + j] >> 4 (k/2), high 2 bits from
        // qh[32h + j] >> 2k; w = (d * scale[2s + j/16]) * (q - 32).
        GgmlType::Q6_K => {
            let d = b.f16_at(208);
            let h = b.shrc(s, 2);
            let k = b.andc(s, 3);
            let h64 = b.mulc(h, 64);
            let k1 = b.andc(k, 1);
            let k32 = b.mulc(k1, 32);
            let ql_at = b.add(h64, k32);
            let ql = b.ld8_at(ql_at, j);
            let kh = b.shrc(k, 1);
            let ksh = b.mulc(kh, 4);
            let lo = b.shr(ql, ksh);
            let lo = b.andc(lo, 0xf);
            let h32 = b.mulc(h, 32);
            let qh = b.ld8_at(h32, 128 + j);
            let k2 = b.mulc(k, 2);
            let hi = b.shr(qh, k2);
            let hi = b.andc(hi, 3);
            let hi = b.shlc(hi, 4);
            let q = b.or(lo, hi);
            let q = b.subc(q, 32);
            let g = b.mulc(s, 2);
            let g = b.addc(g, 192 + j / 16);
            let sc = b.load(Width::S8, g);
            let sc = b.itof(sc);
            let scale = b.fmul(d, sc);
            let q = b.itof(q);
            b.fmul(scale, q)
        }
        // d, qs[16]: d * kvalues[index]
        GgmlType::IQ4_NL => {
            let d = b.f16_at(0);
            let idx = nibble16(b, None, 2, j);
            let v = b.node(Node::Lookup(Table::KvaluesIq4nl, idx));
            let v = b.itof(v);
            b.fmul(d, v)
        }
        // d, scales_h (u16), scales_l[4], qs[128]: sub-block s has scale
        // ((scales_l[s/2] >> 4 (s%2)) & 15 | ((scales_h >> 2s) & 3) << 4) - 32 and its
        // 16 index bytes at 8 + 16s; w = (d * scale) * kvalues[index].
        GgmlType::IQ4_XS => {
            let d = b.f16_at(0);
            let sh = b.ld(Width::U16, 2);
            let half = b.shrc(s, 1);
            let sl = b.ld8_at(half, 4);
            let odd = b.andc(s, 1);
            let odd4 = b.mulc(odd, 4);
            let lo = b.shr(sl, odd4);
            let lo = b.andc(lo, 0xf);
            let s2 = b.mulc(s, 2);
            let hi = b.shr(sh, s2);
            let hi = b.andc(hi, 3);
            let hi = b.shlc(hi, 4);
            let ls = b.or(lo, hi);
            let ls = b.subc(ls, 32);
            let ls = b.itof(ls);
            let dl = b.fmul(d, ls);
            let s16 = b.mulc(s, 16);
            let idx = nibble16(b, Some(s16), 8, j);
            let v = b.node(Node::Lookup(Table::KvaluesIq4nl, idx));
            let v = b.itof(v);
            b.fmul(dl, v)
        }
        // d, qs: per sub-block 4 grid-index bytes then a u32 of four 7-bit sign
        // indices and the 4-bit scale s (bits 28..32); db = d (0.5 + s) / 4.
        GgmlType::IQ2_XXS => {
            let d = b.f16_at(0);
            let at = b.mulc(s, 8);
            let ss = ld32_halves(b, at, 6);
            let idx = b.ld8_at(at, 2 + j / 8);
            let sc = b.shrc(ss, 28);
            let db = half_plus_scaled(b, d, sc, 0.25);
            let mag = grid(b, Table::Iq2xxsGrid, idx, 8, j % 8);
            let sidx = b.shrc(ss, 7 * (j / 8));
            let sidx = b.andc(sidx, 127);
            signed_product(b, db, mag, Table::KsignsIq2xs, sidx, j % 8)
        }
        // d, qs[32] (u16: 9-bit grid index, 7-bit sign index per 8 weights),
        // scales[8] (two 4-bit scales per sub-block); db = d (0.5 + s) / 4.
        GgmlType::IQ2_XS => {
            let d = b.f16_at(0);
            let at = b.mulc(s, 8);
            let q = b.ld_at(Width::U16, at, 2 + 2 * (j / 8));
            let idx = b.andc(q, 511);
            let sidx = b.shrc(q, 9);
            let sc = b.ld8_at(s, 66);
            let sc = b.shrc(sc, 4 * (j / 16));
            let sc = b.andc(sc, 0xf);
            let db = half_plus_scaled(b, d, sc, 0.25);
            let mag = grid(b, Table::Iq2xsGrid, idx, 8, j % 8);
            signed_product(b, db, mag, Table::KsignsIq2xs, sidx, j % 8)
        }
        // d, qs[32] (index low bytes), signs[32], qh[8] (2 high index bits per group),
        // scales[8]; db = d (0.5 + s) / 4, signs are plain bytes.
        GgmlType::IQ2_S => {
            let d = b.f16_at(0);
            let g = b.mulc(s, 4);
            let lo = b.ld8_at(g, 2 + j / 8);
            let qh = b.ld8_at(s, 66);
            let hi = b.shrc(qh, 2 * (j / 8));
            let hi = b.andc(hi, 3);
            let hi = b.shlc(hi, 8);
            let idx = b.or(lo, hi);
            let sc = b.ld8_at(s, 74);
            let sc = b.shrc(sc, 4 * (j / 16));
            let sc = b.andc(sc, 0xf);
            let db = half_plus_scaled(b, d, sc, 0.25);
            let mag = grid(b, Table::Iq2sGrid, idx, 8, j % 8);
            let signs = b.ld8_at(g, 34 + j / 8);
            sign_flip(b, db, mag, signs, j % 8)
        }
        // d, qs[64] (a grid index per 4 weights), then per sub-block a u32 of four
        // 7-bit sign indices and the scale; db = d (0.5 + s) / 2.
        GgmlType::IQ3_XXS => {
            let d = b.f16_at(0);
            let at4 = b.mulc(s, 4);
            let w = ld32_halves(b, at4, 66);
            let sc = b.shrc(w, 28);
            let db = half_plus_scaled(b, d, sc, 0.5);
            let at8 = b.mulc(s, 8);
            let q = b.ld8_at(at8, 2 + 2 * (j / 8) + (j % 8) / 4);
            let mag = grid(b, Table::Iq3xxsGrid, q, 4, j % 4);
            let sidx = b.shrc(w, 7 * (j / 8));
            let sidx = b.andc(sidx, 127);
            signed_product(b, db, mag, Table::KsignsIq2xs, sidx, j % 8)
        }
        // d, qs[64] (index low bytes), qh[8] (bit 8 per index), signs[32], scales[4]
        // (4-bit s, multiplier 2s + 1); db = d (2s + 1).
        GgmlType::IQ3_S => {
            let d = b.f16_at(0);
            let half = b.shrc(s, 1);
            let sc = b.ld8_at(half, 106);
            let odd = b.andc(s, 1);
            let sh = b.mulc(odd, 4);
            let sc = b.shr(sc, sh);
            let sc = b.andc(sc, 0xf);
            let sc = b.mulc(sc, 2);
            let sc = b.addc(sc, 1);
            let sc = b.itof(sc);
            let db = b.fmul(d, sc);
            let k = 2 * (j / 8) + (j % 8) / 4;
            let at8 = b.mulc(s, 8);
            let lo = b.ld8_at(at8, 2 + k);
            let qh = b.ld8_at(s, 66);
            let hi = b.shrc(qh, k);
            let hi = b.andc(hi, 1);
            let hi = b.shlc(hi, 8);
            let idx = b.or(lo, hi);
            let mag = grid(b, Table::Iq3sGrid, idx, 4, j % 4);
            let at4 = b.mulc(s, 4);
            let signs = b.ld8_at(at4, 74 + j / 8);
            sign_flip(b, db, mag, signs, j % 8)
        }
        // d, qs[32] (index low bytes), qh[8] (u16: four 3-bit index highs, the 3-bit
        // scale s at 12, the shift sign at 15); w = d (2s + 1) (g ± 1/8).
        GgmlType::IQ1_S => {
            let d = b.f16_at(0);
            let at2 = b.mulc(s, 2);
            let qh = b.ld_at(Width::U16, at2, 34);
            let sc = b.shrc(qh, 12);
            let sc = b.andc(sc, 7);
            let sc = b.mulc(sc, 2);
            let sc = b.addc(sc, 1);
            let sc = b.itof(sc);
            let dl = b.fmul(d, sc);
            let neg = b.andc(qh, 0x8000);
            let hi = b.shrc(qh, 3 * (j / 8));
            let hi = b.andc(hi, 7);
            let hi = b.shlc(hi, 8);
            let at4 = b.mulc(s, 4);
            let lo = b.ld8_at(at4, 2 + j / 8);
            let idx = b.or(lo, hi);
            let g = grid(b, Table::Iq1sGrid, idx, 8, j % 8);
            shifted_product(b, dl, g, neg)
        }
        // qs[32] (index low bytes), qh[16] (per group a nibble: 3 index bits and the
        // shift sign), scales[8] (four u16: 3-bit scales per 16 weights, the f16 super
        // scale in their top nibbles); w = d (2s + 1) (g ± 1/8).
        GgmlType::IQ1_M => {
            let words: Vec<Id> = (0..4).map(|k| b.ld(Width::U16, 48 + 2 * k)).collect();
            let d0 = b.shrc(words[0], 12);
            let d1 = b.shrc(words[1], 8);
            let d1 = b.andc(d1, 0x00f0);
            let d2 = b.shrc(words[2], 4);
            let d2 = b.andc(d2, 0x0f00);
            let d3 = b.andc(words[3], 0xf000);
            let bits = b.or(d0, d1);
            let bits = b.or(bits, d2);
            let bits = b.or(bits, d3);
            let d = b.node(Node::F16(bits));
            // half h = 2s + l/2 of the 16: word h/4 = s/2, shift 3 (h % 4).
            let half = b.shrc(s, 1);
            let at = b.mulc(half, 2);
            let word = b.ld_at(Width::U16, at, 48);
            let odd = b.andc(s, 1);
            let sh = b.mulc(odd, 6);
            let sh = b.addc(sh, 3 * ((j / 8) / 2));
            let sc = b.shr(word, sh);
            let sc = b.andc(sc, 7);
            let sc = b.mulc(sc, 2);
            let sc = b.addc(sc, 1);
            let sc = b.itof(sc);
            let dl = b.fmul(d, sc);
            // group g = 4s + l: nibble (qh[g/2] >> 4 (g%2)), index qs[g] | (nibble & 7) << 8
            let at2 = b.mulc(s, 2);
            let qh = b.ld8_at(at2, 32 + (j / 8) / 2);
            let nib = b.shrc(qh, 4 * ((j / 8) % 2));
            let hi = b.andc(nib, 7);
            let hi = b.shlc(hi, 8);
            let at4 = b.mulc(s, 4);
            let lo = b.ld8_at(at4, j / 8);
            let idx = b.or(lo, hi);
            let neg = b.andc(nib, 8);
            let g = grid(b, Table::Iq1sGrid, idx, 8, j % 8);
            shifted_product(b, dl, g, neg)
        }
    })
}

/// The little-endian u32 at byte `k + var`, read as two u16 (the blocks of these formats
/// are only 2-byte aligned).
fn ld32_halves(b: &mut Builder, var: Id, k: u32) -> Id {
    let lo = b.ld_at(Width::U16, var, k);
    let hi = b.ld_at(Width::U16, var, k + 2);
    let hi = b.shlc(hi, 16);
    b.or(lo, hi)
}

/// `(d * (0.5 + s)) * scale` for the IQ2/IQ3 4-bit scales.
fn half_plus_scaled(b: &mut Builder, d: Id, s: Id, scale: f32) -> Id {
    let half = fconst(b, 0.5);
    let s = b.itof(s);
    let s = b.fadd(half, s);
    let ds = b.fmul(d, s);
    let k = fconst(b, scale);
    b.fmul(ds, k)
}

fn fconst(b: &mut Builder, v: f32) -> Id {
    let bits = b.c(v.to_bits());
    b.node(Node::Bits(bits))
}

/// Entry `k` of grid row `idx` (`per` entries per row) of `table`.
fn grid(b: &mut Builder, table: Table, idx: Id, per: u32, k: u32) -> Id {
    let at = b.mulc(idx, per);
    let at = b.addc(at, k);
    b.node(Node::Lookup(table, at))
}

/// `(db * mag)`, negated when bit `bit` of `signs` is set (a sign flip, exact).
fn sign_flip(b: &mut Builder, db: Id, mag: Id, signs: Id, bit: u32) -> Id {
    let m = b.itof(mag);
    let v = b.fmul(db, m);
    let s = b.shrc(signs, bit);
    let s = b.andc(s, 1);
    let s = b.shlc(s, 31);
    let bits = b.node(Node::ToBits(v));
    let bits = b.bin(Op::Xor, bits, s);
    b.node(Node::Bits(bits))
}

/// [`sign_flip`] with the sign byte from `table[sidx]`.
fn signed_product(b: &mut Builder, db: Id, mag: Id, table: Table, sidx: Id, bit: u32) -> Id {
    let signs = b.node(Node::Lookup(table, sidx));
    sign_flip(b, db, mag, signs, bit)
}

/// `dl * (g + delta)` with `delta = -1/8` when `neg != 0`, else `+1/8`.
fn shifted_product(b: &mut Builder, dl: Id, g: Id, neg: Id) -> Id {
    let minus = b.c((-0.125f32).to_bits());
    let plus = b.c(0.125f32.to_bits());
    let delta = b.sel(neg, minus, plus);
    let delta = b.node(Node::Bits(delta));
    let g = b.itof(g);
    let v = b.fadd(g, delta);
    b.fmul(dl, v)
}

impl Unit {
    /// The tables the program reads.
    pub fn tables(&self) -> Vec<Table> {
        let mut t: Vec<Table> = self
            .nodes
            .iter()
            .filter_map(|n| match n {
                Node::Lookup(t, _) => Some(*t),
                _ => None,
            })
            .collect();
        t.sort();
        t.dedup();
        t
    }

    /// The weights as dot-product terms: where every weight of the unit is
    /// `scale * q + offset` with an integer `q` and a few distinct (scale, offset) pairs
    /// (the legacy and K formats, IQ4), a dot product can sum `q x` per pair and apply
    /// the scale once: `scale * Σ q x ± offset * Σ x`, one multiply-add per weight
    /// instead of three float operations. Other formats keep one term per weight.
    pub fn dot_plan(&self) -> DotPlan {
        /// (scale, q, offset and whether it is subtracted)
        type Affine = (Id, Id, Option<(Id, bool)>);
        let affine = |w: Id| -> Option<Affine> {
            let mul = |n: Node| match n {
                Node::FMul(a, b) => match (self.nodes[a], self.nodes[b]) {
                    (Node::IToF(_), _) => Some((b, a)),
                    (_, Node::IToF(_)) => Some((a, b)),
                    _ => None,
                },
                _ => None,
            };
            match self.nodes[w] {
                Node::FSub(m, o) => mul(self.nodes[m]).map(|(s, q)| (s, q, Some((o, true)))),
                Node::FAdd(m, o) => mul(self.nodes[m]).map(|(s, q)| (s, q, Some((o, false)))),
                n => mul(n).map(|(s, q)| (s, q, None)),
            }
        };
        let terms: Option<Vec<_>> = self.weights.iter().map(|&w| affine(w)).collect();
        let mut groups: Vec<Group> = Vec::new();
        if let Some(terms) = terms {
            for (j, (scale, q, offset)) in terms.into_iter().enumerate() {
                match groups
                    .iter_mut()
                    .find(|g| g.scale == scale && g.offset == offset)
                {
                    Some(g) => g.terms.push((j, q)),
                    None => groups.push(Group {
                        scale,
                        offset,
                        terms: vec![(j, q)],
                    }),
                }
            }
        }
        if groups.is_empty() || groups.len() > 4 {
            return DotPlan::Plain;
        }
        DotPlan::Affine(groups)
    }

    /// The nodes a dot plan reads.
    pub fn dot_roots(&self, plan: &DotPlan) -> Vec<Id> {
        match plan {
            DotPlan::Plain => self.weights.to_vec(),
            DotPlan::Affine(groups) => groups
                .iter()
                .flat_map(|g| {
                    g.terms
                        .iter()
                        .map(|&(_, q)| q)
                        .chain([g.scale])
                        .chain(g.offset.map(|(o, _)| o))
                })
                .collect(),
        }
    }

    /// Which nodes the roots depend on (constants folded into load immediates and
    /// shift amounts are not emitted on their own).
    fn live(&self, roots: &[Id]) -> Vec<bool> {
        let mut live = vec![false; self.nodes.len()];
        for &w in roots {
            live[w] = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if !live[i] {
                continue;
            }
            let mut mark = |id: Id| live[id] = true;
            match self.nodes[i] {
                Node::SubIdx | Node::Const(_) => {}
                Node::Load(_, base, _) => {
                    if let Some(b) = base {
                        mark(b)
                    }
                }
                Node::Bin(_, a, b) | Node::FMul(a, b) | Node::FAdd(a, b) | Node::FSub(a, b) => {
                    mark(a);
                    mark(b);
                }
                Node::Sel(c, a, b) => {
                    mark(c);
                    mark(a);
                    mark(b);
                }
                Node::Bfe(a, pos, _) => {
                    mark(a);
                    mark(pos);
                }
                Node::Lookup(_, a)
                | Node::F16(a)
                | Node::Bits(a)
                | Node::ToBits(a)
                | Node::IToF(a) => mark(a),
            }
        }
        live
    }

    /// Interprets the program on one block (`block` holds at least the block's bytes)
    /// for sub-block `sub`: the 32 weights. Loads past the block, or misaligned, are
    /// errors (they would fault or read the next block on the GPU).
    pub fn eval(&self, block: &[u8], block_bytes: usize, sub: u32) -> Result<[f32; 32], String> {
        let mut v = vec![0u32; self.nodes.len()];
        let tables: Vec<(Table, Vec<i32>)> =
            self.tables().into_iter().map(|t| (t, t.values())).collect();
        for (i, n) in self.nodes.iter().enumerate() {
            let f = |id: Id| f32::from_bits(v[id]);
            v[i] = match *n {
                Node::SubIdx => sub,
                Node::Const(k) => k,
                Node::Load(w, base, imm) => {
                    let off = base.map_or(0, |b| v[b]).wrapping_add(imm) as usize;
                    let (len, align) = match w {
                        Width::U8 | Width::S8 => (1, 1),
                        Width::U16 => (2, 2),
                        Width::U32 => (4, 4),
                    };
                    if off + len > block_bytes || !off.is_multiple_of(align) {
                        return Err(format!(
                            "node {i}: {w:?} load at byte {off} of a {block_bytes}-byte block"
                        ));
                    }
                    let bytes = &block[off..off + len];
                    match w {
                        Width::U8 => bytes[0] as u32,
                        Width::S8 => bytes[0] as i8 as i32 as u32,
                        Width::U16 => u16::from_le_bytes([bytes[0], bytes[1]]) as u32,
                        Width::U32 => u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
                    }
                }
                Node::Bin(op, a, b) => eval_op(op, v[a], v[b]),
                Node::Sel(c, a, b) => {
                    if v[c] != 0 {
                        v[a]
                    } else {
                        v[b]
                    }
                }
                Node::Bfe(a, pos, len) => {
                    v[a].checked_shr(v[pos]).unwrap_or(0) & (((1u64 << len) - 1) as u32)
                }
                Node::Lookup(t, idx) => {
                    let values = &tables
                        .iter()
                        .find(|(k, _)| *k == t)
                        .expect("tables() lists every lookup")
                        .1;
                    *values
                        .get(v[idx] as usize)
                        .ok_or_else(|| format!("node {i}: {t:?}[{}] out of range", v[idx]))?
                        as u32
                }
                Node::F16(a) => half::f16::from_bits(v[a] as u16).to_f32().to_bits(),
                Node::Bits(a) | Node::ToBits(a) => v[a],
                Node::IToF(a) => (v[a] as i32 as f32).to_bits(),
                Node::FMul(a, b) => (f(a) * f(b)).to_bits(),
                Node::FAdd(a, b) => (f(a) + f(b)).to_bits(),
                Node::FSub(a, b) => (f(a) - f(b)).to_bits(),
            };
        }
        Ok(self.weights.map(|w| f32::from_bits(v[w])))
    }

    /// The program as PTX, for the nodes `roots` needs. Registers: `%sub` (u32) holds
    /// the sub-block index and `%bp` (u64) the block's address; node `i` lands in
    /// `%u{i}` (integer) or `%f{i}` (f32), with `%a{i}` for a table address, `%b{i}` for
    /// the block address plus node `i` and `%h{i}` for a half. `indent` prefixes each
    /// line. The caller declares `.reg .b32 %u<N>`, `.reg .f32 %f<N>`, `.reg .b64 %a<N>`,
    /// `.reg .b64 %b<N>`, `.reg .b16 %h<N>` and `.reg .pred %p<N>` with
    /// `N = nodes.len()`.
    pub fn to_ptx(&self, indent: &str, roots: &[Id]) -> String {
        let live = self.live(roots);
        let mut out = String::new();
        // Block address plus each distinct run-time offset, computed once: `%b{base}`.
        let mut addressed = vec![false; self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let line = |out: &mut String, s: String| {
                let _ = writeln!(out, "{indent}{s}");
            };
            match *n {
                Node::SubIdx => line(&mut out, format!("mov.u32 %u{i}, %sub;")),
                Node::Const(k) => line(&mut out, format!("mov.u32 %u{i}, {k};")),
                Node::Load(w, base, imm) => {
                    let ty = match w {
                        Width::U8 => "u8",
                        Width::S8 => "s8",
                        Width::U16 => "u16",
                        Width::U32 => "u32",
                    };
                    let addr = match base {
                        None => "%bp".to_string(),
                        Some(b) => {
                            if !addressed[b] {
                                addressed[b] = true;
                                line(&mut out, format!("cvt.u64.u32 %b{b}, %u{b};"));
                                line(&mut out, format!("add.u64 %b{b}, %bp, %b{b};"));
                            }
                            format!("%b{b}")
                        }
                    };
                    line(
                        &mut out,
                        format!("ld.global.nc.{ty} %u{i}, [{addr}+{imm}];"),
                    );
                }
                Node::Bin(op, a, b) => {
                    let ins = match op {
                        Op::Add => "add.u32",
                        Op::Sub => "sub.u32",
                        Op::Mul => "mul.lo.u32",
                        Op::Shr => "shr.b32",
                        Op::Shl => "shl.b32",
                        Op::And => "and.b32",
                        Op::Or => "or.b32",
                        Op::Xor => "xor.b32",
                        Op::Lt => {
                            line(&mut out, format!("setp.lt.u32 %p{i}, %u{a}, %u{b};"));
                            line(&mut out, format!("selp.u32 %u{i}, 1, 0, %p{i};"));
                            continue;
                        }
                    };
                    line(&mut out, format!("{ins} %u{i}, %u{a}, %u{b};"));
                }
                Node::Sel(c, a, b) => {
                    line(&mut out, format!("setp.ne.u32 %p{i}, %u{c}, 0;"));
                    line(&mut out, format!("selp.u32 %u{i}, %u{a}, %u{b}, %p{i};"));
                }
                Node::Bfe(a, pos, len) => {
                    line(&mut out, format!("bfe.u32 %u{i}, %u{a}, %u{pos}, {len};"));
                }
                Node::Lookup(t, idx) => {
                    line(&mut out, format!("mov.u64 %a{i}, {};", t.symbol()));
                    line(&mut out, format!("mad.wide.u32 %a{i}, %u{idx}, 1, %a{i};"));
                    let ty = if t.signed() { "s8" } else { "u8" };
                    line(&mut out, format!("ld.global.nc.{ty} %u{i}, [%a{i}];"));
                }
                Node::F16(a) => {
                    line(&mut out, format!("cvt.u16.u32 %h{i}, %u{a};"));
                    line(&mut out, format!("cvt.f32.f16 %f{i}, %h{i};"));
                }
                Node::Bits(a) => line(&mut out, format!("mov.b32 %f{i}, %u{a};")),
                Node::ToBits(a) => line(&mut out, format!("mov.b32 %u{i}, %f{a};")),
                Node::IToF(a) => line(&mut out, format!("cvt.rn.f32.s32 %f{i}, %u{a};")),
                Node::FMul(a, b) => line(&mut out, format!("mul.rn.f32 %f{i}, %f{a}, %f{b};")),
                Node::FAdd(a, b) => line(&mut out, format!("add.rn.f32 %f{i}, %f{a}, %f{b};")),
                Node::FSub(a, b) => line(&mut out, format!("sub.rn.f32 %f{i}, %f{a}, %f{b};")),
            }
        }
        out
    }
}

/// How a kernel forms the dot product of a unit with 32 activations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DotPlan {
    /// `Σ w_j x_j`, one fused multiply-add per weight.
    Plain,
    /// Per group: `scale * Σ q_j x_j`, minus (or plus) `offset * Σ x_j`.
    Affine(Vec<Group>),
}

/// Weights `scale * q_j ± offset` sharing one scale and offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// An f32 node.
    pub scale: Id,
    /// An f32 node and whether it is subtracted.
    pub offset: Option<(Id, bool)>,
    /// `(j, q)`: weight `j`'s integer value as an f32 node (`IToF`).
    pub terms: Vec<(usize, Id)>,
}

/// PTX definitions of `tables` (module-scope `.global` arrays).
pub fn tables_ptx(tables: &[Table]) -> String {
    let mut out = String::new();
    for t in tables {
        let values = t.values();
        let list = values
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            ".global .align 4 .{} {}[{}] = {{{list}}};",
            if t.signed() { "s8" } else { "u8" },
            t.symbol(),
            values.len()
        );
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mcc_runtime::quant::{self, WeightType};

    /// The runtime's scalar reference dequantization of `bytes` (whole blocks of `W`).
    fn reference<W: WeightType>(bytes: &[u8]) -> Vec<f32> {
        // Copy into 8-byte aligned storage: block structs hold f16 (2-byte alignment).
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: the u64 storage is at least bytes.len() long; u8 has no alignment.
        let dst =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), bytes.len()) };
        dst.copy_from_slice(bytes);
        let blocks = quant::blocks_of::<W>(dst);
        let mut out = vec![0f32; blocks.len() * W::BLOCK_ELEMS];
        W::dequantize_ref(blocks, &mut out);
        out
    }

    pub(crate) fn reference_of(t: GgmlType, bytes: &[u8]) -> Vec<f32> {
        use quant::*;
        match t {
            GgmlType::F32 => reference::<f32::F32>(bytes),
            GgmlType::F16 => reference::<f16::F16>(bytes),
            GgmlType::BF16 => reference::<bf16::BF16>(bytes),
            GgmlType::Q4_0 => reference::<q4_0::Q4_0>(bytes),
            GgmlType::Q4_1 => reference::<q4_1::Q4_1>(bytes),
            GgmlType::Q5_0 => reference::<q5_0::Q5_0>(bytes),
            GgmlType::Q5_1 => reference::<q5_1::Q5_1>(bytes),
            GgmlType::Q8_0 => reference::<q8_0::Q8_0>(bytes),
            GgmlType::Q2_K => reference::<q2_k::Q2_K>(bytes),
            GgmlType::Q3_K => reference::<q3_k::Q3_K>(bytes),
            GgmlType::Q4_K => reference::<q4_k::Q4_K>(bytes),
            GgmlType::Q5_K => reference::<q5_k::Q5_K>(bytes),
            GgmlType::Q6_K => reference::<q6_k::Q6_K>(bytes),
            GgmlType::IQ1_S => reference::<iq1_s::IQ1_S>(bytes),
            GgmlType::IQ1_M => reference::<iq1_m::IQ1_M>(bytes),
            GgmlType::IQ2_XXS => reference::<iq2_xxs::IQ2_XXS>(bytes),
            GgmlType::IQ2_XS => reference::<iq2_xs::IQ2_XS>(bytes),
            GgmlType::IQ2_S => reference::<iq2_s::IQ2_S>(bytes),
            GgmlType::IQ3_XXS => reference::<iq3_xxs::IQ3_XXS>(bytes),
            GgmlType::IQ3_S => reference::<iq3_s::IQ3_S>(bytes),
            GgmlType::IQ4_NL => reference::<iq4_nl::IQ4_NL>(bytes),
            GgmlType::IQ4_XS => reference::<iq4_xs::IQ4_XS>(bytes),
        }
    }

    /// xorshift bytes: every bit pattern of scales and quants gets exercised.
    pub(crate) fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    /// For every supported format, the unit programs over random blocks give exactly
    /// the runtime's reference dequantization (where the reference is finite: random
    /// f16 scales include infinities and NaNs, whose products depend on the order of
    /// operations).
    #[test]
    fn unit_programs_match_the_runtime_dequantization() {
        for t in SUPPORTED {
            let geo = geometry(t).unwrap();
            let u = unit(t).unwrap();
            let n_blocks = 64;
            let bytes = random_bytes(n_blocks * geo.block_bytes as usize, t.id() as u64 + 7);
            let want = reference_of(t, &bytes);
            assert_eq!(want.len(), n_blocks * geo.units_per_block as usize * 32);
            let mut checked = 0;
            for blk in 0..n_blocks {
                let at = blk * geo.block_bytes as usize;
                let block = &bytes[at..at + geo.block_bytes as usize];
                for sub in 0..geo.units_per_block {
                    let got = u
                        .eval(block, geo.block_bytes as usize, sub)
                        .unwrap_or_else(|e| panic!("{}: {e}", t.name()));
                    for (j, &g) in got.iter().enumerate() {
                        let e = (blk * geo.units_per_block as usize + sub as usize) * 32 + j;
                        if !want[e].is_finite() {
                            continue;
                        }
                        assert_eq!(
                            g.to_bits(),
                            want[e].to_bits(),
                            "{}: block {blk} sub {sub} weight {j}: {g} vs {}",
                            t.name(),
                            want[e]
                        );
                        checked += 1;
                    }
                }
            }
            assert!(
                checked > want.len() / 2,
                "{}: only {checked} of {} weights were finite",
                t.name(),
                want.len()
            );
        }
    }

    #[test]
    fn unsupported_formats_have_no_program() {
        for t in GgmlType::ALL {
            assert_eq!(unit(t).is_some(), SUPPORTED.contains(&t), "{}", t.name());
            assert_eq!(
                geometry(t).is_some(),
                SUPPORTED.contains(&t),
                "{}",
                t.name()
            );
        }
    }

    #[test]
    fn programs_share_the_per_unit_work() {
        // Q4_K: the scale and minimum are computed once per unit, not per weight.
        let u = unit(GgmlType::Q4_K).unwrap();
        let fsubs = u
            .nodes
            .iter()
            .filter(|n| matches!(n, Node::FSub(..)))
            .count();
        let f16s = u
            .nodes
            .iter()
            .filter(|n| matches!(n, Node::F16(..)))
            .count();
        assert_eq!(fsubs, 32);
        assert_eq!(f16s, 2);
    }
}
