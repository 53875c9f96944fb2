//! kernels/triton/compiled/manifest.json (schema 1) as typed data, and the choice of one compiled variant.
//!
//! Takes the manifest's text (embedded in CUDA builds; read from the repository by the tests), gives a
//! [`Manifest`]: every artifact with its kernel, dtype, specialisation, requirements, parameters, launch geometry
//! and file. [`Manifest::select`] is the rule of kernels/triton/README.md ("Variants and how a launcher picks one")
//! as a pure function of the GPU's compute capability, the dtype, the head dim and the launch's actual pointers and
//! ints: it gives the variant to launch, or why none fits (and the caller runs the composition instead).
//!
//! Grid rules are expressions over the contract's symbols (`"cdiv(S, 128)"`, `"B * H"`); they are parsed once, here,
//! into [`GridExpr`], so a rule this launcher cannot evaluate fails the manifest test rather than a launch.

use candle_core::DType;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The manifest schema this launcher reads.
pub const SCHEMA: u32 = 1;

/// The whole manifest.
#[derive(Debug, Clone, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub triton_version: String,
    pub ptxas_cuda_version: String,
    /// Repo-relative path of every kernels/triton/*.py → sha256 (lower-case hex) of its bytes.
    pub sources: BTreeMap<String, String>,
    pub targets: Vec<Target>,
    pub variants: Vec<Variant>,
}

/// One compile target (`_targets.py`).
#[derive(Debug, Clone, Deserialize)]
pub struct Target {
    pub arch: String,
    pub capability: u32,
    pub emit: Format,
    /// Opt-in dynamic shared memory per block of that GPU class, in bytes.
    pub max_shared: u32,
}

/// How an artifact is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Cubin,
    Ptx,
}

/// The data dtype a variant was compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KernelDType {
    #[serde(rename = "bf16")]
    Bf16,
    #[serde(rename = "fp16")]
    Fp16,
    #[serde(rename = "fp32")]
    Fp32,
}

impl KernelDType {
    /// The variant dtype for candle tensors of `dtype`; None for dtypes no kernel is compiled for.
    pub fn of(dtype: DType) -> Option<Self> {
        match dtype {
            DType::BF16 => Some(Self::Bf16),
            DType::F16 => Some(Self::Fp16),
            DType::F32 => Some(Self::Fp32),
            _ => None,
        }
    }
}

/// One compiled artifact: a kernel specialised for a dtype (and head dim) on one target.
#[derive(Debug, Clone, Deserialize)]
pub struct Variant {
    /// The `src/kernels/mod.rs` operation it implements (`attention`, `group_norm`, …).
    pub op: String,
    /// The Triton kernel (`attention_fwd`, `group_norm_partial`, …).
    pub kernel: String,
    /// `<dtype>.d<D>`, `<dtype>.a16` or `<dtype>.any`.
    pub variant: String,
    pub arch: String,
    pub format: Format,
    /// `sm_80` … `sm_90a`; a trailing `a` marks an arch-specific target, loadable on that exact capability only.
    pub target: String,
    pub capability: u32,
    pub symbol: String,
    pub dtype: KernelDType,
    pub aligned: bool,
    pub requires: Requires,
    /// Block sizes and other compile-time values (`HEAD_D` for the head-dim kernels).
    pub constexprs: BTreeMap<String, serde_json::Value>,
    pub params: Vec<Param>,
    pub num_warps: u32,
    pub threads_per_block: u32,
    pub num_ctas: u32,
    pub shared_bytes: u32,
    pub grid: [GridExpr; 3],
    /// Repo-relative path of the artifact.
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
}

/// What an aligned variant assumes about a launch, by parameter name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Requires {
    pub ptr_align_16_bytes: Vec<String>,
    pub int_multiple_of_16: Vec<String>,
}

