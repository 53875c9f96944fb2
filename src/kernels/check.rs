//! The fused kernels checked where they run. Takes a device — CUDA, or the CPU for a dry run of the same flow, where
//! each op's CPU kernel (its `CustomOp`'s `cpu_fwd`) stands in for the fused one in f32 — and gives:
//!
//! - [`check`]: every fused operation at odd sizes (ragged sequence lengths, widths that are multiples of 16 but not
//!   of the blocks, strided modulation rows, an offset into the RoPE table, group norms with and without aligned
//!   planes) in f32, bf16 and f16, against the f64 reference of the same rounded inputs, with the composition's
//!   error beside it; plus the cases that must fall back to the composition (f32 attention at head dim 128, a
//!   width that is not a multiple of 16) and do so without an error. A row passes when the fused kernel launched
//!   and its error is within [`reference::tolerance`] or no larger than the composition's (whose scores round to
//!   the half type: a peaked softmax over 300 keys measures 2–3e-3 composed in f16 on the CPU, above the 1.6e-3
//!   bound fitted to smaller cases), or when it fell back where it must and the composition is within the bound.
//! - [`bench`]: time per call, fused against composed, at FLUX.1-dev 1024² shapes (B = 1, S = 4608, H = 24, D = 128,
//!   width 3072, MLP 12288; the VAE's largest group norms), or small shapes for a dry run.
//!
//! `examples/gpu_check.rs` prints both; scripts/gpu-check.sh runs it on a GPU.

use super::{composed, cpu_ops, fused, ops::ColsAct, reference, Angles};
use candle_core::{DType, Device, Result, Tensor};
use std::time::Instant;

/// What one check found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub op: &'static str,
    pub case: String,
    pub dtype: String,
    /// Relative error of the fused result (None: it did not run).
    pub fused_err: Option<f64>,
    pub composed_err: Option<f64>,
    pub bound: f64,
    pub passed: bool,
    /// `fused`, `composed (expected: …)`, `cpu kernel (dry run)`, or what went wrong.
    pub note: String,
}

/// Whether a case must launch its kernel or must fall back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Fused,
    Composed,
}

/// One case's results: fused (None when it fell back or cannot run here), composed (None where candle cannot run
/// it), the f64 reference, and the composition's own reference where it rounds differently by design.
struct Outputs {
    fused: Option<Tensor>,
    composed: Option<Tensor>,
    reference: Tensor,
    composed_reference: Option<Tensor>,
}

/// `t` rounded to `dtype` on `dev`, and the rounded values in f64 on the CPU (what the reference starts from).
fn put(t: &Tensor, dev: &Device, dtype: DType) -> Result<(Tensor, Tensor)> {
    let r = t.to_dtype(dtype)?;
    Ok((r.to_device(dev)?, r.to_dtype(DType::F64)?))
}

/// The fused op on CUDA; on the CPU its CPU kernel for f32 (the dry run), nothing for half types.
fn fused_or_cpu(
    dev: &Device,
    dtype: DType,
    fused: impl FnOnce() -> Result<Option<Tensor>>,
    cpu: impl FnOnce() -> Result<Tensor>,
) -> Result<Option<Tensor>> {
    match (dev.is_cuda(), dtype) {
        (true, _) => fused(),
        (false, DType::F32) => cpu().map(Some),
        (false, _) => Ok(None),
    }
}

/// candle has no bf16 matmul on the CPU: the composed attention cannot run there in bf16.
fn composed_runs(dev: &Device, dtype: DType, matmul: bool) -> bool {
    !(matmul && dev.is_cpu() && dtype == DType::BF16)
}

fn attention(dev: &Device, dtype: DType, d: usize) -> Result<Outputs> {
    let (b, h, s) = (2, 3, 300);
    let (q, qr) = put(&(reference::rand(&[b, h, s, d], 1)? * 2.0)?, dev, dtype)?;
    let (k, kr) = put(&reference::rand(&[b, h, s, d], 2)?, dev, dtype)?;
    let (v, vr) = put(&reference::rand(&[b, h, s, d], 3)?, dev, dtype)?;
    let scale = 1.0 / (d as f64).sqrt();
    let composed = composed_runs(dev, dtype, true).then(|| composed::attention(&q, &k, &v, scale, 0)).transpose()?;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || fused::attention(&q, &k, &v, scale),
            || cpu_ops::attention(&q, &k, &v, scale),
        )?,
        composed,
        reference: reference::attention(&qr, &kr, &vr, scale)?,
        composed_reference: None,
    })
}

