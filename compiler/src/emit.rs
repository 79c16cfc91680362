//! Emit: the generated crate's sources.
//!
//! `model.rs` is built with `quote!` and printed with prettyplease, one `emit_*`
//! function per item; the fixed files come from `templates/` with their `{{holes}}`
//! filled. Output depends only on the GGUF header and the options, in a stable order,
//! so the same input gives byte-identical sources (snapshot-tested).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use proc_macro2::{Literal, TokenStream};
use quote::{format_ident, quote};

use crate::describe::ModelDesc;
use crate::gguf::GgmlType;
use crate::plan::{Layout, Plan, PlannedTensor, Repack};

/// What the emitted crate needs besides the model itself.
#[derive(Clone, Debug)]
pub struct EmitOptions {
    /// Crate directory name.
    pub name: String,
    /// Cargo package (and executable) name. `mcc build` makes it unique per crate
    /// directory ([`crate::build::exe_name`]): cargo keys a package's build-script
    /// output and a binary's compiled output by the package name and options, not by
    /// where the crate is, so two crates of one name in different directories would
    /// otherwise share their assembled weights and executable while both still counted
    /// as fresh.
    pub exe_name: String,
    /// KV-cache length compiled in.
    pub n_ctx: usize,
    /// `-C target-cpu` of a single-tier build (`mcc build --target-cpu`); `None`: one
    /// copy of the model and runtime per kernel tier, chosen at start-up
    /// ([`mcc_runtime::tier`]).
    pub target_cpu: Option<String>,
    /// Linked statically against musl (`mcc build --static`).
    pub static_link: bool,
    /// The model the weights come from: a GGUF file, or what a model made while
    /// building was made from (a checkpoint directory, the F16 file of `--quant`). Only
    /// its file name appears in the sources; the crate reaches a GGUF file through the
    /// [`GGUF_LINK`] symlink.
    pub gguf_path: PathBuf,
    /// The runtime crate the emitted crate depends on (written into Cargo.toml as is).
    pub runtime_path: PathBuf,
}

/// Name of the symlink, in the crate root, to the GGUF that `weights.S` reads with
/// `.incbin`. With the link, no emitted source names a machine-specific path (apart from
/// the runtime's in Cargo.toml), so the sources depend only on the model and options.
pub const GGUF_LINK: &str = "model.gguf";

/// Name of the file, in the crate root, that holds the tensors the build writes
/// ([`Layout::Written`]); `weights.S` reads it with `.incbin` too.
pub const WRITTEN_FILE: &str = "weights.bin";

/// One entry of the emitted crate, by path relative to the crate root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmittedFile {
    pub path: String,
    pub contents: Contents,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Contents {
    /// Text a reader would review (and the snapshot tests pin).
    Source(String),
    /// A shell script the build runs (written executable).
    Script(String),
    /// Generated data (the serialised tokenizer).
    Data(Vec<u8>),
    /// A symlink to this target (the GGUF).
    Symlink(PathBuf),
    /// Tensors of the model (a [`crate::source::ModelSource`] the build holds), repacked
    /// or as they are, one after another in one file; written by the build, streamed,
    /// never held in memory whole.
    Written(Vec<WrittenTensor>),
}

/// One tensor of [`Contents::Written`]: the model's tensor `name`, `rows` × `cols` of
/// `ggml_type`, written (repacked into `repack`, if given) at `offset` of the file,
/// `n_bytes` long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrittenTensor {
    pub name: String,
    pub ggml_type: GgmlType,
    pub repack: Option<Repack>,
    pub rows: u64,
    pub cols: u64,
    pub offset: u64,
    pub n_bytes: u64,
}

impl EmittedFile {
    fn source(path: &str, text: String) -> EmittedFile {
        EmittedFile {
            path: path.into(),
            contents: Contents::Source(text),
        }
    }
}

