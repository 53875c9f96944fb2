//! Fused operations for the models' hot spots: tensors in, tensors out.
//!
//! On CPU with f32 data each operation runs one hand-written parallel kernel from [`cpu`]; anywhere else (CUDA,
//! bf16/f16) it runs the same maths as a composition of candle ops. candle alone on CPU does these as chains of
//! single-threaded passes with a fresh buffer each, and builds a whole-image im2col for convolutions: on the
//! CPU benchmark that made the run 1.9× slower than torch. The composed versions double as the reference the
//! kernels are tested against.

pub mod cpu;

use candle_core::{CpuStorage, DType, Device, Module, Result, Storage, StorageRef, Tensor, D};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A contiguous CPU f32 tensor's data, borrowed.
struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl F32View<'_> {
    fn s(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("F32View is only built over CPU f32 storage"),
        }
    }
}

/// The data of `t` if it is a contiguous f32 CPU tensor.
fn view(t: &Tensor) -> Option<F32View<'_>> {
    let (guard, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets()?;
    matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))).then_some(F32View { guard, start, end })
}

/// Whether the kernels apply to this tensor (CPU, f32) — otherwise the candle composition runs.
fn fast(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn cpu_tensor(v: Vec<f32>, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A 2-D convolution (one group, dilation 1) with diffusers' `weight`/`bias` names.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = Some(vb.get(c_out, "bias")?);
        Ok(Self { weight, bias, stride, pad })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c_in, h, w) = x.dims4()?;
        let (c_out, _, kh, kw) = self.weight.dims4()?;
        if !fast(x) || !fast(&self.weight) {
            let y = composed_conv(x, &self.weight, self.stride, self.pad, CONV_BAND.load(Ordering::Relaxed))?;
            return match &self.bias {
                Some(bias) => y.broadcast_add(&bias.reshape((1, c_out, 1, 1))?),
                None => Ok(y),
            };
        }
        let shape = cpu::ConvShape { batch: b, c_in, h, w, c_out, kh, kw, stride: self.stride, pad: self.pad };
        let (ho, wo) = shape.out_hw();
        let x = x.contiguous()?;
        let (xv, wv) = (view(&x).expect("checked"), view(&self.weight).expect("checked"));
        let bias = self.bias.as_ref().map(|b| b.contiguous()).transpose()?;
        let bv = bias.as_ref().and_then(view);
        cpu_tensor(cpu::conv2d(xv.s(), wv.s(), bv.as_ref().map(|v| v.s()), shape), (b, c_out, ho, wo))
    }
}

/// Output rows per band of the composed convolution; 0 = the whole image at once. Process-wide, set once from
/// `--vae-band` before any model runs (it bounds candle's im2col buffer, never changes the result).
static CONV_BAND: AtomicUsize = AtomicUsize::new(0);

/// Bounds the composed convolution's im2col buffer to `rows` output rows at a time (0: unbounded).
pub fn set_conv_band(rows: usize) {
    CONV_BAND.store(rows, Ordering::Relaxed);
}

/// candle's convolution (im2col + GEMM on CUDA), `band` output rows at a time (0: all). The zero padding is made
/// explicit first, so each band reads exactly the padded rows the whole image would; 1×1 convolutions need no
/// im2col buffer and run whole.
fn composed_conv(x: &Tensor, weight: &Tensor, stride: usize, pad: usize, band: usize) -> Result<Tensor> {
    let (_, _, h, _) = x.dims4()?;
    let kh = weight.dim(2)?;
    let h_out = (h + 2 * pad - kh) / stride + 1;
    if band == 0 || kh == 1 || band >= h_out {
        return x.conv2d(weight, pad, stride, 1, 1);
    }
    let padded = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    let parts = (0..h_out).step_by(band).map(|r0| {
        let rows = band.min(h_out - r0);
        padded.narrow(2, r0 * stride, (rows - 1) * stride + kh)?.conv2d(weight, 0, stride, 1, 1)
    });
    Tensor::cat(&parts.collect::<Result<Vec<_>>>()?, 2)
}