/// x [2, 37, d] with a large mean; scale and shift as strided views of one modulation output [2, 3·d].
fn layer_norm_modulate(dev: &Device, dtype: DType, d: usize) -> Result<Outputs> {
    let (x, xr) = put(&(reference::rand(&[2, 37, d], 4)? + 3.0)?, dev, dtype)?;
    let (m, mr) = put(&reference::rand(&[2, 3 * d], 5)?, dev, dtype)?;
    let (scale, shift) = (m.narrow(1, d, d)?, m.narrow(1, 0, d)?);
    let shift_r = mr.narrow(1, 0, d)?;
    let one_plus = ((scale.to_device(&Device::Cpu)? + 1.0)?.to_dtype(DType::F64)? - 1.0)?;
    let eps = 1e-6;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || fused::layer_norm_modulate(&x, &scale, &shift, eps),
            || cpu_ops::layer_norm_modulate(&x, &scale, &shift, eps),
        )?,
        composed: Some(composed::layer_norm_modulate(&x, &scale, &shift, eps)?),
        reference: reference::layer_norm_modulate(&xr, &mr.narrow(1, d, d)?, &shift_r, eps)?,
        // The composition rounds 1 + scale to the dtype, as diffusers does; the kernel keeps it in f32.
        composed_reference: Some(reference::layer_norm_modulate(&xr, &one_plus, &shift_r, eps)?),
    })
}

fn gated_residual(dev: &Device, dtype: DType) -> Result<Outputs> {
    let d = 1040;
    let (x, xr) = put(&reference::rand(&[2, 37, d], 6)?, dev, dtype)?;
    let (y, yr) = put(&reference::rand(&[2, 37, d], 7)?, dev, dtype)?;
    let (m, mr) = put(&reference::rand(&[2, 3 * d], 8)?, dev, dtype)?;
    let gate = m.narrow(1, 2 * d, d)?;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || fused::gated_residual(&x, &y, &gate),
            || cpu_ops::gated_residual(&x, &y, &gate),
        )?,
        composed: Some(composed::gated_residual(&x, &y, &gate)?),
        reference: reference::gated_residual(&xr, &yr, &mr.narrow(1, 2 * d, d)?)?,
        composed_reference: None,
    })
}

/// The keys (columns H·d..2·H·d) of a fused projection [2, 77, 3·H·d + 16], rotated by positions 5..82 of a table.
fn qk_norm_rope(dev: &Device, dtype: DType, d: usize) -> Result<Outputs> {
    let (h, s, eps) = (3, 77, 1e-6);
    let (x, xr) = put(&reference::rand(&[2, s, 3 * h * d + 16], 9)?, dev, dtype)?;
    let (w, wr) = put(&reference::rand(&[d], 10)?, dev, dtype)?;
    let theta = (reference::rand(&[s + 13, d / 2], 11)? * 3.0)?;
    let (cos, sin) = (theta.cos()?, theta.sin()?);
    let angles = Angles::new(cos.to_device(dev)?, sin.to_device(dev)?, dtype)?.narrow(5, s)?;
    let exact = |t: &Tensor| t.narrow(0, 5, s)?.to_dtype(DType::F64);
    // The composition reads the angles rounded to the dtype (candle's rope_i); the kernel reads them in f32.
    let rounded = |t: &Tensor| t.narrow(0, 5, s)?.to_dtype(dtype)?.to_dtype(DType::F64);
    let rot = (&exact(&cos)?, &exact(&sin)?);
    let rot_dt = (&rounded(&cos)?, &rounded(&sin)?);
    let col = h * d;
    let composed = composed::qk_norm_rope(&x, col, h, &w, eps, (&angles.cos_dt, &angles.sin_dt))?;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || fused::qk_norm_rope(&x, (col, h), &w, eps, &angles),
            || cpu_ops::qk_norm_rope(&x, col, h, &w, eps, angles.packed()),
        )?,
        composed: Some(composed),
        reference: reference::qk_norm_rope(&xr, col, h, &wr, eps, rot)?,
        composed_reference: Some(reference::qk_norm_rope(&xr, col, h, &wr, eps, rot_dt)?),
    })
}

