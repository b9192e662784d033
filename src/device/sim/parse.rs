//! PTX text → entries of lowered instructions.
//!
//! Parses the subset of PTX that nvcc emits for labelfree's kernels (see the module doc of
//! `sim`): `.entry` kernels with scalar `.param`s, `.reg` declarations (also in nested `{ }`
//! scopes, whose names shadow), static `.shared` arrays, module-level `.extern .shared` arrays,
//! labels, predicated instructions and `.loc` line information. Everything else at module level
//! (`.file`, `.section` debug blocks, `.version`, `.target`) is read or skipped as it should be.
//!
//! Lowering renumbers every register (scoped names included) to a dense slot index, resolves
//! labels to instruction indices, symbols to shared offsets and parameter names to parameter
//! offsets, and turns the dotted opcode into an `Op` with its types and modifiers. An opcode or
//! operand form the executor does not implement is an error naming it, the kernel and the line.

use std::collections::HashMap;

use super::{SimError, SimResult};

/// A PTX scalar type (the `.u32` of `add.u32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ty {
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    F16x2,
    Bf16,
    Bf16x2,
    F32,
    F64,
    Pred,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "f16x2" => Ty::F16x2,
            "bf16" => Ty::Bf16,
            "bf16x2" => Ty::Bf16x2,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    /// Width in bytes (a predicate counts as 1).
    pub fn bytes(self) -> u32 {
        match self {
            Ty::B8 | Ty::U8 | Ty::S8 | Ty::Pred => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 | Ty::F16x2 | Ty::Bf16x2 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }

    pub fn is_signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }

    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::F16x2 | Ty::Bf16 | Ty::Bf16x2 | Ty::F32 | Ty::F64)
    }
}

/// Rounding modifier of a float instruction or conversion (`.rni` and friends map to the same
/// four directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rm,
    Rp,
}

/// Comparison of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Lo,
    Ls,
    Hi,
    Hs,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

impl Cmp {
    fn parse(s: &str) -> Option<Cmp> {
        Some(match s {
            "eq" => Cmp::Eq,
            "ne" => Cmp::Ne,
            "lt" => Cmp::Lt,
            "le" => Cmp::Le,
            "gt" => Cmp::Gt,
            "ge" => Cmp::Ge,
            "lo" => Cmp::Lo,
            "ls" => Cmp::Ls,
            "hi" => Cmp::Hi,
            "hs" => Cmp::Hs,
            "equ" => Cmp::Equ,
            "neu" => Cmp::Neu,
            "ltu" => Cmp::Ltu,
            "leu" => Cmp::Leu,
            "gtu" => Cmp::Gtu,
            "geu" => Cmp::Geu,
            "num" => Cmp::Num,
            "nan" => Cmp::Nan,
            _ => return None,
        })
    }
}

/// State space of a memory instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
}

/// Special registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid(u8),
    Ntid(u8),
    Ctaid(u8),
    Nctaid(u8),
    LaneId,
    WarpId,
}

/// Shuffle mode of `shfl.sync`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// Byte selection of `prmt.b32`: the generic form reads four 4-bit selectors from `c`, the
/// named modes only `c`'s two low bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrmtMode {
    Generic,
    F4e,
    B4e,
    Rc8,
    Ecl,
    Ecr,
    Rc16,
}

/// The read-modify-write of `atom` / `red`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Min,
    Max,
    And,
    Or,
    Xor,
    Exch,
    Cas,
    Inc,
    Dec,
}

impl AtomOp {
    fn parse(s: &str) -> Option<AtomOp> {
        Some(match s {
            "add" => AtomOp::Add,
            "min" => AtomOp::Min,
            "max" => AtomOp::Max,
            "and" => AtomOp::And,
            "or" => AtomOp::Or,
            "xor" => AtomOp::Xor,
            "exch" => AtomOp::Exch,
            "cas" => AtomOp::Cas,
            "inc" => AtomOp::Inc,
            "dec" => AtomOp::Dec,
            _ => return None,
        })
    }

    /// Whether the simulator implements this operation on this type (the ISA's table, less
    /// the 16-bit and vector forms).
    fn takes(self, ty: Ty) -> bool {
        use Ty::*;
        match self {
            AtomOp::Add => matches!(ty, U32 | S32 | U64 | F32 | F64),
            AtomOp::Min | AtomOp::Max => matches!(ty, U32 | S32 | U64 | S64),
            AtomOp::And | AtomOp::Or | AtomOp::Xor | AtomOp::Exch | AtomOp::Cas => matches!(ty, B32 | B64),
            AtomOp::Inc | AtomOp::Dec => ty == U32,
        }
    }
}

/// One operand after lowering.
#[derive(Clone, Debug, PartialEq)]
pub enum Opnd {
    /// A register slot.
    Reg(u32),
    /// An immediate, as the bits of the instruction's type (f32 as its bits, f64 as its bits).
    Imm(u64),
    /// A special register.
    Special(Special),
    /// `[base + offset]`: base a register slot or none (offset then is the whole address: a
    /// shared symbol's offset or a parameter's offset).
    Addr { base: Option<u32>, offset: i64 },
    /// `{a, b, ...}`; an element may be `Imm` (`{0, %rs7}`) or `Sink` (`_`).
    Vec(Vec<Opnd>),
    /// A predicate register, possibly negated (`!%p1`), as a source.
    Pred { reg: u32, neg: bool },
    /// A branch target (instruction index).
    Target(u32),
    /// `_`: a discarded output.
    Sink,
}