/// GroupNorm over [B, C, H, W] with affine weights, optionally fused with the SiLU that follows it everywhere
/// in the VAE.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if fast(x) && fast(&self.weight) && c % self.groups == 0 {
            let x = x.contiguous()?;
            let (xv, gv, bv) = (view(&x).expect("checked"), view(&self.weight), view(&self.bias));
            if let (Some(gv), Some(bv)) = (gv, bv) {
                let y = cpu::group_norm(xv.s(), c, h * w, self.groups, gv.s(), bv.s(), self.eps, silu);
                return cpu_tensor(y, (b, c, h, w));
            }
        }
        // With VAE banding, GN_CHUNK groups at a time: each group's statistics are the same operations on the
        // same elements, and the f32 copies shrink to the chunk's.
        let step = if CONV_BAND.load(Ordering::Relaxed) > 0 { GN_CHUNK } else { self.groups };
        if step >= self.groups || c % self.groups != 0 {
            return self.composed(x, 0, self.groups, silu);
        }
        let parts = (0..self.groups).step_by(step).map(|g0| self.composed(x, g0, step.min(self.groups - g0), silu));
        Tensor::cat(&parts.collect::<Result<Vec<_>>>()?, 1)
    }

    /// candle's composition for groups `g0..g0 + n` of `x` (all of them when n is the group count).
    fn composed(&self, x: &Tensor, g0: usize, n: usize, silu: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let per = c / self.groups;
        let (x, c) = if n == self.groups { (x.clone(), c) } else { (x.narrow(1, g0 * per, n * per)?, n * per) };
        let (weight, bias) = (self.weight.narrow(0, g0 * per, c)?, self.bias.narrow(0, g0 * per, c)?);
        let dtype = x.dtype();
        let g = x.to_dtype(DType::F32)?.reshape((b, n, per * h * w))?;
        let mean = g.mean_keepdim(D::Minus1)?;
        let centered = g.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?.reshape((b, c, h, w))?.to_dtype(dtype)?;
        let y = normed.broadcast_mul(&weight.reshape((1, c, 1, 1))?)?.broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
        if silu {
            y.silu()
        } else {
            Ok(y)
        }
    }
}

/// Groups a banded group norm normalises at a time (of FLUX's 32: an eighth of the f32 copies).
pub const GN_CHUNK: usize = 4;

/// Nearest-neighbour 2× upsampling of [B, C, H, W].
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    if fast(x) {
        let x = x.contiguous()?;
        return cpu_tensor(cpu::upsample2x(view(&x).expect("checked").s(), h, w), (b, c, 2 * h, 2 * w));
    }
    x.upsample_nearest2d(2 * h, 2 * w)
}

/// GELU with the tanh approximation (FLUX's feed-forward activation).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        let x = x.contiguous()?;
        return cpu_tensor(cpu::gelu_tanh(view(&x).expect("checked").s()), x.shape());
    }
    x.gelu()
}

/// `LayerNorm(x)·(1 + scale) + shift` for x [B, S, D], scale and shift [B, D]; LayerNorm without affine.
pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    if fast(x) && fast(scale) && fast(shift) {
        let (x, scale, shift) = (x.contiguous()?, scale.contiguous()?, shift.contiguous()?);
        let (xv, sc, sh) = (view(&x).expect("checked"), view(&scale).expect("checked"), view(&shift).expect("checked"));
        return cpu_tensor(cpu::layer_norm_modulate(xv.s(), d, s, sc.s(), sh.s(), eps), (b, s, d));
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?;
    normed.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

/// `x + gate·y` for x, y [B, S, D] and gate [B, D].
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    if fast(x) && fast(y) && fast(gate) {
        let (x, y, gate) = (x.contiguous()?, y.contiguous()?, gate.contiguous()?);
        let (xv, yv, gv) = (view(&x).expect("checked"), view(&y).expect("checked"), view(&gate).expect("checked"));
        return cpu_tensor(cpu::gated_residual(xv.s(), yv.s(), gv.s(), d, s), (b, s, d));
    }
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?
}

/// GELU-tanh of columns `col..col+width` of x [B, S, W] (the MLP part of a fused projection) → [B, S, width].
pub fn gelu_tanh_cols(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    if fast(x) {
        let x = x.contiguous()?;
        return cpu_tensor(cpu::gelu_tanh_cols(view(&x).expect("checked").s(), w, col, width), (b, s, width));
    }
    x.narrow(2, col, width)?.gelu()
}

