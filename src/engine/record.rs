//! One typed record of an edit: every parameter and what the plan made of it. The same record is written into
//! the PNG's `flux-img2img` text chunk, printed (with the item's status) by `--json`, and read back by
//! `--from-metadata`; the A1111-style `parameters` line image sites read is derived from it too.

use super::cache::{CacheReport, CacheSpec};
use super::request::{MaskSource, Mode, ReferenceSize};
use super::{Plan, Request};
use crate::config::Family;
use crate::image_io::ResizeMode;
use crate::kernels::Kernels;
use crate::models::linear::Quant;
use crate::rng::{CpuNoise, RngKind};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// One LoRA of an edit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoraRecord {
    pub path: PathBuf,
    pub weight: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash: Option<String>,
}

/// Keyword of the PNG text chunk that carries the record.
/// A ControlNet of the edit: its model, control image (a path or `canny:LOW,HIGH`) and settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlNetRecord {
    pub model: PathBuf,
    pub control: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
}

pub const PNG_KEY: &str = "flux-img2img";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EditRecord {
    /// img2img or txt2img (absent in records of older versions: img2img).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    pub prompt: String,
    /// Inpainting: the mask (a path, or `alpha`) and its options.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub invert_mask: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_blur: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mask_crop: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub paste_back: bool,
    /// Kontext: the reference size rule and what it gave.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_size: Option<ReferenceSize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_width: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_height: Option<u32>,
    /// FLUX.2: reference images after the input's own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<PathBuf>,
    /// FLUX.1 Control: the control image's path, or `canny:LOW,HIGH`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// FLUX.1 Redux: its images and weights (hash unused), and where its prior came from.
    /// FLUX.1 ControlNets, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub controlnets: Vec<ControlNetRecord>,
    /// `--control-from depth`'s model, when one was named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_model: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redux: Vec<LoraRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redux_model: Option<PathBuf>,
    /// FLUX.2: the model family, when not FLUX.1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// LoRA adapters (file, weight, AutoV2 hash) and their common scale.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub loras: Vec<LoraRecord>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lora_scale: Option<f64>,
    /// Stable Diffusion: the scheduler that ran, `--clip-skip` and `--start-step`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduler: Option<crate::schedulers::SchedulerKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_step: Option<usize>,
    /// True CFG: the negative prompt and its scale.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative_prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub true_cfg: Option<f64>,
    pub model: PathBuf,
    pub input: Option<PathBuf>,
    pub strength: Option<f64>,
    pub steps: usize,
    pub steps_run: usize,
    pub t_start: usize,
    pub start_sigma: f64,
    pub mu: Option<f64>,
    pub guidance: Option<f64>,
    pub seed: u64,
    pub rng: RngKind,
    /// The GPU geometry the CUDA generator reproduced (`132x2048`), torch-cuda only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rng_gpu: Option<String>,
    /// How bf16/fp16 CPU noise was drawn, torch-cpu at reduced precision only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch_noise: Option<CpuNoise>,
    pub resize: ResizeMode,
    pub max_megapixels: Option<f64>,
    pub keep_size: bool,
    pub quantize: Option<Quant>,
    pub width: u32,
    pub height: u32,
    pub input_width: Option<u32>,
    pub input_height: Option<u32>,
    pub max_sequence_length: usize,
    pub dtype: String,
    pub device: String,
    /// `--kernels` (absent in records of older versions: auto).
    pub kernels: Kernels,
    /// `--cache`: the step cache that ran, and what it skipped (written once the edit ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_skipped: Option<CacheReport>,
    /// The program that wrote it (PNG chunk only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
}

