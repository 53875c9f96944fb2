//! The CPU kernels themselves: plain `f32` slices in, freshly allocated `Vec<f32>` out, parallel with rayon.
//!
//! Each kernel does in one pass what candle would do in several single-threaded ones (normalise + modulate,
//! RMS-norm + RoPE + head transpose, gate + residual, …). Reductions accumulate in f64: torch accumulates
//! f32 with pairwise/Welford sums, and f64 keeps us at least as close to the exact value as it is.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

/// Elements per parallel task for elementwise kernels: large enough to amortise scheduling.
const CHUNK: usize = 1 << 14;

/// Σx and Σ(x − mean)² in f64 over 8 independent lanes, so the loops vectorise.
fn mean_var(xs: &[f32]) -> (f64, f64) {
    let lanes = |f: &dyn Fn(f32) -> f64| {
        let mut acc = [0f64; 8];
        let chunks = xs.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for i in 0..8 {
                acc[i] += f(c[i]);
            }
        }
        acc.iter().sum::<f64>() + tail
    };
    let n = xs.len() as f64;
    let mean = lanes(&|v| v as f64) / n;
    let var = lanes(&|v| (v as f64 - mean) * (v as f64 - mean)) / n;
    (mean, var)
}

fn par() -> Parallelism {
    Parallelism::Rayon(rayon::current_num_threads())
}

/// Shapes of a 2-D convolution over NCHW data with an OIHW weight, dilation 1, one group.
#[derive(Debug, Clone, Copy)]
pub struct ConvShape {
    pub batch: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h + 2 * self.pad - self.kh) / self.stride + 1, (self.w + 2 * self.pad - self.kw) / self.stride + 1)
    }
}

/// Convolution as im2col + one GEMM per band of output rows, written straight into the output planes.
/// The band keeps the column buffer near 16 MB whatever the image size (candle's im2col builds it whole:
/// 300 MB for a 128-channel 256² layer), and the bias is the GEMM's initial accumulator.
pub fn conv2d(x: &[f32], wt: &[f32], bias: Option<&[f32]>, s: ConvShape) -> Vec<f32> {
    let (ho, wo) = s.out_hw();
    let n = ho * wo;
    let k = s.c_in * s.kh * s.kw;
    let mut out = vec![0f32; s.batch * s.c_out * n];
    if let Some(b) = bias {
        out.par_chunks_mut(n).enumerate().for_each(|(i, plane)| plane.fill(b[i % s.c_out]));
    }
    let pointwise = s.kh == 1 && s.kw == 1 && s.stride == 1 && s.pad == 0;
    let rows_per_band = if pointwise { ho } else { ((4 << 20) / (k * wo)).clamp(1, ho) };
    let mut col = if pointwise { Vec::new() } else { vec![0f32; k * rows_per_band * wo] };
    for b in 0..s.batch {
        let xb = &x[b * s.c_in * s.h * s.w..(b + 1) * s.c_in * s.h * s.w];
        let mut row0 = 0;
        while row0 < ho {
            let rows = rows_per_band.min(ho - row0);
            let nb = rows * wo;
            let rhs: &[f32] = if pointwise {
                xb
            } else {
                im2col(xb, &mut col[..k * nb], s, row0, rows, wo);
                &col[..k * nb]
            };
            let dst = &mut out[b * s.c_out * n + row0 * wo..];
            // SAFETY: dst holds c_out rows of stride n from row0·wo on, each nb long; lhs is c_out×k and rhs
            // k×nb, both row-major and in bounds by construction.
            unsafe {
                gemm(
                    s.c_out,
                    nb,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    bias.is_some(),
                    wt.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    nb as isize,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    par(),
                );
            }
            row0 += rows;
        }
    }
    out
}

/// Fills `col` (k rows of rows·wo) with the input pixels each kernel tap sees for output rows row0..row0+rows.
fn im2col(x: &[f32], col: &mut [f32], s: ConvShape, row0: usize, rows: usize, wo: usize) {
    let nb = rows * wo;
    col.par_chunks_mut(nb).enumerate().for_each(|(r, dst)| {
        let c = r / (s.kh * s.kw);
        let ky = (r / s.kw) % s.kh;
        let kx = r % s.kw;
        let plane = &x[c * s.h * s.w..(c + 1) * s.h * s.w];
        for oy in 0..rows {
            let d = &mut dst[oy * wo..(oy + 1) * wo];
            let iy = ((row0 + oy) * s.stride + ky) as isize - s.pad as isize;
            if iy < 0 || iy >= s.h as isize {
                d.fill(0.0);
                continue;
            }
            let src = &plane[iy as usize * s.w..(iy as usize + 1) * s.w];
            if s.stride == 1 {
                // Output x reads input x + kx − pad: one shifted copy with zeros where it falls outside.
                let lo = s.pad.saturating_sub(kx).min(wo);
                let hi = (s.w + s.pad).saturating_sub(kx).clamp(lo, wo);
                d[..lo].fill(0.0);
                d[lo..hi].copy_from_slice(&src[lo + kx - s.pad..hi + kx - s.pad]);
                d[hi..].fill(0.0);
                continue;
            }
            for (ox, v) in d.iter_mut().enumerate() {
                let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                *v = if ix >= 0 && (ix as usize) < s.w { src[ix as usize] } else { 0.0 };
            }
        }
    });
}

