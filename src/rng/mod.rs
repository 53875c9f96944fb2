//! Random noise that matches PyTorch generators bit for bit (CPU) or to the GPU's last bits (CUDA).
//!
//! Takes a seed and a count, gives standard-normal samples in the order torch fills a contiguous tensor:
//! - `torch_cpu`: `torch.Generator("cpu")` (MT19937 + torch's Box-Muller), with the two ways torch has drawn
//!   bf16/fp16 noise ([`CpuNoise`]);
//! - `torch_cuda`: `torch.Generator("cuda")` (Philox4x32-10 + curand's Box-Muller), whose large tensors depend
//!   on the GPU's size ([`CudaGeometry`]).

mod sfu_table;
pub mod torch_cpu;
pub mod torch_cuda;

pub use torch_cpu::TorchCpuGenerator;
pub use torch_cuda::{CudaGeometry, TorchCudaGenerator};

use candle_core::DType;

/// Which random number generator produces the VAE posterior noise and the initial latent noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RngKind {
    /// `torch.Generator("cpu").manual_seed(seed)` as diffusers uses it (MT19937 + torch's AVX2 Box-Muller).
    #[default]
    TorchCpu,
    /// `torch.Generator("cuda").manual_seed(seed)` (Philox4x32-10, curand's Box-Muller), on any device.
    TorchCuda,
}

crate::named_enum!(RngKind, "generator", [TorchCpu = "torch-cpu", TorchCuda = "torch-cuda"]);

/// How torch's CPU generator draws bf16/fp16 noise, which changed between versions (f32 noise never did).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum CpuNoise {
    /// torch 2.13 and later (verified: 2.13.0, 2.14.1, 2.15.0): each chunk of 16 computed in float32 with the AVX2
    /// kernel right after its uniforms are drawn, then rounded (equal to f32 noise rounded when the count is a
    /// multiple of 16).
    #[default]
    Current,
    /// torch 2.12 (verified: 2.12.1): the same order, with scalar libm float32 math; differs from `Current` in
    /// rare last bits.
    Torch212,
    /// torch up to 2.11 (verified: 2.9.1, 2.11.0; the spec's 2.7.1 values): every step of the Box-Muller rounded to
    /// the reduced type, from 8-bit (bf16) or 11-bit (fp16) uniforms; coarse values.
    Legacy,
}

crate::named_enum!(CpuNoise, "torch noise era", [Current = "current", Torch212 = "2.12", Legacy = "legacy"]);

/// The dtype noise is drawn in: diffusers asks the generator for the pipeline's dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn of(dtype: DType) -> Self {
        match dtype {
            DType::BF16 => Precision::Bf16,
            DType::F16 => Precision::F16,
            _ => Precision::F32,
        }
    }

    /// `x` rounded to this precision (round to nearest even), back in f32.
    pub fn round(self, x: f32) -> f32 {
        match self {
            Precision::F32 => x,
            Precision::Bf16 => half::bf16::from_f32(x).to_f32(),
            Precision::F16 => half::f16::from_f32(x).to_f32(),
        }
    }

    pub fn round_in_place(self, v: &mut [f32]) {
        if self != Precision::F32 {
            v.iter_mut().for_each(|x| *x = self.round(*x));
        }
    }
}

/// A seeded source of standard-normal noise; one per image, drawn from in pipeline order.
pub trait NoiseSource {
    /// The next `n` samples, as `torch.randn(n, dtype=…)` on this generator would give them (values of a
    /// reduced precision are exactly representable in f32).
    fn randn(&mut self, n: usize, precision: Precision) -> Vec<f32>;
}

/// The generator settings an edit uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RngSettings {
    pub kind: RngKind,
    /// The GPU whose CUDA `randn` is reproduced (torch-cuda only).
    pub gpu: Option<CudaGeometry>,
    /// How bf16/fp16 CPU noise is drawn (torch-cpu only).
    pub cpu_noise: CpuNoise,
}

/// Builds the generator for `settings` seeded with `seed`; `gpu` is the geometry in effect for torch-cuda.
pub fn generator(settings: &RngSettings, seed: u64, gpu: CudaGeometry) -> Box<dyn NoiseSource> {
    match settings.kind {
        RngKind::TorchCpu => Box::new(TorchCpuGenerator::with_noise(seed, settings.cpu_noise)),
        RngKind::TorchCuda => Box::new(TorchCudaGenerator::new(seed, gpu)),
    }
}