/// Every file of the emitted crate, sources first, in a fixed order: Cargo.toml,
/// .cargo/config.toml, build.rs, weights.S, src/main.rs, src/model.rs, the kernel
/// tiers' tiers/rustc.sh and tiers/NAME/{Cargo.toml,lib.rs} (none in a single-tier
/// build), tokenizer.bin, model.gguf when the plan reads a GGUF file, and weights.bin
/// when it writes tensors.
pub fn emit_crate(
    desc: &ModelDesc,
    plan: &Plan,
    opts: &EmitOptions,
    tokenizer: Vec<u8>,
) -> Vec<EmittedFile> {
    let source = file_name(&opts.gguf_path);
    let fill = |template: &str, extra: &[(&str, String)]| {
        let mut out = template
            .replace("{{mcc_version}}", env!("CARGO_PKG_VERSION"))
            .replace("{{name}}", &opts.name)
            .replace("{{exe_name}}", &opts.exe_name)
            .replace("{{source}}", &source)
            .replace("{{gguf}}", GGUF_LINK);
        for (k, v) in extra {
            out = out.replace(&format!("{{{{{k}}}}}"), v);
        }
        out
    };
    let runtime = toml_escape(&opts.runtime_path.display().to_string());
    let incbins = emit_incbins(plan);
    let blob_len = plan.blob_len.to_string();
    let written: Vec<WrittenTensor> = plan
        .tensors
        .iter()
        .filter_map(|t| match t.layout {
            Layout::Gguf => None,
            Layout::Written { offset, repack } => Some(WrittenTensor {
                name: t.name.clone(),
                ggml_type: t.ggml_type,
                repack,
                rows: t.rows,
                cols: t.cols,
                offset,
                n_bytes: t.n_bytes,
            }),
        })
        .collect();
    let linked = plan.tensors.iter().any(|t| t.layout == Layout::Gguf);
    let (mut sources, mut rerun) = (Vec::new(), Vec::new());
    if linked {
        sources.push(format!("{GGUF_LINK} (a symlink to {source})"));
        rerun.push(format!(
            "    // Cargo follows the link: a rewritten GGUF re-assembles the blob.\n    \
             println!(\"cargo:rerun-if-changed={GGUF_LINK}\");"
        ));
    }
    if !written.is_empty() {
        sources.push(format!(
            "{WRITTEN_FILE} (tensors mcc wrote from {source}; repacked\n   \
             matrices have 8 rows interleaved)"
        ));
        rerun.push(format!(
            "    println!(\"cargo:rerun-if-changed={WRITTEN_FILE}\");"
        ));
    }
    let (sources, rerun) = (sources.join(" and\n   "), rerun.join("\n"));
    let mut tier_deps = String::new();
    if !tiers(opts).is_empty() {
        tier_deps += "\n# One copy of the model and the runtime per SIMD kernel tier (tiers/, compiled with\n\
                      # the tier's target features); src/main.rs runs one at start-up.";
    }
    for t in tiers(opts) {
        let _ = write!(
            tier_deps,
            "\n{}-tier-{} = {{ path = \"tiers/{}\" }}",
            opts.exe_name,
            t.name(),
            t.name()
        );
    }
    let mut files = vec![
        EmittedFile::source(
            "Cargo.toml",
            fill(
                include_str!("../../templates/Cargo.toml"),
                &[("runtime", runtime.clone()), ("tier_deps", tier_deps)],
            ),
        ),
        EmittedFile::source(
            ".cargo/config.toml",
            fill(
                include_str!("../../templates/tier/config.toml"),
                &[("build", cargo_config_build(opts))],
            ),
        ),
        EmittedFile::source(
            "build.rs",
            fill(
                include_str!("../../templates/build.rs"),
                &[("rerun_weights", rerun)],
            ),
        ),
        EmittedFile::source(
            "weights.S",
            fill(
                include_str!("../../templates/weights.S"),
                &[
                    ("tensors", incbins),
                    ("blob_len", blob_len),
                    ("sources", sources),
                ],
            ),
        ),
        EmittedFile::source(
            "src/model.rs",
            emit_model_rs(desc, plan, opts, tokenizer.len()),
        ),
        EmittedFile {
            path: "tokenizer.bin".into(),
            contents: Contents::Data(tokenizer),
        },
    ];
    if linked {
        files.push(EmittedFile {
            path: GGUF_LINK.into(),
            contents: Contents::Symlink(opts.gguf_path.clone()),
        });
    }
    if !written.is_empty() {
        files.push(EmittedFile {
            path: WRITTEN_FILE.into(),
            contents: Contents::Written(written),
        });
    }
    let at = files
        .iter()
        .position(|f| f.path == "src/model.rs")
        .expect("model.rs is emitted");
    let mut tier_files = Vec::new();
    if !tiers(opts).is_empty() {
        tier_files.push(EmittedFile {
            path: "tiers/rustc.sh".into(),
            contents: Contents::Script(fill(
                include_str!("../../templates/tier/rustc.sh"),
                &[("cases", rustc_cases())],
            )),
        });
    }
    for &tier in tiers(opts) {
        let package = crate::runtime_copy::tier_package(tier);
        tier_files.push(EmittedFile::source(
            &format!("tiers/{}/Cargo.toml", tier.name()),
            fill(
                include_str!("../../templates/tier/Cargo.toml"),
                &[
                    ("tier", tier.name().to_string()),
                    ("runtime", runtime.clone()),
                    ("runtime_package", package),
                ],
            ),
        ));
    }
    files.splice(at + 1..at + 1, tier_files);
    set_entry_points(&mut files, opts, false);
    files
}

