//! A model opened for any number of edits: the family's configs read at once, its weights loaded on first use and
//! kept, prompt encodings cached. Takes [`Request`]s and their [`Plan`]s, gives written PNGs and [`Report`]s; says
//! what it does through a [`Progress`]. What every family shares is here (the prompt cache, LoRA files, the
//! denoising loop with its checks and progress, the final composition); each family's own staging is behind
//! [`ModelFamily`] in [`super::family`].

use super::family::{self, Adapt, Env, Loras, ModelFamily, Prepared, PromptUse};
use super::memory::{Estimate, Workload};
use super::plan::Plan;
use super::progress::{Event, Progress};
use super::record::EditRecord;
use super::request::Request;
use super::{edit, inpaint};
use crate::config::Family;
use crate::error::Result;
use crate::image_io;
use crate::models::linear::Quant;
use crate::output;
use crate::source::Overrides;
use crate::text::Conditioning;
use crate::weights::lora::{LoraSet, LoraSpec, ScaleCell};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Wall time of each stage, in seconds.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Timings {
    pub text_encoding: f64,
    pub vae_encode: f64,
    pub load_transformer: f64,
    pub denoise: f64,
    pub vae_decode: f64,
    pub total: f64,
}

/// One written edit.
#[derive(Debug, Clone)]
pub struct Report {
    pub output: PathBuf,
    pub plan: Plan,
    /// What was written into the PNG.
    pub record: EditRecord,
    pub timings: Timings,
    /// Host peak RSS of the process when this image was written (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
    /// CUDA: the most GPU memory in use seen so far by this session, MiB: a running peak like `peak_rss_mib`,
    /// sampled with the text encoders loaded, at the end of each stage and after each denoising step
    /// ([`super::GpuPeak`]); None on the CPU.
    pub peak_gpu_mib: Option<f64>,
    /// CUDA: the largest sample at each point the session samples (text encoders loaded, conditioning, VAE encode,
    /// denoiser loaded, denoising, VAE decode), MiB, in that order: where the peak is reached. Empty on the CPU.
    pub gpu_mib_by_stage: Vec<(&'static str, f64)>,
}

/// A prompt's conditioning and what encoding it cost (charged to the first edit that uses it).
struct Encoded {
    cond: Conditioning,
    secs: f64,
}

pub struct Session {
    family: Box<dyn ModelFamily>,
    /// LoRA adapters in use (as the requests name them) and the scale they run at (side paths read it each step).
    lora: Option<Arc<LoraSet>>,
    lora_specs: Vec<LoraSpec>,
    /// LoRA sets whose notes and warnings were shown.
    loras_told: Vec<Vec<LoraSpec>>,
    lora_scale: ScaleCell,
    /// Whether adapters may be merged into dense weights (not when a batch sweeps the scale).
    lora_merge: bool,
    device: Device,
    dtype: DType,
    progress: Arc<dyn Progress>,
    prompts: HashMap<String, Encoded>,
    /// GPU memory in use, sampled through every edit (a running peak).
    gpu_peak: super::GpuPeak,
    /// What the step cache of the last denoising skipped.
    cache_report: Option<super::cache::CacheReport>,
}

impl Session {
    /// Reads the model folder's layout and configs, applies component overrides, checks the weight files exist
    /// and reads what the weights say about the model; loads no weights yet.
    pub fn open(
        model: &Path,
        o: &Overrides,
        device: &Device,
        dtype: DType,
        progress: Arc<dyn Progress>,
    ) -> Result<Self> {
        let family = family::open(model, o, true, progress.as_ref())?;
        Ok(Self::with_family(family, device, dtype, progress))
    }

    /// Configs only, for planning (dry runs): weight files need not exist, and nothing can be run.
    pub fn open_configs(model: &Path, o: &Overrides, progress: Arc<dyn Progress>) -> Result<Self> {
        let family = family::open(model, o, false, progress.as_ref())?;
        Ok(Self::with_family(family, &Device::Cpu, DType::F32, progress))
    }

    fn with_family(family: Box<dyn ModelFamily>, device: &Device, dtype: DType, progress: Arc<dyn Progress>) -> Self {
        Self {
            family,
            lora: None,
            lora_specs: Vec::new(),
            loras_told: Vec::new(),
            lora_scale: ScaleCell::new(1.0),
            lora_merge: true,
            device: device.clone(),
            dtype,
            progress,
            prompts: HashMap::new(),
            gpu_peak: Default::default(),
            cache_report: None,
        }
    }

