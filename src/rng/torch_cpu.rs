//! `torch.Generator("cpu")` + `torch.randn` re-implemented (docs/spec-flux1-img2img.md §11).
//!
//! Input: a 64-bit seed (torch keeps only its low 32 bits). Output: float32 normals identical to torch 2.x on
//! x86-64, whose `normal_fill_AVX2` kernel is used even on AVX-512 machines. Invariants kept from torch:
//! - n ≥ 16: all n uniforms are drawn first, then transformed in chunks of 16 (cos branch in the first 8, sin
//!   branch in the next 8); a tail that is not a multiple of 16 is recomputed from 16 fresh uniforms.
//! - n < 16: the scalar double-precision Box-Muller, whose second value is cached in the generator.
//!
//! The FMA placement below mirrors what GCC emitted for torch's shipped binaries; without it about 1 % of values
//! differ by an ulp (measured in the spec), which is why `mul_add` appears exactly where it does.

// The polynomial coefficients are torch's (Sleef-derived) constants, written out in full on purpose.
#![allow(clippy::excessive_precision)]

use super::NoiseSource;

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
}

impl TorchCpuGenerator {
    pub fn new(seed: u64) -> Self {
        Self { mt: Mt19937::new(seed as u32), cached_normal: None }
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
    fn randn(&mut self, n: usize) -> Vec<f32> {
        if n < 16 {
            return (0..n).map(|_| self.scalar_normal() as f32).collect();
        }
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
        let v = TorchCpuGenerator::new(0).randn(262_144);
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
        let v = TorchCpuGenerator::new(42).randn(262_144);
        let bits: Vec<u32> = v[..8].iter().map(|x| x.to_bits()).collect();
        assert_eq!(
            bits,
            [0x3ff6a529, 0x3fbe5f53, 0x3f669567, 0xc006c0db, 0x3f2dacd5, 0xbf9e0591, 0xbd306786, 0xbfcd65ba]
        );
    }

    #[test]
    fn randn_tail_window() {
        let v = TorchCpuGenerator::new(0).randn(20);
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
        let v = TorchCpuGenerator::new(0).randn(5);
        assert_close(&v, &[1.54099607, -0.293428898, -2.17878938, 0.568431258, -1.08452237]);
    }

    #[test]
    fn pipeline_draw_order_1024() {
        // VAE posterior noise first, then the initial noise, from one generator (docs/spec-flux1-img2img.md §11.8).
        let mut g = TorchCpuGenerator::new(0);
        let eps = g.randn(16 * 128 * 128);
        let noise = g.randn(16 * 128 * 128);
        assert_close(&eps[..4], &[-1.12583983, -1.1523602, -0.250578582, -0.433878809]);
        assert_close(&noise[..4], &[-2.18566275, -0.834281862, 0.190620512, -0.713720381]);
    }

    #[test]
    fn only_low_32_bits_of_seed_count() {
        let a = TorchCpuGenerator::new(7).randn(32);
        let b = TorchCpuGenerator::new(7 + (1u64 << 32)).randn(32);
        assert_eq!(a, b);
    }
}