/// What an instruction does; the types and modifiers it needs ride along.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Mov,
    Ld {
        space: Space,
        vec: u8,
    },
    St {
        space: Space,
        vec: u8,
    },
    Cvta,
    Add,
    Sub,
    MulLo,
    MulWide,
    MulHi,
    MadLo,
    MadWide,
    Mul,
    Fma,
    Div,
    Rem,
    Neg,
    Abs,
    Min,
    Max,
    Sqrt,
    Rcp,
    Rsqrt,
    Ex2,
    Lg2,
    Copysign,
    Shl,
    Shr,
    And,
    Or,
    Xor,
    Not,
    Bfi,
    Prmt(PrmtMode),
    Setp(Cmp),
    Selp,
    Cvt {
        from: Ty,
    },
    Bra,
    Ret,
    BarSync,
    Shfl(ShflMode),
    /// `atom` (`ret`: the old value goes to the destination) and `red` (no destination) on
    /// `.global` or `.shared` memory.
    Atom {
        space: Space,
        op: AtomOp,
        ret: bool,
    },
    Mma {
        input: Ty,
    },
    Ldmatrix {
        num: u8,
        trans: bool,
    },
    CpAsync {
        bytes: u8,
    },
    CpAsyncCommit,
    CpAsyncWait {
        all: bool,
    },
    /// `wgmma.fence.sync.aligned`: orders register accesses before the next wgmma.
    WgmmaFence,
    /// `wgmma.commit_group.sync.aligned`: the warpgroup's open wgmma ops become a group.
    WgmmaCommit,
    /// `wgmma.wait_group.sync.aligned N`: retires all but the N most recent groups.
    WgmmaWait,
    /// `wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16,f16}.{bf16,f16}` with A and B from
    /// shared-memory matrix descriptors.
    Wgmma {
        n: u16,
        input: Ty,
    },
    /// `mbarrier.init.shared{::cta}.b64 [addr], count`.
    MbarInit,
    /// `mbarrier.arrive{.expect_tx}.shared{::cta}.b64 state, [addr]{, tx_count}`.
    MbarArrive {
        expect_tx: bool,
    },
    /// `mbarrier.try_wait.parity.shared{::cta}.b64 p, [addr], parity`.
    MbarTryWait,
    /// `cp.async.bulk.tensor.2d.shared::cluster.global{.tile}.mbarrier::complete_tx::bytes
    /// [dst], [map, {c0, c1}], [mbar]` (TMA).
    TmaLoad2d,
    /// Instructions with no effect in a sequential simulator (`fence.proxy.async`,
    /// `fence.mbarrier_init`): every access is already visible to every proxy.
    Nop,
}

/// One lowered instruction.
#[derive(Clone, Debug)]
pub struct Inst {
    pub op: Op,
    /// The instruction's (last) type: `.f32` of `add.f32`, the destination type of `cvt`.
    pub ty: Ty,
    pub rnd: Option<Rnd>,
    /// `.rni`-style rounding to an integral value (cvt).
    pub int_rnd: bool,
    pub ftz: bool,
    pub sat: bool,
    pub approx: bool,
    /// Destinations then sources, as written.
    pub ops: Vec<Opnd>,
    /// `@%p` / `@!%p`.
    pub guard: Option<(u32, bool)>,
    /// PTX line (1-based) and the `.cu` location index (into `Kernel::locs`, u32::MAX: none).
    pub line: u32,
    pub loc: u32,
    /// The opcode as written, for messages and profiles.
    pub text: &'static str,
}

/// One lowered `.entry`.
#[derive(Debug)]
pub struct Kernel {
    pub name: String,
    /// Byte width of each parameter and its offset in the parameter buffer.
    pub params: Vec<(u32, u32)>,
    pub insts: Vec<Inst>,
    pub nregs: u32,
    /// Static shared bytes; the dynamic (`.extern`) window starts at `dynamic_shared_offset`.
    pub static_shared_bytes: u32,
    pub dynamic_shared_offset: u32,
    pub maxntid: Option<[u32; 3]>,
    /// `kernels/NAME.cu:LINE` strings referenced by `Inst::loc`.
    pub locs: Vec<String>,
}

/// A parsed module: its kernels, or for a kernel that could not be lowered, the error.
#[derive(Debug)]
pub struct Module {
    pub name: String,
    pub kernels: Vec<std::result::Result<Kernel, String>>,
    /// (name, params) of every entry, lowered or not.
    pub entry_params: Vec<(String, Vec<u32>, u32)>,
}

impl Module {
    pub fn kernel(&self, name: &str) -> Option<&std::result::Result<Kernel, String>> {
        self.kernels.iter().find(|k| match k {
            Ok(k) => k.name == name,
            Err(e) => e.starts_with(&format!("{name}:")),
        })
    }
}

fn err(module: &str, line: u32, message: impl Into<String>) -> SimError {
    SimError::Ptx { module: module.into(), line, message: message.into() }
}

