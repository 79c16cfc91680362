//! A PTX interpreter for the subset of PTX that mcc emits, so that the tests can run the
//! kernels without a GPU: every CTA's threads run one after another until each reaches
//! a `bar.sync` (released when all have), a `shfl.sync` (exchanged when the whole warp
//! is there) or `ret`. Memory is a flat byte array with bounds checks; shared memory is
//! per CTA. Arithmetic follows the PTX ISA for the instructions used: 32-bit integer ops
//! wrap, `.rn` float ops are IEEE f32, `ex2.approx` is computed exactly (the hardware's
//! is within 2 ulp).
//!
//! It checks what `ptxas` cannot: indexing, reductions, barriers, shuffles, the launch
//! ABI. It does not model timing, caches or the memory model beyond program order, and
//! it rejects any instruction outside the subset (so a new template fails loudly here
//! first).

use std::collections::HashMap;

/// Errors of loading or running PTX.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("line {line}: {msg}")]
    Parse { line: usize, msg: String },
    #[error("{kernel}: {msg}")]
    Run { kernel: String, msg: String },
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Space {
    Global,
    Shared,
}

#[derive(Clone, Debug, PartialEq)]
enum Base {
    Reg(usize),
    /// A parameter, a shared variable or a global symbol, resolved at launch.
    Sym(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Reg(usize),
    Imm(u64),
    Sym(String),
    Special(Special),
    Mem(Base, i64),
    Vec(Vec<usize>),
    Label(usize),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Special {
    TidX,
    CtaidX,
    CtaidY,
}

#[derive(Clone, Debug)]
struct Inst {
    guard: Option<(usize, bool)>,
    op: String,
    kind: Kind,
    args: Vec<Operand>,
    line: usize,
}

/// An instruction decoded once at parse time.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Ret,
    Bra,
    Bar,
    Shfl,
    LdParam,
    Ld {
        space: Space,
        size: usize,
        n: usize,
        signed: bool,
    },
    St {
        space: Space,
        size: usize,
    },
    /// `mov.b32 {lo, hi}, r`
    Unpack,
    Mov {
        wide: bool,
    },
    Cvta,
    Cvt(Cvt),
    Setp {
        cmp: Cmp,
        float: bool,
        combine: Option<bool>,
    },
    Selp,
    Alu(Alu),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cvt {
    U16U32,
    U64U32,
    F32F16,
    F16F32,
    F32S32,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmp {
    Ge,
    Lt,
    Ne,
    Eq,
    Gt,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Alu {
    AddU32,
    SubU32,
    MulLoU32,
    MadLoU32,
    DivU32,
    RemU32,
    ShrU32,
    ShlB32,
    AndB32,
    OrB32,
    XorB32,
    OrPred,
    AddU64,
    MulWideU32,
    MadWideU32,
    AddF32,
    SubF32,
    MulF32,
    DivF32,
    FmaF32,
    MaxF32,
    NegF32,
    SqrtF32,
    RcpF32,
    Ex2F32,
    BfeU32,
}

/// Decodes an opcode (`ld.global.nc.u8`, `fma.rn.f32`, ...); `None` outside the subset.
fn decode(op: &str, vector_dst: bool) -> Option<Kind> {
    let parts: Vec<&str> = op.split('.').collect();
    let ty = *parts.last()?;
    let size = |ty: &str| match ty {
        "u8" | "s8" => Some(1),
        "u16" | "b16" => Some(2),
        "u32" | "b32" | "f32" => Some(4),
        "u64" => Some(8),
        _ => None,
    };
    let space = |p: &str| match p {
        "global" => Some(Space::Global),
        "shared" => Some(Space::Shared),
        _ => None,
    };
    Some(match parts[0] {
        "ret" => Kind::Ret,
        "bra" => Kind::Bra,
        "bar" => Kind::Bar,
        "shfl" => Kind::Shfl,
        "ld" if parts[1] == "param" => Kind::LdParam,
        "ld" => Kind::Ld {
            space: space(parts[1])?,
            size: size(ty)?,
            n: parts
                .iter()
                .find_map(|p| p.strip_prefix('v').and_then(|n| n.parse().ok()))
                .unwrap_or(1),
            signed: ty == "s8",
        },
        "st" => Kind::St {
            space: space(parts[1])?,
            size: size(ty)?,
        },
        "mov" if vector_dst => Kind::Unpack,
        "mov" => Kind::Mov {
            wide: ty == "u64" || ty == "b64",
        },
        "cvta" => Kind::Cvta,
        "cvt" => Kind::Cvt(match op {
            "cvt.u16.u32" => Cvt::U16U32,
            "cvt.u64.u32" => Cvt::U64U32,
            "cvt.f32.f16" => Cvt::F32F16,
            "cvt.rn.f16.f32" => Cvt::F16F32,
            "cvt.rn.f32.s32" => Cvt::F32S32,
            _ => return None,
        }),
        "setp" => Kind::Setp {
            cmp: match parts[1] {
                "ge" => Cmp::Ge,
                "lt" => Cmp::Lt,
                "ne" => Cmp::Ne,
                "eq" => Cmp::Eq,
                "gt" => Cmp::Gt,
                _ => return None,
            },
            float: ty == "f32",
            combine: match parts.get(2) {
                Some(&"and") => Some(true),
                Some(&"or") => Some(false),
                _ => None,
            },
        },
        "selp" => Kind::Selp,
        _ => Kind::Alu(match op {
            "add.u32" => Alu::AddU32,
            "sub.u32" => Alu::SubU32,
            "mul.lo.u32" => Alu::MulLoU32,
            "mad.lo.u32" => Alu::MadLoU32,
            "div.u32" => Alu::DivU32,
            "rem.u32" => Alu::RemU32,
            "shr.u32" | "shr.b32" => Alu::ShrU32,
            "shl.b32" => Alu::ShlB32,
            "and.b32" => Alu::AndB32,
            "or.b32" => Alu::OrB32,
            "xor.b32" => Alu::XorB32,
            "or.pred" => Alu::OrPred,
            "add.u64" => Alu::AddU64,
            "mul.wide.u32" => Alu::MulWideU32,
            "mad.wide.u32" => Alu::MadWideU32,
            "add.rn.f32" | "add.f32" => Alu::AddF32,
            "sub.rn.f32" => Alu::SubF32,
            "mul.rn.f32" => Alu::MulF32,
            "div.rn.f32" => Alu::DivF32,
            "fma.rn.f32" => Alu::FmaF32,
            "max.f32" => Alu::MaxF32,
            "neg.f32" => Alu::NegF32,
            "sqrt.rn.f32" => Alu::SqrtF32,
            "rcp.rn.f32" => Alu::RcpF32,
            "ex2.approx.f32" => Alu::Ex2F32,
            "bfe.u32" => Alu::BfeU32,
            _ => return None,
        }),
    })
}

#[derive(Clone, Debug)]
struct Entry {
    params: Vec<String>,
    /// (name, bytes, alignment)
    shared: Vec<(String, usize, usize)>,
    n_regs: usize,
    code: Vec<Inst>,
}

/// A parsed PTX module.
#[derive(Clone, Debug)]
pub struct Module {
    globals: Vec<(String, Vec<u8>)>,
    entries: HashMap<String, std::sync::Arc<Entry>>,
}

fn strip_comment(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn parse_imm(s: &str) -> Option<u64> {
    if let Some(hex) = s.strip_prefix("0f") {
        return u32::from_str_radix(hex, 16).ok().map(u64::from);
    }
    if let Some(hex) = s.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok();
    }
    if let Some(neg) = s.strip_prefix('-') {
        return neg
            .parse::<u64>()
            .ok()
            .map(|v| (v as i64).wrapping_neg() as u64);
    }
    s.parse::<u64>().ok()
}

/// Splits `a, {b, c}, [d+4]` at top-level commas.
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(c);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

impl Module {
    /// Parses a PTX module as mcc emits it.
    pub fn parse(text: &str) -> Result<Module, SimError> {
        let mut globals = Vec::new();
        let mut entries = HashMap::new();
        let lines: Vec<&str> = text.lines().collect();
        let mut i = 0;
        let err = |line: usize, msg: String| SimError::Parse {
            line: line + 1,
            msg,
        };
        while i < lines.len() {
            let line = strip_comment(lines[i]).trim();
            if line.starts_with(".global") {
                // .global .align 4 .u8 name[N] = {a, b, ...};
                let (decl, init) = line
                    .split_once('=')
                    .ok_or_else(|| err(i, "global without initializer".into()))?;
                let name = decl
                    .split_whitespace()
                    .last()
                    .and_then(|w| w.split('[').next())
                    .ok_or_else(|| err(i, "global without a name".into()))?;
                let signed = decl.contains(".s8");
                let init = init.trim().trim_end_matches(';').trim();
                let init = init.trim_start_matches('{').trim_end_matches('}');
                let mut bytes = Vec::new();
                for v in init.split(',') {
                    let v: i64 = v
                        .trim()
                        .parse()
                        .map_err(|_| err(i, format!("bad table value {v:?}")))?;
                    if !(if signed { -128..=127 } else { 0..=255 }).contains(&v) {
                        return Err(err(i, format!("table value {v} out of range")));
                    }
                    bytes.push(v as u8);
                }
                globals.push((name.to_string(), bytes));
                i += 1;
                continue;
            }
            if let Some(rest) = line.strip_prefix(".visible .entry ") {
                let name = rest.trim_end_matches('(').trim().to_string();
                let (entry, next) = Self::parse_entry(&lines, i + 1)?;
                entries.insert(name, std::sync::Arc::new(entry));
                i = next;
                continue;
            }
            i += 1;
        }
        Ok(Module { globals, entries })
    }

    fn parse_entry(lines: &[&str], mut i: usize) -> Result<(Entry, usize), SimError> {
        let err = |line: usize, msg: String| SimError::Parse {
            line: line + 1,
            msg,
        };
        let mut params = Vec::new();
        while i < lines.len() {
            let l = strip_comment(lines[i]).trim();
            i += 1;
            if let Some(p) = l.strip_prefix(".param .u64 ") {
                params.push(p.trim_end_matches(',').trim().to_string());
            } else if l.starts_with(')') {
                break;
            }
        }
        let mut shared = Vec::new();
        let mut regs: HashMap<String, usize> = HashMap::new();
        let mut labels: HashMap<String, usize> = HashMap::new();
        let mut raw: Vec<(usize, String)> = Vec::new();
        while i < lines.len() {
            let l = strip_comment(lines[i]).trim().to_string();
            i += 1;
            if l == "}" {
                break;
            }
            if l.is_empty() || l == "{" || l.starts_with(".maxntid") || l.starts_with(".reg") {
                continue;
            }
            if let Some(rest) = l.strip_prefix(".shared ") {
                // .shared .align A .TYPE name[N];
                let words: Vec<&str> = rest.trim_end_matches(';').split_whitespace().collect();
                let align: usize = words
                    .get(1)
                    .and_then(|w| w.parse().ok())
                    .ok_or_else(|| err(i - 1, "shared without alignment".into()))?;
                let elem = match words.get(2) {
                    Some(&".f32") | Some(&".u32") => 4,
                    other => return Err(err(i - 1, format!("shared type {other:?}"))),
                };
                let decl = words.get(3).copied().unwrap_or_default();
                let (name, n) = decl
                    .trim_end_matches(']')
                    .split_once('[')
                    .ok_or_else(|| err(i - 1, "shared without size".into()))?;
                let n: usize = n
                    .parse()
                    .map_err(|_| err(i - 1, "bad shared size".into()))?;
                shared.push((name.to_string(), n * elem, align));
                continue;
            }
            if let Some(label) = l.strip_suffix(':') {
                labels.insert(label.to_string(), raw.len());
                continue;
            }
            raw.push((i - 1, l));
        }
        let mut reg = |name: &str| {
            let n = regs.len();
            *regs.entry(name.to_string()).or_insert(n)
        };
        let mut code = Vec::new();
        for (line, text) in raw {
            let text = text.trim_end_matches(';').trim();
            let (guard, text) = match text.strip_prefix('@') {
                Some(rest) => {
                    let (g, rest) = rest
                        .split_once(' ')
                        .ok_or_else(|| err(line, "guard without instruction".into()))?;
                    let (neg, g) = match g.strip_prefix('!') {
                        Some(g) => (true, g),
                        None => (false, g),
                    };
                    (Some((reg(g), !neg)), rest.trim())
                }
                None => (None, text),
            };
            let (op, rest) = match text.split_once(char::is_whitespace) {
                Some((op, rest)) => (op.to_string(), rest.trim()),
                None => (text.to_string(), ""),
            };
            let mut args = Vec::new();
            for a in split_args(rest) {
                let operand = if let Some(inner) = a.strip_prefix('[') {
                    let inner = inner.trim_end_matches(']');
                    let (base, off) = match inner.split_once('+') {
                        Some((b, o)) => (
                            b,
                            parse_imm(o).ok_or_else(|| err(line, format!("bad offset {o}")))?
                                as i64,
                        ),
                        None => (inner, 0),
                    };
                    let base = if base.starts_with('%') {
                        Base::Reg(reg(base))
                    } else {
                        Base::Sym(base.to_string())
                    };
                    Operand::Mem(base, off)
                } else if let Some(inner) = a.strip_prefix('{') {
                    Operand::Vec(
                        inner
                            .trim_end_matches('}')
                            .split(',')
                            .map(|r| reg(r.trim()))
                            .collect(),
                    )
                } else if a == "%tid.x" {
                    Operand::Special(Special::TidX)
                } else if a == "%ctaid.x" {
                    Operand::Special(Special::CtaidX)
                } else if a == "%ctaid.y" {
                    Operand::Special(Special::CtaidY)
                } else if a.starts_with('%') {
                    Operand::Reg(reg(&a))
                } else if let Some(v) = parse_imm(&a) {
                    Operand::Imm(v)
                } else if op.starts_with("bra") {
                    Operand::Label(
                        *labels
                            .get(a.as_str())
                            .ok_or_else(|| err(line, format!("unknown label {a}")))?,
                    )
                } else {
                    Operand::Sym(a.to_string())
                };
                args.push(operand);
            }
            let vector_dst = matches!(args.first(), Some(Operand::Vec(_)));
            let kind = decode(&op, vector_dst)
                .ok_or_else(|| err(line, format!("instruction {op} is outside the subset")))?;
            code.push(Inst {
                guard,
                op,
                kind,
                args,
                line: line + 1,
            });
        }
        Ok((
            Entry {
                params,
                shared,
                n_regs: regs.len(),
                code,
            },
            i,
        ))
    }

    /// Names of the module's kernels.
    pub fn kernels(&self) -> Vec<&str> {
        let mut k: Vec<&str> = self.entries.keys().map(String::as_str).collect();
        k.sort();
        k
    }
}

/// Device memory: a flat byte array; address 0 is never valid.
pub struct Device {
    mem: Vec<u8>,
    globals: HashMap<String, u64>,
    module: Module,
    /// Instructions executed, over all launches.
    pub steps: u64,
}

const BASE: u64 = 0x1_0000;

/// The byte range of `addr..addr + len` in a memory of `mem_len` bytes.
fn range(mem_len: usize, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
    let start = addr.checked_sub(BASE)? as usize;
    (start + len <= mem_len).then_some(start..start + len)
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Status {
    Run,
    Barrier,
    Shuffle,
    Done,
}

struct Thread {
    regs: Vec<u64>,
    pc: usize,
    status: Status,
}

impl Device {
    /// A device with `module` loaded (its global tables placed in memory).
    pub fn new(module: Module) -> Device {
        let mut d = Device {
            mem: Vec::new(),
            globals: HashMap::new(),
            module,
            steps: 0,
        };
        let tables = d.module.globals.clone();
        for (name, bytes) in tables {
            let at = d.alloc(bytes.len());
            d.write(at, &bytes);
            d.globals.insert(name, at);
        }
        d
    }

    /// Number of parameters of `kernel`, if the module has it.
    pub fn param_count(&self, kernel: &str) -> Option<usize> {
        self.module.entries.get(kernel).map(|e| e.params.len())
    }

    /// A zeroed allocation of `bytes`, 256-byte aligned.
    pub fn alloc(&mut self, bytes: usize) -> u64 {
        let at = (self.mem.len() as u64).next_multiple_of(256);
        self.mem.resize(at as usize + bytes.max(1), 0);
        BASE + at
    }

    fn range(&self, addr: u64, len: usize) -> Option<std::ops::Range<usize>> {
        range(self.mem.len(), addr, len)
    }

    /// Copies `bytes` to `addr`; panics outside the allocations (a test bug).
    pub fn write(&mut self, addr: u64, bytes: &[u8]) {
        let r = self.range(addr, bytes.len()).expect("write inside memory");
        self.mem[r].copy_from_slice(bytes);
    }

    pub fn read(&self, addr: u64, len: usize) -> &[u8] {
        &self.mem[self.range(addr, len).expect("read inside memory")]
    }

    pub fn write_f32(&mut self, addr: u64, v: &[f32]) {
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.write(addr, &bytes);
    }

    pub fn read_f32(&self, addr: u64, n: usize) -> Vec<f32> {
        self.read(addr, 4 * n)
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }

    /// Runs `kernel` over `grid` CTAs of `block` threads with 64-bit `args`.
    pub fn launch(
        &mut self,
        kernel: &str,
        grid: u32,
        block: u32,
        args: &[u64],
    ) -> Result<(), SimError> {
        self.launch_2d(kernel, (grid, 1), block, args)
    }

    /// Runs `kernel` over a `grid.0 x grid.1` grid of CTAs of `block` threads.
    pub fn launch_2d(
        &mut self,
        kernel: &str,
        (grid, grid_y): (u32, u32),
        block: u32,
        args: &[u64],
    ) -> Result<(), SimError> {
        let entry = self
            .module
            .entries
            .get(kernel)
            .cloned()
            .ok_or_else(|| SimError::Run {
                kernel: kernel.into(),
                msg: "no such kernel".into(),
            })?;
        let fail = |msg: String| SimError::Run {
            kernel: kernel.into(),
            msg,
        };
        if args.len() != entry.params.len() {
            return Err(fail(format!(
                "{} arguments for {} parameters",
                args.len(),
                entry.params.len()
            )));
        }
        let mut shared_at = HashMap::new();
        let mut shared_len = 0usize;
        for (name, bytes, align) in &entry.shared {
            shared_len = shared_len.next_multiple_of(*align);
            shared_at.insert(name.clone(), shared_len as u64);
            shared_len += bytes;
        }
        for cta in (0..grid_y).flat_map(|y| (0..grid).map(move |x| (x, y))) {
            let mut shared = vec![0u8; shared_len];
            let mut threads: Vec<Thread> = (0..block)
                .map(|_| Thread {
                    regs: vec![0; entry.n_regs],
                    pc: 0,
                    status: Status::Run,
                })
                .collect();
            let mut budget: u64 = 50_000_000;
            loop {
                for (tid, t) in threads.iter_mut().enumerate() {
                    while t.status == Status::Run {
                        if budget == 0 {
                            return Err(fail("step budget exhausted".into()));
                        }
                        budget -= 1;
                        self.steps += 1;
                        self.step(&entry, t, tid as u32, cta, args, &shared_at, &mut shared)
                            .map_err(&fail)?;
                    }
                }
                let live: Vec<usize> = (0..block as usize)
                    .filter(|&t| threads[t].status != Status::Done)
                    .collect();
                if live.is_empty() {
                    break;
                }
                let mut progressed = false;
                if live.iter().all(|&t| threads[t].status == Status::Barrier) {
                    if live.len() != block as usize {
                        return Err(fail(format!(
                            "CTA {cta:?}: bar.sync after {} threads exited",
                            block as usize - live.len()
                        )));
                    }
                    for &t in &live {
                        threads[t].status = Status::Run;
                        threads[t].pc += 1;
                    }
                    progressed = true;
                }
                for w in 0..(block as usize).div_ceil(32) {
                    let lanes: Vec<usize> = (32 * w..(32 * w + 32).min(block as usize))
                        .filter(|&t| threads[t].status != Status::Done)
                        .collect();
                    if lanes.is_empty()
                        || !lanes.iter().all(|&t| threads[t].status == Status::Shuffle)
                    {
                        continue;
                    }
                    let pc = threads[lanes[0]].pc;
                    if lanes.iter().any(|&t| threads[t].pc != pc) {
                        return Err(fail("warp lanes at different shuffles".into()));
                    }
                    let inst = &entry.code[pc];
                    let (dst, src, lane_off) = match inst.args.as_slice() {
                        [Operand::Reg(d), Operand::Reg(s), Operand::Imm(o), ..] => (*d, *s, *o),
                        _ => return Err(fail(format!("line {}: shuffle operands", inst.line))),
                    };
                    let vals: Vec<u64> = (32 * w..(32 * w + 32).min(block as usize))
                        .map(|t| threads[t].regs[src])
                        .collect();
                    for &t in &lanes {
                        let lane = t - 32 * w;
                        let from = lane ^ lane_off as usize;
                        let from_t = 32 * w + from;
                        let v = if from < vals.len() && threads[from_t].status != Status::Done {
                            vals[from]
                        } else {
                            vals[lane]
                        };
                        threads[t].regs[dst] = v;
                        threads[t].status = Status::Run;
                        threads[t].pc += 1;
                    }
                    progressed = true;
                }
                if !progressed {
                    return Err(fail(format!(
                        "CTA {cta:?}: threads wait forever (a barrier or shuffle not all reach)"
                    )));
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        entry: &Entry,
        t: &mut Thread,
        tid: u32,
        cta: (u32, u32),
        args: &[u64],
        shared_at: &HashMap<String, u64>,
        shared: &mut [u8],
    ) -> Result<(), String> {
        let globals = &self.globals;
        let mem = &mut self.mem;
        let Some(inst) = entry.code.get(t.pc) else {
            t.status = Status::Done;
            return Ok(());
        };
        let at = |msg: String| format!("line {}: {} {msg}", inst.line, inst.op);
        if let Some((p, want)) = inst.guard {
            if (t.regs[p] != 0) != want {
                t.pc += 1;
                return Ok(());
            }
        }
        let val = |t: &Thread, o: &Operand| -> Result<u64, String> {
            Ok(match o {
                Operand::Reg(r) => t.regs[*r],
                Operand::Imm(v) => *v,
                Operand::Special(Special::TidX) => tid as u64,
                Operand::Special(Special::CtaidX) => cta.0 as u64,
                Operand::Special(Special::CtaidY) => cta.1 as u64,
                Operand::Sym(s) => match (shared_at.get(s), globals.get(s)) {
                    (Some(&a), _) => a,
                    (None, Some(&a)) => a,
                    _ => return Err(at(format!("unknown symbol {s}"))),
                },
                other => return Err(at(format!("operand {other:?}"))),
            })
        };
        let addr = |t: &Thread, o: &Operand, space: Space| -> Result<u64, String> {
            let Operand::Mem(base, off) = o else {
                return Err(at("expects an address".into()));
            };
            let b = match base {
                Base::Reg(r) => t.regs[*r],
                Base::Sym(s) => match space {
                    Space::Shared => *shared_at
                        .get(s)
                        .ok_or_else(|| at(format!("unknown shared {s}")))?,
                    Space::Global => *globals
                        .get(s)
                        .ok_or_else(|| at(format!("unknown global {s}")))?,
                },
            };
            Ok(b.wrapping_add(*off as u64))
        };
        let reg = |o: &Operand| -> Result<usize, String> {
            match o {
                Operand::Reg(r) => Ok(*r),
                _ => Err(at("expects a register".into())),
            }
        };
        let f = |v: u64| f32::from_bits(v as u32);
        let fb = |v: f32| v.to_bits() as u64;
        let a = &inst.args;
        let mut next = t.pc + 1;
        match inst.kind {
            Kind::Ret => {
                t.status = Status::Done;
                return Ok(());
            }
            Kind::Bra => {
                let Some(Operand::Label(l)) = a.first() else {
                    return Err(at("branch target".into()));
                };
                next = *l;
            }
            Kind::Bar => {
                t.status = Status::Barrier;
                return Ok(());
            }
            Kind::Shfl => {
                t.status = Status::Shuffle;
                return Ok(());
            }
            Kind::LdParam => {
                let Operand::Mem(Base::Sym(name), _) = &a[1] else {
                    return Err(at("param operand".into()));
                };
                let i = entry
                    .params
                    .iter()
                    .position(|p| p == name)
                    .ok_or_else(|| at(format!("unknown param {name}")))?;
                t.regs[reg(&a[0])?] = args[i];
            }
            Kind::Ld {
                space,
                size,
                n,
                signed,
            } => {
                let base = addr(t, &a[1], space)?;
                if base % (size * n) as u64 != 0 {
                    return Err(at(format!("misaligned load at {base:#x}")));
                }
                let mut load = |d: usize, p: u64| -> Result<(), String> {
                    let bytes = match space {
                        Space::Shared => shared
                            .get(p as usize..p as usize + size)
                            .ok_or_else(|| at(format!("shared load at {p}")))?,
                        _ => range(mem.len(), p, size)
                            .map(|r| &mem[r])
                            .ok_or_else(|| at(format!("global load at {p:#x}")))?,
                    };
                    let mut le = [0u8; 8];
                    le[..size].copy_from_slice(bytes);
                    let mut v = u64::from_le_bytes(le);
                    if signed {
                        v = (v as u8 as i8 as i32 as u32) as u64;
                    }
                    t.regs[d] = v;
                    Ok(())
                };
                match &a[0] {
                    Operand::Vec(v) if v.len() == n => {
                        for (k, &d) in v.iter().enumerate() {
                            load(d, base + (k * size) as u64)?;
                        }
                    }
                    Operand::Reg(d) if n == 1 => load(*d, base)?,
                    _ => return Err(at("load destination".into())),
                }
            }
            Kind::St { space, size } => {
                let base = addr(t, &a[0], space)?;
                let srcs: Vec<usize> = match &a[1] {
                    Operand::Vec(v) => v.clone(),
                    o => vec![reg(o)?],
                };
                if base % (size * srcs.len()) as u64 != 0 {
                    return Err(at(format!("misaligned store at {base:#x}")));
                }
                for (k, s) in srcs.iter().enumerate() {
                    let p = base + (k * size) as u64;
                    let bytes = t.regs[*s].to_le_bytes();
                    match space {
                        Space::Shared => shared
                            .get_mut(p as usize..p as usize + size)
                            .ok_or_else(|| at(format!("shared store at {p}")))?
                            .copy_from_slice(&bytes[..size]),
                        _ => {
                            let r = range(mem.len(), p, size)
                                .ok_or_else(|| at(format!("global store at {p:#x}")))?;
                            mem[r].copy_from_slice(&bytes[..size]);
                        }
                    }
                }
            }
            Kind::Unpack => {
                let Operand::Vec(halves) = &a[0] else {
                    return Err(at("unpack destination".into()));
                };
                let v = val(t, &a[1])?;
                t.regs[halves[0]] = v & 0xffff;
                t.regs[halves[1]] = (v >> 16) & 0xffff;
            }
            Kind::Mov { wide } => {
                let v = val(t, &a[1])?;
                t.regs[reg(&a[0])?] = if wide { v } else { v & 0xffff_ffff };
            }
            Kind::Cvta => t.regs[reg(&a[0])?] = val(t, &a[1])?,
            Kind::Cvt(c) => {
                let v = val(t, &a[1])?;
                t.regs[reg(&a[0])?] = match c {
                    Cvt::U16U32 => v & 0xffff,
                    Cvt::U64U32 => v & 0xffff_ffff,
                    Cvt::F32F16 => fb(half::f16::from_bits(v as u16).to_f32()),
                    Cvt::F16F32 => half::f16::from_f32(f(v)).to_bits() as u64,
                    Cvt::F32S32 => fb(v as u32 as i32 as f32),
                };
            }
            Kind::Setp {
                cmp,
                float,
                combine,
            } => {
                let (x, y) = (val(t, &a[1])?, val(t, &a[2])?);
                let c = if float {
                    let (x, y) = (f(x), f(y));
                    match cmp {
                        Cmp::Gt => x > y,
                        Cmp::Eq => x == y,
                        Cmp::Ge => x >= y,
                        Cmp::Lt => x < y,
                        Cmp::Ne => x != y,
                    }
                } else {
                    let (x, y) = (x as u32, y as u32);
                    match cmp {
                        Cmp::Gt => x > y,
                        Cmp::Eq => x == y,
                        Cmp::Ge => x >= y,
                        Cmp::Lt => x < y,
                        Cmp::Ne => x != y,
                    }
                };
                let c = match combine {
                    Some(true) => c && val(t, &a[3])? != 0,
                    Some(false) => c || val(t, &a[3])? != 0,
                    None => c,
                };
                t.regs[reg(&a[0])?] = c as u64;
            }
            Kind::Selp => {
                let v = if val(t, &a[3])? != 0 {
                    val(t, &a[1])?
                } else {
                    val(t, &a[2])?
                };
                t.regs[reg(&a[0])?] = v;
            }
            Kind::Alu(op) => {
                let d = reg(&a[0])?;
                let x = val(t, &a[1])?;
                let y = match a.get(2) {
                    Some(o) => val(t, o)?,
                    None => 0,
                };
                let z = match a.get(3) {
                    Some(o) => val(t, o)?,
                    None => 0,
                };
                let (x32, y32) = (x as u32, y as u32);
                t.regs[d] = match op {
                    Alu::AddU32 => x32.wrapping_add(y32) as u64,
                    Alu::SubU32 => x32.wrapping_sub(y32) as u64,
                    Alu::MulLoU32 => x32.wrapping_mul(y32) as u64,
                    Alu::MadLoU32 => x32.wrapping_mul(y32).wrapping_add(z as u32) as u64,
                    Alu::DivU32 => x32.checked_div(y32).ok_or_else(|| at("by zero".into()))? as u64,
                    Alu::RemU32 => x32.checked_rem(y32).ok_or_else(|| at("by zero".into()))? as u64,
                    Alu::ShrU32 => x32.checked_shr(y32).unwrap_or(0) as u64,
                    Alu::ShlB32 => x32.checked_shl(y32).unwrap_or(0) as u64,
                    Alu::AndB32 => (x32 & y32) as u64,
                    Alu::OrB32 => (x32 | y32) as u64,
                    Alu::XorB32 => (x32 ^ y32) as u64,
                    Alu::OrPred => ((x != 0) || (y != 0)) as u64,
                    Alu::AddU64 => x.wrapping_add(y),
                    Alu::MulWideU32 => (x32 as u64) * (y32 as u64),
                    Alu::MadWideU32 => ((x32 as u64) * (y32 as u64)).wrapping_add(z),
                    Alu::AddF32 => fb(f(x) + f(y)),
                    Alu::SubF32 => fb(f(x) - f(y)),
                    Alu::MulF32 => fb(f(x) * f(y)),
                    Alu::DivF32 => fb(f(x) / f(y)),
                    Alu::FmaF32 => fb(f(x).mul_add(f(y), f(z))),
                    Alu::MaxF32 => fb(f(x).max(f(y))),
                    Alu::NegF32 => fb(-f(x)),
                    Alu::SqrtF32 => fb(f(x).sqrt()),
                    Alu::RcpF32 => fb(1.0 / f(x)),
                    Alu::Ex2F32 => fb(f(x).exp2()),
                    // Unsigned extract: bits past bit 31 read as zero.
                    Alu::BfeU32 => {
                        let len = (z as u32).min(32);
                        let v = x32.checked_shr(y32).unwrap_or(0);
                        if len == 32 {
                            v as u64
                        } else {
                            (v & ((1u32 << len) - 1)) as u64
                        }
                    }
                };
            }
        }
        t.pc = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgmlType;
    use crate::gpu::dequant::tests::{random_bytes, reference_of};
    use crate::gpu::dequant::{self, SUPPORTED};
    use crate::gpu::kernels;

    /// Random blocks of type `t` for `rows x cols`, with the blocks whose weights are not
    /// finite or huge (random f16 scales) zeroed, and their reference weights.
    fn weights(t: GgmlType, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let (elems, bb) = (t.block_elems() as usize, t.block_bytes() as usize);
        let mut bytes = random_bytes(rows * cols / elems * bb, seed);
        if elems == 1 {
            // Float types: small random values instead of random bit patterns.
            let vals: Vec<f32> = random_bytes(rows * cols, seed)
                .iter()
                .map(|&b| (b as f32 - 128.0) / 256.0)
                .collect();
            bytes = match t {
                GgmlType::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                GgmlType::F16 => vals
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => vals
                    .iter()
                    .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
                    .collect(),
            };
        }
        let w = reference_of(t, &bytes);
        for (b, block) in w.chunks(elems).enumerate() {
            if block.iter().any(|v| !v.is_finite() || v.abs() > 1e3) {
                bytes[b * bb..(b + 1) * bb].fill(0);
            }
        }
        let w = reference_of(t, &bytes);
        (bytes, w)
    }

    fn module_for(t: GgmlType, rows: u64, emb_rows: u64, cols: u64) -> Module {
        let n = t.name().to_ascii_lowercase();
        let tables = dequant::unit(t).unwrap().tables();
        let mut ptx = dequant::tables_ptx(&tables);
        ptx += &kernels::matvec(&format!("mv_{n}"), t, rows, cols, false).unwrap();
        ptx += &kernels::matvec(&format!("mva_{n}"), t, rows, cols, true).unwrap();
        ptx += &kernels::embed(&format!("embed_{n}"), t, emb_rows, cols).unwrap();
        ptx += &kernels::matmul(&format!("mm_{n}"), t, rows, cols, false).unwrap();
        ptx += &kernels::matmul(&format!("mma_{n}"), t, rows, cols, true).unwrap();
        Module::parse(&ptx).unwrap()
    }

    /// Every type's matvec, residual matvec and embedding lookup, run by the simulator,
    /// against the runtime's dequantization (f64 dot products).
    #[test]
    fn every_type_runs_correctly() {
        let (rows, emb_rows, cols) = (6usize, 9usize, 512usize);
        for t in SUPPORTED {
            let n = t.name().to_ascii_lowercase();
            let (bytes, w) = weights(t, emb_rows, cols, 17 + t.id() as u64);
            let x: Vec<f32> = (0..cols)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
                .collect();
            let mut dev = Device::new(module_for(t, rows as u64, emb_rows as u64, cols as u64));
            let (wp, xp, yp) = (
                dev.alloc(bytes.len()),
                dev.alloc(4 * cols),
                dev.alloc(4 * rows),
            );
            dev.write(wp, &bytes);
            dev.write_f32(xp, &x);
            let want: Vec<(f64, f64)> = (0..rows)
                .map(|r| {
                    let row = &w[r * cols..(r + 1) * cols];
                    let dot = row.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
                    let mag = row
                        .iter()
                        .zip(&x)
                        .map(|(a, b)| (*a as f64 * *b as f64).abs())
                        .sum();
                    (dot, mag)
                })
                .collect();
            dev.launch(&format!("mv_{n}"), 2, 128, &[wp, xp, yp])
                .unwrap();
            let got = dev.read_f32(yp, rows);
            let y0: Vec<f32> = (0..rows).map(|r| r as f32 - 2.5).collect();
            dev.write_f32(yp, &y0);
            dev.launch(&format!("mva_{n}"), 2, 128, &[wp, xp, yp])
                .unwrap();
            let got_acc = dev.read_f32(yp, rows);
            for r in 0..rows {
                let (dot, mag) = want[r];
                let tol = 1e-5 * mag + 1e-6;
                assert!(
                    (got[r] as f64 - dot).abs() <= tol,
                    "{} mv row {r}: {} vs {dot}",
                    t.name(),
                    got[r]
                );
                let acc = dot + y0[r] as f64;
                assert!(
                    (got_acc[r] as f64 - acc).abs() <= tol + 1e-6 * acc.abs(),
                    "{} mva row {r}: {} vs {acc}",
                    t.name(),
                    got_acc[r]
                );
            }
            let params = dev.alloc(16);
            let token = 7u32;
            dev.write(
                params,
                &[token.to_le_bytes(), [0; 4], [0; 4], [0; 4]].concat(),
            );
            let ep = dev.alloc(4 * cols);
            dev.launch(&format!("embed_{n}"), 1, 128, &[wp, params, ep])
                .unwrap();
            let row = &w[token as usize * cols..(token as usize + 1) * cols];
            assert_eq!(dev.read_f32(ep, cols), row, "{} embed", t.name());

            // The matmul of a tile of tokens gives each token the matvec's result, bit
            // for bit, in both store modes.
            let n_tok = kernels::PREFILL_TILE;
            let xs: Vec<f32> = (0..n_tok * cols)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 32.0)
                .collect();
            let (xsp, ysp) = (dev.alloc(4 * n_tok * cols), dev.alloc(4 * n_tok * rows));
            dev.write_f32(xsp, &xs);
            let y0s: Vec<f32> = (0..n_tok * rows).map(|i| i as f32 * 0.25 - 3.0).collect();
            for acc in [false, true] {
                let name = if acc {
                    format!("mma_{n}")
                } else {
                    format!("mm_{n}")
                };
                dev.write_f32(ysp, &y0s);
                dev.launch(&name, 2, 128, &[wp, xsp, ysp]).unwrap();
                let got = dev.read_f32(ysp, n_tok * rows);
                for tok in 0..n_tok {
                    dev.write_f32(xp, &xs[tok * cols..(tok + 1) * cols]);
                    dev.write_f32(yp, &y0s[tok * rows..(tok + 1) * rows]);
                    let mv = if acc {
                        format!("mva_{n}")
                    } else {
                        format!("mv_{n}")
                    };
                    dev.launch(&mv, 2, 128, &[wp, xp, yp]).unwrap();
                    assert_eq!(
                        got[tok * rows..(tok + 1) * rows],
                        dev.read_f32(yp, rows)[..],
                        "{name} token {tok}"
                    );
                }
            }
        }
    }

    /// The fused gate/up/SwiGLU kernel equals two matvecs and the swiglu kernel bit for
    /// bit, for mixed type pairs, in decode (1 token) and prefill (a tile) form.
    #[test]
    fn fused_gate_up_equals_the_separate_steps() {
        let (rows, cols) = (6usize, 512usize);
        let pairs = [
            (GgmlType::Q4_K, GgmlType::Q4_K),
            (GgmlType::Q4_K, GgmlType::Q6_K),
            (GgmlType::Q8_0, GgmlType::IQ4_NL),
            (GgmlType::F16, GgmlType::F32),
            (GgmlType::IQ2_XXS, GgmlType::Q5_0),
        ];
        for (tg, tv) in pairs {
            let (ng, nv) = (
                tg.name().to_ascii_lowercase(),
                tv.name().to_ascii_lowercase(),
            );
            let mut tables = dequant::unit(tg).unwrap().tables();
            tables.extend(dequant::unit(tv).unwrap().tables());
            tables.sort();
            tables.dedup();
            let mut ptx = dequant::tables_ptx(&tables);
            ptx += &kernels::matvec("mv_g", tg, rows as u64, cols as u64, false).unwrap();
            ptx += &kernels::matvec("mv_v", tv, rows as u64, cols as u64, false).unwrap();
            ptx += &kernels::swiglu(rows);
            let tile = kernels::PREFILL_TILE;
            ptx += &kernels::gate_up("gu1", (tg, tv), rows as u64, cols as u64, 1).unwrap();
            ptx += &kernels::gate_up("gut", (tg, tv), rows as u64, cols as u64, tile).unwrap();
            let mut dev = Device::new(Module::parse(&ptx).unwrap());
            let (bg, _) = weights(tg, rows, cols, 5);
            let (bv, _) = weights(tv, rows, cols, 6);
            let (wg, wv) = (dev.alloc(bg.len()), dev.alloc(bv.len()));
            dev.write(wg, &bg);
            dev.write(wv, &bv);
            let xs: Vec<f32> = (0..tile * cols)
                .map(|i| ((i * 29 % 61) as f32 - 30.0) / 40.0)
                .collect();
            let (xp, gp, vp) = (
                dev.alloc(4 * cols),
                dev.alloc(4 * rows),
                dev.alloc(4 * rows),
            );
            let mut want = Vec::new();
            for t in 0..tile {
                dev.write_f32(xp, &xs[t * cols..(t + 1) * cols]);
                dev.launch("mv_g", 2, 128, &[wg, xp, gp]).unwrap();
                dev.launch("mv_v", 2, 128, &[wv, xp, vp]).unwrap();
                dev.launch("swiglu", 1, 256, &[gp, vp]).unwrap();
                want.extend(dev.read_f32(gp, rows));
            }
            let (xsp, yp) = (dev.alloc(4 * tile * cols), dev.alloc(4 * tile * rows));
            dev.write_f32(xsp, &xs);
            dev.launch("gut", 2, 128, &[wg, wv, xsp, yp]).unwrap();
            assert_eq!(dev.read_f32(yp, tile * rows), want, "{ng}/{nv} tile");
            dev.launch("gu1", 2, 128, &[wg, wv, xsp, yp]).unwrap();
            assert_eq!(dev.read_f32(yp, rows), want[..rows], "{ng}/{nv} one token");
        }
    }

    #[test]
    fn unknown_instructions_and_hangs_are_errors() {
        let ptx = ".visible .entry k(\n.param .u64 a\n)\n{\n\tfoo.bar %r1, %r2;\n\tret;\n}\n";
        assert!(Module::parse(ptx).is_err());
        let ptx = ".visible .entry k(\n.param .u64 a\n)\n{\n\tmov.u32 %t, %tid.x;\n\tsetp.eq.u32 %p, %t, 0;\n\t@%p bra OUT;\n\tbar.sync 0;\nOUT:\n\tret;\n}\n";
        let mut dev = Device::new(Module::parse(ptx).unwrap());
        // Thread 0 skips the barrier: real hardware would hang or misbehave.
        assert!(dev.launch("k", 1, 2, &[0]).is_err());
        assert!(dev.launch("nope", 1, 1, &[]).is_err());
    }
}

#[cfg(test)]
mod cost {
    use super::*;
    use crate::gpu::dequant::SUPPORTED;
    use crate::gpu::kernels;

    /// PTX instructions per weight of each type's matvec (one warp per row, 3 units per
    /// lane as in a 3072-wide row), counted by the interpreter, stay within these
    /// bounds (8% above what the emitter reaches now: affine dot terms, word loads with
    /// bit-field extracts, one address per run-time offset). A proxy for the kernels'
    /// arithmetic cost until a GPU measures them; ptxas removes a little more.
    const BOUNDS: [(&str, f64); 22] = [
        ("F32", 4.3),
        ("F16", 5.3),
        ("BF16", 5.4),
        ("Q4_0", 6.2),
        ("Q4_1", 6.1),
        ("Q5_0", 9.7),
        ("Q5_1", 10.2),
        ("Q8_0", 4.4),
        ("Q2_K", 8.3),
        ("Q3_K", 12.6),
        ("Q4_K", 8.5),
        ("Q5_K", 13.1),
        ("Q6_K", 12.0),
        ("IQ1_S", 11.3),
        ("IQ1_M", 12.8),
        ("IQ2_XXS", 15.8),
        ("IQ2_XS", 16.0),
        ("IQ2_S", 15.8),
        ("IQ3_XXS", 16.0),
        ("IQ3_S", 16.3),
        ("IQ4_NL", 8.3),
        ("IQ4_XS", 8.8),
    ];

    #[test]
    fn instructions_per_weight_stay_bounded() {
        let (rows, cols) = (4u64, 3072u64);
        for t in SUPPORTED {
            let n = t.name().to_ascii_lowercase();
            let tables = crate::gpu::dequant::unit(t).unwrap().tables();
            let mut ptx = crate::gpu::dequant::tables_ptx(&tables);
            ptx += &kernels::matvec(&format!("mv_{n}"), t, rows, cols, false).unwrap();
            let mut dev = Device::new(Module::parse(&ptx).unwrap());
            let bytes = (rows * cols / t.block_elems() * t.block_bytes()) as usize;
            let (w, x, y) = (
                dev.alloc(bytes),
                dev.alloc(4 * cols as usize),
                dev.alloc(16),
            );
            dev.launch(&format!("mv_{n}"), 1, 128, &[w, x, y]).unwrap();
            let per_weight = dev.steps as f64 / (rows * cols) as f64;
            let bound = BOUNDS.iter().find(|(name, _)| *name == t.name()).unwrap().1;
            eprintln!(
                "{:8} {per_weight:5.2} PTX instructions per weight",
                t.name()
            );
            assert!(
                per_weight <= bound,
                "{}: {per_weight:.2} > {bound}",
                t.name()
            );
        }
    }
}