fn heads_first(dev: &Device, dtype: DType, d: usize) -> Result<Outputs> {
    let h = 3;
    let (x, xr) = put(&reference::rand(&[2, 77, 3 * h * d + 16], 12)?, dev, dtype)?;
    let col = 2 * h * d;
    Ok(Outputs {
        fused: fused_or_cpu(dev, dtype, || fused::heads_first(&x, col, h, d), || cpu_ops::heads_first(&x, col, h, d))?,
        composed: Some(composed::heads_first(&x, col, h, d)?),
        reference: reference::heads_first(&xr, col, h, d)?,
        composed_reference: None,
    })
}

fn gelu_tanh(dev: &Device, dtype: DType) -> Result<Outputs> {
    let (x, xr) = put(&(reference::rand(&[3, 37, 1040], 13)? * 3.0)?, dev, dtype)?;
    Ok(Outputs {
        fused: fused_or_cpu(dev, dtype, || fused::gelu_tanh(&x), || cpu_ops::gelu_tanh(&x))?,
        composed: Some(x.gelu()?),
        reference: reference::gelu_tanh(&xr)?,
        composed_reference: None,
    })
}

/// GELU of columns 144..1184 or SwiGLU of 32..1072 | 1072..2112 of rows of a fused projection.
fn cols(dev: &Device, dtype: DType, act: ColsAct) -> Result<Outputs> {
    let (w, col, width) = if act == ColsAct::Gelu { (1184, 144, 1040) } else { (2128, 32, 1040) };
    let (x, xr) = put(&(reference::rand(&[2, 37, w], 14)? * 3.0)?, dev, dtype)?;
    let (fused, composed, reference) = match act {
        ColsAct::Gelu => (
            fused_or_cpu(dev, dtype, || fused::cols(&x, act, col, width), || cpu_ops::gelu_tanh_cols(&x, col, width))?,
            x.narrow(2, col, width)?.gelu()?,
            reference::gelu_tanh(&xr.narrow(2, col, width)?)?,
        ),
        ColsAct::Swiglu => (
            fused_or_cpu(dev, dtype, || fused::cols(&x, act, col, width), || cpu_ops::swiglu(&x, col, width))?,
            composed::swiglu(&x, col, width)?,
            reference::swiglu(&xr, col, width)?,
        ),
    };
    Ok(Outputs { fused, composed: Some(composed), reference, composed_reference: None })
}

/// Group norm of x [b, c, h, w] in `groups` groups, with a large mean, with or without the SiLU.
fn group_norm(
    dev: &Device,
    dtype: DType,
    (b, c, h, w): (usize, usize, usize, usize),
    groups: usize,
) -> Result<Outputs> {
    let silu = h % 2 == 1;
    let (x, xr) = put(&(reference::rand(&[b, c, h, w], 15)? + 4.0)?, dev, dtype)?;
    let (g, gr) = put(&reference::rand(&[c], 16)?, dev, dtype)?;
    let (bias, br) = put(&reference::rand(&[c], 17)?, dev, dtype)?;
    let eps = 1e-6;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || fused::group_norm(&x, (&g, &bias), groups, eps, silu),
            || cpu_ops::group_norm(&x, &g, &bias, groups, eps, silu),
        )?,
        composed: Some(composed::group_norm(&x, (&g, &bias), groups, (0, groups), eps, silu)?),
        reference: reference::group_norm(&xr, &gr, &br, groups, eps, silu)?,
        composed_reference: None,
    })
}

