//! `torch.Generator("cuda")` + `torch.randn` re-implemented on the CPU (docs/spec-flux1-img2img.md §12).
//!
//! Input: a seed, the GPU's SM count and threads per SM. Output: the float32 normals torch's CUDA kernel writes.
//! torch launches `T = 256 · min(SMs · threads_per_SM / 256, ⌈n/256⌉)` threads; thread `idx` starts curand's
//! Philox4x32-10 at subsequence `idx` and the generator's offset, and each `curand_normal4` call gives 4 normals
//! (Box-Muller on pairs of 32-bit draws) for elements `idx + T·i + 4T·k`. Tensors larger than `T` therefore
//! depend on the GPU's size. Each call advances the offset by `4·⌈n/4T⌉`. Reduced precision is computed in
//! float and rounded once.
//!
//! The GPU takes sine and cosine with the fast `__sincosf` intrinsic: its special-function unit interpolates
//! sin(2π·t) piecewise-quadratically from the phase t = RZ(v/2π) in turns. That unit is undocumented; `sfu_table`
//! holds quadratics fitted to an H100's output (scripts/fit_sfu_table.py), and with them about 80 % of values
//! are bit-identical to the GPU's and all are within 1e-6 (measured on vectors the fit never saw: see the tests).

use super::sfu_table::{PHASE_BITS, SEGMENTS, SINE};
use super::{NoiseSource, Precision};

/// Streaming multiprocessors and resident threads per SM of the GPU whose `randn` is reproduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CudaGeometry {
    pub sms: u32,
    pub threads_per_sm: u32,
}

impl CudaGeometry {
    /// H100 SXM / H200: 132 SMs × 2048 threads (the default on the CPU).
    pub const H100: CudaGeometry = CudaGeometry { sms: 132, threads_per_sm: 2048 };

    /// Named GPUs (`--rng-gpu NAME`) and their geometry.
    pub const PRESETS: &'static [(&'static str, CudaGeometry)] = &[
        ("h100", Self::H100),
        ("h200", Self::H100),
        ("h100-pcie", CudaGeometry { sms: 114, threads_per_sm: 2048 }),
        ("a100", CudaGeometry { sms: 108, threads_per_sm: 2048 }),
        ("l40s", CudaGeometry { sms: 142, threads_per_sm: 1536 }),
        ("4090", CudaGeometry { sms: 128, threads_per_sm: 1536 }),
        ("3090", CudaGeometry { sms: 82, threads_per_sm: 1536 }),
        ("l4", CudaGeometry { sms: 58, threads_per_sm: 1536 }),
        ("a10", CudaGeometry { sms: 72, threads_per_sm: 1536 }),
    ];

    /// Threads the kernel launches for `n` elements.
    pub fn threads(self, n: usize) -> usize {
        let blocks_per_sm = (self.threads_per_sm / 256) as usize;
        let grid = (self.sms as usize * blocks_per_sm).min(n.div_ceil(256)).max(1);
        256 * grid
    }

    /// The most elements a tensor can have and still be independent of the GPU (one normal per thread).
    pub fn max_independent(self) -> usize {
        self.sms as usize * self.threads_per_sm as usize
    }
}

impl std::fmt::Display for CudaGeometry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.sms, self.threads_per_sm)
    }
}

impl std::str::FromStr for CudaGeometry {
    type Err = String;
    /// `132x2048` (SMs × threads per SM) or a preset name.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        if let Some((_, g)) = Self::PRESETS.iter().find(|(n, _)| *n == s) {
            return Ok(*g);
        }
        let parsed = s.split_once('x').and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)));
        match parsed {
            Some((sms, threads_per_sm)) if sms > 0 && threads_per_sm >= 256 => Ok(CudaGeometry { sms, threads_per_sm }),
            _ => {
                let names: Vec<&str> = Self::PRESETS.iter().map(|(n, _)| *n).collect();
                Err(format!("{s:?}: expected SMSxTHREADS (e.g. 132x2048) or one of {}", names.join(", ")))
            }
        }
    }
}

const PHILOX_M0: u32 = 0xD251_1F53;
const PHILOX_M1: u32 = 0xCD9E_8D57;
const PHILOX_W0: u32 = 0x9E37_79B9;
const PHILOX_W1: u32 = 0xBB67_AE85;
/// curand's `CURAND_2POW32_INV` and `CURAND_2POW32_INV_2PI` (float constants).
const INV_2POW32: f32 = 2.328_306_4e-10;
const INV_2POW32_2PI: f32 = 2.328_306_4e-10 * 6.283_185_5;