/// One kernel parameter, in launch order.
#[derive(Debug, Clone, Deserialize)]
pub struct Param {
    pub name: String,
    #[serde(rename = "type")]
    pub ty: ParamType,
    /// Triton's hidden scratch pointers (`global_scratch`, `profile_scratch`).
    #[serde(default)]
    pub hidden: bool,
    /// Hidden params: scratch bytes per program (0: pass a null pointer) and their alignment.
    #[serde(default)]
    pub bytes_per_program: u64,
    #[serde(default)]
    pub align: u64,
}

/// A parameter's type as the manifest spells it: `*bf16`, `*fp16`, `*fp32`, `*i8` (pointers), `i32`, `fp32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ParamType {
    Ptr,
    I32,
    F32,
}

impl TryFrom<String> for ParamType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "*bf16" | "*fp16" | "*fp32" | "*i8" => Ok(Self::Ptr),
            "i32" => Ok(Self::I32),
            "fp32" => Ok(Self::F32),
            _ => Err(format!("unknown kernel parameter type {s:?}")),
        }
    }
}

impl Variant {
    /// The head dim a head-dim kernel was specialised for (`HEAD_D`); None for the others.
    pub fn head_dim(&self) -> Option<usize> {
        self.constexprs.get("HEAD_D").and_then(|v| v.as_u64()).map(|d| d as usize)
    }

    /// Whether this artifact loads only on its exact compute capability (`sm_90a`).
    pub fn arch_specific(&self) -> bool {
        self.target.ends_with('a')
    }

    /// Whether `args` meet what the variant was compiled assuming: the listed pointers 16-byte aligned, the
    /// listed ints multiples of 16. A name the launch does not supply counts as unmet.
    pub fn accepts(&self, args: &[(&str, Arg)]) -> bool {
        let get = |n: &String| args.iter().find(|(name, _)| name == n).map(|(_, a)| *a);
        let ptrs = self.requires.ptr_align_16_bytes.iter().all(|n| matches!(get(n), Some(Arg::Ptr(p)) if p % 16 == 0));
        let ints = self.requires.int_multiple_of_16.iter().all(|n| matches!(get(n), Some(Arg::I32(v)) if v % 16 == 0));
        ptrs && ints
    }
}

/// One argument of a launch: a device address, an `i32` or an `f32`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

/// The GPU a launch is for: compute capability as 10·major + minor, and its opt-in shared memory per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gpu {
    pub capability: u32,
    pub max_shared: u32,
}

/// Why no compiled variant fits a launch (the operation then runs the composition).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Miss {
    /// Compute capability below every target (Turing and older).
    Capability(u32),
    /// No variant for this dtype.
    DType(String),
    /// No variant for this head dim.
    HeadDim(usize),
    /// A pointer not 16-byte aligned or a width not a multiple of 16, and no unaligned variant.
    Alignment,
    /// More shared memory than the GPU grants a block.
    SharedMemory(u32),
    /// A size or offset at or over 2³¹ (the kernels take i32).
    TooLarge,
    /// Layouts the kernel does not read (non-contiguous where the contract wants contiguous).
    Layout,
    /// The launch geometry is out of the kernel's range (the message says which axis).
    Launch(String),
    /// The module could not be loaded or the manifest read (the message says why).
    Load(String),
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::Capability(cc) => write!(f, "compute capability {}.{} < 8.0", cc / 10, cc % 10),
            Miss::DType(d) => write!(f, "no {d} variant"),
            Miss::HeadDim(d) => write!(f, "no variant for head dim {d}"),
            Miss::Alignment => f.write_str("misaligned pointer or width not a multiple of 16"),
            Miss::SharedMemory(b) => write!(f, "needs {b} bytes of shared memory"),
            Miss::TooLarge => f.write_str("a size over 2^31"),
            Miss::Layout => f.write_str("a layout the kernel does not read"),
            Miss::Launch(e) => write!(f, "cannot launch: {e}"),
            Miss::Load(e) => write!(f, "not loaded: {e}"),
        }
    }
}

