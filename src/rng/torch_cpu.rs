//! `torch.Generator("cpu")` + `torch.randn` re-implemented (docs/spec-flux1-img2img.md §11).
//!
//! Input: a 64-bit seed (torch keeps only its low 32 bits). Output: float32 normals identical to torch 2.x on
//! x86-64, whose `normal_fill_AVX2` kernel is used even on AVX-512 machines. Invariants kept from torch:
//! - n ≥ 16: all n uniforms are drawn first, then transformed in chunks of 16 (cos branch in the first 8, sin
//!   branch in the next 8); a tail that is not a multiple of 16 is recomputed from 16 fresh uniforms.
//! - n < 16: the scalar double-precision Box-Muller, whose second value is cached in the generator.
//! - bf16/fp16 with n ≥ 16 depend on torch's version (§11.7, [`CpuNoise`]): `Current` computes each chunk of 16
//!   in float32 right after drawing its uniforms, then rounds; `Legacy` draws 8/11-bit uniforms and rounds every
//!   step of the Box-Muller to the reduced type.
//!
//! The FMA placement below mirrors what GCC emitted for torch's shipped binaries; without it about 1 % of values
//! differ by an ulp (measured in the spec), which is why `mul_add` appears exactly where it does.

// The polynomial coefficients are torch's (Sleef-derived) constants, written out in full on purpose.
#![allow(clippy::excessive_precision)]

use super::{CpuNoise, NoiseSource, Precision};

const MT_N: usize = 624;
const MT_M: usize = 397;

/// The 32-bit Mersenne Twister, seeded as `std::mt19937(seed as u32)`.
#[derive(Clone)]
pub struct Mt19937 {
    state: [u32; MT_N],
    index: usize,
}

impl Mt19937 {
    pub fn new(seed: u32) -> Self {
        let mut state = [0u32; MT_N];
        state[0] = seed;
        for j in 1..MT_N {
            let prev = state[j - 1];
            state[j] = 1_812_433_253u32.wrapping_mul(prev ^ (prev >> 30)).wrapping_add(j as u32);
        }
        Self { state, index: MT_N }
    }

    fn twist(&mut self) {
        for i in 0..MT_N {
            let y = (self.state[i] & 0x8000_0000) | (self.state[(i + 1) % MT_N] & 0x7fff_ffff);
            let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
            self.state[i] = self.state[(i + MT_M) % MT_N] ^ (y >> 1) ^ mag;
        }
        self.index = 0;
    }

    pub fn next_u32(&mut self) -> u32 {
        if self.index >= MT_N {
            self.twist();
        }
        let mut y = self.state[self.index];
        self.index += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^= y >> 18;
        y
    }

    /// torch's `random64()`: two draws, the first one in the high half.
    pub fn next_u64(&mut self) -> u64 {
        let hi = self.next_u32() as u64;
        let lo = self.next_u32() as u64;
        (hi << 32) | lo
    }
}

/// A CPU generator as `torch.Generator("cpu").manual_seed(seed)` creates it.
#[derive(Clone)]
pub struct TorchCpuGenerator {
    mt: Mt19937,
    /// The second value of the last scalar Box-Muller pair (`next_double_normal_sample` in torch).
    cached_normal: Option<f64>,
    noise: CpuNoise,
}

impl TorchCpuGenerator {
    pub fn new(seed: u64) -> Self {
        Self::with_noise(seed, CpuNoise::Current)
    }

    /// A generator whose bf16/fp16 draws follow `noise`'s torch versions.
    pub fn with_noise(seed: u64, noise: CpuNoise) -> Self {
        Self { mt: Mt19937::new(seed as u32), cached_normal: None, noise }
    }

    fn uniform_f32(&mut self) -> f32 {
        (self.mt.next_u32() & 0x00ff_ffff) as f32 * (1.0 / 16_777_216.0)
    }

    fn uniform_f64(&mut self) -> f64 {
        (self.mt.next_u64() & ((1u64 << 53) - 1)) as f64 * (1.0 / 9_007_199_254_740_992.0)
    }