/// Intern table for opcode text (a `&'static str` per distinct opcode keeps `Inst` small and
/// lets profiles count by opcode without allocating).
fn intern(s: &str) -> &'static str {
    use std::sync::{Mutex, OnceLock};
    static TABLE: OnceLock<Mutex<HashMap<String, &'static str>>> = OnceLock::new();
    let mut t = TABLE.get_or_init(|| Mutex::new(HashMap::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(v) = t.get(s) {
        return v;
    }
    let v: &'static str = Box::leak(s.to_string().into_boxed_str());
    t.insert(s.to_string(), v);
    v
}

/// A raw statement of an entry body.
enum Stmt {
    Open,
    Close,
    Label(String),
    Loc(Vec<(u32, u32)>),
    Text(String),
}

/// Parses a whole module.
pub fn parse_module(module: &str, text: &str) -> SimResult<Module> {
    let lines: Vec<&str> = text.lines().collect();
    let mut files: HashMap<u32, String> = HashMap::new();
    let mut extern_shared: HashMap<String, u32> = HashMap::new();
    // Module-scope static `.shared` arrays: nvcc puts a function's `__shared__` array there
    // when the function is inlined into more than one entry.
    let mut module_shared: Vec<(u32, String)> = Vec::new();
    let mut kernels = Vec::new();
    let mut entry_params = Vec::new();
    let mut i = 0usize;
    while i < lines.len() {
        let line = strip_comment(lines[i]).trim();
        if line.starts_with(".file") {
            // .file 1 "/path/kernels/x.cu"
            let mut it = line.split_whitespace();
            it.next();
            if let (Some(id), Some(path)) = (it.next(), line.split('"').nth(1)) {
                if let Ok(id) = id.parse() {
                    files.insert(id, path.to_string());
                }
            }
            i += 1;
        } else if line.starts_with(".section") {
            // Debug sections: skip the braced block.
            let mut depth = 0i32;
            loop {
                let l = strip_comment(lines[i]);
                depth += l.matches('{').count() as i32 - l.matches('}').count() as i32;
                i += 1;
                if (depth <= 0 && l.contains('}')) || i >= lines.len() {
                    break;
                }
            }
        } else if line.starts_with(".extern") && line.contains(".shared") {
            let decl = line.trim_end_matches(';');
            let name = decl.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("").to_string();
            let align = align_of_decl(decl);
            extern_shared.insert(name, align);
            i += 1;
        } else if line.starts_with(".shared") {
            module_shared.push(((i + 1) as u32, line.trim_end_matches(';').to_string()));
            i += 1;
        } else if line.contains(".entry") {
            let start = i;
            let (name, params, body_start) = parse_entry_header(module, &lines, i)?;
            i = body_start;
            // Collect the body up to the matching close brace.
            let mut depth = 0i32;
            let mut stmts: Vec<(u32, Stmt)> = Vec::new();
            let mut maxntid = None;
            let mut pending = String::new();
            let mut started = false;
            while i < lines.len() {
                let raw = strip_comment(lines[i]);
                let t = raw.trim();
                let lno = (i + 1) as u32;
                i += 1;
                if !started {
                    if let Some(rest) = t.strip_prefix(".maxntid") {
                        let v: Vec<u32> = rest.split(',').filter_map(|s| s.trim().parse().ok()).collect();
                        if v.len() == 3 {
                            maxntid = Some([v[0], v[1], v[2]]);
                        }
                        continue;
                    }
                    if t.starts_with(".minnctapersm") || t.starts_with(".reqntid") || t.starts_with(".maxnreg") {
                        continue;
                    }
                    if t.is_empty() {
                        continue;
                    }
                }
                if t.starts_with(".loc") {
                    stmts.push((lno, Stmt::Loc(parse_loc(t))));
                    continue;
                }
                if t.ends_with(':') && !t.contains(' ') && pending.trim().is_empty() {
                    stmts.push((lno, Stmt::Label(t.trim_end_matches(':').to_string())));
                    continue;
                }
                for c in raw.chars() {
                    match c {
                        '{' if pending.trim().is_empty() || !in_operand_list(&pending) => {
                            if !pending.trim().is_empty() {
                                return Err(err(module, lno, format!("unexpected `{{` after `{}`", pending.trim())));
                            }
                            pending.clear();
                            depth += 1;
                            started = true;
                            stmts.push((lno, Stmt::Open));
                        }
                        '}' if !in_open_vector(&pending) => {
                            if !pending.trim().is_empty() {
                                return Err(err(module, lno, format!("statement without `;`: `{}`", pending.trim())));
                            }
                            pending.clear();
                            depth -= 1;
                            stmts.push((lno, Stmt::Close));
                        }
                        ';' => {
                            stmts.push((lno, Stmt::Text(pending.trim().to_string())));
                            pending.clear();
                        }
                        _ => pending.push(c),
                    }
                }
                pending.push(' ');
                if started && depth == 0 {
                    break;
                }
            }
            let params_bytes: Vec<u32> = params.iter().map(|p| p.1).collect();
            let shared_static: u32;
            let lowered = lower_kernel(module, &name, &params, &stmts, &files, &extern_shared, &module_shared, maxntid);
            match lowered {
                Ok(k) => {
                    shared_static = k.static_shared_bytes;
                    kernels.push(Ok(k));
                }
                Err(e) => {
                    shared_static = 0;
                    kernels.push(Err(format!("{name}: {e}")));
                }
            }
            entry_params.push((name, params_bytes, shared_static));
            let _ = start;
        } else {
            i += 1;
        }
    }
    Ok(Module { name: module.to_string(), kernels, entry_params })
}

/// Inside `{ ... }` that is an operand vector (the statement so far has an opcode).
fn in_operand_list(pending: &str) -> bool {
    let t = pending.trim();
    !t.is_empty() && !t.starts_with('.')
}

fn in_open_vector(pending: &str) -> bool {
    pending.matches('{').count() > pending.matches('}').count()
}

fn strip_comment(l: &str) -> &str {
    match l.find("//") {
        Some(p) => &l[..p],
        None => l,
    }
}

fn align_of_decl(decl: &str) -> u32 {
    let mut it = decl.split_whitespace();
    while let Some(t) = it.next() {
        if t == ".align" {
            return it.next().and_then(|s| s.parse().ok()).unwrap_or(1);
        }
    }
    1
}

/// `.loc 1 11 5, function_name $L__info_string0, inlined_at 1 31 41` → [(1, 11), (1, 31)].
fn parse_loc(t: &str) -> Vec<(u32, u32)> {
    let mut out = Vec::new();
    let mut nums = |s: &str| {
        let v: Vec<u32> = s.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        if v.len() >= 2 {
            out.push((v[0], v[1]));
        }
    };
    let body = t.trim_start_matches(".loc");
    let mut parts = body.split(',');
    if let Some(first) = parts.next() {
        nums(first);
    }
    for p in parts {
        let p = p.trim();
        if let Some(rest) = p.strip_prefix("inlined_at") {
            nums(rest);
        }
    }
    out
}

/// `(name, [(param name, bytes)], index of the first body line)`.
type EntryHeader = (String, Vec<(String, u32)>, usize);

fn parse_entry_header(module: &str, lines: &[&str], mut i: usize) -> SimResult<EntryHeader> {
    let first = strip_comment(lines[i]);
    let after = first.split(".entry").nth(1).unwrap_or("").trim();
    let name = after.split('(').next().unwrap_or("").trim().to_string();
    let mut params = Vec::new();
    let mut text = String::new();
    if let Some(p) = after.find('(') {
        text.push_str(&after[p + 1..]);
    }
    i += 1;
    while !text.contains(')') && i < lines.len() {
        text.push(' ');
        text.push_str(strip_comment(lines[i]));
        i += 1;
    }
    let inner = text.split(')').next().unwrap_or("");
    for p in inner.split(',') {
        let toks: Vec<&str> = p.split_whitespace().collect();
        if toks.is_empty() {
            continue;
        }
        if toks.first() != Some(&".param") || toks.len() < 3 {
            return Err(err(module, i as u32, format!("{name}: parameter `{}` is not a scalar .param", p.trim())));
        }
        let ty = toks[1].trim_start_matches('.');
        let Some(ty) = Ty::parse(ty) else {
            return Err(err(module, i as u32, format!("{name}: parameter type `{}`", toks[1])));
        };
        params.push((toks[toks.len() - 1].to_string(), ty.bytes()));
    }
    Ok((name, params, i))
}

struct Lowerer<'a> {
    module: &'a str,
    kernel: &'a str,
    scopes: Vec<HashMap<String, u32>>,
    nregs: u32,
    /// Register ranges `%p<31>` declared: prefix → (first slot, count) per scope.
    ranges: Vec<HashMap<String, (u32, u32)>>,
    shared: HashMap<String, u32>,
    params: HashMap<String, u32>,
}

