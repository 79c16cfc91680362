//! The PTX text of each kernel family, from the templates in `templates/ptx/` with their
//! `{{holes}}` filled for one model: every shape is an immediate.

use std::fmt::Write as _;

use super::dequant::{geometry, unit, DotPlan, Unit};
use crate::gguf::GgmlType;

/// A float as a PTX immediate (`0fXXXXXXXX`, exact).
pub fn f32_imm(v: f32) -> String {
    format!("0f{:08X}", v.to_bits())
}

/// Fills `{{name}}` holes; a hole left unfilled is a bug in this module.
pub fn fill(template: &str, holes: &[(&str, String)]) -> String {
    let mut out = template.to_string();
    for (k, v) in holes {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    debug_assert!(!out.contains("{{"), "unfilled hole in:\n{out}");
    out
}

/// Code that moves each `(register, row bytes)` pointer to the row of token `ctaid.y`:
/// the per-token kernels run a prefill tile as a second grid dimension (decode: 1).
fn token_rows(rows: &[(&str, u64)]) -> String {
    let mut out =
        String::from("\t// Token ctaid.y of a prefill tile: its rows of the per-token buffers.\n");
    out.push_str("\tmov.u32 %trow, %ctaid.y;\n");
    for (reg, bytes) in rows {
        let _ = writeln!(out, "\tmad.wide.u32 {reg}, %trow, {bytes}, {reg};");
    }
    out.trim_end().to_string()
}

/// `ld.global.v4.f32` of the unit's 32 activations into `%x0..%x31` from `%xu`.
fn load_x() -> String {
    let mut out = String::new();
    for k in 0..8 {
        let _ = writeln!(
            out,
            "\tld.global.v4.f32 {{%x{}, %x{}, %x{}, %x{}}}, [%xu+{}];",
            4 * k,
            4 * k + 1,
            4 * k + 2,
            4 * k + 3,
            16 * k
        );
    }
    out.trim_end().to_string()
}

/// `acc += Σ_j w_j x_j` over the unit's 32 weights and activations `%x0..%x31`, by the
/// unit's dot plan; `%dq`, `%sx` and `%other` are scratch.
fn dot(u: &Unit, plan: &DotPlan, acc: &str) -> String {
    let mut out = String::new();
    match plan {
        DotPlan::Plain => {
            for (j, w) in u.weights.iter().enumerate() {
                let _ = writeln!(out, "\tfma.rn.f32 {acc}, %f{w}, %x{j}, {acc};");
            }
        }
        DotPlan::Affine(groups) => {
            for g in groups {
                let _ = writeln!(out, "\tmov.f32 %dq, 0f00000000;");
                if g.offset.is_some() {
                    let _ = writeln!(out, "\tmov.f32 %sx, 0f00000000;");
                }
                for &(j, q) in &g.terms {
                    let _ = writeln!(out, "\tfma.rn.f32 %dq, %f{q}, %x{j}, %dq;");
                    if g.offset.is_some() {
                        let _ = writeln!(out, "\tadd.rn.f32 %sx, %sx, %x{j};");
                    }
                }
                let _ = writeln!(out, "\tfma.rn.f32 {acc}, %f{}, %dq, {acc};", g.scale);
                if let Some((o, minus)) = g.offset {
                    let _ = writeln!(out, "\tmul.rn.f32 %other, %f{o}, %sx;");
                    let op = if minus { "sub" } else { "add" };
                    let _ = writeln!(out, "\t{op}.rn.f32 {acc}, {acc}, %other;");
                }
            }
        }
    }
    out
}

/// Template holes and their values.
type Holes = Vec<(&'static str, String)>;

/// The matvec / embed holes shared by both: the unit program (printed for `roots`) and
/// the geometry.
fn unit_holes(t: GgmlType, cols: u64, for_dot: bool) -> Option<(Unit, DotPlan, Holes)> {
    let geo = geometry(t)?;
    let u = unit(t)?;
    let plan = if for_dot {
        u.dot_plan()
    } else {
        DotPlan::Plain
    };
    let roots = u.dot_roots(&plan);
    let units = cols / 32;
    let row_bytes = cols / t.block_elems() * t.block_bytes();
    let holes = vec![
        ("n_nodes", u.nodes.len().max(1).to_string()),
        ("units", units.to_string()),
        ("units_per_block", geo.units_per_block.to_string()),
        ("block_bytes", geo.block_bytes.to_string()),
        ("row_bytes", row_bytes.to_string()),
        ("unit_code", u.to_ptx("\t", &roots).trim_end().to_string()),
    ];
    Some((u, plan, holes))
}

/// `y = W x` (or `y += W x` with `accumulate`) for a `rows x cols` matrix of type `t`.
pub fn matvec(name: &str, t: GgmlType, rows: u64, cols: u64, accumulate: bool) -> Option<String> {
    let (u, plan, mut holes) = unit_holes(t, cols, true)?;
    let dot = dot(&u, &plan, "%acc");
    let store = if accumulate {
        "\tld.global.f32 %other, [%yp];\n\tadd.rn.f32 %acc, %other, %acc;\n\tst.global.f32 [%yp], %acc;"
    } else {
        "\tst.global.f32 [%yp], %acc;"
    };
    let doc = format!(
        "{}: {rows} x {cols} {} matrix, {} bytes per row.",
        if accumulate { "y += W x" } else { "y = W x" },
        t.name(),
        cols / t.block_elems() * t.block_bytes()
    );
    holes.extend([
        ("doc", doc),
        ("name", name.to_string()),
        ("rows", rows.to_string()),
        ("load_x", load_x()),
        ("dot", dot.trim_end().to_string()),
        ("store", store.to_string()),
    ]);
    Some(fill(
        include_str!("../../../templates/ptx/matvec.ptx"),
        &holes,
    ))
}

/// Tokens per prefill tile: the matmul kernels take this many activation rows.
pub const PREFILL_TILE: usize = 8;

/// `Y = W X` (or `Y += W X`) for [`PREFILL_TILE`] tokens: the matvec's unit walk, with
/// each dequantized weight multiplied into every token's accumulator. Per token the
/// arithmetic is the matvec's, in the same order, so the results are bit-identical to
/// `PREFILL_TILE` matvecs.
pub fn matmul(name: &str, t: GgmlType, rows: u64, cols: u64, accumulate: bool) -> Option<String> {
    let (u, plan, mut holes) = unit_holes(t, cols, true)?;
    let n = PREFILL_TILE;
    let x_row = 4 * cols;
    let y_row = 4 * rows;
    let mut zero = String::new();
    let mut dots = String::new();
    let mut reduce = String::new();
    let mut store = String::new();
    for tok in 0..n {
        let _ = writeln!(zero, "\tmov.f32 %acc{tok}, 0f00000000;");
        for k in 0..8 {
            let _ = writeln!(
                dots,
                "\tld.global.v4.f32 {{%x{}, %x{}, %x{}, %x{}}}, [%xu+{}];",
                4 * k,
                4 * k + 1,
                4 * k + 2,
                4 * k + 3,
                tok as u64 * x_row + 16 * k
            );
        }
        dots.push_str(&dot(&u, &plan, &format!("%acc{tok}")));
        for off in [16, 8, 4, 2, 1] {
            let _ = writeln!(
                reduce,
                "\tshfl.sync.bfly.b32 %other, %acc{tok}, {off}, 31, 0xffffffff;\n\tadd.rn.f32 %acc{tok}, %acc{tok}, %other;"
            );
        }
        let at = tok as u64 * y_row;
        if accumulate {
            let _ = writeln!(
                store,
                "\tld.global.f32 %other, [%yp+{at}];\n\tadd.rn.f32 %acc{tok}, %other, %acc{tok};\n\tst.global.f32 [%yp+{at}], %acc{tok};"
            );
        } else {
            let _ = writeln!(store, "\tst.global.f32 [%yp+{at}], %acc{tok};");
        }
    }
    let doc = format!(
        "{} for {n} tokens: {rows} x {cols} {} matrix (prefill).",
        if accumulate { "Y += W X" } else { "Y = W X" },
        t.name(),
    );
    holes.extend([
        ("doc", doc),
        ("name", name.to_string()),
        ("rows", rows.to_string()),
        ("tokens", n.to_string()),
        ("zero", zero.trim_end().to_string()),
        ("dots", dots.trim_end().to_string()),
        ("reduce", reduce.trim_end().to_string()),
        ("store", store.trim_end().to_string()),
    ]);
    Some(fill(
        include_str!("../../../templates/ptx/matmul.ptx"),
        &holes,
    ))
}

/// Renames a unit program's registers for a kernel that holds two of them: `%u3`,
/// `%f3`, `%a3`, `%b3`, `%h3`, `%p3` become `%gu3`, ... with prefix `g`, and `%sub`,
/// `%bp` become `%subg`, `%bpg`.
fn rename_registers(code: &str, prefix: char) -> String {
    let bytes = code.as_bytes();
    let mut out = String::with_capacity(code.len() + code.len() / 8);
    let word_end = |i: usize| i >= bytes.len() || !bytes[i].is_ascii_alphanumeric();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let rest = &code[i + 1..];
            if rest.starts_with("sub") && word_end(i + 4) {
                out.push_str("%sub");
                out.push(prefix);
                i += 4;
                continue;
            }
            if rest.starts_with("bp") && word_end(i + 3) {
                out.push_str("%bp");
                out.push(prefix);
                i += 3;
                continue;
            }
            if i + 2 < bytes.len()
                && b"ufabhp".contains(&bytes[i + 1])
                && bytes[i + 2].is_ascii_digit()
            {
                out.push('%');
                out.push(prefix);
                i += 1;
                continue;
            }
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

/// The fused feed-forward input: `y = silu(W_gate x) * (W_up x)` for `tokens` tokens
/// (1: decode; [`PREFILL_TILE`]: prefill, X and Y one row per token), one warp per row
/// of both matrices, so the up projection and SwiGLU need no buffer or launch of their
/// own. Each dot is the matvec's (same programs, same order) and the SwiGLU is the
/// `swiglu` formula, so the results equal the three separate steps bit for bit.
pub fn gate_up(
    name: &str,
    (tg, tv): (GgmlType, GgmlType),
    rows: u64,
    cols: u64,
    tokens: usize,
) -> Option<String> {
    let (gg, gv) = (geometry(tg)?, geometry(tv)?);
    let (ug, uv) = (unit(tg)?, unit(tv)?);
    let (pg, pv) = (ug.dot_plan(), uv.dot_plan());
    let mut regs = String::new();
    for (prefix, n) in [('g', ug.nodes.len()), ('v', uv.nodes.len())] {
        let n = n.max(1);
        let _ = writeln!(
            regs,
            "\t.reg .pred %{prefix}p<{n}>;\n\t.reg .b32 %{prefix}u<{n}>;\n\t.reg .f32 %{prefix}f<{n}>;\n\t.reg .b64 %{prefix}a<{n}>;\n\t.reg .b64 %{prefix}b<{n}>;\n\t.reg .b16 %{prefix}h<{n}>;"
        );
    }
    let mut unit_code = rename_registers(&ug.to_ptx("\t", &ug.dot_roots(&pg)), 'g');
    unit_code.push_str(&rename_registers(&uv.to_ptx("\t", &uv.dot_roots(&pv)), 'v'));
    let (mut zero, mut dots, mut reduce, mut store) =
        (String::new(), String::new(), String::new(), String::new());
    for tok in 0..tokens {
        let _ = writeln!(
            zero,
            "\tmov.f32 %accg{tok}, 0f00000000;\n\tmov.f32 %accv{tok}, 0f00000000;"
        );
        for k in 0..8 {
            let _ = writeln!(
                dots,
                "\tld.global.v4.f32 {{%x{}, %x{}, %x{}, %x{}}}, [%xu+{}];",
                4 * k,
                4 * k + 1,
                4 * k + 2,
                4 * k + 3,
                tok as u64 * 4 * cols + 16 * k
            );
        }
        dots.push_str(&rename_registers(
            &dot(&ug, &pg, &format!("%ACCG{tok}")),
            'g',
        ));
        dots.push_str(&rename_registers(
            &dot(&uv, &pv, &format!("%ACCV{tok}")),
            'v',
        ));
        for acc in [format!("%accg{tok}"), format!("%accv{tok}")] {
            for off in [16, 8, 4, 2, 1] {
                let _ = writeln!(
                    reduce,
                    "\tshfl.sync.bfly.b32 %other, {acc}, {off}, 31, 0xffffffff;\n\tadd.rn.f32 {acc}, {acc}, %other;"
                );
            }
        }
        // silu(g) * u = g / (1 + exp(-g)) * u, exp(-g) = 2^(-g log2 e)
        let _ = writeln!(
            store,
            "\tmul.rn.f32 %e, %accg{tok}, 0fBFB8AA3B;\n\tex2.approx.f32 %e, %e;\n\tadd.rn.f32 %e, %e, 0f3F800000;\n\tdiv.rn.f32 %other, %accg{tok}, %e;\n\tmul.rn.f32 %other, %other, %accv{tok};\n\tst.global.f32 [%yp+{}], %other;",
            tok as u64 * 4 * rows
        );
    }
    // The accumulators were kept out of the renaming.
    let dots = dots.replace("%ACCG", "%accg").replace("%ACCV", "%accv");
    let doc = format!(
        "y = silu(W_gate x) * (W_up x) for {tokens} token(s): {rows} x {cols}, gate {}, up {}.",
        tg.name(),
        tv.name()
    );
    let row_bytes = |t: GgmlType| (cols / t.block_elems() * t.block_bytes()).to_string();
    Some(fill(
        include_str!("../../../templates/ptx/gate_up.ptx"),
        &[
            ("doc", doc),
            ("name", name.to_string()),
            ("regs", regs.trim_end().to_string()),
            ("tokens", tokens.to_string()),
            ("rows", rows.to_string()),
            ("units", (cols / 32).to_string()),
            ("row_bytes_g", row_bytes(tg)),
            ("row_bytes_v", row_bytes(tv)),
            ("units_per_block_g", gg.units_per_block.to_string()),
            ("units_per_block_v", gv.units_per_block.to_string()),
            ("block_bytes_g", gg.block_bytes.to_string()),
            ("block_bytes_v", gv.block_bytes.to_string()),
            ("zero", zero.trim_end().to_string()),
            ("unit_code", unit_code.trim_end().to_string()),
            ("dots", dots.trim_end().to_string()),
            ("reduce", reduce.trim_end().to_string()),
            ("store", store.trim_end().to_string()),
        ],
    ))
}

/// `y = dequantize(W[token])` for the `rows x cols` embedding table of type `t`.
pub fn embed(name: &str, t: GgmlType, rows: u64, cols: u64) -> Option<String> {
    let (u, _, mut holes) = unit_holes(t, cols, false)?;
    let mut store = String::new();
    for (j, w) in u.weights.iter().enumerate() {
        let _ = writeln!(store, "\tst.global.f32 [%yp+{}], %f{w};", 4 * j);
    }
    let doc = format!(
        "y = row params[0] of the {rows} x {cols} {} embedding table, dequantized.",
        t.name()
    );
    holes.extend([
        ("doc", doc),
        ("name", name.to_string()),
        ("rows", rows.to_string()),
        ("store", store.trim_end().to_string()),
        ("token_rows", token_rows(&[("%pp", 16), ("%yp", 4 * cols)])),
    ]);
    Some(fill(
        include_str!("../../../templates/ptx/embed.ptx"),
        &holes,
    ))
}

/// RMSNorm over `n_embd` values.
pub fn rmsnorm(n_embd: usize, eps: f32) -> String {
    fill(
        include_str!("../../../templates/ptx/rmsnorm.ptx"),
        &[
            ("n_embd", n_embd.to_string()),
            ("n_embd_f", f32_imm(n_embd as f32)),
            ("eps", format!("{eps:e}")),
            ("eps_f", f32_imm(eps)),
            (
                "token_rows",
                token_rows(&[("%xp", 4 * n_embd as u64), ("%yp", 4 * n_embd as u64)]),
            ),
        ],
    )
}

/// Shapes of the attention-side kernels.
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub n_ctx: usize,
}

/// RoPE on q and k plus the KV-cache append.
pub fn rope_kv(s: &AttnShape) -> String {
    let head_pairs = s.head_dim / 2;
    let q_pairs = s.n_head * head_pairs;
    let kv_pairs = s.n_head_kv * head_pairs;
    fill(
        include_str!("../../../templates/ptx/rope_kv.ptx"),
        &[
            ("n_head", s.n_head.to_string()),
            ("n_head_kv", s.n_head_kv.to_string()),
            ("q_pairs", q_pairs.to_string()),
            ("kv_pairs", kv_pairs.to_string()),
            ("qk_pairs", (q_pairs + kv_pairs).to_string()),
            ("n_threads", (q_pairs + 2 * kv_pairs).to_string()),
            ("head_pairs", head_pairs.to_string()),
            ("rope_pairs", (s.rope_dim / 2).to_string()),
            ("kv_dim", (s.n_head_kv * s.head_dim).to_string()),
            ("kv_row_bytes", (2 * s.n_head_kv * s.head_dim).to_string()),
            (
                "token_rows",
                token_rows(&[
                    ("%qp", 4 * (s.n_head * s.head_dim) as u64),
                    ("%kp", 4 * (s.n_head_kv * s.head_dim) as u64),
                    ("%vp", 4 * (s.n_head_kv * s.head_dim) as u64),
                    ("%pp", 16),
                ]),
            ),
        ],
    )
}

/// Threads of an attention CTA: at least 128, and enough for one per head dimension.
pub fn attention_threads(head_dim: usize) -> usize {
    head_dim.next_multiple_of(32).max(128)
}

/// A CTA-wide reduction of `reg` with `op` (`max.f32` or `add.rn.f32`) over `n_warps`
/// warps, through the shared array `red`; every thread ends with the result.
fn cta_reduce(reg: &str, op: &str, n_warps: usize) -> String {
    let mut out = String::new();
    for off in [16, 8, 4, 2, 1] {
        let _ = writeln!(
            out,
            "\tshfl.sync.bfly.b32 %other, {reg}, {off}, 31, 0xffffffff;\n\t{op} {reg}, {reg}, %other;"
        );
    }
    let _ = writeln!(out, "\tmov.u32 %sa, red;\n\tmad.lo.u32 %sa, %w, 4, %sa;");
    let _ = writeln!(out, "\t@%lead st.shared.f32 [%sa], {reg};\n\tbar.sync 0;");
    let _ = writeln!(out, "\tld.shared.f32 {reg}, [red];");
    for k in 1..n_warps {
        let _ = writeln!(
            out,
            "\tld.shared.f32 %other, [red+{}];\n\t{op} {reg}, {reg}, %other;",
            4 * k
        );
    }
    let _ = write!(out, "\tbar.sync 0;");
    out
}

/// Attention of one token over the f16 cache (`head_dim` a multiple of 8, at most 256).
pub fn attention(s: &AttnShape) -> String {
    let threads = attention_threads(s.head_dim);
    let n_warps = threads / 32;
    let scale = 1.0f32 / (s.head_dim as f32).sqrt();
    let dims_per_lane = s.head_dim.div_ceil(32);
    // Step 2: 8 dimensions per iteration, a 16-byte load of the key row.
    let mut dot = String::from("\tld.global.v4.b32 {%kw0, %kw1, %kw2, %kw3}, [%ea];\n");
    for k in 0..4 {
        let _ = writeln!(
            dot,
            "\tmov.b32 {{%h0, %h1}}, %kw{k};\n\tcvt.f32.f16 %kx{}, %h0;\n\tcvt.f32.f16 %kx{}, %h1;",
            2 * k,
            2 * k + 1
        );
    }
    dot.push_str("\tld.shared.v4.f32 {%qx0, %qx1, %qx2, %qx3}, [%sa];\n");
    dot.push_str("\tld.shared.v4.f32 {%qx4, %qx5, %qx6, %qx7}, [%sa+16];\n");
    for k in 0..8 {
        let _ = writeln!(dot, "\tfma.rn.f32 %s, %qx{k}, %kx{k}, %s;");
    }
    // Step 4: lane l holds dimensions l + 32 k; the last group may be partial.
    let mut mix = String::new();
    let mut mix_step = String::new();
    let mut mix_store = String::new();
    for k in 0..dims_per_lane {
        let partial = 32 * (k + 1) > s.head_dim;
        let guard = if partial {
            format!("@%g{k} ")
        } else {
            String::new()
        };
        let _ = writeln!(mix, "\tmov.f32 %a{k}, 0f00000000;");
        if partial {
            let _ = writeln!(mix, "\tsetp.lt.u32 %g{k}, %lane, {};", s.head_dim - 32 * k);
        }
        let _ = writeln!(
            mix_step,
            "\t{guard}ld.global.b16 %h0, [%row+{}];\n\t{guard}cvt.f32.f16 %v, %h0;\n\t{guard}fma.rn.f32 %a{k}, %s, %v, %a{k};",
            64 * k
        );
        let _ = writeln!(
            mix_store,
            "\t{guard}st.shared.f32 [%sa+{}], %a{k};",
            128 * k
        );
    }
    let mut mix_sum = String::from("\tld.shared.f32 %acc, [%sa];\n");
    for w in 1..n_warps {
        let _ = writeln!(
            mix_sum,
            "\tld.shared.f32 %v, [%sa+{}];\n\tadd.rn.f32 %acc, %acc, %v;",
            4 * w * s.head_dim
        );
    }
    fill(
        include_str!("../../../templates/ptx/attention.ptx"),
        &[
            ("threads", threads.to_string()),
            ("n_warps", n_warps.to_string()),
            ("n_head", s.n_head.to_string()),
            ("group", (s.n_head / s.n_head_kv).to_string()),
            ("head_dim", s.head_dim.to_string()),
            ("n_ctx", s.n_ctx.to_string()),
            ("scale", format!("1/sqrt({})", s.head_dim)),
            ("scale_f", f32_imm(scale)),
            ("head_bytes_f32", (4 * s.head_dim).to_string()),
            ("head_bytes_f16", (2 * s.head_dim).to_string()),
            ("score_row_bytes", (4 * s.n_ctx).to_string()),
            ("kv_row_bytes", (2 * s.n_head_kv * s.head_dim).to_string()),
            ("dims_per_lane", dims_per_lane.to_string()),
            ("part_len", (n_warps * s.head_dim).to_string()),
            ("dot", dot.trim_end().to_string()),
            ("mix", mix.trim_end().to_string()),
            ("mix_step", mix_step.trim_end().to_string()),
            ("mix_store", mix_store.trim_end().to_string()),
            ("mix_sum", mix_sum.trim_end().to_string()),
            ("reduce_max", cta_reduce("%m", "max.f32", n_warps)),
            ("reduce_sum", cta_reduce("%sum", "add.rn.f32", n_warps)),
            (
                "token_rows",
                token_rows(&[
                    ("%qp", 4 * (s.n_head * s.head_dim) as u64),
                    ("%op", 4 * (s.n_head * s.head_dim) as u64),
                    ("%sp", 4 * (s.n_head * s.n_ctx) as u64),
                    ("%pp", 16),
                ]),
            ),
        ],
    )
}

/// SwiGLU over `n_ff` values.
pub fn swiglu(n_ff: usize) -> String {
    fill(
        include_str!("../../../templates/ptx/swiglu.ptx"),
        &[
            ("n_ff", n_ff.to_string()),
            (
                "token_rows",
                token_rows(&[("%gp", 4 * n_ff as u64), ("%upp", 4 * n_ff as u64)]),
            ),
        ],
    )
}

/// Greedy pick over `n_vocab` logits.
pub fn argmax(n_vocab: usize) -> String {
    let mut reduce = String::new();
    for off in [16, 8, 4, 2, 1] {
        let _ = writeln!(
            reduce,
            "\tshfl.sync.bfly.b32 %ov, %best, {off}, 31, 0xffffffff;\n\
             \tshfl.sync.bfly.b32 %oi, %best_i, {off}, 31, 0xffffffff;\n\
             \tsetp.gt.f32 %take, %ov, %best;\n\
             \tsetp.lt.u32 %lt, %oi, %best_i;\n\
             \tsetp.eq.and.f32 %eq, %ov, %best, %lt;\n\
             \tor.pred %take, %take, %eq;\n\
             \t@%take mov.f32 %best, %ov;\n\
             \t@%take mov.u32 %best_i, %oi;"
        );
    }
    fill(
        include_str!("../../../templates/ptx/argmax.ptx"),
        &[
            ("n_vocab", n_vocab.to_string()),
            ("warp_reduce", reduce.trim_end().to_string()),
            (
                "token_rows",
                token_rows(&[("%lp", 4 * n_vocab as u64), ("%pp", 16)]),
            ),
        ],
    )
}
