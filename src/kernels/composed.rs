//! The candle composition of each operation: what CUDA runs (and f16 anywhere) unless a fused kernel is selected,
//! and what `--kernels composed` runs on the CPU too. Tensors in the model's dtype in, the same dtype out.
//!
//! Cast-free: nothing here makes an f32 copy of an activation. The reductions go through candle's fused ops
//! (`layer_norm`, `rms_norm`, `softmax_last_dim`), whose kernels read the dtype, accumulate in f32 and write the
//! dtype; RoPE is candle's `rope_i` (FLUX's interleaved pairs); the attention scale multiplies q ([B, H, S, D]),
//! not the S×S scores. One device-specific piece: candle's CPU softmax sums f16/bf16 rows in the half type itself
//! (its CUDA kernel sums in f32), so on the CPU [`softmax_last_dim`] runs the CUDA kernel's steps instead — the
//! numerics tested here are the ones CUDA computes.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Columns `col..col+heads·d` of x [B, S, W] → [B, H, S, d], contiguous. One strided copy when W and col are
/// multiples of d (FLUX's fused projections): [B, S, W/d, d] is then a view of x, and so are its narrow and
/// transpose; otherwise the narrowed columns are gathered first (two copies).
pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    if w % d == 0 && col % d == 0 && x.is_contiguous() {
        return x.reshape((b, s, w / d, d))?.narrow(2, col / d, heads)?.transpose(1, 2)?.contiguous();
    }
    x.narrow(2, col, heads * d)?.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
}

/// Per-head RMSNorm (learned `weight`, D values) and RoPE of columns `col..col+H·D` of x [B, S, W] → [B, H, S, D].
/// `cos`, `sin` [S, D/2], one angle per pair (2i, 2i+1), cast to x's dtype if they are not already (the models
/// pass them in it: see [`super::Angles`]).
pub fn qk_norm_rope(
    x: &Tensor,
    col: usize,
    heads: usize,
    weight: &Tensor,
    eps: f64,
    (cos, sin): (&Tensor, &Tensor),
) -> Result<Tensor> {
    let n = candle_nn::ops::rms_norm(&heads_first(x, col, heads, weight.dim(0)?)?, weight, eps as f32)?;
    let angle = |t: &Tensor| t.to_dtype(n.dtype())?.contiguous();
    // rope_i: y[2i] = x[2i]·cos − x[2i+1]·sin, y[2i+1] = x[2i]·sin + x[2i+1]·cos — diffusers' `apply_rotary_emb`
    // with `use_real_unbind_dim=-1`, which is FLUX's.
    candle_nn::rotary_emb::rope_i(&n, &angle(cos)?, &angle(sin)?)
}

/// `LayerNorm(x)·(1 + scale) + shift` for x [B, S, D], scale and shift [B, D]: candle's fused layer norm with
/// (1 + scale) as its weight and shift as its bias, one batch item at a time (the fused op takes one weight
/// row). `1 + scale` is rounded to the dtype first, as diffusers computes it.
pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let b = x.dim(0)?;
    let (x, alpha) = (x.contiguous()?, (scale + 1.0)?);
    let item = |i: usize| {
        let (a, s) = (alpha.get(i)?.contiguous()?, shift.get(i)?.contiguous()?);
        candle_nn::ops::layer_norm(&x.get(i)?, &a, &s, eps as f32)
    };
    if b == 1 {
        return item(0)?.unsqueeze(0);
    }
    Tensor::stack(&(0..b).map(item).collect::<Result<Vec<_>>>()?, 0)
}

/// `silu(a)·b` for a = columns `col..col+width` of x [B, S, W] and b the `width` columns after them.
pub fn swiglu(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    x.narrow(2, col, width)?.silu()? * x.narrow(2, col + width, width)?
}

/// `x + gate·y` for x, y [B, S, D] and gate [B, D].
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?
}

