//! Plan + model configs + the weights' sizes → the expected peak memory of an edit, before any weight is read
//! (`--dry-run` prints it; `--memory-budget` refuses an edit over budget and names a flag that would fit).
//!
//! The model follows the session's order of work:
//! 1. text encoding: the text encoders alone (they are dropped before anything else loads);
//! 2. VAE encode, denoising, VAE decode: the VAE and the transformer resident (a batch keeps both loaded), plus
//!    the largest transient buffer of the stage.
//!
//! Weights are exact: every tensor's size from the file headers, at the dtype (or quantized format) it loads in.
//! Activations are counted from the shapes, for the code as it computes today:
//! - attention without a fused kernel materialises B·H·S² scores (B·H·rows·S with `--attention-chunk`), and the
//!   product (model dtype), its f32 copy, the f32 softmax and the probabilities (model dtype) are alive together:
//!   2·dt + 8 bytes a score. The CPU's f32 kernel works in bands of rows and needs none of it.
//! - a transformer block's intermediates: B·S·(3W + M) values in the model dtype and again in f32.
//! - candle's CUDA conv2d is im2col + GEMM: an [H·W, C_in·9] buffer per 3×3 convolution (a band's rows with
//!   `--vae-band`), with its input and output; its group norm keeps three f32 copies of a tensor (of 4 of its
//!   groups with `--vae-band`). The CPU's f32 kernels need neither.
//!
//! These are the composed path's buffers as they were before it went cast-free (issue 19); it now keeps scores and
//! probabilities in the model dtype (2·dt bytes a score) and makes no f32 copy in a block or a group norm. Until a
//! GPU measures the new path's peaks (and the factor below is fitted again), the composed figures are an upper
//! bound. `--kernels composed` counts them on the CPU's f32 tensors too.
//!
//! On CUDA the sum is scaled by [`CUDA_ALLOCATOR`] and a runtime allowance is added. Both are fitted to the two
//! peaks measured on an H100 (issue 13: 36.1 GB in bf16 and 23.0 GB with q8_0, FLUX.1-dev at 1024²); nothing
//! else about the CUDA figures has been checked on a GPU.

use super::plan::Plan;
use super::request::Request;
use crate::config::{Family, ModelConfigs, VaeConfig};
use crate::kernels::Kernels;
use candle_core::DType;

/// The stream-ordered allocator's pool and fragmentation, as a factor on the counted bytes (see the header).
pub const CUDA_ALLOCATOR: f64 = 1.15;
/// CUDA context, cuBLAS workspace and loaded kernels; the process itself on the CPU.
pub(crate) const RUNTIME_CUDA: u64 = 500_000_000;
pub(crate) const RUNTIME_CPU: u64 = 100_000_000;

/// `--memory-budget`: a number of bytes, or what the device has free when the batch is checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    Bytes(u64),
    Available,
}

impl Budget {
    /// `auto`, or decimal gigabytes (`24`, `7.5`).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(Budget::Available);
        }
        match s.trim().parse::<f64>() {
            Ok(gb) if gb.is_finite() && gb > 0.0 => Ok(Budget::Bytes((gb * 1e9) as u64)),
            _ => Err(format!("{s} is not a size in GB (e.g. 24 or 7.5) or auto")),
        }
    }
}

/// Where the edit runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Cpu,
    Cuda,
}

impl Backend {
    pub fn of(device: &candle_core::Device) -> Self {
        if device.is_cuda() {
            Backend::Cuda
        } else {
            Backend::Cpu
        }
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "host",
            Backend::Cuda => "GPU",
        }
    }
}

/// Bytes of each component's weights as they are loaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct WeightSizes {
    pub transformer: u64,
    pub vae: u64,
    /// CLIP and T5 (FLUX.1) or Qwen3 (FLUX.2).
    pub text_encoders: u64,
    /// Models kept beside the denoiser from the VAE encode on (the Redux prior's SigLIP and embedder).
    #[serde(skip_serializing_if = "is_zero")]
    pub adapters: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One stage of the edit: the weights resident and the largest transient buffers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub weights: u64,
    pub activations: u64,
}

/// The expected memory of an edit, stage by stage.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub backend: Backend,
    pub weights: WeightSizes,
    pub stages: Vec<Stage>,
    /// Runtime allowance, and the allocator factor applied to the stages (1 on the CPU).
    pub runtime: u64,
    pub allocator: f64,
}

impl Estimate {
    /// The stage that needs the most.
    pub fn peak_stage(&self) -> &Stage {
        self.stages.iter().max_by_key(|s| s.weights.saturating_add(s.activations)).expect("an estimate has stages")
    }