/// The SIMD kernel tiers that get a copy of the program in `tiers/`: none in a
/// single-tier build.
fn tiers(opts: &EmitOptions) -> &'static [mcc_runtime::tier::Tier] {
    match opts.target_cpu {
        Some(_) => &[],
        None => &crate::runtime_copy::SIMD_TIERS,
    }
}

/// What `info` says about the code the binary was compiled for.
fn target_cpu_line(opts: &EmitOptions) -> String {
    let cpu = match &opts.target_cpu {
        Some(cpu) => format!("{cpu} (one kernel tier)"),
        None => {
            let mut names: Vec<&str> = tiers(opts).iter().map(|t| t.name()).collect();
            names.push(mcc_runtime::tier::Tier::Scalar.name());
            format!("any x86-64 (kernel tiers {})", names.join(", "))
        }
    };
    if opts.static_link {
        format!("{cpu}, static (musl)")
    } else {
        cpu
    }
}

/// The `[build]` keys of the emitted `.cargo/config.toml`: what `mcc build` passes cargo.
fn cargo_config_build(opts: &EmitOptions) -> String {
    let wrapper = match &opts.target_cpu {
        Some(_) => "",
        None => "rustc-wrapper = \"./tiers/rustc.sh\"\n",
    };
    let target = if opts.static_link {
        format!("target = \"{}\"\n", crate::build::STATIC_TARGET)
    } else {
        String::new()
    };
    let flags: Vec<String> = base_rustflags(opts)
        .iter()
        .map(|f| format!("{f:?}"))
        .collect();
    format!("{target}{wrapper}rustflags = [{}]", flags.join(", "))
}

/// The rustc flags of every crate of the build (a SIMD tier's crates get the tier's on
/// top): what `mcc build` passes cargo, and the emitted `.cargo/config.toml` repeats.
///
/// Loops start on a 64-byte boundary. Without it a hot loop's place in a cache line
/// follows from whatever code the linker put before it, and the same kernel ran 5-8%
/// faster or slower from one binary to the next (SmolLM2 Q4_K_M tg, one thread: the
/// default, static and single-tier builds of identical kernel code).
pub fn base_rustflags(opts: &EmitOptions) -> Vec<String> {
    let cpu = opts.target_cpu.as_deref().unwrap_or("x86-64");
    vec![
        "-C".into(),
        format!("target-cpu={cpu}"),
        "-C".into(),
        "llvm-args=-align-loops=64".into(),
    ]
}