/// A biased linear layer x [2, 37, 1040] · Wᵀ [528, 1040] + b: cuBLASLt with the bias in its epilogue against
/// candle's `Linear` (its matmul, then a broadcast add). f32 falls back by design (cuBLASLt would run TF32).
fn linear_bias(dev: &Device, dtype: DType) -> Result<Outputs> {
    let (k, o) = (1040, 528);
    let (x, xr) = put(&reference::rand(&[2, 37, k], 30)?, dev, dtype)?;
    let (w, wr) = put(&(reference::rand(&[o, k], 31)? * (1.0 / (k as f64).sqrt()))?, dev, dtype)?;
    let (b, br) = put(&reference::rand(&[o], 32)?, dev, dtype)?;
    let layer = candle_nn::Linear::new(w.clone(), Some(b.clone()));
    let composed = composed_runs(dev, dtype, true).then(|| candle_nn::Module::forward(&layer, &x)).transpose()?;
    Ok(Outputs {
        fused: fused_or_cpu(
            dev,
            dtype,
            || super::gemm::linear_bias(&x, &w, &b),
            || candle_nn::Module::forward(&layer, &x),
        )?,
        composed,
        reference: reference::linear(&xr, &wr, &br)?,
        composed_reference: None,
    })
}

/// The cases, each run in f32, bf16 and f16.
#[derive(Debug, Clone, Copy)]
enum Case {
    Attention(usize),
    LayerNormModulate(usize),
    GatedResidual,
    QkNormRope(usize),
    HeadsFirst(usize),
    Gelu,
    Cols(ColsAct),
    GroupNorm((usize, usize, usize, usize), usize),
    LinearBias,
}

const CASES: [Case; 15] = [
    Case::Attention(16),
    Case::Attention(32),
    Case::Attention(128),
    Case::LayerNormModulate(48),
    Case::LayerNormModulate(40),
    Case::GatedResidual,
    Case::QkNormRope(16),
    Case::QkNormRope(128),
    Case::HeadsFirst(16),
    Case::HeadsFirst(128),
    Case::Gelu,
    Case::Cols(ColsAct::Gelu),
    Case::Cols(ColsAct::Swiglu),
    Case::GroupNorm((2, 64, 13, 11), 8),
    Case::LinearBias,
];

/// A second, larger group norm: 2 splits per group, aligned planes.
const BIG_GROUP_NORM: Case = Case::GroupNorm((1, 128, 96, 96), 32);

impl Case {
    /// The operation and its row in the tolerance table.
    fn op(self) -> (&'static str, &'static str) {
        match self {
            Case::Attention(_) => ("attention", "attention"),
            Case::LayerNormModulate(_) => ("layer_norm_modulate", "layer_norm_modulate"),
            Case::GatedResidual => ("gated_residual", "gated_residual"),
            Case::QkNormRope(_) => ("qk_norm_rope", "qk_norm_rope"),
            Case::HeadsFirst(_) => ("heads_first", "heads_first"),
            Case::Gelu => ("gelu_tanh", "gelu_tanh"),
            Case::Cols(ColsAct::Gelu) => ("gelu_tanh_cols", "gelu_tanh"),
            Case::Cols(ColsAct::Swiglu) => ("swiglu", "swiglu"),
            Case::GroupNorm(..) => ("group_norm", "group_norm"),
            Case::LinearBias => ("linear_bias", "linear"),
        }
    }

    fn describe(self) -> String {
        match self {
            Case::Attention(d) => format!("B2 H3 S300 D{d}"),
            Case::LayerNormModulate(d) => format!("B2 S37 D{d}, strided scale/shift"),
            Case::GatedResidual => "B2 S37 D1040, strided gate".into(),
            Case::QkNormRope(d) => format!("B2 S77 H3 D{d}, keys, RoPE rows 5.."),
            Case::HeadsFirst(d) => format!("B2 S77 H3 D{d}, values"),
            Case::Gelu => "[3, 37, 1040]".into(),
            Case::Cols(ColsAct::Gelu) => "B2 S37 W1184, cols 144..1184".into(),
            Case::Cols(ColsAct::Swiglu) => "B2 S37 W2128, cols 32..2112".into(),
            Case::GroupNorm((b, c, h, w), g) => {
                format!("[{b}, {c}, {h}, {w}] G{g}{}", if h % 2 == 1 { " +SiLU" } else { "" })
            }
            Case::LinearBias => "[2, 37, 1040] x [528, 1040]ᵀ + b".into(),
        }
    }

    /// Where no variant may fit: f32 attention exists for D = 16 and 32 only; a width of 40 is not a multiple of 16.
    fn expect(self, dtype: DType) -> Expect {
        match self {
            Case::Attention(128) if dtype == DType::F32 => Expect::Composed,
            Case::LayerNormModulate(d) if d % 16 != 0 => Expect::Composed,
            Case::LinearBias if dtype == DType::F32 => Expect::Composed,
            _ => Expect::Fused,
        }
    }