impl Lowerer<'_> {
    fn e(&self, line: u32, m: impl Into<String>) -> SimError {
        err(self.module, line, format!("{}: {}", self.kernel, m.into()))
    }

    fn declare(&mut self, line: u32, decl: &str) -> SimResult<()> {
        // `.reg .f32 %f<78>` or `.reg .f16 low,high`
        let rest = decl.trim_start_matches(".reg").trim();
        let mut it = rest.splitn(2, char::is_whitespace);
        let _ty = it.next();
        let names = it.next().unwrap_or("").trim();
        for n in names.split(',') {
            let n = n.trim();
            if n.is_empty() {
                continue;
            }
            if let Some(lt) = n.find('<') {
                let prefix = &n[..lt];
                let count: u32 = n[lt + 1..]
                    .trim_end_matches('>')
                    .parse()
                    .map_err(|_| self.e(line, format!("register range `{n}`")))?;
                let first = self.nregs;
                self.nregs += count;
                self.ranges.last_mut().expect("scope").insert(prefix.to_string(), (first, count));
            } else {
                let slot = self.nregs;
                self.nregs += 1;
                self.scopes.last_mut().expect("scope").insert(n.to_string(), slot);
            }
        }
        Ok(())
    }

    fn reg(&self, line: u32, name: &str) -> SimResult<u32> {
        for s in self.scopes.iter().rev() {
            if let Some(&r) = s.get(name) {
                return Ok(r);
            }
        }
        let split = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
        let (prefix, num) = name.split_at(split);
        if let Ok(n) = num.parse::<u32>() {
            for s in self.ranges.iter().rev() {
                if let Some(&(first, count)) = s.get(prefix) {
                    if n < count {
                        return Ok(first + n);
                    }
                }
            }
        }
        Err(self.e(line, format!("undeclared register `{name}`")))
    }

    fn operand(&self, line: u32, s: &str, labels: &HashMap<String, u32>, ty: Ty) -> SimResult<Opnd> {
        let s = s.trim();
        if s == "_" {
            return Ok(Opnd::Sink);
        }
        if let Some(inner) = s.strip_prefix('{') {
            let inner = inner.trim_end_matches('}');
            let v = inner.split(',').map(|x| self.operand(line, x, labels, ty)).collect::<SimResult<Vec<_>>>()?;
            return Ok(Opnd::Vec(v));
        }
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner.trim_end_matches(']').trim();
            let (base, off) = match inner.find('+') {
                Some(p) => (inner[..p].trim(), inner[p + 1..].trim()),
                None => (inner, "0"),
            };
            let offset: i64 =
                parse_int(off).ok_or_else(|| self.e(line, format!("address offset `{off}` in `{s}`")))? as i64;
            if base.starts_with('%') {
                return Ok(Opnd::Addr { base: Some(self.reg(line, base)?), offset });
            }
            if let Some(&o) = self.shared.get(base) {
                return Ok(Opnd::Addr { base: None, offset: o as i64 + offset });
            }
            if let Some(&o) = self.params.get(base) {
                return Ok(Opnd::Addr { base: None, offset: o as i64 + offset });
            }
            if let Some(v) = parse_int(base) {
                return Ok(Opnd::Addr { base: None, offset: v as i64 + offset });
            }
            return Err(self.e(line, format!("address `{s}`")));
        }
        if let Some(p) = s.strip_prefix('!') {
            return Ok(Opnd::Pred { reg: self.reg(line, p)?, neg: true });
        }
        if let Some(sp) = special(s) {
            return Ok(Opnd::Special(sp));
        }
        if s.starts_with('%') || self.scopes.iter().any(|m| m.contains_key(s)) {
            return Ok(Opnd::Reg(self.reg(line, s)?));
        }
        if let Some(&t) = labels.get(s) {
            return Ok(Opnd::Target(t));
        }
        if let Some(&o) = self.shared.get(s) {
            return Ok(Opnd::Imm(o as u64));
        }
        if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
            let bits = u32::from_str_radix(h, 16).map_err(|_| self.e(line, format!("f32 literal `{s}`")))?;
            return Ok(Opnd::Imm(match ty {
                Ty::F64 => (f32::from_bits(bits) as f64).to_bits(),
                _ => bits as u64,
            }));
        }
        if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
            let bits = u64::from_str_radix(h, 16).map_err(|_| self.e(line, format!("f64 literal `{s}`")))?;
            return Ok(Opnd::Imm(match ty {
                Ty::F32 => (f64::from_bits(bits) as f32).to_bits() as u64,
                _ => bits,
            }));
        }
        if let Some(v) = parse_int(s) {
            return Ok(Opnd::Imm(v as u64));
        }
        Err(self.e(line, format!("operand `{s}`")))
    }
}