    /// `at::normal_distribution<double>` used for tensors of fewer than 16 elements.
    fn scalar_normal(&mut self) -> f64 {
        if let Some(cached) = self.cached_normal.take() {
            return cached;
        }
        let u1 = self.uniform_f64();
        let u2 = self.uniform_f64();
        let r = (-2.0 * (-u2).ln_1p()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u1;
        self.cached_normal = Some(r * theta.sin());
        r * theta.cos()
    }
}

impl NoiseSource for TorchCpuGenerator {
    fn randn(&mut self, n: usize, precision: Precision) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| precision.round(self.scalar_normal() as f32)).collect();
        }
        match (precision, self.noise) {
            (Precision::F32, _) => self.randn_f32(n),
            (_, CpuNoise::Current) => self.randn_interleaved(n, precision, box_muller_16),
            (_, CpuNoise::Torch212) => self.randn_interleaved(n, precision, box_muller_16_libm),
            (_, CpuNoise::Legacy) => self.randn_legacy(n, precision),
        }
    }
}

impl TorchCpuGenerator {
    /// float32, n ≥ 16: every uniform first, then the chunks; a ragged tail is redrawn.
    fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        let mut uniforms: Vec<f32> = (0..n).map(|_| self.uniform_f32()).collect();
        let mut out = vec![0f32; n];
        let mut offset = 0;
        while offset + 16 <= n {
            box_muller_16(&uniforms[offset..offset + 16], &mut out[offset..offset + 16]);
            offset += 16;
        }
        if n % 16 != 0 {
            // torch redraws the last window from fresh uniforms and overwrites the overlap.
            for u in uniforms[n - 16..].iter_mut() {
                *u = self.uniform_f32();
            }
            box_muller_16(&uniforms[n - 16..], &mut out[n - 16..]);
        }
        out
    }

    /// bf16/fp16 in torch ≥ 2.15: each chunk's 16 uniforms drawn just before it is computed in float32, the tail
    /// window from the 16 draws right after the last full chunk; values rounded once.
    fn randn_interleaved(&mut self, n: usize, precision: Precision, kernel: fn(&[f32], &mut [f32])) -> Vec<f32> {
        let mut out = vec![0f32; n];
        let chunk = |gen: &mut Self, at: usize, out: &mut [f32]| {
            let u: Vec<f32> = (0..16).map(|_| gen.uniform_f32()).collect();
            kernel(&u, &mut out[at..at + 16]);
        };
        let full = n / 16;
        for c in 0..full {
            chunk(self, 16 * c, &mut out);
        }
        if n % 16 != 0 {
            chunk(self, n - 16, &mut out);
        }
        precision.round_in_place(&mut out);
        out
    }

    /// bf16/fp16 in torch ≤ 2.11: coarse uniforms, then every step rounded to the reduced type.
    fn randn_legacy(&mut self, n: usize, precision: Precision) -> Vec<f32> {
        let (mask, scale) = match precision {
            Precision::F16 => (0x7ff, 2048.0),
            _ => (0xff, 256.0),
        };
        let uniform = |gen: &mut Self| (gen.mt.next_u32() & mask) as f32 / scale;
        let mut u: Vec<f32> = (0..n).map(|_| uniform(self)).collect();
        let mut out = vec![0f32; n];
        for c in 0..n / 16 {
            legacy_16(&u[16 * c..16 * c + 16], &mut out[16 * c..16 * c + 16], precision);
        }
        if n % 16 != 0 {
            for x in u[n - 16..].iter_mut() {
                *x = uniform(self);
            }
            legacy_16(&u[n - 16..], &mut out[n - 16..], precision);
        }
        out
    }
}

