//! Stable Diffusion's side of the memory estimate: the UNet's, VAE's and text encoders' bytes as loaded (summed
//! from the safetensors headers), and the largest transients of each stage: the UNet's attention scores and skip
//! connections at the latent size, the VAE's as for FLUX.

use super::Sd;
use crate::engine::memory::{self, Backend, Estimate, Stage, WeightSizes, Workload};
use crate::engine::Request;
use crate::error::Result;
use crate::models::linear::Quant;
use crate::source::{self, Component};
use crate::weights::sizes::{loaded_bytes, LoadAs, Rule};
use std::path::PathBuf;

/// A component's weight files: those it was opened with, or (configs-only sessions) the folder's, when present.
fn weight_paths(c: &Component, stem: &str) -> Option<Vec<PathBuf>> {
    if !c.weights.is_empty() {
        return c.weights.iter().all(|p| p.is_file()).then(|| c.weights.clone());
    }
    source::weight_files(c.config.parent()?, stem).ok()
}

impl Sd {
    /// The estimate of `work`, with the UNet's attention matrices at `quantize` when set; None when a weight file
    /// is not on disk.
    pub(super) fn estimate(&self, req: &Request, work: &Workload, quantize: Option<Quant>) -> Result<Option<Estimate>> {
        let how = LoadAs { dtype: req.dtype, quantize: None, rule: Rule::Plain };
        let unet_how = LoadAs { quantize: quantize.map(Quant::ggml), rule: Rule::UNet, ..how };
        let all = |_: &str| true;
        let f = &self.files;
        let stem = "diffusion_pytorch_model";
        let (Some(unet), Some(vae), Some(te)) =
            (weight_paths(&f.unet, stem), weight_paths(&f.vae, stem), weight_paths(&f.text_encoder, "model"))
        else {
            return Ok(None);
        };
        let mut text = loaded_bytes(&te, how, all)?;
        if let Some(c) = &f.text_encoder_2 {
            let Some(p) = weight_paths(c, "model") else { return Ok(None) };
            text += loaded_bytes(&p, how, all)?;
        }
        let weights = WeightSizes {
            transformer: loaded_bytes(&unet, unet_how, all)?,
            vae: loaded_bytes(&vae, how, all)?,
            text_encoders: text,
            adapters: 0,
        };
        let backend = Backend::of(&req.device);
        let dt = req.dtype.size_in_bytes() as u64;
        let composed = work.kernels.composed_on(backend == Backend::Cuda, req.dtype);
        let resident = weights.transformer + weights.vae;
        let vae_act = |px, decode| memory::vae_activations(&self.cfg.vae, px, decode, dt, composed, work);
        let mut stages = vec![Stage { name: "text encoding", weights: text, activations: 0 }];
        if let Some(act) = work.encodes.iter().map(|&px| vae_act(px, false)).max() {
            stages.push(Stage { name: "VAE encode", weights: resident, activations: act });
        }
        stages.push(Stage {
            name: "denoising",
            weights: resident,
            activations: self.unet_activations(work, dt, composed),
        });
        stages.push(Stage { name: "VAE decode", weights: resident, activations: vae_act(work.size, true) });
        let (runtime, allocator) = match backend {
            Backend::Cuda => (memory::RUNTIME_CUDA, memory::CUDA_ALLOCATOR),
            Backend::Cpu => (memory::RUNTIME_CPU, 1.0),
        };
        Ok(Some(Estimate { backend, weights, stages, runtime, allocator }))
    }

    /// The UNet's largest transient: every skip connection kept for the up blocks, plus the widest level's
    /// attention scores (composed path) and feed-forward intermediates. In f64 so absurd sizes saturate.
    fn unet_activations(&self, work: &Workload, dt: u64, composed: bool) -> u64 {
        let u = &self.cfg.unet;
        let f = self.cfg.vae.scale_factor() as f64;
        let (b, dt) = (work.batch as f64, dt as f64);
        let top = (work.size.0 as f64 / f) * (work.size.1 as f64 / f);
        let (heads, layers) = (u.heads(), u.layers_per_block.expand(u.blocks()));
        let mut skips = 0.0;
        let mut peak: f64 = 0.0;
        for (i, &c) in u.block_out_channels.iter().enumerate() {
            let s = top / 4f64.powi(i as i32);
            let c = c as f64;
            skips += b * s * c * (layers[i] as f64 + 1.0) * dt;
            let attn = u.down_block_types[i].starts_with("CrossAttn");
            let rows = work.attention_chunk.map_or(s, |r| s.min(r as f64));
            let scores = if attn && composed { b * heads[i] as f64 * rows * s * (2.0 * dt + 8.0) } else { 0.0 };
            let ff = if attn { b * s * 12.0 * c * dt } else { 0.0 };
            peak = peak.max(scores + ff + 6.0 * b * s * c * dt);
        }
        (skips + peak) as u64
    }
}
