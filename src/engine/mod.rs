//! The engine: one edit from a [`Request`] to a PNG, in small stages.
//!
//! - [`cache`]: step caches (`--cache`: First-Block Cache, TaylorSeer), the per-edit state the transformer consults;
//! - [`request`]: what is asked (the [`Mode`] of the edit and its parameters);
//! - [`plan`]: request + configs + input size → [`Plan`] (pure, before any weight is read);
//! - [`session`]: prompt and LoRA caches and the denoising loop; runs planned edits through the model's
//!   [`family`] (FLUX.1/FLUX.2, Stable Diffusion: each family's staging behind one interface);
//! - [`load`]: model files → loaded models;
//! - [`memory`]: plan + configs + weight sizes → the expected peak memory (before any weight is read);
//! - [`edit`]: the numerics (latents, noise, Euler loop), pure functions; [`flux2`] FLUX.2's latent numerics;
//! - [`inpaint`]: masks and the per-step blend;
//! - [`record`]: the typed [`EditRecord`] written into PNGs, printed by `--json`, read by `--from-metadata`;
//! - [`progress`]: events the engine reports through the [`Progress`] trait; it never writes to stderr.

pub mod cache;
pub mod control;
pub mod controlnet;
pub mod depth;
pub mod edit;
pub mod family;
pub mod fill;
pub mod flux2;
pub mod inpaint;
pub mod load;
pub mod memory;
pub mod plan;
pub mod progress;
pub mod record;
pub mod redux;
pub mod request;
pub mod session;

pub use plan::Plan;
pub use progress::{Event, Progress, Silent};
pub use record::EditRecord;
pub use request::{Mode, Request};
pub use session::{Report, Session, Timings};

use crate::error::Result;
use std::sync::Arc;

/// Runs one edit end to end (the model resolved from a folder or the Hub cache); bad input fails before any
/// weight is read.
pub fn run(req: &Request, progress: Arc<dyn Progress>) -> Result<Report> {
    let dir = crate::source::locate(&req.model, &req.overrides, true, false)?;
    Session::open(&dir, &req.overrides, &req.device, req.dtype, progress)?.run(req)
}

/// The geometry of `device` for reproducing its CUDA generator: read from the GPU, or an H100's on the CPU.
pub fn gpu_geometry(device: &candle_core::Device) -> crate::rng::CudaGeometry {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        if let Some(g) = cuda_geometry(d) {
            return g;
        }
    }
    let _ = device;
    crate::rng::CudaGeometry::H100
}

/// SM count and threads per SM from the driver.
#[cfg(feature = "cuda")]
fn cuda_geometry(d: &candle_core::CudaDevice) -> Option<crate::rng::CudaGeometry> {
    use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute as A;
    let ctx = d.cuda_stream().context().clone();
    let sms = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).ok()?;
    let threads = ctx.attribute(A::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR).ok()?;
    Some(crate::rng::CudaGeometry { sms: sms as u32, threads_per_sm: threads as u32 })
}

/// Memory free for an edit now, in bytes: the GPU's free memory (CUDA), or the host's `MemAvailable` (Linux).
pub fn available_memory(device: &candle_core::Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        return d.cuda_stream().context().mem_get_info().ok().map(|(free, _total)| free as u64);
    }
    let _ = device;
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// GPU memory in use on `device` now (total − free, as the driver reports it: this process's tensors, its
/// allocator's cached blocks and context, and anything else on the GPU), in MiB; None on the CPU.
pub fn gpu_used_mib(device: &candle_core::Device) -> Option<f64> {
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(d) = device {
        let (free, total) = d.cuda_stream().context().mem_get_info().ok()?;
        return Some(total.saturating_sub(free) as f64 / 1048576.0);
    }
    let _ = device;
    None
}

/// The most GPU memory in use seen by [`GpuPeak::sample`]: the session samples it with the text encoders loaded,
/// at the end of each stage of an edit and after each denoising step. A lower bound on the true peak (memory taken
/// and released within a step is not seen), without polling or a second process.
#[derive(Debug, Default)]
pub struct GpuPeak(std::sync::atomic::AtomicU64, std::sync::Mutex<Vec<(&'static str, f64)>>);

impl GpuPeak {
    /// Takes one sample on `device` (nothing on the CPU), kept as the running peak and as `stage`'s largest.
    pub fn sample_at(&self, device: &candle_core::Device, stage: &'static str) {
        if let Some(mib) = gpu_used_mib(device) {
            self.0.fetch_max(mib.to_bits(), std::sync::atomic::Ordering::Relaxed);
            let mut stages = self.1.lock().unwrap_or_else(|e| e.into_inner());
            match stages.iter_mut().find(|(s, _)| *s == stage) {
                Some((_, m)) => *m = m.max(mib),
                None => stages.push((stage, mib)),
            }
        }
    }

    /// Each stage's largest sample, in the order the stages were first sampled.
    pub fn by_stage(&self) -> Vec<(&'static str, f64)> {
        self.1.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The largest sample in MiB; None when nothing was sampled (the CPU).
    pub fn get(&self) -> Option<f64> {
        let bits = self.0.load(std::sync::atomic::Ordering::Relaxed);
        (bits != 0).then(|| f64::from_bits(bits))
    }
}

/// A seed below 2^32: torch keeps only the low 32 bits, so larger ones would only confuse.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() & 0xffff_ffff
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