/// Philox4x32-10 of `counter` under `key`.
fn philox(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for round in 0..10 {
        if round > 0 {
            k = [k[0].wrapping_add(PHILOX_W0), k[1].wrapping_add(PHILOX_W1)];
        }
        let p0 = PHILOX_M0 as u64 * c[0] as u64;
        let p1 = PHILOX_M1 as u64 * c[2] as u64;
        let (hi0, lo0, hi1, lo1) = ((p0 >> 32) as u32, p0 as u32, (p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
    }
    c
}

/// The 128-bit counter plus `n`, starting at word 0.
fn add128(c: [u32; 4], n: u64) -> [u32; 4] {
    let lo = (c[0] as u64 | (c[1] as u64) << 32) as u128 | ((c[2] as u64 | (c[3] as u64) << 32) as u128) << 64;
    let v = lo.wrapping_add(n as u128);
    [v as u32, (v >> 32) as u32, (v >> 64) as u32, (v >> 96) as u32]
}

/// curand's `_curand_box_muller` on two draws: (s·sin v, s·cos v), the products contracted to FMAs as nvcc does.
fn box_muller(a: u32, b: u32) -> (f32, f32) {
    let u = (a as f32).mul_add(INV_2POW32, INV_2POW32 / 2.0);
    let v = (b as f32).mul_add(INV_2POW32_2PI, INV_2POW32_2PI / 2.0);
    let s = (-2.0 * u.ln()).sqrt();
    let (sin, cos) = gpu_sincos(v);
    (s * sin, s * cos)
}

/// `v · (1/2π)` in f32 rounded toward zero (the `FMUL.RZ` in front of the SFU), as a phase on the unit's grid.
fn phase(v: f32) -> f64 {
    const INV_2PI: f32 = 0.159_154_94;
    let exact = v as f64 * INV_2PI as f64;
    let mut x = exact as f32;
    if (x as f64).abs() > exact.abs() {
        x = f32::from_bits(x.to_bits() - 1);
    }
    let grid = (1u64 << PHASE_BITS) as f64;
    (x as f64 * grid).floor() / grid
}

/// sin(2π·t) for a phase `t` in [0, 1) turns, as the special-function unit interpolates it.
fn sfu_sine(t: f64) -> f32 {
    let pos = t * SEGMENTS as f64;
    let seg = (pos as usize).min(SEGMENTS - 1);
    let dx = pos - seg as f64;
    let [c0, c1, c2] = SINE[seg];
    (c0 + c1 * dx + c2 * dx * dx) as f32
}

/// `__sincosf(v)` for v in (0, 2π): the cosine is the sine a quarter turn later.
fn gpu_sincos(v: f32) -> (f32, f32) {
    let t = phase(v);
    (sfu_sine(t), sfu_sine((t + 0.25).fract()))
}

/// A CUDA generator as `torch.Generator("cuda").manual_seed(seed)` creates it on a GPU of `geometry`.
#[derive(Debug, Clone)]
pub struct TorchCudaGenerator {
    seed: u64,
    /// `philox_offset_per_thread`: advanced by every call.
    offset: u64,
    geometry: CudaGeometry,
}

impl TorchCudaGenerator {
    pub fn new(seed: u64, geometry: CudaGeometry) -> Self {
        Self { seed, offset: 0, geometry }
    }

    fn randn_f32(&mut self, n: usize) -> Vec<f32> {
        let t = self.geometry.threads(n);
        let loops = n.div_ceil(4 * t);
        let offset = self.offset;
        self.offset += 4 * loops as u64;
        let key = [self.seed as u32, (self.seed >> 32) as u32];
        let mut out = vec![0f32; n];
        for idx in 0..t.min(n) {
            let mut counter = add128([0, 0, idx as u32, (idx as u64 >> 32) as u32], offset / 4);
            for k in 0..loops {
                let x = philox(counter, key);
                counter = add128(counter, 1);
                let (a, b) = box_muller(x[0], x[1]);
                let (c, d) = box_muller(x[2], x[3]);
                for (i, v) in [a, b, c, d].into_iter().enumerate() {
                    let e = idx + t * i + 4 * t * k;
                    if e < n {
                        out[e] = v;
                    }
                }
            }
        }
        out
    }
}

impl NoiseSource for TorchCudaGenerator {
    fn randn(&mut self, n: usize, precision: Precision) -> Vec<f32> {
        let mut v = self.randn_f32(n);
        precision.round_in_place(&mut v);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// (index, value) pairs of one committed vector subset (scripts/subset_cuda_rng.py).
    fn pairs(file: &str) -> Vec<(usize, f32)> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rng-torch-cuda").join(file);
        std::fs::read(p)
            .unwrap()
            .chunks_exact(8)
            .map(|c| {
                let i = u32::from_le_bytes(c[..4].try_into().unwrap()) as usize;
                (i, f32::from_le_bytes(c[4..].try_into().unwrap()))
            })
            .collect()
    }

    /// Draws `calls` randn calls of `n` from one generator and compares the last with the H100's values.
    fn check(file: &str, seed: u64, calls: usize, n: usize, p: Precision, tol: f32, min_exact: f64) -> (f32, f64) {
        let mut g = TorchCudaGenerator::new(seed, CudaGeometry::H100);
        let mut got = Vec::new();
        for _ in 0..calls {
            got = g.randn(n, p);
        }
        let want = pairs(file);
        let (mut worst, mut exact) = (0f32, 0usize);
        for &(i, w) in &want {
            let d = (got[i] - w).abs();
            worst = worst.max(d);
            exact += (got[i].to_bits() == w.to_bits()) as usize;
            assert!(d <= tol, "{file} element {i}: got {}, H100 {w}", got[i]);
        }
        let frac = exact as f64 / want.len() as f64;
        assert!(frac > min_exact, "{file}: only {:.1}% bit-exact", 100.0 * frac);
        eprintln!("{file}: max |diff| {worst:.2e}, {:.1}% bit-exact ({} values)", 100.0 * frac, want.len());
        (worst, frac)
    }

    const LATENT_1024: usize = 16 * 128 * 128;

    #[test]
    fn philox_known_answer() {
        // Random123's known-answer test for Philox4x32-10: counter 0, key 0.
        assert_eq!(philox([0; 4], [0; 2]), [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8]);
    }

    #[test]
    fn matches_h100_small_and_pipeline_draws() {
        check("seed0_3x4_0.f32.pairs", 0, 1, 12, Precision::F32, 1e-6, 0.5);
        check("seed7_small_0.f32.pairs", 7, 1, 1024, Precision::F32, 1e-6, 0.7);
        check("seed7_small_1.f32.pairs", 7, 2, 1024, Precision::F32, 1e-6, 0.7);
        // FluxImg2ImgPipeline at 1024²: posterior noise (call 0; the sine table was fitted to it), then the
        // initial noise (call 1).
        check("seed100_1024sq_0.f32.pairs", 100, 1, LATENT_1024, Precision::F32, 1e-6, 0.7);
        check("seed100_1024sq_1.f32.pairs", 100, 2, LATENT_1024, Precision::F32, 1e-6, 0.7);
    }

    #[test]
    fn bf16_is_computed_in_float_and_rounded_once() {
        // One bf16 ulp at |x| < 8 is at most 2^-5: a value a hair from a rounding tie may land on the other side.
        check("seed100_1024sq_0.bf16.pairs", 100, 1, LATENT_1024, Precision::Bf16, 0.0313, 0.999);
        check("seed100_1024sq_1.bf16.pairs", 100, 2, LATENT_1024, Precision::Bf16, 0.0313, 0.999);
    }

    #[test]
    fn large_tensor_uses_the_gpu_geometry() {
        // 409600 elements > 132·2048 threads: later elements come from components 1..3 and the second loop.
        // Cosines (component 1) appear only here, and the fit never saw them.
        check("seed42_1280sq_0.f32.pairs", 42, 1, 16 * 160 * 160, Precision::F32, 1e-6, 0.7);
        // Another GPU size gives another tensor past its thread count.
        let small = CudaGeometry { sms: 58, threads_per_sm: 1536 };
        let a = TorchCudaGenerator::new(42, CudaGeometry::H100).randn(409_600, Precision::F32);
        let b = TorchCudaGenerator::new(42, small).randn(409_600, Precision::F32);
        assert_eq!(a[..small.max_independent()], b[..small.max_independent()]);
        assert_ne!(a[small.max_independent()..], b[small.max_independent()..]);
    }

    /// Whole vectors from ../shared/rng-torch-cuda (not committed): `cargo test --lib full_h100_vectors --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn full_h100_vectors() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/rng-torch-cuda");
        let index: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
        for f in index["files"].as_array().unwrap() {
            let (file, seed, call) =
                (f["file"].as_str().unwrap(), f["seed"].as_u64().unwrap(), f["call"].as_u64().unwrap());
            let raw = std::fs::read(dir.join(file)).unwrap();
            let (want, p): (Vec<f32>, _) = if file.ends_with(".bf16") {
                let v = raw.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16));
                (v.collect(), Precision::Bf16)
            } else {
                (raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect(), Precision::F32)
            };
            let mut g = TorchCudaGenerator::new(seed, CudaGeometry::H100);
            let mut got = Vec::new();
            for _ in 0..=call {
                got = g.randn(want.len(), p);
            }
            let exact = got.iter().zip(&want).filter(|(a, b)| a.to_bits() == b.to_bits()).count();
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{file}: {:.2}% bit-exact, max |diff| {worst:.2e}", 100.0 * exact as f64 / want.len() as f64);
            assert!(worst < 1e-5);
        }
    }

    #[test]
    fn geometry_names() {
        assert_eq!("132x2048".parse::<CudaGeometry>().unwrap(), CudaGeometry::H100);
        assert_eq!("4090".parse::<CudaGeometry>().unwrap().to_string(), "128x1536");
        assert!("12".parse::<CudaGeometry>().is_err());
        assert!("0x2048".parse::<CudaGeometry>().is_err());
    }
}