/// GroupNorm of groups `g0..g0+n` of x [B, C, H, W] (C = groups·per channels), with the per-channel affine of
/// `weight`, `bias` (C values each) and an optional SiLU: candle's fused layer norm over each group's per·H·W
/// elements (weight ones, bias zeros), then the affine per channel. No fused group norm exists in candle; a layer
/// norm over one row per group is the same statistics.
pub fn group_norm(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    groups: usize,
    (g0, n): (usize, usize),
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let per = c / groups;
    let x = if n == groups { x.clone() } else { x.narrow(1, g0 * per, n * per)? };
    let c = n * per;
    let len = per * h * w;
    // [B, n·per, H, W] → [B, n, per·H·W]: one row per group.
    let rows = x.reshape((b, n, len))?;
    let (ones, zeros) = (Tensor::ones(len, x.dtype(), x.device())?, Tensor::zeros(len, x.dtype(), x.device())?);
    let mut y = candle_nn::ops::layer_norm(&rows, &ones, &zeros, eps as f32)?.reshape((b, c, h, w))?;
    // Reassigned, not shadowed: each intermediate is freed as soon as the next exists.
    y = y.broadcast_mul(&weight.narrow(0, g0 * per, c)?.reshape((1, c, 1, 1))?)?;
    y = y.broadcast_add(&bias.narrow(0, g0 * per, c)?.reshape((1, c, 1, 1))?)?;
    if silu {
        y = y.silu()?;
    }
    Ok(y)
}

/// Unmasked scaled dot-product attention, q, k, v [B, H, S, D] → [B, S, H·D], `chunk` query rows at a time (0:
/// all). The scale multiplies q once; every row's scores, softmax and weighted sum are the same operations however
/// the rows are chunked, so chunking bounds the [rows, S] score buffers without changing a value. Kᵀ is made
/// contiguous (one [B, H, D, S] copy, small beside the scores): read transposed in place, the CPU's GEMM sums a
/// one-row chunk in another order than the whole (3e-7 apart in f32), and chunks must give the same pixels.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, chunk: usize) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let q = (q * scale)?;
    let (kt, v) = (k.t()?.contiguous()?, v.contiguous()?);
    let rows = |q: &Tensor| softmax_last_dim(&q.contiguous()?.matmul(&kt)?)?.matmul(&v);
    let out = if chunk == 0 || chunk >= s {
        rows(&q)?
    } else {
        let parts = (0..s).step_by(chunk).map(|r0| rows(&q.narrow(2, r0, chunk.min(s - r0))?));
        Tensor::cat(&parts.collect::<Result<Vec<_>>>()?, 2)?
    };
    out.transpose(1, 2)?.reshape((b, s, h * d))
}

/// Softmax over the last dimension in x's dtype: candle's op, except for f16/bf16 on the CPU (see the header),
/// where `HalfSoftmax` does what candle's CUDA kernel does.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F16 | DType::BF16) {
        return x.contiguous()?.apply_op1_no_bwd(&HalfSoftmax);
    }
    candle_nn::ops::softmax_last_dim(x)
}

/// The steps of candle's CUDA `softmax` kernel (candle-kernels reduce.cu) for a half type on the CPU: the row's
/// maximum, each term `exp(x − max)` computed from the half-type difference and stored rounded to the type, their
/// sum in f32, each stored term times 1/sum rounded to the type. Only the order of the f32 sum differs (CUDA adds
/// 32 strided partial sums).
struct HalfSoftmax;

impl CustomOp1 for HalfSoftmax {
    fn name(&self) -> &'static str {
        "half-softmax-f32-sum"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (o1, o2) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::msg("softmax: not contiguous"))?;
        let n = layout.shape().dims().last().copied().unwrap_or(1);
        let out = match storage {
            CpuStorage::F16(v) => CpuStorage::F16(half_softmax(&v[o1..o2], n)),
            CpuStorage::BF16(v) => CpuStorage::BF16(half_softmax(&v[o1..o2], n)),
            _ => candle_core::bail!("half softmax: not a half type"),
        };
        Ok((out, layout.shape().clone()))
    }
}

fn half_softmax<T: Half>(x: &[T], n: usize) -> Vec<T> {
    let mut out = vec![T::from_f32(0.0); x.len()];
    out.par_chunks_mut(n).zip(x.par_chunks(n)).for_each(|(o, row)| {
        let max = row.iter().fold(T::from_f32(f32::NEG_INFINITY), |m, &v| if v > m { v } else { m });
        let mut sum = 0f32;
        for (d, &v) in o.iter_mut().zip(row) {
            *d = T::from_f32((v - max).into().exp());
            sum += (*d).into();
        }
        let inv = 1.0 / sum;
        o.iter_mut().for_each(|d| *d = T::from_f32((*d).into() * inv));
    });
    out
}

/// f16 and bf16: arithmetic that rounds to the type, widening to f32, and rounding from f32 (which both have but
/// no common trait names).
trait Half: Copy + Send + Sync + PartialOrd + Into<f32> + std::ops::Sub<Output = Self> {
    fn from_f32(v: f32) -> Self;
}

impl Half for half::f16 {
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

impl Half for half::bf16 {
    fn from_f32(v: f32) -> Self {
        half::bf16::from_f32(v)
    }
}