/// e^x for f32 without a libm call, so loops over it vectorise: Cody–Waite reduction to r ∈ [−ln2/2, ln2/2]
/// and a degree-6 Taylor polynomial (truncation error < 2e-8 relative, about 1 ulp; checked against f64 in
/// the tests). Saturates to 0 / f32::MAX-ish outside [−87, 88].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    // Round-to-nearest by the 1.5·2²³ trick and 2ⁿ built from integer bits: both stay in SIMD registers,
    // where `f32::round` and a saturating `as i32` would each cost a scalar call or branch.
    const MAGIC: f32 = 12_582_912.0;
    #[allow(clippy::manual_clamp)] // max/min (unlike clamp) compile to branch-free SIMD
    let x = x.max(-87.0).min(88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = (x - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    p * f32::from_bits((ni.wrapping_add(127) << 23) as u32)
}

/// tanh through [`exp`]: 1 − 2/(e^{2y} + 1), odd-symmetric. Absolute error ≲ 1e-7.
#[inline(always)]
pub fn tanh(y: f32) -> f32 {
    let a = y.abs();
    let t = 1.0 - 2.0 / (exp(2.0 * a) + 1.0);
    t.copysign(y)
}

#[inline(always)]
fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

/// GroupNorm over [B, C, HW] with per-channel affine, optionally followed by SiLU, in one pass per group.
#[allow(clippy::too_many_arguments)]
pub fn group_norm(
    x: &[f32],
    c: usize,
    hw: usize,
    groups: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f64,
    silu_after: bool,
) -> Vec<f32> {
    let cpg = c / groups;
    let glen = cpg * hw;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(glen).zip(x.par_chunks(glen)).enumerate().for_each(|(gi, (o, xs))| {
        let (mean, var) = mean_var(xs);
        let rstd = 1.0 / (var + eps).sqrt();
        for j in 0..cpg {
            let ch = (gi % groups) * cpg + j;
            let a = (gamma[ch] as f64 * rstd) as f32;
            let b = (beta[ch] as f64 - mean * gamma[ch] as f64 * rstd) as f32;
            let (src, dst) = (&xs[j * hw..(j + 1) * hw], &mut o[j * hw..(j + 1) * hw]);
            if silu_after {
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d = silu(v * a + b));
            } else {
                dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v * a + b);
            }
        }
    });
    out
}

/// Nearest-neighbour 2× upsampling of [N, H, W] planes.
pub fn upsample2x(x: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len() * 4];
    out.par_chunks_mut(4 * h * w).zip(x.par_chunks(h * w)).for_each(|(o, p)| {
        for y in 0..h {
            let src = &p[y * w..(y + 1) * w];
            let row = &mut o[2 * y * 2 * w..(2 * y + 1) * 2 * w];
            for (i, &v) in src.iter().enumerate() {
                row[2 * i] = v;
                row[2 * i + 1] = v;
            }
            o.copy_within(2 * y * 2 * w..(2 * y + 1) * 2 * w, (2 * y + 1) * 2 * w);
        }
    });
    out
}

#[inline(always)]
fn gelu_tanh1(v: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * v * (1.0 + tanh(K * (v + 0.044715 * v * v * v)))
}

/// torch's `gelu(approximate="tanh")`: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
pub fn gelu_tanh(x: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(o, xs)| {
        o.iter_mut().zip(xs).for_each(|(d, &v)| *d = gelu_tanh1(v));
    });
    out
}

/// GELU-tanh of columns col..col+width of rows of `row_stride` (the MLP part of a fused projection).
pub fn gelu_tanh_cols(x: &[f32], row_stride: usize, col: usize, width: usize) -> Vec<f32> {
    let rows = x.len() / row_stride;
    let mut out = vec![0f32; rows * width];
    out.par_chunks_mut(width).enumerate().for_each(|(r, o)| {
        let src = &x[r * row_stride + col..][..width];
        o.iter_mut().zip(src).for_each(|(d, &v)| *d = gelu_tanh1(v));
    });
    out
}

/// LayerNorm without affine over rows of `d`, then `·(1 + scale) + shift` with one (scale, shift) per batch.
pub fn layer_norm_modulate(
    x: &[f32],
    d: usize,
    rows_per_batch: usize,
    scale: &[f32],
    shift: &[f32],
    eps: f64,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d).zip(x.par_chunks(d)).enumerate().for_each(|(r, (o, xs))| {
        let b = r / rows_per_batch;
        let (sc, sh) = (&scale[b * d..(b + 1) * d], &shift[b * d..(b + 1) * d]);
        let (mean, var) = mean_var(xs);
        let rstd = (1.0 / (var + eps).sqrt()) as f32;
        let mean = mean as f32;
        for i in 0..d {
            o[i] = (xs[i] - mean) * rstd * (1.0 + sc[i]) + sh[i];
        }
    });
    out
}

