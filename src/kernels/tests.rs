//! Every backend of every operation against a plain f64 reference ([`reference`]: the maths written out in candle
//! ops, two-pass statistics, no fused op), with its measured error, its tolerance and a sensitivity check that a
//! plausible mistake lands far outside it.
//!
//! Tolerances, relative to the reference's largest magnitude (`rel`):
//! - f32, CPU kernels and composed: measured worst 4e-7 here (attention; earlier, larger shapes measured 1e-6);
//!   bound 1e-4, where an indexing or convention mistake measures 1.6–1.8 (`plausible_mistakes_…`).
//! - f16 and bf16, composed, from inputs rounded to the type: a few roundings of the type per value (f16 2⁻¹¹,
//!   bf16 2⁻⁸ relative); bounds in [`reference::HALF_TOLERANCE`], each about 2× the measured worst, noted beside it.
//!
//! Tests call the backends ([`cpu_ops`], [`composed`]) directly: the process-wide selection is left alone but in
//! `selection_picks_the_backend`, and no other test reads it (half types take the composed path under every
//! selection, and nothing else goes through the dispatcher).

use super::*;
use candle_core::{DType, Device, Tensor};

fn rand(shape: &[usize], seed: u64) -> Tensor {
    reference::rand(shape, seed).unwrap()
}

fn to(t: &Tensor, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap()
}

fn f64(t: &Tensor) -> Tensor {
    to(t, DType::F64)
}

fn rel(a: &Tensor, reference: &Tensor) -> f64 {
    reference::rel(a, reference).unwrap()
}

use reference::{F32_TOLERANCE, HALF_TOLERANCE};

fn assert_close(got: &Tensor, reference: &Tensor, tol: f64, what: &str) {
    let e = rel(got, reference);
    assert!(e < tol, "{what}: worst relative error {e:e} ≥ {tol:e}");
}