impl Manifest {
    /// Parses and checks the schema number.
    pub fn parse(text: &str) -> Result<Self, String> {
        let m: Manifest = serde_json::from_str(text).map_err(|e| format!("manifest.json: {e}"))?;
        if m.schema != SCHEMA {
            return Err(format!("manifest.json has schema {}, this launcher reads {SCHEMA}", m.schema));
        }
        Ok(m)
    }

    /// The variant of `kernel` to launch for `dtype` (and `head_dim`, for the head-dim kernels) on `gpu` with
    /// these arguments, by the README's rule: the artifact for the capability (cubin, else PTX), then the aligned
    /// variant if the arguments meet its requirements, else an unaligned one.
    pub fn select(
        &self,
        gpu: Gpu,
        kernel: &str,
        dtype: DType,
        head_dim: Option<usize>,
        args: &[(&str, Arg)],
    ) -> Result<&Variant, Miss> {
        let name = || Miss::DType(format!("{dtype:?}").to_lowercase());
        let kd = KernelDType::of(dtype).ok_or_else(name)?;
        let of_kernel: Vec<&Variant> = self.variants.iter().filter(|v| v.kernel == kernel && v.dtype == kd).collect();
        if of_kernel.is_empty() {
            return Err(name());
        }
        let of_dim: Vec<&Variant> = of_kernel.into_iter().filter(|v| v.head_dim() == head_dim).collect();
        if of_dim.is_empty() {
            return Err(Miss::HeadDim(head_dim.unwrap_or(0)));
        }
        let arch = pick_arch(gpu.capability, &of_dim).ok_or(Miss::Capability(gpu.capability))?;
        let on_arch = of_dim.into_iter().filter(|v| v.arch == arch);
        let (aligned, any): (Vec<&Variant>, Vec<&Variant>) = on_arch.partition(|v| v.aligned);
        let chosen = aligned.into_iter().find(|v| v.accepts(args)).or_else(|| any.into_iter().next());
        let v = chosen.ok_or(Miss::Alignment)?;
        if v.shared_bytes > gpu.max_shared {
            return Err(Miss::SharedMemory(v.shared_bytes));
        }
        Ok(v)
    }
}

/// The artifact arch for compute capability `cc` (10·major + minor) among `variants` (README rule): the cubin of
/// that capability; else the newest cubin of the same major that is not arch-specific and not newer than `cc`;
/// else the PTX if `cc` is at least its target; else none.
pub fn pick_arch(cc: u32, variants: &[&Variant]) -> Option<String> {
    let cubins = || variants.iter().filter(|v| v.format == Format::Cubin);
    if let Some(v) = cubins().find(|v| v.capability == cc) {
        return Some(v.arch.clone());
    }
    let same_major = cubins().filter(|v| v.capability / 10 == cc / 10 && v.capability < cc && !v.arch_specific());
    if let Some(v) = same_major.max_by_key(|v| v.capability) {
        return Some(v.arch.clone());
    }
    variants.iter().find(|v| v.format == Format::Ptx && cc >= v.capability).map(|v| v.arch.clone())
}

/// A grid rule: integers, symbols, `+`, `-`, `*`, parentheses and `cdiv(a, b)`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "String")]
pub enum GridExpr {
    Int(i64),
    Sym(String),
    Add(Box<GridExpr>, Box<GridExpr>),
    Sub(Box<GridExpr>, Box<GridExpr>),
    Mul(Box<GridExpr>, Box<GridExpr>),
    Cdiv(Box<GridExpr>, Box<GridExpr>),
}

impl TryFrom<String> for GridExpr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let tokens = tokenize(&s)?;
        let mut p = Parser { tokens: &tokens, at: 0 };
        let e = p.sum()?;
        if p.at != tokens.len() {
            return Err(format!("grid rule {s:?}: unexpected {:?}", tokens[p.at]));
        }
        Ok(e)
    }
}