/// `x + gate·y` over [B, S, D] with one gate row per batch.
pub fn gated_residual(x: &[f32], y: &[f32], gate: &[f32], d: usize, rows_per_batch: usize) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(d).zip(x.par_chunks(d).zip(y.par_chunks(d))).enumerate().for_each(|(r, (o, (xs, ys)))| {
        let g = &gate[(r / rows_per_batch) * d..(r / rows_per_batch + 1) * d];
        for i in 0..d {
            o[i] = xs[i] + g[i] * ys[i];
        }
    });
    out
}

/// Query/key preparation for attention: per head RMSNorm (learned weight), RoPE on pairs (2i, 2i+1), and the
/// move from [B, S, H·D] (linear output; `row_stride` ≥ H·D lets q, k come out of a fused projection) to
/// [B, H, S, D]. `cos`/`sin` are [S, D/2].
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    x: &[f32],
    row_stride: usize,
    col: usize,
    b: usize,
    s: usize,
    h: usize,
    d: usize,
    weight: &[f32],
    eps: f64,
    cos: &[f32],
    sin: &[f32],
) -> Vec<f32> {
    let mut out = vec![0f32; b * h * s * d];
    out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        for t in 0..s {
            let src = &x[(bi * s + t) * row_stride + col + hi * d..][..d];
            let ms = src.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>() / d as f64;
            let r = (1.0 / (ms + eps).sqrt()) as f32;
            let (c, sn) = (&cos[t * d / 2..(t + 1) * d / 2], &sin[t * d / 2..(t + 1) * d / 2]);
            let dst = &mut o[t * d..(t + 1) * d];
            for i in 0..d / 2 {
                let a = src[2 * i] * r * weight[2 * i];
                let bb = src[2 * i + 1] * r * weight[2 * i + 1];
                dst[2 * i] = a * c[i] - bb * sn[i];
                dst[2 * i + 1] = bb * c[i] + a * sn[i];
            }
        }
    });
    out
}

/// [B, S, H·D] (rows of `row_stride`, starting at column `col`) → [B, H, S, D].
#[allow(clippy::too_many_arguments)]
pub fn heads_first(x: &[f32], row_stride: usize, col: usize, b: usize, s: usize, h: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; b * h * s * d];
    out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
        let (bi, hi) = (bh / h, bh % h);
        for t in 0..s {
            o[t * d..(t + 1) * d].copy_from_slice(&x[(bi * s + t) * row_stride + col + hi * d..][..d]);
        }
    });
    out
}

/// Scaled dot-product attention without mask, per (batch, head) and band of query rows: scores with one GEMM,
/// a numerically stable softmax, and the weighted sum of values with another GEMM, written straight into
/// [B, S, H·D] so no transpose follows. q, k, v are [B, H, S, D].
#[allow(clippy::too_many_arguments)]
pub fn attention(q: &[f32], k: &[f32], v: &[f32], b: usize, h: usize, s: usize, d: usize, scale: f32) -> Vec<f32> {
    let mut out = vec![0f32; b * s * h * d];
    const BAND: usize = 64;
    let bands = s.div_ceil(BAND);
    let out_ptr = SendPtr(out.as_mut_ptr());
    (0..b * h * bands).into_par_iter().for_each_init(
        || vec![0f32; BAND * s],
        |scores, task| {
            let (bh, band) = (task / bands, task % bands);
            let (bi, hi) = (bh / h, bh % h);
            let r0 = band * BAND;
            let rows = BAND.min(s - r0);
            let (qh, kh, vh) = (&q[bh * s * d..][..s * d], &k[bh * s * d..][..s * d], &v[bh * s * d..][..s * d]);
            let sc = &mut scores[..rows * s];
            // SAFETY: every slice is in bounds by construction; each task writes a disjoint block of `out`
            // (rows r0..r0+rows of head hi in batch bi).
            unsafe {
                gemm(
                    rows,
                    s,
                    d,
                    sc.as_mut_ptr(),
                    1,
                    s as isize,
                    false,
                    qh[r0 * d..].as_ptr(),
                    1,
                    d as isize,
                    kh.as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
            for row in sc.chunks_mut(s) {
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                let mut sum = 0f32;
                for x in row.iter_mut() {
                    *x = exp(*x - m);
                    sum += *x;
                }
                let inv = 1.0 / sum;
                row.iter_mut().for_each(|x| *x *= inv);
            }
            let dst = out_ptr.get().wrapping_add((bi * s + r0) * h * d + hi * d);
            unsafe {
                gemm(
                    rows,
                    d,
                    s,
                    dst,
                    1,
                    (h * d) as isize,
                    false,
                    sc.as_ptr(),
                    1,
                    s as isize,
                    vh.as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::None,
                );
            }
        },
    );
    out
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint output blocks to parallel tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