fn max_abs(t: &Tensor) -> f32 {
    to(t, DType::F32).abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// Inputs of the transformer-side operations: a fused projection [B, S, 3·H·D + 5] (q | k | v | extra columns),
/// an RMSNorm weight, angles, modulation rows.
struct Block {
    x: Tensor,
    w: Tensor,
    cos: Tensor,
    sin: Tensor,
    scale: Tensor,
    shift: Tensor,
    gate: Tensor,
    y: Tensor,
    h: usize,
    d: usize,
}

impl Block {
    /// The angles as the CPU and fused kernels take them: [2, S, D/2], cos then sin.
    fn packed(&self) -> Tensor {
        Tensor::stack(&[&self.cos, &self.sin], 0).unwrap()
    }
}

fn block() -> Block {
    let (b, s, h, d) = (2, 70, 3, 8);
    // Real angles, as the models' rope() makes them: cos² + sin² = 1.
    let theta = (rand(&[s, d / 2], 13) * 3.0).unwrap();
    Block {
        x: rand(&[b, s, 3 * h * d + 5], 11),
        w: rand(&[d], 12),
        cos: theta.cos().unwrap(),
        sin: theta.sin().unwrap(),
        scale: rand(&[b, 3 * h * d + 5], 7),
        shift: rand(&[b, 3 * h * d + 5], 8),
        gate: rand(&[b, 3 * h * d + 5], 9),
        y: rand(&[b, s, 3 * h * d + 5], 10),
        h,
        d,
    }
}

#[test]
fn cpu_kernels_match_the_reference() {
    let k = block();
    let (h, d) = (k.h, k.d);
    let rope = (&f64(&k.cos), &f64(&k.sin));
    let r = reference::qk_norm_rope(&f64(&k.x), h * d, h, &f64(&k.w), 1e-6, rope).unwrap();
    let got = cpu_ops::qk_norm_rope(&k.x, h * d, h, &k.w, 1e-6, &k.packed()).unwrap();
    assert_close(&got, &r, F32_TOLERANCE, "qk_norm_rope");
    let lnm = cpu_ops::layer_norm_modulate(&k.x, &k.scale, &k.shift, 1e-6).unwrap();
    let r = reference::layer_norm_modulate(&f64(&k.x), &f64(&k.scale), &f64(&k.shift), 1e-6).unwrap();
    assert_close(&lnm, &r, F32_TOLERANCE, "layer_norm_modulate");
    let r = reference::gated_residual(&f64(&k.x), &f64(&k.y), &f64(&k.gate)).unwrap();
    assert_close(&cpu_ops::gated_residual(&k.x, &k.y, &k.gate).unwrap(), &r, F32_TOLERANCE, "gated_residual");
    let r = reference::heads_first(&f64(&k.x), 2 * h * d, h, d).unwrap();
    assert_close(&cpu_ops::heads_first(&k.x, 2 * h * d, h, d).unwrap(), &r, F32_TOLERANCE, "heads_first");
    let r = reference::gelu_tanh(&f64(&k.x).narrow(2, 3 * h * d, 5).unwrap()).unwrap();
    assert_close(&cpu_ops::gelu_tanh_cols(&k.x, 3 * h * d, 5).unwrap(), &r, F32_TOLERANCE, "gelu_tanh_cols");
    let big = rand(&[3, 40000], 5);
    let r = reference::gelu_tanh(&f64(&big)).unwrap();
    assert_close(&cpu_ops::gelu_tanh(&big).unwrap(), &r, F32_TOLERANCE, "gelu_tanh");
    let (q, kk, v) = (rand(&[2, 3, 70, 8], 1), rand(&[2, 3, 70, 8], 2), rand(&[2, 3, 70, 8], 3));
    let r = reference::attention(&f64(&q), &f64(&kk), &f64(&v), 0.3).unwrap();
    assert_close(&cpu_ops::attention(&q, &kk, &v, 0.3).unwrap(), &r, F32_TOLERANCE, "attention");
}

#[test]
fn cpu_vae_kernels_match_candle() {
    for (i, (c_in, c_out, h, w, k, stride, pad)) in
        [(5, 7, 13, 9, 3, 1, 1), (4, 6, 12, 10, 3, 2, 0), (6, 3, 7, 11, 1, 1, 0), (3, 4, 300, 40, 3, 1, 1)]
            .into_iter()
            .enumerate()
    {
        let x = rand(&[2, c_in, h, w], i as u64);
        let weight = rand(&[c_out, c_in, k, k], 10 + i as u64);
        let bias = rand(&[c_out], 20 + i as u64);
        let r = f64(&x).conv2d(&f64(&weight), pad, stride, 1, 1).unwrap();
        let r = r.broadcast_add(&f64(&bias).reshape((1, c_out, 1, 1)).unwrap()).unwrap();
        assert_close(&cpu_ops::conv2d(&x, &weight, Some(&bias), stride, pad).unwrap(), &r, F32_TOLERANCE, "conv2d");
    }
    let x = rand(&[2, 8, 5, 3], 1);
    let (g, b) = (rand(&[8], 2), rand(&[8], 3));
    for silu in [false, true] {
        let r = reference::group_norm(&f64(&x), &f64(&g), &f64(&b), 4, 1e-6, silu).unwrap();
        assert_close(&cpu_ops::group_norm(&x, &g, &b, 4, 1e-6, silu).unwrap(), &r, F32_TOLERANCE, "group_norm");
    }
    let x = rand(&[2, 3, 5, 7], 4);
    assert_close(&cpu_ops::upsample2x(&x).unwrap(), &f64(&x).upsample_nearest2d(10, 14).unwrap(), 1e-12, "upsample");
}

/// Every composed operation at `dtype` (inputs rounded to it) against the f64 reference of the rounded inputs:
/// the worst relative error of each, by name.
fn composed_errors(dtype: DType) -> Vec<(&'static str, f64)> {
    let k = block();
    let (h, d) = (k.h, k.d);
    let t = |x: &Tensor| to(x, dtype);
    let r = |x: &Tensor| f64(&t(x));
    let mut out = vec![];
    let got = composed::qk_norm_rope(&t(&k.x), h * d, h, &t(&k.w), 1e-6, (&t(&k.cos), &t(&k.sin))).unwrap();
    let want = reference::qk_norm_rope(&r(&k.x), h * d, h, &r(&k.w), 1e-6, (&r(&k.cos), &r(&k.sin))).unwrap();
    out.push(("qk_norm_rope", rel(&got, &want)));
    let got = composed::layer_norm_modulate(&t(&k.x), &t(&k.scale), &t(&k.shift), 1e-6).unwrap();
    // diffusers (and the composed path) round 1 + scale to the dtype; the reference starts from that value.
    let one_plus = (r(&(t(&k.scale) + 1.0).unwrap()) - 1.0).unwrap();
    let want = reference::layer_norm_modulate(&r(&k.x), &one_plus, &r(&k.shift), 1e-6).unwrap();
    out.push(("layer_norm_modulate", rel(&got, &want)));
    let got = composed::gated_residual(&t(&k.x), &t(&k.y), &t(&k.gate)).unwrap();
    out.push(("gated_residual", rel(&got, &reference::gated_residual(&r(&k.x), &r(&k.y), &r(&k.gate)).unwrap())));
    out.push(("gelu_tanh", rel(&t(&k.x).gelu().unwrap(), &reference::gelu_tanh(&r(&k.x)).unwrap())));
    let got = composed::swiglu(&t(&k.x), h * d, h * d).unwrap();
    out.push(("swiglu", rel(&got, &reference::swiglu(&r(&k.x), h * d, h * d).unwrap())));
    let got = composed::heads_first(&t(&k.x), 2 * h * d, h, d).unwrap();
    out.push(("heads_first", rel(&got, &reference::heads_first(&r(&k.x), 2 * h * d, h, d).unwrap())));
    let x = t(&rand(&[2, 20, 6, 5], 9));
    let (g, b) = (t(&rand(&[20], 10)), t(&rand(&[20], 11)));
    let got = composed::group_norm(&x, (&g, &b), 10, (0, 10), 1e-6, true).unwrap();
    out.push(("group_norm", rel(&got, &reference::group_norm(&f64(&x), &f64(&g), &f64(&b), 10, 1e-6, true).unwrap())));
    let scores = (t(&rand(&[4, 3000], 21)) * 4.0).unwrap();
    let got = composed::softmax_last_dim(&scores).unwrap();
    out.push(("softmax", rel(&got, &reference::softmax(&f64(&scores)).unwrap())));
    if dtype == DType::F16 || dtype == DType::F32 {
        // candle has no bf16 matmul on the CPU.
        let (q, kk, v) = (t(&rand(&[2, 3, 70, 8], 1)), t(&rand(&[2, 3, 70, 8], 2)), t(&rand(&[2, 3, 70, 8], 3)));
        let got = composed::attention(&q, &kk, &v, 0.3, 0).unwrap();
        out.push(("attention", rel(&got, &reference::attention(&f64(&q), &f64(&kk), &f64(&v), 0.3).unwrap())));
        let (x, w, b) = (
            t(&rand(&[2, 37, 1040], 30)),
            t(&(rand(&[528, 1040], 31) * (1.0 / 1040f64.sqrt())).unwrap()),
            t(&rand(&[528], 32)),
        );
        let got = candle_nn::Module::forward(&candle_nn::Linear::new(w.clone(), Some(b.clone())), &x).unwrap();
        out.push(("linear", rel(&got, &reference::linear(&f64(&x), &f64(&w), &f64(&b)).unwrap())));
    }
    out
}

#[test]
fn composed_matches_the_reference_in_f32() {
    for (op, e) in composed_errors(DType::F32) {
        assert!(e < F32_TOLERANCE, "{op}: f32 worst relative error {e:e}");
    }
}

#[test]
fn composed_in_half_types_matches_the_reference() {
    for (dtype, col) in [(DType::F16, 1), (DType::BF16, 2)] {
        for (op, e) in composed_errors(dtype) {
            let row = HALF_TOLERANCE.iter().find(|r| r.0 == op).expect("a bound for every op");
            let tol = if col == 1 { row.1 } else { row.2 };
            eprintln!("{op} {dtype:?}: {e:.2e} (bound {tol:.1e})");
            assert!(e < tol, "{op} {dtype:?}: worst relative error {e:e} ≥ {tol:e}");
        }
    }
}

#[test]
fn plausible_mistakes_land_far_outside_the_tolerances() {
    let k = block();
    let (h, d) = (k.h, k.d);
    // Measured: halves 1.6, backwards 1.7, unscaled attention 1.8 (bounds: 1e-4 in f32, ≤ 1.6e-2 in bf16).
    let want = reference::qk_norm_rope(&f64(&k.x), 0, h, &f64(&k.w), 1e-6, (&f64(&k.cos), &f64(&k.sin))).unwrap();
    let normed = candle_nn::ops::rms_norm(&composed::heads_first(&k.x, 0, h, d).unwrap(), &k.w, 1e-6).unwrap();
    // RoPE on halves (candle's `rope`, GPT-NeoX style) instead of FLUX's interleaved pairs.
    let halves = candle_nn::rotary_emb::rope(&normed, &k.cos, &k.sin).unwrap();
    // The rotation the other way (sin negated).
    let backwards = candle_nn::rotary_emb::rope_i(&normed, &k.cos, &k.sin.neg().unwrap()).unwrap();
    for (what, got) in [("rope on halves", &halves), ("rope backwards", &backwards)] {
        let e = rel(got, &want);
        assert!(e > 0.1, "{what}: {e:e} is not far outside the bounds");
    }
    // Dropping the scale (fold it nowhere): far outside the attention bound.
    let (q, kk, v) = (rand(&[2, 3, 70, 8], 1), rand(&[2, 3, 70, 8], 2), rand(&[2, 3, 70, 8], 3));
    let want = reference::attention(&f64(&q), &f64(&kk), &f64(&v), 0.3).unwrap();
    let e = rel(&composed::attention(&q, &kk, &v, 1.0, 0).unwrap(), &want);
    assert!(e > 0.1, "unscaled attention: {e:e}");
    // candle's own CPU softmax sums f16 rows in f16: over a long row (4096 keys, as at 1024² with chunks) it misses
    // by far more than the f16 bound, which is why the CPU runs CUDA's steps (f32 sum) instead.
    let scores = to(&(rand(&[2, 4096], 22) * 0.5).unwrap(), DType::F16);
    let want = reference::softmax(&f64(&scores)).unwrap();
    let (ours, candles) =
        (composed::softmax_last_dim(&scores).unwrap(), candle_nn::ops::softmax_last_dim(&scores).unwrap());
    let (e_ours, e_candle) = (rel(&ours, &want), rel(&candles, &want));
    // Measured: ours 3.5e-4, candle's 5.9e-2.
    assert!(e_ours < 1.1e-3 && e_candle > 10.0 * e_ours, "ours {e_ours:e}, candle's CPU f16 {e_candle:e}");
}

#[test]
fn selection_picks_the_backend() {
    let (x, scale, shift) = (rand(&[1, 5, 16], 1), rand(&[1, 16], 2), rand(&[1, 16], 3));
    let half = to(&x, DType::F16);
    assert_eq!(
        (backend(&[&x]), backend(&[&half]), backend(&[&x, &half])),
        (Backend::Cpu, Backend::Composed, Backend::Composed)
    );
    set_kernels(Kernels::Composed);
    let (sel, forced) = (backend(&[&x]), layer_norm_modulate(&x, &scale, &shift, 1e-6).unwrap());
    set_kernels(Kernels::Auto);
    assert_eq!(sel, Backend::Composed);
    // The angles reach each backend in the dtype it reads: f32 for the CPU kernel, the activations' for rope_i.
    let k = block();
    let angles = Angles::new(k.cos.clone(), k.sin.clone(), DType::F16).unwrap().narrow(0, 70).unwrap();
    let half = to(&k.x, DType::F16);
    let via = qk_norm_rope(&half, 0, k.h, &to(&k.w, DType::F16), 1e-6, &angles).unwrap();
    let direct = composed::qk_norm_rope(&half, 0, k.h, &to(&k.w, DType::F16), 1e-6, (&k.cos, &k.sin)).unwrap();
    assert_eq!(max_abs(&(to(&via, DType::F32) - to(&direct, DType::F32)).unwrap()), 0.0);
    let via = qk_norm_rope(&k.x, 0, k.h, &k.w, 1e-6, &angles).unwrap();
    let direct = cpu_ops::qk_norm_rope(&k.x, 0, k.h, &k.w, 1e-6, &k.packed()).unwrap();
    assert_eq!(max_abs(&(&via - &direct).unwrap()), 0.0);
    let composed = composed::layer_norm_modulate(&x, &scale, &shift, 1e-6).unwrap();
    assert_eq!(max_abs(&(&forced - &composed).unwrap()), 0.0, "--kernels composed runs the composition");
    let cpu = cpu_ops::layer_norm_modulate(&x, &scale, &shift, 1e-6).unwrap();
    assert!(max_abs(&(&forced - &cpu).unwrap()) > 0.0, "and not the CPU kernel");
    // The CPU has no fused kernels; the selection is refused there with one line naming the fix.
    let err = Kernels::Fused.check(&Device::Cpu).unwrap_err();
    assert!(err.starts_with("--kernels fused needs a CUDA device") && !err.contains('\n'), "{err}");
    assert_eq!(Kernels::Composed.check(&Device::Cpu), Ok(Kernels::Composed));
    assert_eq!(Kernels::Auto.check(&Device::Cpu), Ok(Kernels::Auto));
    assert!(Kernels::Composed.composed_on(false, DType::F32) && !Kernels::Auto.composed_on(false, DType::F32));
    assert!(Kernels::Auto.composed_on(true, DType::F32) && Kernels::Auto.composed_on(false, DType::F16));
    assert_eq!("Composed".parse::<Kernels>(), Ok(Kernels::Composed));
    assert!("gpu".parse::<Kernels>().unwrap_err().contains("auto, composed, fused"));
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
    // The composed path (f32, and f16 through the public wrapper) in chunks of query rows, including a ragged last
    // chunk and chunks larger than the sequence, against all rows at once.
    let (q, k, v) = (rand(&[2, 3, 37, 16], 1), rand(&[2, 3, 37, 16], 2), rand(&[2, 3, 37, 16], 3));
    let whole = composed::attention(&q, &k, &v, 0.25, 0).unwrap();
    for chunk in [1, 8, 36, 37, 100] {
        let part = composed::attention(&q, &k, &v, 0.25, chunk).unwrap();
        assert_eq!(max_abs(&(&part - &whole).unwrap()), 0.0, "chunk {chunk}: the same operations per row");
    }
    // Sensitivity: a chunk that dropped or repeated rows would differ by O(1).
    let shifted = composed::attention(&q.roll(1, 2).unwrap(), &k, &v, 0.25, 8).unwrap();
    assert!(max_abs(&(&shifted - &whole).unwrap()) > 0.1);
    let h = |t: &Tensor| to(t, DType::F16);
    set_attention_chunk(5);
    let chunked = attention(&h(&q), &h(&k), &h(&v), 0.25).unwrap();
    set_attention_chunk(0);
    let all = attention(&h(&q), &h(&k), &h(&v), 0.25).unwrap();
    assert_eq!(max_abs(&(to(&chunked, DType::F32) - to(&all, DType::F32)).unwrap()), 0.0);
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
            assert_eq!(max_abs(&(&part - &whole).unwrap()), 0.0, "stride {stride} pad {pad} band {band}");
        }
        // Sensitivity: bands that were off by a row would differ by O(1).
        let off = composed_conv(&x.roll(1, 2).unwrap(), &w, stride, pad, 4).unwrap();
        assert!(max_abs(&(&off - &whole).unwrap()) > 0.1);
    }
}