    /// Expected peak, in bytes.
    pub fn peak(&self) -> u64 {
        let s = self.peak_stage();
        (((s.weights.saturating_add(s.activations)) as f64 * self.allocator) as u64).saturating_add(self.runtime)
    }

    /// `about 31.4 GB of GPU memory at the peak (denoising: weights 24.0 GB, activations 6.9 GB)`.
    pub fn describe(&self) -> String {
        let s = self.peak_stage();
        format!(
            "about {} of {} memory at the peak ({}: weights {}, activations {})",
            gb(self.peak()),
            self.backend.name(),
            s.name,
            gb(s.weights),
            gb(s.activations)
        )
    }
}

/// `12.3 GB` (decimal units, as GPU memory is quoted), or `105 MB` below a gigabyte.
pub fn gb(bytes: u64) -> String {
    if bytes >= 1_000_000_000 {
        format!("{:.1} GB", bytes as f64 / 1e9)
    } else {
        format!("{:.0} MB", bytes as f64 / 1e6)
    }
}

/// What the edit computes on: sizes in pixels and tokens, independent of the weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// The output (and denoised latent) size.
    pub size: (u32, u32),
    /// Images the VAE encodes: the input and references.
    pub encodes: Vec<(u32, u32)>,
    /// Reference images' sizes whose tokens join the sequence (Kontext, FLUX.2 references).
    pub references: Vec<(u32, u32)>,
    pub text_tokens: usize,
    /// Transformer batch: 2 with CFG (both passes in one call).
    pub batch: usize,
    /// `--attention-chunk`: query rows whose scores exist at once (None: all).
    pub attention_chunk: Option<usize>,
    /// `--vae-band`: output rows whose im2col buffer exists at once (None: all).
    pub vae_band: Option<usize>,
    /// `--kernels`: whether the composed path runs (and its buffers count) on the CPU's f32 tensors too.
    pub kernels: Kernels,
    /// `--cache taylorseer`: its order (each attention module keeps order + 1 factors for the whole edit).
    pub taylor_order: Option<usize>,
    /// Passes with their own cache state: 2 with true CFG (prompt and negative prompt run apart), else 1.
    pub passes: usize,
    /// ControlNets: the residuals held through a transformer pass (their longest block list; 0 without).
    pub control_residuals: usize,
}

impl Workload {
    /// The sizes `plan` decided for `req`.
    pub fn of(req: &Request, plan: &Plan) -> Self {
        let size = (plan.width, plan.height);
        let mut references: Vec<(u32, u32)> = plan.reference_size.into_iter().collect();
        references.extend(plan.references.iter().copied());
        let mut encodes = references.clone();
        if req.strength().is_some() {
            encodes.push(size);
        }
        let batch = if plan.cfg_scale.is_some() { 2 } else { 1 };
        let (attention_chunk, vae_band, kernels) = (req.attention_chunk, req.vae_band, req.kernels);
        let text_tokens = req.max_sequence_length;
        let taylor_order = match req.cache {
            Some(crate::engine::cache::CacheSpec::TaylorSeer { order, .. }) => Some(order),
            _ => None,
        };
        let passes = if req.true_cfg.is_some() { 2 } else { 1 };
        Self {
            size,
            encodes,
            references,
            text_tokens,
            batch,
            attention_chunk,
            vae_band,
            kernels,
            taylor_order,
            passes,
            control_residuals: 0,
        }
    }

    /// Every image scaled by `f` in area (sizes rounded to whole pixels).
    pub fn scaled(&self, f: f64) -> Self {
        let s = |(w, h): (u32, u32)| ((w as f64 * f.sqrt()) as u32, (h as f64 * f.sqrt()) as u32);
        Self {
            size: s(self.size),
            encodes: self.encodes.iter().map(|&x| s(x)).collect(),
            references: self.references.iter().map(|&x| s(x)).collect(),
            ..self.clone()
        }
    }
}

/// The estimate for `work` on `cfg`'s model with weights of `weights` bytes, run in `dtype` on `backend`.
pub fn estimate(cfg: &ModelConfigs, weights: WeightSizes, work: &Workload, dtype: DType, backend: Backend) -> Estimate {
    let dt = dtype.size_in_bytes() as u64;
    let composed = work.kernels.composed_on(backend == Backend::Cuda, dtype);
    let resident = weights.transformer + weights.vae + weights.adapters;
    let vae = |px: (u32, u32), decode: bool| vae_activations(&cfg.vae, px, decode, dt, composed, work);
    let mut stages = vec![Stage { name: "text encoding", weights: weights.text_encoders, activations: 0 }];
    if let Some(act) = work.encodes.iter().map(|&px| vae(px, false)).max() {
        stages.push(Stage { name: "VAE encode", weights: resident, activations: act });
    }
    let act = transformer_activations(cfg, work, dt, composed);
    stages.push(Stage { name: "denoising", weights: resident, activations: act });
    stages.push(Stage { name: "VAE decode", weights: resident, activations: vae(work.size, true) });
    let (runtime, allocator) =
        if backend == Backend::Cuda { (RUNTIME_CUDA, CUDA_ALLOCATOR) } else { (RUNTIME_CPU, 1.0) };
    Estimate { backend, weights, stages, runtime, allocator }
}