    fn run(self, dev: &Device, dtype: DType) -> Result<Outputs> {
        match self {
            Case::Attention(d) => attention(dev, dtype, d),
            Case::LayerNormModulate(d) => layer_norm_modulate(dev, dtype, d),
            Case::GatedResidual => gated_residual(dev, dtype),
            Case::QkNormRope(d) => qk_norm_rope(dev, dtype, d),
            Case::HeadsFirst(d) => heads_first(dev, dtype, d),
            Case::Gelu => gelu_tanh(dev, dtype),
            Case::Cols(act) => cols(dev, dtype, act),
            Case::GroupNorm(shape, g) => group_norm(dev, dtype, shape, g),
            Case::LinearBias => linear_bias(dev, dtype),
        }
    }
}

/// Runs every case in f32, bf16 and f16 on `dev`. Errors of the checks themselves (an op that failed) become
/// failing rows, so one broken kernel does not hide the others.
pub fn check(dev: &Device) -> Vec<Row> {
    let mut rows = Vec::new();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for case in CASES.into_iter().chain([BIG_GROUP_NORM]) {
            let (op, tol_op) = case.op();
            if dev.is_cuda() {
                // Per case, for the fallback reason; the CPU (a dry run) launches nothing and keeps no counts.
                fused::reset_stats();
            }
            let out = case.run(dev, dtype);
            let bound = reference::tolerance(tol_op, dtype);
            rows.push(judge(dev, (op, case.describe(), dtype), bound, case.expect(dtype), out));
        }
    }
    rows
}

/// One row from a case's outputs.
fn judge(
    dev: &Device,
    (op, case, dtype): (&'static str, String, DType),
    bound: f64,
    expect: Expect,
    out: Result<Outputs>,
) -> Row {
    let mut row = Row {
        op,
        case,
        dtype: format!("{dtype:?}").to_lowercase(),
        fused_err: None,
        composed_err: None,
        bound,
        passed: false,
        note: String::new(),
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            row.note = format!("error: {e}");
            return row;
        }
    };
    let err = |t: &Option<Tensor>, r: &Tensor| t.as_ref().map(|t| reference::rel(t, r)).transpose();
    let composed_ref = out.composed_reference.as_ref().unwrap_or(&out.reference);
    match (err(&out.fused, &out.reference), err(&out.composed, composed_ref)) {
        (Ok(f), Ok(c)) => (row.fused_err, row.composed_err) = (f, c),
        (Err(e), _) | (_, Err(e)) => {
            row.note = format!("error: {e}");
            return row;
        }
    }
    let why = fused::stats().values().flat_map(|t| t.composed.keys().cloned()).collect::<Vec<_>>().join("; ");
    let within = |e: Option<f64>| e.is_some_and(|e| e <= bound);
    (row.passed, row.note) = match (dev.is_cuda(), expect, row.fused_err) {
        (false, _, Some(_)) => (within(row.fused_err), "cpu kernel (dry run)".into()),
        (false, _, None) => (true, "dry run: no fused kernels on the CPU".into()),
        // Within the bound, or at least as close to the exact result as the composition it replaces.
        (true, Expect::Fused, Some(f)) => (within(Some(f)) || row.composed_err.is_some_and(|c| f <= c), "fused".into()),
        (true, Expect::Fused, None) => (false, format!("fell back to the composition: {why}")),
        // Where the composition is what ran, it must be right too.
        (true, Expect::Composed, None) => (within(row.composed_err), format!("composed, as expected: {why}")),
        (true, Expect::Composed, Some(_)) => (false, "launched a kernel where none may fit".into()),
    };
    row
}

/// One micro-benchmark: milliseconds per call.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchRow {
    pub op: &'static str,
    pub shape: String,
    /// None: the fused kernel did not launch (the reason is in `note`).
    pub fused_ms: Option<f64>,
    pub composed_ms: f64,
    pub note: String,
}

/// A benchmark run: the device, dtype, timed calls per measurement, and the rows so far.
struct Bench<'d> {
    dev: &'d Device,
    dtype: DType,
    iters: usize,
    rows: Vec<BenchRow>,
}