impl GridExpr {
    /// The value with `lookup` giving each symbol's.
    pub fn eval(&self, lookup: &dyn Fn(&str) -> Option<i64>) -> Result<i64, String> {
        let bin = |a: &GridExpr, b: &GridExpr| Ok::<_, String>((a.eval(lookup)?, b.eval(lookup)?));
        Ok(match self {
            GridExpr::Int(v) => *v,
            GridExpr::Sym(s) => lookup(s).ok_or_else(|| format!("grid symbol {s} has no value"))?,
            GridExpr::Add(a, b) => bin(a, b).map(|(a, b)| a + b)?,
            GridExpr::Sub(a, b) => bin(a, b).map(|(a, b)| a - b)?,
            GridExpr::Mul(a, b) => bin(a, b).map(|(a, b)| a * b)?,
            GridExpr::Cdiv(a, b) => {
                let (a, b) = bin(a, b)?;
                if b <= 0 {
                    return Err(format!("cdiv by {b}"));
                }
                (a + b - 1).div_euclid(b)
            }
        })
    }

    /// Every symbol the rule reads.
    pub fn symbols(&self) -> Vec<&str> {
        match self {
            GridExpr::Int(_) => vec![],
            GridExpr::Sym(s) => vec![s.as_str()],
            GridExpr::Add(a, b) | GridExpr::Sub(a, b) | GridExpr::Mul(a, b) | GridExpr::Cdiv(a, b) => {
                [a.symbols(), b.symbols()].concat()
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Int(i64),
    Ident(String),
    Punct(char),
}

fn tokenize(s: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c.is_ascii_digit() {
            let mut v = 0i64;
            while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                v = v.checked_mul(10).and_then(|v| v.checked_add(d as i64)).ok_or("grid rule: integer overflow")?;
                chars.next();
            }
            out.push(Token::Int(v));
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut id = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_ascii_alphanumeric() || **c == '_') {
                id.push(c);
                chars.next();
            }
            out.push(Token::Ident(id));
        } else if "+-*(),".contains(c) {
            out.push(Token::Punct(c));
            chars.next();
        } else {
            return Err(format!("grid rule {s:?}: unexpected character {c:?}"));
        }
    }
    Ok(out)
}

/// Recursive descent over [`Token`]s: sum := product (('+'|'-') product)*, product := atom ('*' atom)*.
struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
}

impl Parser<'_> {
    fn next(&mut self) -> Option<&Token> {
        let t = self.tokens.get(self.at);
        self.at += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        let hit = self.tokens.get(self.at) == Some(&Token::Punct(c));
        self.at += hit as usize;
        hit
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        self.eat(c).then_some(()).ok_or_else(|| format!("grid rule: expected {c:?}"))
    }

    fn sum(&mut self) -> Result<GridExpr, String> {
        let mut e = self.product()?;
        loop {
            if self.eat('+') {
                e = GridExpr::Add(Box::new(e), Box::new(self.product()?));
            } else if self.eat('-') {
                e = GridExpr::Sub(Box::new(e), Box::new(self.product()?));
            } else {
                return Ok(e);
            }
        }
    }

    fn product(&mut self) -> Result<GridExpr, String> {
        let mut e = self.atom()?;
        while self.eat('*') {
            e = GridExpr::Mul(Box::new(e), Box::new(self.atom()?));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<GridExpr, String> {
        match self.next().cloned() {
            Some(Token::Int(v)) => Ok(GridExpr::Int(v)),
            Some(Token::Ident(f)) if f == "cdiv" => {
                self.expect('(')?;
                let a = self.sum()?;
                self.expect(',')?;
                let b = self.sum()?;
                self.expect(')')?;
                Ok(GridExpr::Cdiv(Box::new(a), Box::new(b)))
            }
            Some(Token::Ident(s)) => Ok(GridExpr::Sym(s)),
            Some(Token::Punct('(')) => {
                let e = self.sum()?;
                self.expect(')')?;
                Ok(e)
            }
            t => Err(format!("grid rule: unexpected {t:?}")),
        }
    }
}
