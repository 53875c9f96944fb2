//! Each kernel against the candle composition it replaces. Fed f64 tensors, the wrappers take the composed
//! path (the kernels are f32-only), so the reference is computed in higher precision than the kernel.
//! Tolerance: the worst relative error measured was ~1e-6 (f32 rounding over sums of up to 1152 terms);
//! 1e-4 leaves margin while any indexing mistake gives O(1) errors.

use super::*;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    // A small LCG: deterministic, no RNG crate needed, values in [-2, 2).
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn f64(t: &Tensor) -> Tensor {
    t.to_dtype(DType::F64).unwrap()
}

fn assert_close(fast: &Tensor, reference: &Tensor, what: &str) {
    assert_eq!(fast.dims(), reference.dims(), "{what}: shape");
    let a: Vec<f32> = fast.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f64> = reference.flatten_all().unwrap().to_vec1().unwrap();
    let scale = b.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).map(|(x, y)| (*x as f64 - y).abs()).fold(0.0, f64::max) / scale;
    assert!(worst < 1e-4, "{what}: worst relative error {worst:e}");
}

#[test]
fn conv2d_matches_candle_for_3x3_strided_and_pointwise() {
    for (i, (c_in, c_out, h, w, k, stride, pad)) in
        [(5, 7, 13, 9, 3, 1, 1), (4, 6, 12, 10, 3, 2, 0), (6, 3, 7, 11, 1, 1, 0), (3, 4, 300, 40, 3, 1, 1)]
            .into_iter()
            .enumerate()
    {
        let x = rand(&[2, c_in, h, w], i as u64);
        let weight = rand(&[c_out, c_in, k, k], 10 + i as u64);
        let bias = rand(&[c_out], 20 + i as u64);
        let fast_conv = Conv2d { weight: weight.clone(), bias: Some(bias.clone()), stride, pad };
        let ref_conv = Conv2d { weight: f64(&weight), bias: Some(f64(&bias)), stride, pad };
        assert_close(&fast_conv.forward(&x).unwrap(), &ref_conv.forward(&f64(&x)).unwrap(), "conv2d");
    }
}

#[test]
fn group_norm_with_and_without_silu() {
    let x = rand(&[2, 8, 5, 3], 1);
    let (g, b) = (rand(&[8], 2), rand(&[8], 3));
    let fast_gn = GroupNorm { weight: g.clone(), bias: b.clone(), groups: 4, eps: 1e-6 };
    let ref_gn = GroupNorm { weight: f64(&g), bias: f64(&b), groups: 4, eps: 1e-6 };
    for silu in [false, true] {
        assert_close(&fast_gn.forward(&x, silu).unwrap(), &ref_gn.forward(&f64(&x), silu).unwrap(), "group_norm");
    }
}

#[test]
fn elementwise_kernels() {
    let x = rand(&[2, 3, 5, 7], 4);
    assert_close(&upsample2x(&x).unwrap(), &upsample2x(&f64(&x)).unwrap(), "upsample2x");
    let y = rand(&[3, 40000], 5);
    assert_close(&gelu_tanh(&y).unwrap(), &gelu_tanh(&f64(&y)).unwrap(), "gelu_tanh");
}

#[test]
fn modulation_and_residual() {
    let x = rand(&[2, 6, 16], 6);
    let (scale, shift, gate) = (rand(&[2, 16], 7), rand(&[2, 16], 8), rand(&[2, 16], 9));
    let y = rand(&[2, 6, 16], 10);
    assert_close(
        &layer_norm_modulate(&x, &scale, &shift, 1e-6).unwrap(),
        &layer_norm_modulate(&f64(&x), &f64(&scale), &f64(&shift), 1e-6).unwrap(),
        "layer_norm_modulate",
    );
    assert_close(
        &gated_residual(&x, &y, &gate).unwrap(),
        &gated_residual(&f64(&x), &f64(&y), &f64(&gate)).unwrap(),
        "gated_residual",
    );
}

#[test]
fn attention_path() {
    let (b, s, h, d) = (2, 70, 3, 8);
    // A fused projection [q | k | v | extra]: each part is read at its column offset.
    let x = rand(&[b, s, 3 * h * d + 5], 11);
    let w = rand(&[d], 12);
    let (cos, sin) = (rand(&[s, d / 2], 13), rand(&[s, d / 2], 14));
    let q = qk_norm_rope(&x, h * d, h, &w, 1e-6, &cos, &sin).unwrap();
    let q_ref = qk_norm_rope(&f64(&x), h * d, h, &f64(&w), 1e-6, &f64(&cos), &f64(&sin)).unwrap();
    assert_close(&q, &q_ref, "qk_norm_rope");
    let k = rand(&[b, h, s, d], 15);
    let v = heads_first(&x, 2 * h * d, h, d).unwrap();
    assert_close(&v, &heads_first(&f64(&x), 2 * h * d, h, d).unwrap(), "heads_first");
    assert_close(
        &gelu_tanh_cols(&x, 3 * h * d, 5).unwrap(),
        &gelu_tanh_cols(&f64(&x), 3 * h * d, 5).unwrap(),
        "gelu_tanh_cols",
    );
    let o = attention(&q, &k, &v, 0.3).unwrap();
    let o_ref = attention(&q_ref, &f64(&k), &f64(&v), 0.3).unwrap();
    assert_close(&o, &o_ref, "attention");
}