/// tiers/rustc.sh's `case` arms: each SIMD tier's crates get its rustc flags.
fn rustc_cases() -> String {
    crate::runtime_copy::SIMD_TIERS
        .iter()
        .map(|t| {
            format!(
                "    *_tier_{}) exec \"$rustc\" \"$@\" {} ;;",
                t.name(),
                t.rustc_flags().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes (or rewrites, for `--gpu`) the entry points: src/main.rs, which runs the copy
/// of the program for the best tier this CPU has, and each tier's `tiers/NAME/lib.rs`.
/// With `gpu`, every copy also has the model's GPU kernels (src/gpu.rs).
pub fn set_entry_points(files: &mut Vec<EmittedFile>, opts: &EmitOptions, gpu: bool) {
    let (mods, tier_mods, entry) = if gpu {
        (
            "mod gpu;\nmod model;\n",
            "#[path = \"../../src/gpu.rs\"]\nmod gpu;\n#[path = \"../../src/model.rs\"]\nmod model;\n",
            "mcc_runtime::cli::main_gpu::<model::Model>(&gpu::GPU, tier)",
        )
    } else {
        (
            "mod model;\n",
            "#[path = \"../../src/model.rs\"]\nmod model;\n",
            "mcc_runtime::cli::main::<model::Model>(tier)",
        )
    };
    let lib_name = opts.exe_name.replace('-', "_");
    let (tiers_doc, this_copy, copies) = match &opts.target_cpu {
        Some(cpu) => (
            format!("A single-tier build: compiled for `-C target-cpu={cpu}`."),
            "the only one".to_string(),
            "(mcc_runtime::tier::compiled(), run)".to_string(),
        ),
        None => {
            let mut copies: Vec<String> = tiers(opts)
                .iter()
                .map(|t| {
                    format!(
                        "(mcc_runtime::tier::Tier::{:?}, {lib_name}_tier_{}::run)",
                        t,
                        t.name()
                    )
                })
                .collect();
            copies.push("(mcc_runtime::tier::Tier::Scalar, run)".into());
            (
                "One copy of the model and runtime per kernel tier (this crate: scalar; tiers/:\n//! the SIMD ones); `main` runs the best one this CPU has, or the one MCC_CPU names."
                    .to_string(),
                "the scalar tier, compiled for the x86-64 baseline".to_string(),
                copies.join(",\n        "),
            )
        }
    };
    let copies = if copies.contains('\n') {
        format!("\n        {copies},\n    ")
    } else {
        copies
    };
    let main = include_str!("../../templates/main.rs")
        .replace(
            "{{gpu_doc}}",
            if gpu { ", with its GPU kernels" } else { "" },
        )
        .replace("{{tiers_doc}}", &tiers_doc)
        .replace("{{mods}}", mods)
        .replace("{{this_copy}}", &this_copy)
        .replace("{{entry}}", entry)
        .replace("{{copies}}", &copies);
    let mut entries = vec![EmittedFile::source("src/main.rs", main)];
    for &tier in tiers(opts) {
        let lib = include_str!("../../templates/tier/lib.rs")
            .replace("{{tier}}", tier.name())
            .replace("{{flags}}", &tier.rustc_flags().join(" "))
            .replace("{{mods}}", tier_mods)
            .replace("{{entry}}", entry);
        entries.push(EmittedFile::source(
            &format!("tiers/{}/lib.rs", tier.name()),
            lib,
        ));
    }
    for entry in entries {
        match files.iter_mut().find(|f| f.path == entry.path) {
            Some(f) => *f = entry,
            None => {
                // main.rs before model.rs; each lib.rs after its tier's Cargo.toml
                let at = if entry.path == "src/main.rs" {
                    files.iter().position(|f| f.path == "src/model.rs")
                } else {
                    let manifest = entry.path.replace("lib.rs", "Cargo.toml");
                    files.iter().position(|f| f.path == manifest).map(|i| i + 1)
                };
                files.insert(at.unwrap_or(files.len()), entry);
            }
        }
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

fn toml_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// One `.incbin` per tensor from the GGUF link (from `weights.bin` for a written one),
/// padded with zeros to the next tensor's aligned offset.
fn emit_incbins(plan: &Plan) -> String {
    let mut out = String::new();
    let mut at = 0u64;
    for t in &plan.tensors {
        if t.offset > at {
            let _ = writeln!(out, "    .zero {}", t.offset - at);
        }
        let _ = writeln!(
            out,
            "    /* {} {} [{}, {}] at 0x{:x} */",
            t.name,
            t.type_name(),
            t.cols,
            t.rows,
            t.offset
        );
        let (file, skip) = match t.layout {
            Layout::Gguf => (GGUF_LINK, t.file_offset),
            Layout::Written { offset, .. } => (WRITTEN_FILE, offset),
        };
        let _ = writeln!(out, "    .incbin \"{file}\", {skip}, {}", t.n_bytes);
        at = t.offset + t.n_bytes;
    }
    if plan.blob_len > at {
        let _ = writeln!(out, "    .zero {}", plan.blob_len - at);
    }
    out.trim_end().to_string()
}

/// `model.rs`: consts, one static per tensor, compile-time checks, the forward pass and
/// the `Model` impl.
pub fn emit_model_rs(
    desc: &ModelDesc,
    plan: &Plan,
    opts: &EmitOptions,
    tokenizer_len: usize,
) -> String {
    // No file name: rustc hashes each source file's bytes into the compiled code, and
    // the executable must depend on the model's content only, not on its file's name
    // (one built with `--quant` equals one built from llama-quantize's file).
    let header = format!(
        "//! Generated by mcc {}. Do not edit.\n//!\n//! {}: {} layers, {} hidden, {} heads ({} KV) of {}, FFN {}, vocab {}.\n\n",
        env!("CARGO_PKG_VERSION"),
        desc.name.as_deref().unwrap_or("llama"),
        desc.n_layer,
        desc.n_embd,
        desc.n_head,
        desc.n_head_kv,
        desc.head_dim,
        desc.n_ff,
        desc.n_vocab,
    );
    // Each section is printed on its own and the sections are joined by blank lines:
    // prettyplease prints a file's items back to back.
    let mut sections = vec![
        emit_imports(plan, desc.rope_freqs.is_some()),
        emit_consts(desc, plan, opts, tokenizer_len),
    ];
    sections.extend(emit_tensor_groups(plan));
    sections.push(emit_blob());
    sections.extend((0..desc.n_layer).map(|l| emit_layer(l, plan)));
    sections.push(emit_model_impl(desc, plan, opts));
    let body: Vec<String> = sections.into_iter().map(render).collect();
    header + &body.join("\n")
}

/// Prints items as Rust source.
fn render(items: TokenStream) -> String {
    let parsed: syn::File = syn::parse2(items).expect("emitted model.rs is valid Rust");
    prettyplease::unparse(&parsed)
}

/// The tensor statics and their compile-time checks, one group per layer (and one for
/// the tensors before and after the layers), in blob order.
fn emit_tensor_groups(plan: &Plan) -> Vec<TokenStream> {
    let layer_of = |t: &PlannedTensor| {
        t.name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .map(str::to_string)
    };
    // (statics, checks) per group: the checks follow their group's statics.
    let mut groups: Vec<(TokenStream, TokenStream)> = Vec::new();
    let mut current: Option<Option<String>> = None;
    for (i, t) in plan.tensors.iter().enumerate() {
        let key = layer_of(t);
        if current.as_ref() != Some(&key) {
            groups.push(Default::default());
            current = Some(key);
        }
        let group = groups.last_mut().expect("a group was pushed");
        group.0.extend(emit_static(t));
        group.1.extend(emit_check(t, plan.tensors.get(i + 1)));
    }
    groups
        .into_iter()
        .map(|(statics, checks)| quote!(#statics #checks))
        .collect()
}

fn usize_lit(v: impl TryInto<usize> + Copy + std::fmt::Debug) -> Literal {
    Literal::usize_unsuffixed(
        v.try_into()
            .unwrap_or_else(|_| panic!("{v:?} does not fit usize")),
    )
}

/// `0x0012_3400`-style literal for offsets.
fn hex_lit(v: u64) -> Literal {
    let hex = format!("{v:08x}");
    let mut grouped = String::new();
    for (i, c) in hex.chars().enumerate() {
        if i > 0 && (hex.len() - i) % 4 == 0 {
            grouped.push('_');
        }
        grouped.push(c);
    }
    format!("0x{grouped}").parse().expect("hex literal")
}

/// The path of a runtime weight type from its module and name: `q4_k::Q4_K`.
fn type_path((module, name): (String, &str)) -> TokenStream {
    let module = format_ident!("{}", module);
    let ty = format_ident!("{}", name);
    quote!(#module::#ty)
}

fn emit_imports(plan: &Plan, uses_tensor_trait: bool) -> TokenStream {
    let mut types: Vec<(String, &str)> = plan
        .tensors
        .iter()
        .map(|t| (t.type_module(), t.type_name()))
        .collect();
    types.push(("f32".into(), GgmlType::F32.name()));
    types.sort_by_key(|t| t.1);
    types.dedup();
    let paths = types.into_iter().map(type_path);
    let weights = if uses_tensor_trait {
        quote!({Tensor, Weight})
    } else {
        quote!(Weight)
    };
    quote! {
        use mcc_runtime::model::{Config, Ctx};
        use mcc_runtime::quant::{#(#paths),*};
        use mcc_runtime::weights::#weights;
    }
}

fn emit_consts(
    desc: &ModelDesc,
    plan: &Plan,
    opts: &EmitOptions,
    tokenizer_len: usize,
) -> TokenStream {
    let head_dim_doc = if desc.head_dim * desc.n_head == desc.n_embd {
        format!(" Per-head width: `N_EMBD / N_HEAD` = {}.", desc.head_dim)
    } else {
        format!(
            " Per-head width, from `llama.attention.key_length` (`N_EMBD / N_HEAD` would be {}).",
            desc.n_embd / desc.n_head
        )
    };
    let consts: [(&str, usize, String); 12] = [
        (
            "N_EMBD",
            desc.n_embd,
            " Hidden size (`llama.embedding_length`).".into(),
        ),
        (
            "N_LAYER",
            desc.n_layer,
            " Transformer blocks (`llama.block_count`).".into(),
        ),
        (
            "N_HEAD",
            desc.n_head,
            " Query heads (`llama.attention.head_count`).".into(),
        ),
        (
            "N_HEAD_KV",
            desc.n_head_kv,
            format!(
                " Key/value heads (`llama.attention.head_count_kv`): {} query heads share each.",
                desc.n_head / desc.n_head_kv
            ),
        ),
        ("HEAD_DIM", desc.head_dim, head_dim_doc),
        (
            "N_FF",
            desc.n_ff,
            " Feed-forward width (`llama.feed_forward_length`).".into(),
        ),
        ("N_VOCAB", desc.n_vocab, " Vocabulary size.".into()),
        (
            "ROPE_DIM",
            desc.rope_dim,
            " Dimensions of each head that RoPE rotates.".into(),
        ),
        (
            "N_CTX",
            opts.n_ctx,
            format!(
                " KV-cache length compiled in (trained context: {}).",
                desc.n_ctx_train
            ),
        ),
        (
            "N_CTX_TRAIN",
            desc.n_ctx_train,
            " Context length the model was trained with (`llama.context_length`).".into(),
        ),
        (
            "WEIGHTS_LEN",
            plan.blob_len as usize,
            " Bytes of the weight blob.".into(),
        ),
        (
            "TOKENIZER_LEN",
            tokenizer_len,
            " Bytes of the serialised tokenizer.".into(),
        ),
    ];
    let items = consts.iter().map(|(name, v, doc)| {
        let v = if *name == "WEIGHTS_LEN" {
            hex_lit(*v as u64)
        } else {
            usize_lit(*v)
        };
        let name = format_ident!("{name}");
        quote! {
            #[doc = #doc]
            pub const #name: usize = #v;
        }
    });
    let base = desc.rope_base;
    let eps = desc.rms_eps;
    quote! {
        #(#items)*
        /// RoPE frequency base (`llama.rope.freq_base`).
        pub const ROPE_BASE: f32 = #base;
        /// RMSNorm epsilon (`llama.attention.layer_norm_rms_epsilon`).
        pub const RMS_EPS: f32 = #eps;
    }
}

/// The shape of a tensor in terms of the consts, by its role.
fn shape_of(t: &PlannedTensor) -> (TokenStream, TokenStream) {
    let role = t.name.rsplit('.').nth(1).unwrap_or(&t.name);
    let role = role.strip_prefix("blk.").unwrap_or(role);
    match role {
        "token_embd" | "output" => (quote!(N_VOCAB), quote!(N_EMBD)),
        "attn_norm" | "ffn_norm" | "output_norm" => (quote!(1), quote!(N_EMBD)),
        "attn_q" => (quote!({ N_HEAD * HEAD_DIM }), quote!(N_EMBD)),
        "attn_k" | "attn_v" => (quote!({ N_HEAD_KV * HEAD_DIM }), quote!(N_EMBD)),
        "attn_output" => (quote!(N_EMBD), quote!({ N_HEAD * HEAD_DIM })),
        "ffn_gate" | "ffn_up" => (quote!(N_FF), quote!(N_EMBD)),
        "ffn_down" => (quote!(N_EMBD), quote!(N_FF)),
        "rope_freqs" => (quote!(1), quote!({ ROPE_DIM / 2 })),
        _ => {
            let (rows, cols) = (usize_lit(t.rows), usize_lit(t.cols));
            (quote!(#rows), quote!(#cols))
        }
    }
}

fn emit_static(t: &PlannedTensor) -> TokenStream {
    let ident = format_ident!("{}", t.ident);
    let ty = format_ident!("{}", t.type_name());
    let (rows, cols) = shape_of(t);
    let offset = hex_lit(t.offset);
    let repacked = match t.repack() {
        None => String::new(),
        Some(to) => format!(" ({}, 8 rows interleaved)", to.source().name()),
    };
    let doc = format!(
        " `{}`: {}{repacked} [{}, {}], {} bytes.",
        t.name,
        t.type_name(),
        t.cols,
        t.rows,
        t.n_bytes
    );
    quote! {
        #[doc = #doc]
        pub static #ident: Weight<#ty, #rows, #cols> = Weight::at(#offset);
    }
}

/// The tensor has the byte size the GGUF says and ends before the next one starts
/// (the last one, before the end of the blob).
fn emit_check(t: &PlannedTensor, next: Option<&PlannedTensor>) -> TokenStream {
    let ident = format_ident!("{}", t.ident);
    let bytes = usize_lit(t.n_bytes);
    let limit = match next {
        Some(next) => {
            let next = format_ident!("{}", next.ident);
            quote!(#next.offset())
        }
        None => quote!(WEIGHTS_LEN),
    };
    quote!(
        const _: () = assert!(#ident.fits(#bytes, #limit));
    )
}

fn emit_blob() -> TokenStream {
    quote! {
        extern "C" {
            /// The weight blob, assembled from `weights.S` into a large-data section.
            #[link_name = "mcc_weights"]
            static WEIGHTS_BLOB: [u8; WEIGHTS_LEN];
        }
        extern "C" {
            /// The serialised tokenizer (`tokenizer.ggml.*` of the GGUF), assembled from
            /// `weights.S`: stored once, whichever kernel tiers read it.
            #[link_name = "mcc_tokenizer"]
            static TOKENIZER_BLOB: [u8; TOKENIZER_LEN];
        }
    }
}

fn emit_layer(l: usize, plan: &Plan) -> TokenStream {
    let t = |role: &str| plan.get(&format!("blk.{l}.{role}.weight"));
    let id = |role: &str| format_ident!("{}", t(role).ident);
    let (an, q, k, v, o) = (
        id("attn_norm"),
        id("attn_q"),
        id("attn_k"),
        id("attn_v"),
        id("attn_output"),
    );
    let (fnn, g, u, d) = (id("ffn_norm"), id("ffn_gate"), id("ffn_up"), id("ffn_down"));
    let mix = |roles: &[&str]| {
        roles
            .iter()
            .map(|r| t(r).type_name())
            .collect::<Vec<_>>()
            .join("/")
    };
    let doc = format!(
        " `blk.{l}`: attention (q/k/v/o {}), feed-forward (gate/up/down {}).",
        mix(&["attn_q", "attn_k", "attn_v", "attn_output"]),
        mix(&["ffn_gate", "ffn_up", "ffn_down"])
    );
    let name = format_ident!("layer_{l}");
    let layer = usize_lit(l);
    quote! {
        #[doc = #doc]
        fn #name(ctx: &mut Ctx) {
            ctx.attention(#layer, &#an, &#q, &#k, &#v, &#o);
            ctx.ffn(#layer, &#fnn, &#g, &#u, &#d);
        }
    }
}

fn emit_model_impl(desc: &ModelDesc, plan: &Plan, opts: &EmitOptions) -> TokenStream {
    let layers = (0..desc.n_layer).map(|l| format_ident!("layer_{l}"));
    let output = match &desc.output {
        Some(_) => quote!(OUTPUT),
        None => quote!(TOKEN_EMBD),
    };
    let forward_doc = if desc.output.is_some() {
        " The forward pass: embed, every layer in order, final norm, logits through `output.weight`."
    } else {
        " The forward pass: embed, every layer in order, final norm, logits through the token embedding (tied output)."
    };
    let rope_freqs = match &desc.rope_freqs {
        Some(_) => quote!(Some(ROPE_FREQS.blocks(Self::weights()))),
        None => quote!(None),
    };
    let info = emit_info(desc, plan, opts);
    quote! {
        /// The compiled model.
        pub struct Model;

        impl mcc_runtime::model::Model for Model {
            const CONFIG: Config = Config {
                n_embd: N_EMBD,
                n_head: N_HEAD,
                n_head_kv: N_HEAD_KV,
                head_dim: HEAD_DIM,
                n_ff: N_FF,
                n_layer: N_LAYER,
                n_vocab: N_VOCAB,
                n_ctx: N_CTX,
                n_ctx_train: N_CTX_TRAIN,
                rope_dim: ROPE_DIM,
                rope_base: ROPE_BASE,
                rms_eps: RMS_EPS,
            };
            const INFO: &'static str = #info;

            fn weights() -> &'static [u8] {
                // SAFETY: `mcc_weights` is the WEIGHTS_LEN-byte read-only blob of weights.S.
                unsafe { &WEIGHTS_BLOB }
            }

            fn tokenizer() -> &'static [u8] {
                // SAFETY: `mcc_tokenizer` is the TOKENIZER_LEN-byte read-only tokenizer.bin of weights.S.
                unsafe { &TOKENIZER_BLOB }
            }

            fn rope_freqs() -> Option<&'static [f32]> {
                #rope_freqs
            }

            #[doc = #forward_doc]
            fn forward(ctx: &mut Ctx) {
                ctx.embed(&TOKEN_EMBD);
                #(#layers(ctx);)*
                ctx.output(&OUTPUT_NORM, &#output);
            }
        }
    }
}

/// The text `./NAME info` prints.
fn emit_info(desc: &ModelDesc, plan: &Plan, opts: &EmitOptions) -> String {
    let mut mix: BTreeMap<&str, (usize, u64)> = BTreeMap::new();
    for t in &plan.tensors {
        let e = mix.entry(t.type_name()).or_default();
        e.0 += 1;
        e.1 += t.n_bytes;
    }
    let mix = mix
        .iter()
        .map(|(k, (n, b))| format!("{k} x{n} ({:.1} MiB)", *b as f64 / (1 << 20) as f64))
        .collect::<Vec<_>>()
        .join(", ");
    let mut s = String::new();
    let _ = writeln!(
        s,
        "model:        {}",
        desc.name.as_deref().unwrap_or("(unnamed)")
    );
    // What the weights are, not where the file was: a binary depends on the model's
    // content only (one built with `--quant` equals one built from llama-quantize's file).
    let file_type = desc.file_type.map(|ft| {
        crate::describe::file_type_name(ft).map_or_else(|| format!("{ft} (unknown)"), String::from)
    });
    let _ = writeln!(
        s,
        "file type:    {}",
        file_type.as_deref().unwrap_or("(not set)")
    );
    let _ = writeln!(
        s,
        "architecture: llama, {} layers, {} hidden, {} heads / {} KV heads of {}, FFN {}",
        desc.n_layer, desc.n_embd, desc.n_head, desc.n_head_kv, desc.head_dim, desc.n_ff
    );
    let _ = writeln!(
        s,
        "vocabulary:   {} tokens ({} tokenizer{})",
        desc.n_vocab,
        desc.tokenizer.model,
        desc.tokenizer
            .pre
            .as_deref()
            .map(|p| format!(", pre-tokenizer {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "rope:         base {}, {} dims{}",
        desc.rope_base,
        desc.rope_dim,
        if desc.rope_freqs.is_some() {
            ", rope_freqs scaling"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "output:       {}",
        if desc.output.is_some() {
            "output.weight"
        } else {
            "tied to token_embd"
        }
    );
    let _ = writeln!(s, "quant mix:    {mix}");
    let _ = writeln!(s, "weights:      {} bytes", plan.blob_len);
    let _ = writeln!(
        s,
        "context:      {} tokens compiled in (trained {})",
        opts.n_ctx, desc.n_ctx_train
    );
    let _ = writeln!(s, "target cpu:   {}", target_cpu_line(opts));
    let _ = writeln!(s, "built by:     mcc {}", env!("CARGO_PKG_VERSION"));
    s
}