/// Per-head RMSNorm (learned weight) and RoPE for queries or keys taken from columns `col..col+H·D` of
/// x [B, S, W] (a fused qkv projection) → [B, H, S, D]. `cos`, `sin` are [S, D/2] (one angle per pair
/// (2i, 2i+1)).
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_rope(
    x: &Tensor,
    col: usize,
    heads: usize,
    weight: &Tensor,
    eps: f64,
    cos: &Tensor,
    sin: &Tensor,
) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    let d = weight.dim(0)?;
    if fast(x) && fast(weight) && fast(cos) {
        let (x, weight, cos, sin) = (x.contiguous()?, weight.contiguous()?, cos.contiguous()?, sin.contiguous()?);
        let (xv, wv) = (view(&x).expect("checked"), view(&weight).expect("checked"));
        let (cv, sv) = (view(&cos).expect("checked"), view(&sin).expect("checked"));
        let y = cpu::qk_norm_rope(xv.s(), w, col, b, s, heads, d, wv.s(), eps, cv.s(), sv.s());
        return cpu_tensor(y, (b, heads, s, d));
    }
    let dtype = x.dtype();
    let xf = x.narrow(2, col, heads * d)?.reshape((b, s, heads, d))?.transpose(1, 2)?.to_dtype(DType::F32)?;
    let rms = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    let n = xf.broadcast_div(&rms)?.broadcast_mul(&weight.to_dtype(DType::F32)?)?;
    // Pairs (2i, 2i+1): [.., D] → [.., D/2, 2].
    let n = n.reshape((b, heads, s, d / 2, 2))?;
    let (a, bb) = (n.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?, n.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?);
    let (c, sn) = (cos.to_dtype(DType::F32)?, sin.to_dtype(DType::F32)?);
    let ra = (a.broadcast_mul(&c)? - bb.broadcast_mul(&sn)?)?;
    let rb = (bb.broadcast_mul(&c)? + a.broadcast_mul(&sn)?)?;
    Tensor::stack(&[ra, rb], D::Minus1)?.reshape((b, heads, s, d))?.to_dtype(dtype)
}

/// Columns `col..col+heads·d` of x [B, S, W] → [B, H, S, d] (values, which get no norm or RoPE).
pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    if fast(x) {
        let x = x.contiguous()?;
        return cpu_tensor(cpu::heads_first(view(&x).expect("checked").s(), w, col, b, s, heads, d), (b, heads, s, d));
    }
    x.narrow(2, col, heads * d)?.reshape((b, s, heads, d))?.transpose(1, 2)?.contiguous()
}

/// Query rows per chunk of the composed attention; 0 = all rows at once. Process-wide, set once from
/// `--attention-chunk` before any model runs (it changes how big the score buffers get, never the result).
static ATTENTION_CHUNK: AtomicUsize = AtomicUsize::new(0);

/// Bounds the composed attention's [B, H, rows, S] score buffers to `rows` query rows at a time (0: unbounded).
pub fn set_attention_chunk(rows: usize) {
    ATTENTION_CHUNK.store(rows, Ordering::Relaxed);
}

/// Unmasked scaled dot-product attention: q, k, v [B, H, S, D] → [B, S, H·D].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    if fast(q) && fast(k) && fast(v) {
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let (qv, kv, vv) = (view(&q).expect("checked"), view(&k).expect("checked"), view(&v).expect("checked"));
        return cpu_tensor(cpu::attention(qv.s(), kv.s(), vv.s(), b, h, s, d, scale as f32), (b, s, h * d));
    }
    composed_attention(q, k, v, scale, ATTENTION_CHUNK.load(Ordering::Relaxed))
}

/// candle's composition, `chunk` query rows at a time (0: all): every row's scores, softmax and weighted sum are
/// the same operations either way, so chunking bounds memory without changing what a row computes.
fn composed_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, chunk: usize) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (kt, v) = (k.t()?.contiguous()?, v.contiguous()?);
    let rows = |q: &Tensor| -> Result<Tensor> {
        let scores = (q.contiguous()?.matmul(&kt)? * scale)?;
        let p = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
        p.matmul(&v)
    };
    let out = if chunk == 0 || chunk >= s {
        rows(q)?
    } else {
        let parts = (0..s).step_by(chunk).map(|r0| rows(&q.narrow(2, r0, chunk.min(s - r0))?));
        Tensor::cat(&parts.collect::<Result<Vec<_>>>()?, 2)?
    };
    out.transpose(1, 2)?.reshape((b, s, h * d))
}

#[cfg(test)]
mod tests;