#[test]
fn fast_exp_and_tanh_are_accurate() {
    // Degree-6 Taylor on |r| ≤ ln2/2 truncates at ~1.2e-7 relative. Measured worst: exp 2.4e-7 relative,
    // tanh 1.4e-7 absolute (f32 rounding included); bounds at ~2× that.
    let mut worst_exp = 0f64;
    let mut worst_tanh = 0f64;
    for i in 0..200_001 {
        let x = -80.0 + 160.0 * i as f64 / 200_000.0;
        let e = cpu::exp(x as f32) as f64;
        worst_exp = worst_exp.max((e - (x as f32 as f64).exp()).abs() / (x as f32 as f64).exp());
        let y = x / 8.0;
        worst_tanh = worst_tanh.max((cpu::tanh(y as f32) as f64 - (y as f32 as f64).tanh()).abs());
    }
    assert!(worst_exp < 5e-7, "exp relative error {worst_exp:e}");
    assert!(worst_tanh < 3e-7, "tanh absolute error {worst_tanh:e}");
    assert!(cpu::exp(-1000.0) < 1e-37);
    assert!(cpu::exp(1000.0).is_finite());
}

#[test]
fn chunked_attention_computes_every_row_as_the_whole() {
    // The composed path (f32 tensors called directly, f16 through the public wrapper) in chunks of query rows,
    // including a ragged last chunk and chunks larger than the sequence, against all rows at once.
    let (q, k, v) = (rand(&[2, 3, 37, 16], 1), rand(&[2, 3, 37, 16], 2), rand(&[2, 3, 37, 16], 3));
    let whole = composed_attention(&q, &k, &v, 0.25, 0).unwrap();
    for chunk in [1, 8, 36, 37, 100] {
        let part = composed_attention(&q, &k, &v, 0.25, chunk).unwrap();
        let diff = (&part - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(diff, 0.0, "chunk {chunk}: the same operations per row give the same values");
    }
    // Sensitivity: a chunk that dropped or repeated rows would differ by O(1).
    let shifted = composed_attention(&q.roll(1, 2).unwrap(), &k, &v, 0.25, 8).unwrap();
    assert!((&shifted - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
    let h = |t: &Tensor| t.to_dtype(DType::F16).unwrap();
    set_attention_chunk(5);
    let chunked = attention(&h(&q), &h(&k), &h(&v), 0.25).unwrap();
    set_attention_chunk(0);
    let all = attention(&h(&q), &h(&k), &h(&v), 0.25).unwrap();
    let diff = (chunked.to_dtype(DType::F32).unwrap() - all.to_dtype(DType::F32).unwrap()).unwrap();
    assert_eq!(diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn banded_convolution_computes_the_whole_image() {
    // The composed path in bands of output rows (ragged last band, strides 1 and 2, padding 1 and 0) against the
    // whole image at once.
    let x = rand(&[2, 5, 23, 11], 4);
    for (stride, pad) in [(1, 1), (2, 0), (2, 1)] {
        let w = rand(&[4, 5, 3, 3], 5 + stride as u64);
        let whole = composed_conv(&x, &w, stride, pad, 0).unwrap();
        for band in [1, 4, 7, 100] {
            let part = composed_conv(&x, &w, stride, pad, band).unwrap();
            assert_eq!(part.dims(), whole.dims());
            let diff = (&part - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            assert_eq!(diff, 0.0, "stride {stride} pad {pad} band {band}");
        }
        // Sensitivity: bands that were off by a row would differ by O(1).
        let off = composed_conv(&x.roll(1, 2).unwrap(), &w, stride, pad, 4).unwrap();
        assert!((&off - &whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
    }
}

#[test]
fn group_norm_in_chunks_of_groups_is_the_whole() {
    // The composed path (f16, so the CPU kernel stays out) with VAE banding on (chunks of GN_CHUNK groups,
    // a ragged last chunk: 10 groups) against all groups at once, with and without the SiLU.
    let x = rand(&[2, 20, 6, 5], 9).to_dtype(DType::F16).unwrap();
    let gn = GroupNorm {
        weight: rand(&[20], 10).to_dtype(DType::F16).unwrap(),
        bias: rand(&[20], 11).to_dtype(DType::F16).unwrap(),
        groups: 10,
        eps: 1e-6,
    };
    for silu in [false, true] {
        let whole = gn.composed(&x, 0, 10, silu).unwrap();
        set_conv_band(8);
        let chunked = gn.forward(&x, silu).unwrap();
        set_conv_band(0);
        let diff = (chunked.to_dtype(DType::F32).unwrap() - whole.to_dtype(DType::F32).unwrap()).unwrap();
        assert_eq!(diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "silu {silu}");
    }
    // Sensitivity: statistics over the wrong channels would move the output by O(1).
    let wrong = gn.composed(&x.roll(2, 1).unwrap(), 0, 10, false).unwrap().roll(-2, 1).unwrap();
    let whole = gn.composed(&x, 0, 10, false).unwrap();
    let diff = (wrong.to_dtype(DType::F32).unwrap() - whole.to_dtype(DType::F32).unwrap()).unwrap();
    assert!(diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.1);
}