/// A fused call (None: it fell back) and the composed call it replaces.
type FusedFn<'a> = &'a dyn Fn() -> Result<Option<Tensor>>;
type ComposedFn<'a> = &'a dyn Fn() -> Result<Tensor>;

impl Bench<'_> {
    /// Deterministic values of `shape` in the benchmark's dtype on its device.
    fn rand(&self, shape: &[usize], seed: u64) -> Result<Tensor> {
        reference::rand(shape, seed)?.to_dtype(self.dtype)?.to_device(self.dev)
    }

    /// Milliseconds per call of `f`: two warm-up calls, then `iters` timed between device synchronisations.
    fn time(&self, f: ComposedFn) -> Result<f64> {
        for _ in 0..2 {
            f()?;
        }
        self.dev.synchronize()?;
        let t0 = Instant::now();
        for _ in 0..self.iters {
            f()?;
        }
        self.dev.synchronize()?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0 / self.iters as f64)
    }

    /// Times `fused` (on the CPU: `cpu`, the op's CPU kernel, as the dry run's stand-in) and `composed`.
    fn add(
        &mut self,
        op: &'static str,
        shape: String,
        (fused, cpu): (FusedFn, ComposedFn),
        composed: ComposedFn,
    ) -> Result<()> {
        fused::reset_stats();
        let run = || if self.dev.is_cuda() { fused() } else { cpu().map(Some) };
        let (fused_ms, note) = match run()? {
            None => {
                let why = fused::stats().values().flat_map(|t| t.composed.keys().cloned()).collect::<Vec<_>>();
                (None, format!("fell back: {}", why.join("; ")))
            }
            Some(_) => {
                let ms = self.time(&|| run()?.ok_or_else(|| candle_core::Error::Msg("fell back".into())))?;
                (Some(ms), if self.dev.is_cuda() { "fused".into() } else { "cpu kernel (dry run)".into() })
            }
        };
        let composed_ms = self.time(composed)?;
        self.rows.push(BenchRow { op, shape, fused_ms, composed_ms, note });
        Ok(())
    }
}

/// FLUX.1-dev 1024² shapes (`full`: B = 1, S = 4608, H = 24, D = 128, width 3072, MLP 12288, and the VAE's two
/// largest group norms) or small ones for a dry run, in `dtype` on `dev`.
pub fn bench(dev: &Device, dtype: DType, full: bool) -> Result<Vec<BenchRow>> {
    let dims = if full { (4608, 24, 128, 3072, 12288) } else { (128, 2, 128, 256, 1024) };
    let mut b = Bench { dev, dtype, iters: if full { 20 } else { 3 }, rows: Vec::new() };
    bench_attention(&mut b, dims)?;
    bench_projections(&mut b, dims)?;
    bench_rows(&mut b, dims)?;
    let planes: &[(usize, usize)] = if full { &[(128, 1024), (512, 256)] } else { &[(32, 64)] };
    for &(c, side) in planes {
        let x = b.rand(&[1, c, side, side], 11)?;
        let (g, bias) = (b.rand(&[c], 12)?, b.rand(&[c], 13)?);
        b.add(
            "group_norm",
            format!("[1, {c}, {side}, {side}] G32 +SiLU"),
            (&|| fused::group_norm(&x, (&g, &bias), 32, 1e-6, true), &|| {
                cpu_ops::group_norm(&x, &g, &bias, 32, 1e-6, true)
            }),
            &|| composed::group_norm(&x, (&g, &bias), 32, (0, 32), 1e-6, true),
        )?;
    }
    Ok(b.rows)
}

type Dims = (usize, usize, usize, usize, usize);

fn bench_attention(b: &mut Bench, (s, h, d, _, _): Dims) -> Result<()> {
    let (q, k, v) = (b.rand(&[1, h, s, d], 1)?, b.rand(&[1, h, s, d], 2)?, b.rand(&[1, h, s, d], 3)?);
    let sc = 1.0 / (d as f64).sqrt();
    b.add(
        "attention",
        format!("[1, {h}, {s}, {d}]"),
        (&|| fused::attention(&q, &k, &v, sc), &|| cpu_ops::attention(&q, &k, &v, sc)),
        &|| composed::attention(&q, &k, &v, sc, 0),
    )
}