impl EditRecord {
    pub fn new(req: &Request, plan: &Plan) -> Self {
        let s = &plan.schedule;
        EditRecord {
            mode: Some(req.mode.name().into()),
            prompt: req.prompt.clone(),
            mask: req.mask().map(|m| match &m.source {
                MaskSource::File(p) => p.to_string_lossy().into_owned(),
                MaskSource::Alpha => "alpha".into(),
                MaskSource::Outpaint(o) => o.to_string(),
            }),
            invert_mask: req.mask().is_some_and(|m| m.invert),
            mask_blur: req.mask().map(|m| m.blur).filter(|b| *b > 0.0),
            mask_crop: req.mask().and_then(|m| m.crop_padding),
            paste_back: req.mask().is_some_and(|m| m.paste_back),
            reference_size: match &req.mode {
                Mode::Kontext { reference, .. } => Some(*reference),
                _ => None,
            },
            control: req.control.as_ref().map(|c| c.words()),
            controlnets: req
                .controlnets
                .iter()
                .map(|c| ControlNetRecord {
                    model: c.model.clone(),
                    control: c.image.words(),
                    mode: c.mode.clone(),
                    scale: c.scale,
                    start: c.start,
                    end: c.end,
                })
                .collect(),
            redux: req
                .redux
                .iter()
                .map(|r| LoraRecord { path: r.path.clone(), weight: r.weight, hash: None })
                .collect(),
            redux_model: req.redux_model.clone(),
            depth_model: req.depth_model.clone(),
            reference_width: plan.reference_size.map(|s| s.0),
            reference_height: plan.reference_size.map(|s| s.1),
            loras: req
                .loras
                .iter()
                .map(|l| LoraRecord { path: l.path.clone(), weight: l.weight, hash: None })
                .collect(),
            lora_scale: (!req.loras.is_empty()).then_some(req.lora_scale),
            references: req.references.clone(),
            family: (plan.family != Family::Flux1).then(|| plan.family.to_string()),
            negative_prompt: req.true_cfg.as_ref().map(|c| c.negative_prompt.clone()),
            scheduler: plan.scheduler,
            clip_skip: req.sd.clip_skip,
            start_step: req.sd.start_step,
            // FLUX.2 base models take a negative prompt without a true-CFG scale (theirs is --guidance).
            true_cfg: req.cfg().map(|c| c.scale),
            model: req.model.clone(),
            input: req.image().map(PathBuf::from),
            // --start-step replaces the strength (the mode keeps a default one).
            strength: req.strength().filter(|_| req.sd.start_step.is_none()),
            steps: plan.steps,
            steps_run: s.steps_to_run(),
            t_start: s.t_start,
            start_sigma: s.start_sigma() as f64,
            mu: s.mu,
            // FLUX.2 base models: --guidance is the CFG scale.
            guidance: if req.cfg().is_some() { plan.guidance } else { plan.guidance.or(plan.cfg_scale) },
            seed: plan.seed,
            rng: req.rng.kind,
            rng_gpu: plan.rng_gpu.map(|g| g.to_string()),
            torch_noise: (req.rng.kind == RngKind::TorchCpu && req.dtype != candle_core::DType::F32)
                .then_some(req.rng.cpu_noise),
            resize: plan.resize,
            max_megapixels: req.max_megapixels,
            keep_size: req.keep_size,
            quantize: req.quantize,
            width: plan.width,
            height: plan.height,
            input_width: plan.input_size.map(|s| s.0),
            input_height: plan.input_size.map(|s| s.1),
            max_sequence_length: req.max_sequence_length,
            dtype: format!("{:?}", req.dtype).to_lowercase(),
            device: if req.device.is_cpu() { "cpu" } else { "cuda" }.into(),
            kernels: req.kernels,
            cache: req.cache,
            cache_skipped: None,
            tool: None,
        }
    }

    /// A1111's `parameters` text: the prompt, then `Key: value` pairs (what image sites show).
    pub fn a1111(&self) -> String {
        let model = self.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let sampler = self.scheduler.map_or("Euler (flow matching)", |s| s.a1111());
        let mut params = format!(
            "{}\nSteps: {}, Sampler: {sampler}, Seed: {}, Size: {}x{}, Model: {}",
            self.prompt, self.steps, self.seed, self.width, self.height, model
        );
        if let Some(s) = self.strength {
            params.push_str(&format!(", Denoising strength: {s}"));
        }
        params.push_str(&format!(", RNG: {}", self.rng));
        match (self.guidance, self.scheduler) {
            // Stable Diffusion's guidance is its CFG scale; A1111 counts clip skip from 1 (no skip).
            (Some(g), Some(_)) => params.push_str(&format!(", CFG scale: {g}")),
            (Some(g), None) => params.push_str(&format!(", Guidance: {g}")),
            _ => {}
        }
        if let Some(n) = self.clip_skip {
            params.push_str(&format!(", Clip skip: {}", n + 1));
        }
        if let Some(n) = self.start_step {
            params.push_str(&format!(", Start step: {n}"));
        }
        if !self.loras.is_empty() {
            let name = |p: &PathBuf| p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let hashes: Vec<String> =
                self.loras.iter().map(|l| format!("{}: {}", name(&l.path), l.hash.as_deref().unwrap_or("?"))).collect();
            params.push_str(&format!(", Lora hashes: \"{}\"", hashes.join(", ")));
            let weights: Vec<String> = self.loras.iter().map(|l| format!("{}:{}", name(&l.path), l.weight)).collect();
            params.push_str(&format!(
                ", Loras: \"{}\", Lora scale: {}",
                weights.join(", "),
                self.lora_scale.unwrap_or(1.0)
            ));
        }
        if let Some(c) = &self.cache {
            params.push_str(&format!(", Cache: {c}"));
        }
        if let (Some(n), true) = (&self.negative_prompt, self.scheduler.is_some()) {
            params = params.replacen('\n', &format!("\nNegative prompt: {n}\n"), 1);
        } else if let (Some(n), Some(s)) = (&self.negative_prompt, self.true_cfg) {
            // A1111 puts the negative prompt on its own line after the prompt.
            params = params.replacen('\n', &format!("\nNegative prompt: {n}\n"), 1);
            params.push_str(&format!(", CFG scale: {s}"));
        }
        params
    }

    /// The PNG text chunks: (`parameters`, A1111 line) and (`flux-img2img`, this record as JSON).
    pub fn png_chunks(&self) -> Vec<(&'static str, String)> {
        let mut rec = self.clone();
        rec.tool = Some(concat!("flux-img2img ", env!("CARGO_PKG_VERSION")).into());
        let json = serde_json::to_string(&rec).expect("a record always serializes");
        vec![("parameters", self.a1111()), (PNG_KEY, json)]
    }
}