fn special(s: &str) -> Option<Special> {
    let dim = |d: &str| match d {
        "x" => Some(0u8),
        "y" => Some(1),
        "z" => Some(2),
        _ => None,
    };
    let (name, d) = match s.split_once('.') {
        Some((n, d)) => (n, dim(d)),
        None => (s, None),
    };
    Some(match (name, d) {
        ("%tid", Some(d)) => Special::Tid(d),
        ("%ntid", Some(d)) => Special::Ntid(d),
        ("%ctaid", Some(d)) => Special::Ctaid(d),
        ("%nctaid", Some(d)) => Special::Nctaid(d),
        ("%laneid", None) => Special::LaneId,
        ("%warpid", None) => Special::WarpId,
        _ => return None,
    })
}

fn parse_int(s: &str) -> Option<i128> {
    let s = s.trim();
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let s = s.trim_end_matches('U');
    let v = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        i128::from_str_radix(h, 16).ok()?
    } else {
        s.parse::<i128>().ok()?
    };
    Some(if neg { -v } else { v })
}

/// Splits an operand list at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' => {
                depth += 1;
                cur.push(c)
            }
            '}' | ']' => {
                depth -= 1;
                cur.push(c)
            }
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn lower_kernel(
    module: &str,
    name: &str,
    params: &[(String, u32)],
    stmts: &[(u32, Stmt)],
    files: &HashMap<u32, String>,
    extern_shared: &HashMap<String, u32>,
    module_shared: &[(u32, String)],
    maxntid: Option<[u32; 3]>,
) -> SimResult<Kernel> {
    let mut lw = Lowerer {
        module,
        kernel: name,
        scopes: vec![HashMap::new()],
        nregs: 0,
        ranges: vec![HashMap::new()],
        shared: HashMap::new(),
        params: HashMap::new(),
    };
    let mut param_layout = Vec::new();
    let mut off = 0u32;
    for (pname, bytes) in params {
        off = off.div_ceil(*bytes) * bytes;
        lw.params.insert(pname.clone(), off);
        param_layout.push((*bytes, off));
        off += bytes;
    }
    // Pass 1: static shared layout and label positions.
    let mut shared_off = 0u32;
    let mut declare_shared = |line: u32, t: &str, lw: &mut Lowerer| -> SimResult<()> {
        let align = align_of_decl(t).max(1);
        let last = t.split_whitespace().last().unwrap_or("");
        let (sym, size) = match last.split_once('[') {
            Some((s, sz)) => (s, sz.trim_end_matches(']').parse::<u32>().unwrap_or(0)),
            None => return Err(err(module, line, format!("{name}: shared declaration `{t}`"))),
        };
        let elem = t.split_whitespace().find_map(|w| Ty::parse(w.trim_start_matches('.'))).map_or(1, |t| t.bytes());
        shared_off = shared_off.div_ceil(align) * align;
        lw.shared.insert(sym.to_string(), shared_off);
        shared_off += size * elem;
        Ok(())
    };
    // Module-scope arrays this kernel names are part of its static shared memory (each CTA has
    // its own copy, as on hardware).
    for (line, decl) in module_shared {
        let sym = decl.split_whitespace().last().unwrap_or("").split('[').next().unwrap_or("");
        let named = stmts.iter().any(|(_, st)| {
            matches!(st, Stmt::Text(t) if !t.starts_with('.') && t.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$')).any(|w| w == sym))
        });
        if !sym.is_empty() && named {
            declare_shared(*line, decl, &mut lw)?;
        }
    }
    let mut labels = HashMap::new();
    let mut n = 0u32;
    for (line, st) in stmts {
        match st {
            Stmt::Label(l) => {
                labels.insert(l.clone(), n);
            }
            Stmt::Text(t) if t.starts_with(".shared") => declare_shared(*line, t, &mut lw)?,
            Stmt::Text(t) if !t.is_empty() && !t.starts_with('.') => n += 1,
            _ => {}
        }
    }
    let dyn_align = extern_shared.values().copied().max().unwrap_or(16).max(16);
    let dynamic_offset = shared_off.div_ceil(dyn_align) * dyn_align;
    for sym in extern_shared.keys() {
        lw.shared.insert(sym.clone(), dynamic_offset);
    }
    // Pass 2: instructions.
    let mut insts = Vec::new();
    let mut locs: Vec<String> = Vec::new();
    let mut loc_index: HashMap<String, u32> = HashMap::new();
    let mut cur_loc = u32::MAX;
    let mut ranges_scope_stack = 0usize;
    for (line, st) in stmts {
        let line = *line;
        match st {
            Stmt::Open => {
                ranges_scope_stack += 1;
                if ranges_scope_stack > 1 {
                    lw.scopes.push(HashMap::new());
                    lw.ranges.push(HashMap::new());
                }
            }
            Stmt::Close => {
                if ranges_scope_stack > 1 {
                    lw.scopes.pop();
                    lw.ranges.pop();
                }
                ranges_scope_stack = ranges_scope_stack.saturating_sub(1);
            }
            Stmt::Label(_) => {}
            Stmt::Loc(chain) => {
                // The innermost location in a kernels/ file.
                let found = chain.iter().find_map(|(f, l)| {
                    let path = files.get(f)?;
                    let p = path.rfind("kernels/")?;
                    Some(format!("{}:{l}", &path[p..]))
                });
                cur_loc = match found {
                    Some(s) => *loc_index.entry(s.clone()).or_insert_with(|| {
                        locs.push(s);
                        (locs.len() - 1) as u32
                    }),
                    None => u32::MAX,
                };
            }
            Stmt::Text(t) => {
                if t.is_empty() || t.starts_with(".shared") || t.starts_with(".pragma") {
                    continue;
                }
                if t.starts_with(".reg") {
                    lw.declare(line, t)?;
                    continue;
                }
                if t.starts_with('.') {
                    return Err(lw.e(line, format!("directive `{t}` inside a kernel")));
                }
                insts.push(lower_inst(&lw, line, t, &labels, cur_loc)?);
            }
        }
    }
    Ok(Kernel {
        name: name.to_string(),
        params: param_layout,
        insts,
        nregs: lw.nregs,
        static_shared_bytes: dynamic_offset.max(shared_off),
        dynamic_shared_offset: dynamic_offset,
        maxntid,
        locs,
    })
}

fn lower_inst(lw: &Lowerer, line: u32, t: &str, labels: &HashMap<String, u32>, loc: u32) -> SimResult<Inst> {
    let mut s = t.trim();
    let mut guard = None;
    if let Some(rest) = s.strip_prefix('@') {
        let (g, r) = rest.split_once(char::is_whitespace).ok_or_else(|| lw.e(line, format!("guard in `{t}`")))?;
        let (neg, g) = match g.strip_prefix('!') {
            Some(g) => (true, g),
            None => (false, g),
        };
        guard = Some((lw.reg(line, g)?, neg));
        s = r.trim();
    }
    let (opcode, rest) = match s.split_once(char::is_whitespace) {
        Some((o, r)) => (o, r.trim()),
        None => (s, ""),
    };
    let parts: Vec<&str> = opcode.split('.').collect();
    let base = parts[0];
    let mods = &parts[1..];
    let types: Vec<Ty> = mods.iter().filter_map(|m| Ty::parse(m)).collect();
    let has = |m: &str| mods.contains(&m);
    let mut rnd = None;
    let mut int_rnd = false;
    for m in mods {
        match *m {
            "rn" => rnd = Some(Rnd::Rn),
            "rz" => rnd = Some(Rnd::Rz),
            "rm" => rnd = Some(Rnd::Rm),
            "rp" => rnd = Some(Rnd::Rp),
            "rni" | "rzi" | "rmi" | "rpi" => {
                int_rnd = true;
                rnd = Some(match *m {
                    "rni" => Rnd::Rn,
                    "rzi" => Rnd::Rz,
                    "rmi" => Rnd::Rm,
                    _ => Rnd::Rp,
                })
            }
            _ => {}
        }
    }
    let space = if has("global") {
        Some(Space::Global)
    } else if has("shared") {
        Some(Space::Shared)
    } else if has("param") {
        Some(Space::Param)
    } else {
        None
    };
    let vec = if has("v2") {
        2
    } else if has("v4") {
        4
    } else {
        1
    };
    let unknown = || lw.e(line, format!("instruction `{opcode}` is not implemented by the simulator"));
    // The instruction's type: the destination type of cvt, the last one otherwise.
    let ty = if base == "cvt" { types.first() } else { types.last() }.copied().unwrap_or(Ty::B32);
    let op = match base {
        "mov" => Op::Mov,
        "ld" => Op::Ld { space: space.ok_or_else(unknown)?, vec },
        "st" => Op::St { space: space.ok_or_else(unknown)?, vec },
        "cvta" if has("to") && has("global") => Op::Cvta,
        "add" => Op::Add,
        "sub" => Op::Sub,
        "mul" if has("lo") => Op::MulLo,
        "mul" if has("wide") => Op::MulWide,
        "mul" if has("hi") => Op::MulHi,
        "mul" if ty.is_float() => Op::Mul,
        "mad" if has("lo") => Op::MadLo,
        "mad" if has("wide") => Op::MadWide,
        "fma" => Op::Fma,
        "div" => Op::Div,
        "rem" => Op::Rem,
        "neg" => Op::Neg,
        "abs" => Op::Abs,
        "min" => Op::Min,
        "max" => Op::Max,
        "sqrt" => Op::Sqrt,
        "rcp" => Op::Rcp,
        "rsqrt" if has("approx") => Op::Rsqrt,
        "ex2" if has("approx") => Op::Ex2,
        "lg2" if has("approx") => Op::Lg2,
        "copysign" => Op::Copysign,
        "shl" => Op::Shl,
        "shr" => Op::Shr,
        "and" => Op::And,
        "or" => Op::Or,
        "xor" => Op::Xor,
        "not" => Op::Not,
        "bfi" => Op::Bfi,
        "prmt" if has("b32") && mods.len() <= 2 => Op::Prmt(match mods.iter().find(|m| **m != "b32") {
            None => PrmtMode::Generic,
            Some(&"f4e") => PrmtMode::F4e,
            Some(&"b4e") => PrmtMode::B4e,
            Some(&"rc8") => PrmtMode::Rc8,
            Some(&"ecl") => PrmtMode::Ecl,
            Some(&"ecr") => PrmtMode::Ecr,
            Some(&"rc16") => PrmtMode::Rc16,
            Some(_) => return Err(unknown()),
        }),
        "atom" | "red" => {
            // atom{.sem}{.scope}{.space}.op.type: the memory-model qualifiers change nothing in
            // a simulator that applies every access at once; anything else (generic
            // addressing, .noftz, cache hints, vectors, clusters) is refused by name.
            let mut space = None;
            let mut aop = None;
            for m in mods {
                match *m {
                    "relaxed" | "acquire" | "release" | "acq_rel" | "cta" | "gpu" | "sys" => {}
                    "global" => space = Some(Space::Global),
                    "shared" | "shared::cta" => space = Some(Space::Shared),
                    _ if Ty::parse(m).is_some() => {}
                    _ => match AtomOp::parse(m) {
                        Some(o) if aop.is_none() => aop = Some(o),
                        _ => return Err(unknown()),
                    },
                }
            }
            let (Some(space), Some(aop)) = (space, aop) else { return Err(unknown()) };
            if types.len() != 1 || !aop.takes(ty) || (base == "red" && matches!(aop, AtomOp::Cas | AtomOp::Exch)) {
                return Err(unknown());
            }
            Op::Atom { space, op: aop, ret: base == "atom" }
        }
        "setp" => {
            let c = mods.iter().find_map(|m| Cmp::parse(m)).ok_or_else(unknown)?;
            if mods.iter().any(|m| matches!(*m, "and" | "or" | "xor")) {
                return Err(unknown());
            }
            Op::Setp(c)
        }
        "selp" => Op::Selp,
        "cvt" => {
            if types.len() != 2 {
                return Err(unknown());
            }
            Op::Cvt { from: types[1] }
        }
        "bra" => Op::Bra,
        "ret" | "exit" => Op::Ret,
        "bar" if has("sync") => Op::BarSync,
        "barrier" if has("sync") => Op::BarSync,
        "shfl" if has("sync") => Op::Shfl(if has("bfly") {
            ShflMode::Bfly
        } else if has("down") {
            ShflMode::Down
        } else if has("up") {
            ShflMode::Up
        } else if has("idx") {
            ShflMode::Idx
        } else {
            return Err(unknown());
        }),
        "mma" if has("sync") && has("m16n8k16") && has("row") && has("col") => {
            // mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
            if types.len() != 4 || types[0] != Ty::F32 || types[3] != Ty::F32 || types[1] != types[2] {
                return Err(unknown());
            }
            if !matches!(types[1], Ty::Bf16 | Ty::F16) {
                return Err(unknown());
            }
            Op::Mma { input: types[1] }
        }
        "ldmatrix" if has("sync") && has("m8n8") && has("shared") && has("b16") => {
            let num = if has("x1") {
                1
            } else if has("x2") {
                2
            } else if has("x4") {
                4
            } else {
                return Err(unknown());
            };
            Op::Ldmatrix { num, trans: has("trans") }
        }
        "cp" if opcode.starts_with("cp.async.ca.shared.global") || opcode.starts_with("cp.async.cg.shared.global") => {
            Op::CpAsync { bytes: 0 }
        }
        "cp" if opcode == "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes"
            || opcode == "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes" =>
        {
            Op::TmaLoad2d
        }
        "cp" if opcode == "cp.async.commit_group" => Op::CpAsyncCommit,
        "cp" if opcode == "cp.async.wait_group" => Op::CpAsyncWait { all: false },
        "cp" if opcode == "cp.async.wait_all" => Op::CpAsyncWait { all: true },
        "wgmma" if opcode == "wgmma.fence.sync.aligned" => Op::WgmmaFence,
        "wgmma" if opcode == "wgmma.commit_group.sync.aligned" => Op::WgmmaCommit,
        "wgmma" if opcode == "wgmma.wait_group.sync.aligned" => Op::WgmmaWait,
        "wgmma" if has("mma_async") && has("sync") && has("aligned") => {
            // wgmma.mma_async.sync.aligned.m64nNk16.f32.bf16.bf16
            let n = mods
                .iter()
                .find_map(|m| {
                    m.strip_prefix("m64n").and_then(|r| r.strip_suffix("k16")).and_then(|n| n.parse::<u16>().ok())
                })
                .ok_or_else(unknown)?;
            if n == 0 || n > 256 || n % 8 != 0 || types.len() != 3 || types[0] != Ty::F32 || types[1] != types[2] {
                return Err(unknown());
            }
            if !matches!(types[1], Ty::Bf16 | Ty::F16) {
                return Err(unknown());
            }
            Op::Wgmma { n, input: types[1] }
        }
        "mbarrier" if (has("shared") || has("shared::cta")) && has("b64") => {
            if has("init") {
                Op::MbarInit
            } else if has("arrive") && !has("noComplete") {
                Op::MbarArrive { expect_tx: has("expect_tx") }
            } else if has("try_wait") && has("parity") {
                Op::MbarTryWait
            } else {
                return Err(unknown());
            }
        }
        "fence" if opcode.starts_with("fence.proxy.async") || opcode.starts_with("fence.mbarrier_init") => Op::Nop,
        _ => return Err(unknown()),
    };
    // Operands.
    let mut raw = split_operands(rest);
    if op == Op::TmaLoad2d {
        // [dst], [map, {c0, c1}], [mbar] -> [dst], [map], {c0, c1}, [mbar]
        let inner = raw.get(1).map(|m| m.trim().trim_start_matches('[').trim_end_matches(']').to_string());
        let Some((map, coords)) = inner.as_deref().and_then(|i| i.split_once(',')) else {
            return Err(lw.e(line, format!("tensor operand in `{t}`")));
        };
        let (map, coords) = (format!("[{}]", map.trim()), coords.trim().to_string());
        if raw.len() != 3 {
            return Err(lw.e(line, format!("operands of `{t}`")));
        }
        raw = vec![raw[0].clone(), map, coords, raw[2].clone()];
    }
    let mut ops = Vec::with_capacity(raw.len());
    for (k, r) in raw.iter().enumerate() {
        // `%r20|%p3`: shfl's value and predicate outputs.
        if k == 0 && r.contains('|') {
            let (a, b) = r.split_once('|').unwrap_or((r, ""));
            ops.push(lw.operand(line, a, labels, ty)?);
            ops.push(lw.operand(line, b, labels, ty)?);
            continue;
        }
        // The source operand type of cvt decides how its immediates read.
        let oty = match &op {
            Op::Cvt { from } if k > 0 => *from,
            _ => ty,
        };
        ops.push(lw.operand(line, r, labels, oty)?);
    }
    let mut op = op;
    if let Op::CpAsync { .. } = op {
        // cp.async.cg.shared.global [dst], [src], cp-size{, src-size}
        let bytes = match ops.get(2) {
            Some(Opnd::Imm(b)) if matches!(*b, 4 | 8 | 16) => *b as u8,
            _ => return Err(lw.e(line, format!("cp.async size in `{t}`"))),
        };
        op = Op::CpAsync { bytes };
    }
    if matches!(op, Op::Shfl(_)) && ops.len() == 5 {
        // No predicate output: insert a sink so operand positions stay fixed.
        ops.insert(1, Opnd::Sink);
    }
    if let Op::Atom { op: aop, ret, .. } = op {
        // atom d, [a], b{, c}; red [a], b: the address and the value count are checked here so
        // the executor can index them.
        let at = ret as usize;
        let values = if aop == AtomOp::Cas { 2 } else { 1 };
        let addr_ok = matches!(ops.get(at), Some(Opnd::Addr { .. }));
        let regs_ok = ops.iter().enumerate().all(|(k, o)| k == at || matches!(o, Opnd::Reg(_) | Opnd::Imm(_)));
        if ops.len() != at + 1 + values || !addr_ok || !regs_ok || (ret && !matches!(ops[0], Opnd::Reg(_))) {
            return Err(lw.e(line, format!("operands of `{t}`")));
        }
    }
    if matches!(op, Op::Prmt(_)) && ops.len() != 4 {
        return Err(lw.e(line, format!("operands of `{t}`")));
    }
    if matches!(op, Op::Bra) && !matches!(ops.first(), Some(Opnd::Target(_))) {
        return Err(lw.e(line, format!("branch target in `{t}`")));
    }
    Ok(Inst {
        op,
        ty,
        rnd,
        int_rnd,
        ftz: has("ftz"),
        sat: has("sat"),
        approx: has("approx"),
        ops,
        guard,
        line,
        loc,
        text: intern(opcode),
    })
}