/// The operations that read a single block's fused projection [1, S, 3·H·D + MLP]: q/k norm + RoPE, the values,
/// the MLP's GELU; and FLUX.2's SwiGLU on the same width.
fn bench_projections(b: &mut Bench, (s, h, d, _, mlp): Dims) -> Result<()> {
    let width = 3 * h * d + mlp;
    let (x, wt, theta) = (b.rand(&[1, s, width], 4)?, b.rand(&[d], 5)?, reference::rand(&[s, d / 2], 6)?);
    let angles = Angles::new(theta.cos()?.to_device(b.dev)?, theta.sin()?.to_device(b.dev)?, b.dtype)?;
    let shape = format!("[1, {s}, {width}] H{h}");
    b.add(
        "qk_norm_rope",
        shape.clone(),
        (&|| fused::qk_norm_rope(&x, (0, h), &wt, 1e-6, &angles), &|| {
            cpu_ops::qk_norm_rope(&x, 0, h, &wt, 1e-6, angles.packed())
        }),
        &|| composed::qk_norm_rope(&x, 0, h, &wt, 1e-6, (&angles.cos_dt, &angles.sin_dt)),
    )?;
    let col = 2 * h * d;
    b.add(
        "heads_first",
        shape,
        (&|| fused::heads_first(&x, col, h, d), &|| cpu_ops::heads_first(&x, col, h, d)),
        &|| composed::heads_first(&x, col, h, d),
    )?;
    let col = 3 * h * d;
    b.add(
        "gelu_tanh_cols",
        format!("[1, {s}, {width}] {mlp} cols"),
        (&|| fused::cols(&x, ColsAct::Gelu, col, mlp), &|| cpu_ops::gelu_tanh_cols(&x, col, mlp)),
        &|| x.narrow(2, col, mlp)?.gelu(),
    )?;
    b.add(
        "swiglu",
        format!("[1, {s}, {width}] 2×{} cols", mlp / 2),
        (&|| fused::cols(&x, ColsAct::Swiglu, 0, mlp / 2), &|| cpu_ops::swiglu(&x, 0, mlp / 2)),
        &|| composed::swiglu(&x, 0, mlp / 2),
    )
}

/// The row-wise operations around each sub-layer: modulated LayerNorm and gated residual (modulation rows as views
/// of one [1, 3·width] output), and the double blocks' GELU.
fn bench_rows(b: &mut Bench, (s, _, _, w, mlp): Dims) -> Result<()> {
    let (x, y, m) = (b.rand(&[1, s, w], 7)?, b.rand(&[1, s, w], 8)?, b.rand(&[1, 3 * w], 9)?);
    let (scale, shift, gate) = (m.narrow(1, w, w)?, m.narrow(1, 0, w)?, m.narrow(1, 2 * w, w)?);
    b.add(
        "layer_norm_modulate",
        format!("[1, {s}, {w}]"),
        (&|| fused::layer_norm_modulate(&x, &scale, &shift, 1e-6), &|| {
            cpu_ops::layer_norm_modulate(&x, &scale, &shift, 1e-6)
        }),
        &|| composed::layer_norm_modulate(&x, &scale, &shift, 1e-6),
    )?;
    b.add(
        "gated_residual",
        format!("[1, {s}, {w}]"),
        (&|| fused::gated_residual(&x, &y, &gate), &|| cpu_ops::gated_residual(&x, &y, &gate)),
        &|| composed::gated_residual(&x, &y, &gate),
    )?;
    let (wt, bias) = (b.rand(&[mlp, w], 14)?, b.rand(&[mlp], 15)?);
    let layer = candle_nn::Linear::new(wt.clone(), Some(bias.clone()));
    let forward = || candle_nn::Module::forward(&layer, &x);
    b.add(
        "linear_bias",
        format!("[1, {s}, {w}] x [{mlp}, {w}]ᵀ + b"),
        (&|| super::gemm::linear_bias(&x, &wt, &bias), &forward),
        &forward,
    )?;
    let hm = b.rand(&[1, s, mlp], 10)?;
    b.add("gelu_tanh", format!("[1, {s}, {mlp}]"), (&|| fused::gelu_tanh(&hm), &|| cpu_ops::gelu_tanh(&hm)), &|| {
        hm.gelu()
    })
}
