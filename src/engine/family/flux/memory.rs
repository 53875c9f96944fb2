//! FLUX's side of the memory estimate: which files each component loads, and how (dtype, `--quantize`, GGUF as
//! stored, Qwen3's unread layers skipped), summed from their headers.

use super::Flux;
use crate::config::Family;
use crate::engine::memory::{self, Backend, Estimate, WeightSizes, Workload};
use crate::engine::Request;
use crate::error::Result;
use crate::models::linear::Quant;
use crate::source::{self, Component};
use crate::weights::sizes::{loaded_bytes, LoadAs, Rule};
use candle_core::DType;
use std::path::PathBuf;

impl Flux {
    /// The estimate of `work` at `quant`; None when a weight file is not on disk (a dry run of a Hub model not
    /// downloaded yet).
    pub(super) fn estimate(
        &mut self,
        req: &Request,
        work: &Workload,
        quant: Option<Quant>,
    ) -> Result<Option<Estimate>> {
        let Some(mut weights) = self.weight_sizes(req.dtype, quant)? else { return Ok(None) };
        weights.adapters = redux_bytes(req)? + controlnet_bytes(req)? + depth_bytes(req)?;
        let work = Workload { control_residuals: controlnet_residuals(req), ..work.clone() };
        Ok(Some(memory::estimate(&self.configs, weights, &work, req.dtype, Backend::of(&req.device))))
    }

    fn weight_sizes(&mut self, dtype: DType, quant: Option<Quant>) -> Result<Option<WeightSizes>> {
        let key = (dtype.as_str(), quant);
        if let Some(w) = self.weight_sizes.get(&key) {
            return Ok(Some(*w));
        }
        let f = &self.files;
        let comps: Vec<Option<&Component>> =
            vec![Some(&f.transformer), Some(&f.vae), Some(&f.text_encoder), f.text_encoder_2.as_ref()];
        let mut paths = Vec::new();
        for (c, (_, stem)) in comps.iter().zip(source::COMPONENTS) {
            match c.map(|c| weight_paths(c, stem)) {
                Some(None) => return Ok(None),
                Some(Some(p)) => paths.push(p),
                None => paths.push(Vec::new()),
            }
        }
        let quantize = quant.map(Quant::ggml);
        let plain = LoadAs { dtype, quantize: None, rule: Rule::Plain };
        let matrices = LoadAs { dtype, quantize, rule: Rule::Transformer };
        let all = |_: &str| true;
        let text = match f.family {
            // Qwen3 loads only the layers whose hidden states FLUX.2 reads.
            Family::Flux2 => loaded_bytes(&paths[2], matrices, qwen_layer_read)?,
            _ => {
                let t5 = LoadAs { dtype, quantize, rule: Rule::T5 };
                loaded_bytes(&paths[2], plain, all)? + loaded_bytes(&paths[3], t5, all)?
            }
        };
        let sizes = WeightSizes {
            transformer: loaded_bytes(&paths[0], matrices, all)?,
            vae: loaded_bytes(&paths[1], plain, all)?,
            text_encoders: text,
            adapters: 0,
        };
        self.weight_sizes.insert(key, sizes);
        Ok(Some(sizes))
    }
}

/// The Redux prior's weights at the run dtype, when the request has Redux images and the prior is on disk (a Hub
/// prior not downloaded yet counts 0, as a dry run cannot size it).
fn redux_bytes(req: &Request) -> Result<u64> {
    if req.redux.is_empty() {
        return Ok(0);
    }
    let Ok(root) = crate::engine::redux::locate_cached(req) else { return Ok(0) };
    let plain = LoadAs { dtype: req.dtype, quantize: None, rule: Rule::Plain };
    let mut total = 0;
    for (dir, stem) in [("image_encoder", "model"), ("image_embedder", "diffusion_pytorch_model")] {
        if let Ok(files) = source::weight_files(&root.join(dir), stem) {
            total += loaded_bytes(&files, plain, |_| true)?;
        }
    }
    Ok(total)
}

/// The ControlNets' weights at the run dtype (each folder once), kept beside the transformer; one on the Hub and
/// not in the cache counts 0.
fn controlnet_bytes(req: &Request) -> Result<u64> {
    let plain = LoadAs { dtype: req.dtype, quantize: None, rule: Rule::Plain };
    let mut dirs: Vec<PathBuf> = Vec::new();
    for spec in &req.controlnets {
        let dir = crate::engine::controlnet::cached_dir(&spec.model);
        dirs.extend(dir.filter(|d| !dirs.contains(d)));
    }
    let mut total = 0;
    for dir in dirs {
        if let Ok(files) = source::weight_files(&dir, "diffusion_pytorch_model") {
            total += loaded_bytes(&files, plain, |_| true)?;
        }
    }
    Ok(total)
}

/// The residuals the request's ControlNets hold through a pass: their longest block list (several sum into one),
/// from configs on disk (one on the Hub and not cached counts 0).
fn controlnet_residuals(req: &Request) -> usize {
    let blocks = |spec: &crate::engine::request::ControlNetSpec| -> Option<usize> {
        let dir = crate::engine::controlnet::cached_dir(&spec.model)?;
        let cfg = crate::engine::controlnet::read_config(&dir.join("config.json")).ok()?;
        Some(cfg.base.num_layers + cfg.base.num_single_layers)
    };
    req.controlnets.iter().filter_map(blocks).max().unwrap_or(0)
}

/// `--control-from depth`'s model at the run dtype (kept loaded for the batch), when it is on disk.
fn depth_bytes(req: &Request) -> Result<u64> {
    let Some(dir) =
        req.derives_depth().then(|| crate::engine::depth::locate_cached(req.depth_model.as_deref())).flatten()
    else {
        return Ok(0);
    };
    let plain = LoadAs { dtype: req.dtype, quantize: None, rule: Rule::Plain };
    match source::weight_files(&dir, "model") {
        Ok(files) => loaded_bytes(&files, plain, |_| true),
        Err(_) => Ok(0),
    }
}

/// A component's weight files: those it was opened with, or (configs-only sessions) the folder's, when present.
fn weight_paths(c: &Component, stem: &str) -> Option<Vec<PathBuf>> {
    if !c.weights.is_empty() {
        return c.weights.iter().all(|p| p.is_file()).then(|| c.weights.clone());
    }
    source::weight_files(c.config.parent()?, stem).ok()
}

/// Whether a Qwen3 tensor is loaded: not the language-model head or the final norm (FLUX.2 reads hidden states
/// before it), nor layers past the last one FLUX.2 reads.
fn qwen_layer_read(name: &str) -> bool {
    let depth = crate::text::qwen::OUT_LAYERS.iter().copied().max().unwrap_or(0);
    if name.starts_with("lm_head") || name.strip_prefix("model.").unwrap_or(name) == "norm.weight" {
        return false;
    }
    match name.split("layers.").nth(1).and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok()) {
        Some(layer) => layer < depth,
        None => true,
    }
}