    fn env(&self) -> Env<'_> {
        Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() }
    }

    fn loras(&self) -> Loras {
        Loras { set: self.lora.clone(), scale: self.lora_scale.clone(), merge: self.lora_merge }
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.family.family()
    }

    /// The pixel multiple every working size of this model has.
    pub fn size_multiple(&self) -> u32 {
        self.family.size_multiple()
    }

    /// Adjusts `req`'s mode to the model (a Kontext checkpoint edits by instruction, FLUX.2 by reference); gives a
    /// warning when a flag is ignored on the way.
    pub fn adapt(&self, req: &mut Request, how: &Adapt) -> Option<String> {
        self.family.adapt(req, how)
    }

    /// The plan for `req` given its input's size (None for modes without an input; a random seed is drawn when
    /// the request has none).
    /// The decoded input as the model takes it: the picture, or its outpainting canvas.
    pub fn load_input(&self, req: &Request) -> Result<Option<RgbImage>> {
        let Some(img) = req.image().map(image_io::load_rgb).transpose()? else { return Ok(None) };
        match req.outpaint() {
            Some(o) => {
                Ok(Some(image_io::outpaint::canvas(&img, &o.place(img.dimensions(), self.family.size_multiple())?)))
            }
            None => Ok(Some(img)),
        }
    }

    /// The input's size as the model takes it (the outpainting canvas's), from the header alone.
    pub fn input_size(&self, req: &Request) -> Result<Option<(u32, u32)>> {
        let Some(size) = req.image().map(image_io::dimensions).transpose()? else { return Ok(None) };
        match req.outpaint() {
            Some(o) => {
                let p = o.place(size, self.family.size_multiple())?;
                Ok(Some((p.width, p.height)))
            }
            None => Ok(Some(size)),
        }
    }

    pub fn plan(&self, req: &Request, input_size: Option<(u32, u32)>) -> Result<Plan> {
        // The CLI refuses this for the whole batch already; a library caller learns it here, before any load.
        req.kernels.check(&req.device).map_err(crate::Error::Usage)?;
        let seed = req.seed.unwrap_or_else(super::random_seed);
        self.family.plan(req, input_size, seed, super::gpu_geometry(&self.device))
    }

    /// The expected memory of `req` run as `plan` says; None when a weight file is not on disk (a dry run of a
    /// Hub model not downloaded yet).
    pub fn memory(&mut self, req: &Request, plan: &Plan) -> Result<Option<Estimate>> {
        self.memory_for(req, &Workload::of(req, plan), req.quantize)
    }

    /// The estimate for another workload or quantization (what a suggested flag would need).
    pub fn memory_for(&mut self, req: &Request, work: &Workload, quant: Option<Quant>) -> Result<Option<Estimate>> {
        self.family.memory(req, work, quant)
    }

    /// Whether the denoiser is quantized as stored (GGUF), so that `--quantize` would not change it.
    pub fn transformer_prequantized(&self) -> bool {
        self.family.prequantized()
    }

    /// Encodes every prompt (and negative prompt) of `reqs` not yet cached, loading the text encoders once and
    /// dropping them afterwards; with a CLIP LoRA each prompt is encoded at each request's LoRA scale.
    pub fn encode_prompts(&mut self, reqs: &[&Request]) -> Result<()> {
        let Some(first) = reqs.first() else { return Ok(()) };
        self.prepare_loras(first)?;
        let mut todo: Vec<(String, PromptUse, f64)> = Vec::new();
        for r in reqs {
            for p in self.family.prompts(r) {
                let key = self.prompt_key(&p, r.lora_scale);
                if !self.prompts.contains_key(&key) && !todo.iter().any(|(k, ..)| *k == key) {
                    todo.push((key, p, r.lora_scale));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let mut enc = self.family.text_encoder(&self.env(), first, &self.loras())?;
        enc.notes().iter().for_each(|n| self.progress.event(Event::Note(n)));
        // The load is charged to the first prompt: one encoder load per batch.
        let mut load = t0.elapsed().as_secs_f64();
        for (key, p, scale) in todo {
            let t0 = Instant::now();
            self.lora_scale.set(scale);
            let (cond, warnings) = enc.encode(p.text, p.how)?;
            let cause = "the text encoder weights may hold NaN/inf values (check --text-encoder files)";
            edit::ensure_finite(&cond.txt, "text encoding", cause)?;
            if let Some(pooled) = &cond.pooled {
                edit::ensure_finite(pooled, "text encoding (CLIP)", cause)?;
            }
            for w in &warnings {
                self.progress.event(Event::Warning(w));
            }
            self.prompts.insert(key, Encoded { cond, secs: t0.elapsed().as_secs_f64() + load });
            load = 0.0;
        }
        // The encoders are dropped on return: their footprint is only visible now.
        self.gpu_peak.sample_at(&self.device, "text encoders loaded");
        Ok(())
    }

    /// The prompt cache key: the prompt, how it is encoded when that differs from the default, and the LoRA scale
    /// when a LoRA changes CLIP.
    fn prompt_key(&self, p: &PromptUse, scale: f64) -> String {
        let mut key = p.text.to_string();
        if p.how != Default::default() {
            key.push_str(&format!("\u{1f}{:?}", p.how));
        }
        match &self.lora {
            Some(l) if l.touches_clip => format!("{key}\u{1f}{scale}"),
            _ => key,
        }
    }

    /// Whether LoRAs may be merged into dense weights: not when images of one session use different LoRA scales.
    pub fn allow_lora_merge(&mut self, allow: bool) {
        self.lora_merge = allow;
    }

    /// Loads `req`'s LoRA adapters when they differ from those in use (checked against the model's shapes; the
    /// denoiser and prompt encodings are then rebuilt).
    pub fn prepare_loras(&mut self, req: &Request) -> Result<()> {
        if self.lora_specs == req.loras {
            return Ok(());
        }
        self.family.unload_denoiser();
        self.prompts.clear();
        self.lora = None;
        self.lora_specs = req.loras.clone();
        if req.loras.is_empty() {
            return Ok(());
        }
        let local = req
            .loras
            .iter()
            .map(|s| Ok(LoraSpec { path: crate::source::hub::lora_file(&s.path, false)?, weight: s.weight }))
            .collect::<Result<Vec<_>>>()?;
        let set = LoraSet::load(&local, &self.family.lora_shapes()?).inspect_err(|_| self.lora_specs.clear())?;
        // A batch switching between LoRA sets reloads them; what loading found is told once per set.
        if !self.loras_told.contains(&req.loras) {
            set.notes.iter().for_each(|n| self.progress.event(Event::Note(n)));
            set.warnings.iter().for_each(|w| self.progress.event(Event::Warning(w)));
            self.loras_told.push(req.loras.clone());
        }
        self.lora = Some(Arc::new(set));
        Ok(())
    }

    /// One edit end to end: the input is decoded and the output checked before anything heavy.
    pub fn run(&mut self, req: &Request) -> Result<Report> {
        let input = self.load_input(req)?;
        output::check_output(&req.output, req.image())?;
        let plan = self.plan(req, input.as_ref().map(RgbImage::dimensions))?;
        for w in &plan.warnings {
            self.progress.event(Event::Warning(w));
        }
        self.run_planned(req, input, plan)
    }

    /// One edit whose input (if its mode has one) is decoded and whose plan is made (a batch plans every item up
    /// front).
    pub fn run_planned(&mut self, req: &Request, input: Option<RgbImage>, plan: Plan) -> Result<Report> {
        let start = Instant::now();
        self.progress.event(Event::Plan { request: req, plan: &plan });
        let mut timings = Timings::default();
        crate::kernels::set_kernels(req.kernels);
        crate::kernels::set_attention_chunk(req.attention_chunk.unwrap_or(0));
        crate::kernels::set_conv_band(req.vae_band.unwrap_or(0));
        crate::kernels::fused::reset_stats();
        let image = self.render(req, input, &plan, &mut timings)?;
        if req.kernels == crate::kernels::Kernels::Fused {
            // Which operations launched a fused kernel and which ran the composition (and why): the only sign,
            // short of a profiler, that --kernels fused did what it says.
            self.progress.event(Event::Note(&crate::kernels::fused::summary()));
        }
        let mut record = EditRecord::new(req, &plan);
        record.cache_skipped = self.cache_report.take();
        if let Some(set) = &self.lora {
            record.loras.iter_mut().zip(set.hashes()).for_each(|(r, h)| r.hash = Some(h));
        }
        output::write_png(&req.output, &image, &record.png_chunks())?;
        timings.total = start.elapsed().as_secs_f64() + timings.text_encoding;
        let (peak_rss_mib, peak_gpu_mib) = (super::peak_rss_mib(), self.gpu_peak.get());
        let gpu_mib_by_stage = self.gpu_peak.by_stage();
        let report =
            Report { output: req.output.clone(), plan, record, timings, peak_rss_mib, peak_gpu_mib, gpu_mib_by_stage };
        self.progress.event(Event::Done(&report));
        Ok(report)
    }

    /// Conditioning, start latents, the denoising loop and decoding, each stage timed and followed by a GPU memory
    /// sample.
    fn render(&mut self, req: &Request, input: Option<RgbImage>, plan: &Plan, t: &mut Timings) -> Result<RgbImage> {
        let (cond, negative) = self.conditioning(req, t)?;
        self.gpu_peak.sample_at(&self.device, "conditioning");
        let t0 = Instant::now();
        let env = Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() };
        let prepared = self.family.prepare(&env, req, input, plan)?;
        t.vae_encode = t0.elapsed().as_secs_f64();
        self.gpu_peak.sample_at(&self.device, "VAE encode");
        let t0 = Instant::now();
        self.lora_scale.set(req.lora_scale);
        let loras = self.loras();
        let env = Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() };
        self.family.load_denoiser(&env, req, &loras)?;
        t.load_transformer = t0.elapsed().as_secs_f64();
        self.gpu_peak.sample_at(&self.device, "denoiser loaded");
        let t0 = Instant::now();
        let latents = self.denoise(&cond, negative.as_ref(), &prepared, plan)?;
        t.denoise = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let env = Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() };
        let rgb = self.family.decode(&env, &latents)?;
        self.gpu_peak.sample_at(&self.device, "VAE decode");
        let rgb = finish(rgb, req, plan, prepared)?;
        t.vae_decode = t0.elapsed().as_secs_f64();
        Ok(rgb)
    }

    /// The prompt's conditioning and, with CFG, the negative prompt's (encoded now if no batch did it before);
    /// their cost is charged once.
    fn conditioning(&mut self, req: &Request, t: &mut Timings) -> Result<(Conditioning, Option<Conditioning>)> {
        self.encode_prompts(&[req])?;
        let scale = req.lora_scale;
        let prompt = self.family.prompts(req).into_iter().next().expect("every request has a prompt");
        let negative = self.family.negative(req);
        let mut take = |p: &PromptUse| {
            let key = self.prompt_key(p, scale);
            let e = self.prompts.get_mut(&key).expect("encoded above");
            t.text_encoding += std::mem::take(&mut e.secs);
            e.cond.clone()
        };
        let cond = take(&prompt);
        let negative = negative.as_ref().map(take);
        Ok((cond, negative))
    }

    /// The family's steps from the prepared start, each checked for NaN/inf and reported.
    fn denoise(
        &mut self,
        cond: &Conditioning,
        negative: Option<&Conditioning>,
        prepared: &Prepared,
        plan: &Plan,
    ) -> Result<Tensor> {
        let env = Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() };
        let n = self.family.begin(&env, cond, negative, prepared, plan)?;
        let t0 = Instant::now();
        self.progress.event(Event::Step { done: 0, total: n, elapsed: t0.elapsed() });
        let mut x = prepared.latents.clone();
        for k in 0..n {
            if self.progress.cancelled() {
                return Err(crate::Error::Cancelled);
            }
            x = self.family.step(x, k)?;
            edit::ensure_finite(&x, &format!("denoising step {}/{n}", k + 1), edit::DENOISE_CAUSE)?;
            self.gpu_peak.sample_at(&self.device, "denoising");
            self.progress.event(Event::Step { done: k + 1, total: n, elapsed: t0.elapsed() });
            if self.progress.preview_every().is_some_and(|p| p > 0 && (k + 1) % p == 0 && k + 1 < n) {
                self.preview(&x, k + 1, n)?;
            }
        }
        self.cache_report = self.family.cache_report().map(|(spec, report)| {
            self.progress.event(Event::Note(&report.summary(&spec)));
            report
        });
        Ok(x)
    }
}

impl Session {
    /// The current latents decoded and handed to the progress sink (the family's preview leaves the edit's state
    /// as it was: the final image does not change).
    fn preview(&mut self, x: &Tensor, done: usize, total: usize) -> Result<()> {
        let env = Env { device: &self.device, dtype: self.dtype, progress: self.progress.as_ref() };
        if let Some(image) = self.family.preview(&env, x)? {
            self.progress.event(Event::Preview { done, total, image: &image });
        }
        Ok(())
    }
}

/// The decoded picture as the mode hands it back: composed over the input (inpainting) or at the input's size
/// (`--keep-size`).
fn finish(rgb: RgbImage, req: &Request, plan: &Plan, prepared: Prepared) -> Result<RgbImage> {
    if let (Some(spec), Some(m), Some(input)) = (req.mask(), &prepared.mask, &prepared.input) {
        if spec.paste_back || m.region.is_some() {
            return inpaint::compose(rgb, input, plan, spec, m);
        }
    }
    match plan.input_size.filter(|s| req.keep_size && rgb.dimensions() != *s) {
        Some((w, h)) => Ok(image_io::resize_lanczos(&rgb, w, h)),
        None => Ok(rgb),
    }
}
