//! Random noise that matches PyTorch generators bit for bit.
//!
//! Takes a seed and a count, gives `f32` standard-normal samples in the order torch fills a contiguous tensor.
//! Only the CPU generator (`torch.Generator("cpu")`) is implemented; see `torch_cpu`.

pub mod torch_cpu;

pub use torch_cpu::TorchCpuGenerator;

/// Which random number generator produces the VAE posterior noise and the initial latent noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum RngKind {
    /// `torch.Generator("cpu").manual_seed(seed)` as diffusers uses it (MT19937 + torch's AVX2 Box-Muller).
    #[default]
    TorchCpu,
}

crate::named_enum!(RngKind, "generator", [TorchCpu = "torch-cpu"]);

/// A seeded source of standard-normal noise; one per image, drawn from in pipeline order.
pub trait NoiseSource {
    /// The next `n` samples, as `torch.randn(n)` on this generator would give them.
    fn randn(&mut self, n: usize) -> Vec<f32>;
}

/// Builds the generator for `kind` seeded with `seed`.
pub fn generator(kind: RngKind, seed: u64) -> Box<dyn NoiseSource> {
    match kind {
        RngKind::TorchCpu => Box::new(TorchCpuGenerator::new(seed)),
    }
}
