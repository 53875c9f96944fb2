//! `F.interpolate` as torch computes it (nearest, bilinear with or without aligned corners, bicubic with
//! A = −0.75): per-axis taps gathered and weighted in torch's index arithmetic and summation order.

use candle_core::Tensor;
/// torch's `interpolate` modes this model uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Interp {
    Bilinear {
        align_corners: bool,
    },
    /// `mode="bicubic", align_corners=False` (A = −0.75, edge indices clamped).
    Bicubic,
}

/// torch's cubic convolution kernel with A = −0.75, |x| ≤ 1 and 1 < |x| < 2.
pub(super) fn cubic1(x: f32) -> f32 {
    const A: f32 = -0.75;
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}
pub(super) fn cubic2(x: f32) -> f32 {
    const A: f32 = -0.75;
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The (input index, weight) taps of output index `o`, with torch's f32 index arithmetic (upsample kernels' scale
/// `in/out` when a size is given, or `(in−1)/(out−1)` with aligned corners).
pub(super) fn taps(input: usize, output: usize, o: usize, mode: Interp) -> Vec<(usize, f32)> {
    let last = input as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    match mode {
        Interp::Bilinear { align_corners } => {
            let src = if align_corners {
                let scale = if output > 1 { last as f32 / (output - 1) as f32 } else { 0.0 };
                scale * o as f32
            } else {
                let scale = input as f32 / output as f32;
                (scale * (o as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src.floor() as i64).min(last);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < last { i0 + 1 } else { i0 };
            vec![(clamp(i0), 1.0 - l1), (clamp(i1), l1)]
        }
        Interp::Bicubic => {
            let scale = input as f32 / output as f32;
            let src = scale * (o as f32 + 0.5) - 0.5;
            let i0 = (src.floor() as i64).min(last);
            let t = (src - i0 as f32).clamp(0.0, 1.0);
            let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
            (0..4).map(|j| (clamp(i0 - 1 + j as i64), w[j])).collect()
        }
    }
}

/// `F.interpolate(x, size=(h, w), mode)` for x [B, C, H, W]: along the width, then along the height (torch's
/// nesting: each output is Σ_y w_y · (Σ_x w_x · x)).
pub(super) fn resize(x: &Tensor, h: usize, w: usize, mode: Interp) -> candle_core::Result<Tensor> {
    resize_dim(&resize_dim(x, 3, w, mode)?, 2, h, mode)
}

/// One axis of [`resize`]: tap k of every output gathered with `index_select`, weighted, and the taps summed in
/// torch's order (t0·w0 + t1·w1, then + t2·w2 + t3·w3), clamped edge taps kept apart as torch keeps them.
pub(super) fn resize_dim(x: &Tensor, dim: usize, out: usize, mode: Interp) -> candle_core::Result<Tensor> {
    let input = x.dim(dim)?;
    if input == out {
        // Same size: every mode samples at the input indices exactly (bicubic weights 0, 1, 0, 0): the identity.
        return Ok(x.clone());
    }
    let all: Vec<Vec<(usize, f32)>> = (0..out).map(|o| taps(input, out, o, mode)).collect();
    let mut shape = vec![1; x.rank()];
    shape[dim] = out;
    let x = x.contiguous()?;
    let mut sum: Option<Tensor> = None;
    for k in 0..all.first().map_or(0, Vec::len) {
        let index = Tensor::from_vec(all.iter().map(|t| t[k].0 as u32).collect(), out, x.device())?;
        let weight = Tensor::from_vec(all.iter().map(|t| t[k].1).collect(), shape.as_slice(), x.device())?;
        let term = x.index_select(&index, dim)?.broadcast_mul(&weight.to_dtype(x.dtype())?)?;
        sum = Some(match sum {
            None => term,
            Some(s) => (s + term)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("resize to size 0".into()))
}