#[test]
fn group_norm_in_chunks_of_groups_is_the_whole() {
    // The composed path (f16, so the CPU kernel stays out under any selection) with VAE banding on (chunks of
    // GN_CHUNK groups, a ragged last chunk: 10 groups) against all groups at once, with and without the SiLU.
    let x = to(&rand(&[2, 20, 6, 5], 9), DType::F16);
    let (weight, bias) = (to(&rand(&[20], 10), DType::F16), to(&rand(&[20], 11), DType::F16));
    let gn = GroupNorm { weight: weight.clone(), bias: bias.clone(), groups: 10, eps: 1e-6 };
    let whole = |x: &Tensor, silu| composed::group_norm(x, (&weight, &bias), 10, (0, 10), 1e-6, silu).unwrap();
    for silu in [false, true] {
        set_conv_band(8);
        let chunked = gn.forward(&x, silu).unwrap();
        set_conv_band(0);
        assert_eq!(max_abs(&(to(&chunked, DType::F32) - to(&whole(&x, silu), DType::F32)).unwrap()), 0.0, "{silu}");
    }
    // Sensitivity: statistics over the wrong channels would move the output by O(1).
    let wrong = whole(&x.roll(2, 1).unwrap(), false).roll(-2, 1).unwrap();
    assert!(max_abs(&(to(&wrong, DType::F32) - to(&whole(&x, false), DType::F32)).unwrap()) > 0.1);
}