/// torch's scalar `normal_fill_16` on reduced-precision values: every operation rounded to `p`.
fn legacy_16(u: &[f32], out: &mut [f32], p: Precision) {
    let r = |x: f32| p.round(x);
    for j in 0..8 {
        let u1 = r(1.0 - u[j]);
        let radius = r(r(-2.0 * r(u1.ln())).sqrt());
        let theta = r((std::f64::consts::TAU * u[8 + j] as f64) as f32);
        // `* std + mean` with std 1 and mean 0, each rounded; + 0 turns -0 into +0.
        out[j] = r(r(radius * r(theta.cos())) + 0.0);
        out[8 + j] = r(r(radius * r(theta.sin())) + 0.0);
    }
}

/// One AVX2 chunk: uniforms `u[0..8]` give the radii, `u[8..16]` the angles.
fn box_muller_16(u: &[f32], out: &mut [f32]) {
    const TWO_PI: f32 = 6.283_185_5; // float32(2π) as torch rounds it
    for j in 0..8 {
        let u1 = 1.0 - u[j];
        let u2 = u[8 + j];
        let radius = (-2.0 * log_avx(u1)).sqrt();
        let theta = TWO_PI * u2;
        let (sin, cos) = sincos_avx(theta);
        // fma(radius*cos, std=1, mean=0): the + 0.0 turns -0.0 into +0.0 exactly as torch does.
        out[j] = radius * cos + 0.0;
        out[8 + j] = radius * sin + 0.0;
    }
}

/// The non-AVX2 chunk (`normal_fill<float>`): glibc's float `logf`, `sinf`, `cosf`, the angle rounded once from
/// the double product.
fn box_muller_16_libm(u: &[f32], out: &mut [f32]) {
    for j in 0..8 {
        let radius = (-2.0 * (1.0 - u[j]).ln()).sqrt();
        let theta = (std::f64::consts::TAU * u[8 + j] as f64) as f32;
        out[j] = radius * theta.cos() + 0.0;
        out[8 + j] = radius * theta.sin() + 0.0;
    }
}

/// cephes `logf` as in `avx_mathfun.h::log256_ps`, with GCC's FMA contractions.
fn log_avx(x: f32) -> f32 {
    const P: [f32; 9] = [
        7.037_683_6e-2,
        -1.151_461_03e-1,
        1.167_699_874e-1,
        -1.242_014_084_6e-1,
        1.424_932_278_7e-1,
        -1.666_805_766_5e-1,
        2.000_071_476_5e-1,
        -2.499_999_399_3e-1,
        3.333_333_117_4e-1,
    ];
    const Q1: f32 = -2.121_944_4e-4;
    const Q2: f32 = 0.693_359_375;
    let x = x.max(1.175_494_35e-38);
    let bits = x.to_bits();
    let exponent = ((bits >> 23) as i32) - 127;
    let mantissa = f32::from_bits((bits & !0x7f80_0000) | 0.5f32.to_bits());
    let mut e = exponent as f32 + 1.0;
    let mut x = mantissa - 1.0;
    if mantissa < std::f32::consts::FRAC_1_SQRT_2 {
        x += mantissa;
        e -= 1.0;
    }
    let z = x * x;
    let mut y = P[0];
    for p in &P[1..] {
        y = y.mul_add(x, *p);
    }
    y *= x;
    y = y.mul_add(z, e * Q1);
    y = z.mul_add(-0.5, y);
    let x = x + y;
    e.mul_add(Q2, x)
}

