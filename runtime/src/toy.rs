//! A small random model with F32 weights (2 layers, GQA 2:1, a context long enough for
//! split decode attention) for the unit tests of the forward pass and its users.

use std::sync::OnceLock;

use crate::model::{Config, Ctx, Model};
use crate::quant::f32::F32;
use crate::weights::Weight;

pub const E: usize = 64;
pub const HD: usize = 16;
pub const NH: usize = 4;
pub const NKV: usize = 2;
pub const FF: usize = 96;
pub const V: usize = 40;
pub const CTX: usize = 512;

const fn next(at: usize, rows: usize, cols: usize) -> usize {
    (at + rows * cols * 4).next_multiple_of(64)
}

// Blob layout: token_embd, then per layer attn_norm, q, k, v, o, ffn_norm, gate, up,
// down, then output_norm and output.
const O_TOK: usize = 0;
const O_L0: usize = next(O_TOK, V, E);
const LAYER: [(usize, usize); 9] = [
    (1, E),
    (NH * HD, E),
    (NKV * HD, E),
    (NKV * HD, E),
    (E, NH * HD),
    (1, E),
    (FF, E),
    (FF, E),
    (E, FF),
];
const fn layer_off(base: usize, k: usize) -> usize {
    let mut at = base;
    let mut i = 0;
    while i < k {
        at = next(at, LAYER[i].0, LAYER[i].1);
        i += 1;
    }
    at
}
const O_L1: usize = layer_off(O_L0, 9);
const O_ON: usize = layer_off(O_L1, 9);
const O_OUT: usize = next(O_ON, 1, E);
const LEN: usize = next(O_OUT, V, E);

macro_rules! layer_statics {
    ($base:expr, $an:ident, $q:ident, $k:ident, $v:ident, $o:ident, $fnn:ident, $g:ident, $u:ident, $d:ident) => {
        pub static $an: Weight<F32, 1, E> = Weight::at(layer_off($base, 0));
        pub static $q: Weight<F32, { NH * HD }, E> = Weight::at(layer_off($base, 1));
        pub static $k: Weight<F32, { NKV * HD }, E> = Weight::at(layer_off($base, 2));
        pub static $v: Weight<F32, { NKV * HD }, E> = Weight::at(layer_off($base, 3));
        pub static $o: Weight<F32, E, { NH * HD }> = Weight::at(layer_off($base, 4));
        pub static $fnn: Weight<F32, 1, E> = Weight::at(layer_off($base, 5));
        pub static $g: Weight<F32, FF, E> = Weight::at(layer_off($base, 6));
        pub static $u: Weight<F32, FF, E> = Weight::at(layer_off($base, 7));
        pub static $d: Weight<F32, E, FF> = Weight::at(layer_off($base, 8));
    };
}
pub static TOK: Weight<F32, V, E> = Weight::at(O_TOK);
layer_statics!(O_L0, AN0, Q0, K0, V0, O0, FN0, G0, U0, D0);
layer_statics!(O_L1, AN1, Q1, K1, V1, O1, FN1, G1, U1, D1);
pub static ON: Weight<F32, 1, E> = Weight::at(O_ON);
pub static OUT: Weight<F32, V, E> = Weight::at(O_OUT);

/// Random weights (norms near 1), in 8-byte aligned storage that lives forever.
pub fn blob() -> &'static [u8] {
    static BLOB: OnceLock<&'static [u8]> = OnceLock::new();
    BLOB.get_or_init(|| {
        let words: &'static mut [u64] = Box::leak(vec![0u64; LEN / 8].into_boxed_slice());
        // SAFETY: the u64 storage is LEN bytes; f32 has no invalid bit patterns.
        let floats =
            unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<f32>(), LEN / 4) };
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        for f in floats.iter_mut() {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            *f = ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.5;
        }
        for norm in [
            layer_off(O_L0, 0),
            layer_off(O_L0, 5),
            layer_off(O_L1, 0),
            layer_off(O_L1, 5),
            O_ON,
        ] {
            for f in &mut floats[norm / 4..norm / 4 + E] {
                *f += 1.0;
            }
        }
        // SAFETY: same storage, viewed as bytes.
        unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), LEN) }
    })
}

pub struct Toy;

impl Model for Toy {
    const CONFIG: Config = Config {
        n_embd: E,
        n_head: NH,
        n_head_kv: NKV,
        head_dim: HD,
        n_ff: FF,
        n_layer: 2,
        n_vocab: V,
        n_ctx: CTX,
        n_ctx_train: CTX,
        rope_dim: HD,
        rope_base: 10000.0,
        rms_eps: 1e-5,
    };
    const INFO: &'static str = "toy";
    fn weights() -> &'static [u8] {
        blob()
    }
    fn tokenizer() -> &'static [u8] {
        &[]
    }
    fn rope_freqs() -> Option<&'static [f32]> {
        None
    }
    fn forward(ctx: &mut Ctx) {
        ctx.embed(&TOK);
        ctx.attention(0, &AN0, &Q0, &K0, &V0, &O0);
        ctx.ffn(0, &FN0, &G0, &U0, &D0);
        ctx.attention(1, &AN1, &Q1, &K1, &V1, &O1);
        ctx.ffn(1, &FN1, &G1, &U1, &D1);
        ctx.output(&ON, &OUT);
    }
}
