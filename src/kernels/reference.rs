//! The maths of each operation written out in plain candle ops (two-pass statistics, no fused op), for any float
//! dtype: the tests and the GPU check ([`super::check`]) run them in f64 as the exact result each backend is
//! measured against. Also the measure itself ([`rel`]) and the deterministic inputs ([`rand`]) both use.

use candle_core::{DType, Device, Result, Tensor, D};

/// Bound on [`rel`] for f32 results (CPU kernels, composition, fused kernels): measured worst 4e-7 on the CPU
/// (attention; earlier, larger shapes 1e-6), where an indexing or convention mistake measures 1.6–1.8.
pub const F32_TOLERANCE: f64 = 1e-4;

/// Bounds on [`rel`] in half types, per operation: (name, f16, bf16), relative to the largest reference value, for
/// results computed from inputs rounded to the type. f16 rounds at 2⁻¹¹ ≈ 4.9e-4, bf16 at 2⁻⁸ ≈ 3.9e-3: the
/// composition's measured worst (in the comments) is one to two roundings of the type; the bounds are about 2×
/// that. Mistakes measure 1.6–1.8 (the sensitivity test). The fused kernels round once and are held to the same.
pub const HALF_TOLERANCE: [(&str, f64, f64); 10] = [
    ("qk_norm_rope", 1.8e-3, 1.6e-2),    // measured f16 8.6e-4, bf16 8.2e-3
    ("layer_norm_modulate", 6e-4, 5e-3), // measured f16 2.8e-4, bf16 2.2e-3
    ("gated_residual", 1e-3, 8e-3),      // measured f16 4.9e-4, bf16 4.1e-3
    ("gelu_tanh", 1.2e-3, 9e-3),         // measured f16 5.8e-4, bf16 4.4e-3
    ("swiglu", 1.4e-3, 1.1e-2),          // measured f16 7.1e-4, bf16 5.7e-3
    ("heads_first", 1e-12, 1e-12),       // a copy: exact
    ("group_norm", 1.5e-3, 1.1e-2),      // measured f16 7.2e-4, bf16 5.3e-3
    ("softmax", 1.1e-3, 8e-3),           // measured f16 5.2e-4, bf16 4.0e-3
    // Measured f16 8.0e-4. bf16 is not runnable on the CPU (no bf16 matmul): its bound is f16's scaled by 2³, the
    // ratio of the two types' roundings, for the GPU check.
    ("attention", 1.6e-3, 1.3e-2),
    // A biased linear layer (K 1040), composed: f16 measured 5.3e-4; bf16 (no CPU matmul) scaled by 2³ as above.
    ("linear", 1.1e-3, 9e-3),
];

/// x [.., K] · Wᵀ [O, K] + b [O].
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.broadcast_matmul(&w.t()?)?.broadcast_add(b)
}

/// The bound for `op` (a [`HALF_TOLERANCE`] name) at `dtype`.
pub fn tolerance(op: &str, dtype: DType) -> f64 {
    let row = HALF_TOLERANCE.iter().find(|r| r.0 == op);
    match (dtype, row) {
        (DType::F16, Some(r)) => r.1,
        (DType::BF16, Some(r)) => r.2,
        _ => F32_TOLERANCE,
    }
}

/// Deterministic values in [-2, 2) of `shape` on the CPU, f32 (a small LCG: no RNG crate needed).
pub fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// Largest |a − b| over the reference's largest magnitude (at least 1e-3), both read as f64 on the CPU.
pub fn rel(a: &Tensor, reference: &Tensor) -> Result<f64> {
    if a.dims() != reference.dims() {
        candle_core::bail!("shapes {:?} and {:?}", a.dims(), reference.dims());
    }
    let flat = |t: &Tensor| t.to_device(&Device::Cpu)?.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
    let (a, b) = (flat(a)?, flat(reference)?);
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max) / scale)
}

fn normalize(x: &Tensor, eps: f64) -> Result<Tensor> {
    let centered = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    centered.broadcast_div(&(var + eps)?.sqrt()?)
}

pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    normalize(x, eps)?.broadcast_mul(&(scale.unsqueeze(1)? + 1.0)?)?.broadcast_add(&shift.unsqueeze(1)?)
}

pub fn group_norm(x: &Tensor, w: &Tensor, b: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let y = normalize(&x.reshape((n, groups, c / groups * h * wd))?, eps)?.reshape((n, c, h, wd))?;
    let y = y.broadcast_mul(&w.reshape((1, c, 1, 1))?)?.broadcast_add(&b.reshape((1, c, 1, 1))?)?;
    if silu {
        y.silu()
    } else {
        Ok(y)
    }
}

/// RMSNorm, then the rotation of pairs (2i, 2i+1) by the angle of (cos, sin) [S, D/2].
pub fn qk_norm_rope(x: &Tensor, col: usize, h: usize, w: &Tensor, eps: f64, cs: (&Tensor, &Tensor)) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    let d = w.dim(0)?;
    let x = heads_first(x, col, h, d)?;
    let n = x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?.broadcast_mul(w)?;
    let n = n.reshape((b, h, s, d / 2, 2))?;
    let (a, bb) = (n.narrow(D::Minus1, 0, 1)?.squeeze(D::Minus1)?, n.narrow(D::Minus1, 1, 1)?.squeeze(D::Minus1)?);
    let ra = (a.broadcast_mul(cs.0)? - bb.broadcast_mul(cs.1)?)?;
    let rb = (bb.broadcast_mul(cs.0)? + a.broadcast_mul(cs.1)?)?;
    Tensor::stack(&[ra, rb], D::Minus1)?.reshape((b, h, s, d))
}

pub fn heads_first(x: &Tensor, col: usize, h: usize, d: usize) -> Result<Tensor> {
    let (b, s, _) = x.dims3()?;
    x.narrow(2, col, h * d)?.reshape((b, s, h, d))?.transpose(1, 2)?.contiguous()
}

pub fn swiglu(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    let a = x.narrow(2, col, width)?;
    (&a / (a.neg()?.exp()? + 1.0)?)? * x.narrow(2, col + width, width)?
}

pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x + y.broadcast_mul(&gate.unsqueeze(1)?)?
}

/// torch's `gelu(approximate="tanh")`.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    (x * 0.5)? * (inner.tanh()? + 1.0)?
}

/// Softmax with the exponentials and their sum in the tensor's own (f64) precision.
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    let e = x.broadcast_sub(&x.max_keepdim(D::Minus1)?)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// Scores scaled as SDPA does (on the scores), softmax, weighted sum → [B, S, H·D].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let p = softmax(&(q.matmul(&k.t()?)? * scale)?)?;
    p.matmul(v)?.transpose(1, 2)?.reshape((b, s, h * d))
}