/// cephes `sincosf` as in `avx_mathfun.h::sincos256_ps` for θ ≥ 0; returns (sin, cos).
fn sincos_avx(theta: f32) -> (f32, f32) {
    let y = theta * 1.273_239_544_735_16;
    let mut j = y as i32;
    j = (j + 1) & !1;
    let y = j as f32;
    let swap_sin = j & 4 != 0;
    let poly_is_sin = j & 2 == 0;
    let neg_cos = (!(j.wrapping_sub(2))) & 4 != 0;
    let mut x = y.mul_add(-0.785_156_25, theta);
    x = y.mul_add(-2.418_756_484_985_351_562_5e-4, x);
    x = y.mul_add(-3.774_894_977_445_941_08e-8, x);
    let z = x * x;
    let mut yc = 2.443_315_711_809_948e-5f32.mul_add(z, -1.388_731_625_493_765e-3);
    yc = yc.mul_add(z, 4.166_664_568_298_827e-2);
    yc *= z;
    yc = yc.mul_add(z, -(z * 0.5));
    yc += 1.0;
    let mut ys = (-1.951_529_589_1e-4f32).mul_add(z, 8.332_160_873_6e-3);
    ys = ys.mul_add(z, -1.666_665_461_1e-1);
    ys *= z;
    ys = ys.mul_add(x, x);
    let (mut sin, mut cos) = if poly_is_sin { (ys, yc) } else { (yc, ys) };
    if swap_sin {
        sin = -sin;
    }
    if neg_cos {
        cos = -cos;
    }
    (sin, cos)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            // The spec prints 9 significant digits; torch's values are bit-exact, so allow only print rounding.
            assert!((g - w).abs() <= 1e-7 * w.abs().max(1.0), "element {i}: got {g}, want {w}");
        }
    }

    #[test]
    fn mt19937_matches_std() {
        let mut mt = Mt19937::new(0);
        let got: Vec<u32> = (0..4).map(|_| mt.next_u32()).collect();
        assert_eq!(got, [2357136044, 2546248239, 3071714933, 3626093760]);
        let mut mt = Mt19937::new(42);
        let got: Vec<u32> = (0..4).map(|_| mt.next_u32()).collect();
        assert_eq!(got, [1608637542, 3421126067, 4083286876, 787846414]);
    }

    #[test]
    fn randn_large_seed0_bits() {
        let v = TorchCpuGenerator::new(0).randn(262_144, Precision::F32);
        let bits: Vec<u32> = v[..8].iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            [0xbf901b85, 0xbf93808a, 0xbe804bd6, 0xbede255d, 0x3f594515, 0x3f312783, 0xbea1cc6d, 0xc0075fc1]
        );
        assert_close(
            &v[8..16],
            &[0.322274923, -1.26333475, 0.349983186, 0.30813393, 0.119841509, 1.2376579, 1.11677718, -0.247278154],
        );
        assert_close(&v[v.len() - 4..], &[-0.605663359, -0.179974854, -1.21386766, 0.0768599212]);
    }

    #[test]
    fn randn_large_seed42_bits() {
        let v = TorchCpuGenerator::new(42).randn(262_144, Precision::F32);
        let bits: Vec<u32> = v[..8].iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            [0x3ff6a529, 0x3fbe5f53, 0x3f669567, 0xc006c0db, 0x3f2dacd5, 0xbf9e0591, 0xbd306786, 0xbfcd65ba]
        );
    }

    #[test]
    fn randn_tail_window() {
        let v = TorchCpuGenerator::new(0).randn(20, Precision::F32);
        assert_close(
            &v,
            &[
                -1.12583983,
                -1.1523602,
                -0.250578582,
                -0.433878809,
                0.598839462,
                -1.55509508,
                -0.34136039,
                1.85300612,
                0.468096405,
                -0.157712445,
                1.44366014,
                0.266049415,
                1.38936615,
                1.58633423,
                0.946298361,
                -0.843676746,
                0.931826591,
                1.25900924,
                2.00498056,
                0.0537369028,
            ],
        );
    }

    #[test]
    fn randn_scalar_path_caches_pairs() {
        let v = TorchCpuGenerator::new(0).randn(5, Precision::F32);
        assert_close(&v, &[1.54099607, -0.293428898, -2.17878938, 0.568431258, -1.08452237]);
    }

    #[test]
    fn pipeline_draw_order_1024() {
        // VAE posterior noise first, then the initial noise, from one generator (docs/spec-flux1-img2img.md §11.8).
        let mut g = TorchCpuGenerator::new(0);
        let eps = g.randn(16 * 128 * 128, Precision::F32);
        let noise = g.randn(16 * 128 * 128, Precision::F32);
        assert_close(&eps[..4], &[-1.12583983, -1.1523602, -0.250578582, -0.433878809]);
        assert_close(&noise[..4], &[-2.18566275, -0.834281862, 0.190620512, -0.713720381]);
    }

    #[test]
    fn only_low_32_bits_of_seed_count() {
        let a = TorchCpuGenerator::new(7).randn(32, Precision::F32);
        let b = TorchCpuGenerator::new(7 + (1u64 << 32)).randn(32, Precision::F32);
        assert_eq!(a, b);
    }

    /// bf16/fp16 noise as torch 2.15 ("current"), 2.12 and 2.9 ("legacy") drew it: sizes on and off the 16-grid,
    /// scalar sizes, the next call on the same generator (scripts/make_cpu_noise_vectors.py).
    #[test]
    fn reduced_precision_matches_torch_2_15_2_12_and_2_9() {
        let files = [
            ("torch-2.15-bf16-fp16.json", CpuNoise::Current),
            ("torch-2.12-bf16-fp16.json", CpuNoise::Torch212),
            ("torch-2.9-bf16-fp16.json", CpuNoise::Legacy),
        ];
        for (file, noise) in files {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rng-torch-cpu");
            let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join(file)).unwrap()).unwrap();
            let floats = |x: &serde_json::Value| -> Vec<f32> {
                x.as_array().unwrap().iter().map(|f| f.as_f64().unwrap() as f32).collect()
            };
            let mut checked = 0;
            for (key, want) in v["vectors"].as_object().unwrap() {
                let mut parts = key.split('_');
                let p = match parts.next().unwrap() {
                    "bfloat16" => Precision::Bf16,
                    _ => Precision::F16,
                };
                let n: usize = parts.next().unwrap().parse().unwrap();
                let seed: u64 = parts.next().unwrap().parse().unwrap();
                let mut g = TorchCpuGenerator::with_noise(seed, noise);
                let first = g.randn(n, p);
                let second = g.randn(n, p);
                let k = n.min(8);
                assert_eq!(first[..k], floats(&want["first"])[..k], "{file} {key} first");
                assert_eq!(first[n - k..], floats(&want["last"])[..], "{file} {key} last");
                assert_eq!(second[..n.min(4)], floats(&want["second_first"])[..], "{file} {key} next call");
                let sum: f64 = first.iter().map(|&x| x as f64).sum();
                assert!((sum - want["sum"].as_f64().unwrap()).abs() < 1e-9, "{file} {key} sum");
                checked += 1;
            }
            assert_eq!(checked, 20);
        }
    }

    /// torch ≤ 2.11 ("legacy"), the spec's verified values (torch 2.7.1): coarse bf16 normals.
    #[test]
    fn reduced_precision_legacy_era_matches_spec() {
        let first8 =
            |seed| TorchCpuGenerator::with_noise(seed, CpuNoise::Legacy).randn(262_144, Precision::Bf16)[..8].to_vec();
        assert_eq!(
            first8(0),
            [1.4609375, 0.291015625, 0.9609375, 1.5703125, 0.494140625, -1.515625, -0.25, 0.57421875]
        );
        assert_eq!(
            first8(42),
            [-0.80859375, -1.53125, 0.40625, 0.171875, -0.247070312, 0.204101562, -0.87890625, -0.38671875]
        );
        // The two eras agree on nothing but f32 noise.
        let cur = TorchCpuGenerator::with_noise(0, CpuNoise::Current).randn(64, Precision::Bf16);
        let f32s = TorchCpuGenerator::new(0).randn(64, Precision::F32);
        assert_eq!(
            cur,
            f32s.iter().map(|&x| Precision::Bf16.round(x)).collect::<Vec<_>>(),
            "multiple of 16: f32 rounded"
        );
        let legacy = TorchCpuGenerator::with_noise(0, CpuNoise::Legacy).randn(64, Precision::Bf16);
        assert!(legacy.iter().all(|x| x.abs() <= 3.34), "legacy bf16 noise is bounded by its 8-bit uniforms");
        assert_ne!(cur, legacy);
    }
}