#[test]
fn heads_first_takes_the_one_copy_route_and_the_general_one() {
    // W a multiple of d (one strided copy) and not (narrow, then copies): the same values.
    for w in [3 * 3 * 8 + 8, 3 * 3 * 8 + 5] {
        let x = rand(&[2, 7, w], 30);
        let got = composed::heads_first(&x, 8 * 3, 3, 8).unwrap();
        let want = reference::heads_first(&f64(&x), 8 * 3, 3, 8).unwrap();
        assert_eq!(rel(&got, &want), 0.0, "W = {w}");
    }
}

#[test]
fn gpu_check_runs_on_the_cpu() {
    // The flow `examples/kernels_check.rs` runs on a GPU, dry-run here: the ops' CPU kernels stand in for the fused
    // ones in f32 and must pass every case; half-type rows only measure the composition.
    let rows = check::check(&Device::Cpu);
    assert_eq!(rows.len(), 48);
    let failed: Vec<_> = rows.iter().filter(|r| !r.passed).collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert!(rows.iter().filter(|r| r.dtype == "f32").all(|r| r.fused_err.is_some()));
    let bench = check::bench(&Device::Cpu, DType::F32, false).unwrap();
    assert_eq!(bench.len(), 10);
    assert!(bench.iter().all(|b| b.fused_ms.is_some() && b.composed_ms > 0.0));
}