/// Latent tokens of an image: one per 16×16 pixels on FLUX's grid (the VAE's downscale × the 2×2 packing).
fn tokens(cfg: &ModelConfigs, (w, h): (u32, u32)) -> f64 {
    let m = cfg.vae.size_multiple();
    (w / m) as f64 * (h / m) as f64
}

/// The transformer's largest transient: attention scores (composed path) and a block's intermediates. In f64:
/// absurd sizes must saturate, not wrap (the cast to u64 saturates).
fn transformer_activations(cfg: &ModelConfigs, work: &Workload, dt: u64, composed: bool) -> u64 {
    let t = &cfg.transformer;
    let refs: f64 = work.references.iter().map(|&r| tokens(cfg, r)).sum();
    let s = work.text_tokens as f64 + tokens(cfg, work.size) + refs;
    let (b, dt) = (work.batch as f64, dt as f64);
    let heads = t.num_attention_heads as f64;
    let width = heads * t.attention_head_dim as f64;
    let gated = if cfg.family == Family::Flux2 { 2.0 } else { 1.0 };
    let mlp = (width * t.mlp_ratio.unwrap_or(4.0) * gated).trunc();
    let rows = work.attention_chunk.map_or(s, |c| s.min(c as f64));
    let scores = if composed { b * heads * rows * s * (2.0 * dt + 8.0) } else { 0.0 };
    let residuals = work.control_residuals as f64 * tokens(cfg, work.size) * width * dt;
    (scores + b * s * (3.0 * width + mlp) * (dt + 4.0) + taylor_factors(cfg, work, s, width) + residuals) as u64
}

/// TaylorSeer's factors, kept for the whole edit: per pass, order + 1 bf16 copies of every block's attention
/// output (a double block's image and text outputs together, a single block's joint one: sequence × width).
fn taylor_factors(cfg: &ModelConfigs, work: &Workload, s: f64, width: f64) -> f64 {
    let Some(order) = work.taylor_order else { return 0.0 };
    let modules = (cfg.transformer.num_layers + cfg.transformer.num_single_layers) as f64;
    work.passes as f64 * (order + 1) as f64 * modules * s * width * 2.0
}

/// The VAE's largest transient at `px` pixels: im2col buffers and f32 group-norm copies (composed path), or the
/// layers' inputs and outputs; and the mid-block attention over the latent tokens.
pub(crate) fn vae_activations(
    vae: &VaeConfig,
    (w, h): (u32, u32),
    decode: bool,
    dt: u64,
    composed: bool,
    work: &Workload,
) -> u64 {
    let pixels = w as f64 * h as f64;
    let scale = vae.scale_factor() as f64;
    let latent = pixels / (scale * scale);
    let dt = dt as f64;
    // Widest input channel count of a 3×3 convolution at full resolution: the encoder's first blocks, or the
    // decoder's upsampled features entering its last block.
    let ch = &vae.block_out_channels;
    let c = if decode { ch.get(1).or(ch.first()) } else { ch.first() }.copied().unwrap_or(0) as f64;
    let layers = pixels * c;
    // A convolution's input and output stay alive beside its im2col buffer (bands: a band's, and the padded
    // input), or beside group norm's f32 copies.
    // With bands, group norm works GN_CHUNK groups at a time.
    let (im2col, norm) = match work.vae_band {
        Some(band) => {
            let groups = (crate::kernels::GN_CHUNK as f64 / vae.norm_num_groups as f64).min(1.0);
            (9.0 * layers * (band as f64 / h as f64).min(1.0) * dt + layers * dt, 12.0 * layers * groups)
        }
        None => (9.0 * layers * dt, 12.0 * layers),
    };
    let full_res = if composed { 2.0 * layers * dt + im2col.max(norm) } else { 16.0 * layers };
    let rows = work.attention_chunk.map_or(latent, |c| latent.min(c as f64));
    let attention = if composed && vae.mid_block_add_attention { rows * latent * (2.0 * dt + 8.0) } else { 0.0 };
    full_res.max(attention) as u64
}

#[cfg(test)]
mod tests;
