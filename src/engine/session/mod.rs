//! A model opened for any number of edits: configs read at once, weights loaded on first use and kept (VAE,
//! transformer), prompt encodings and the last input's VAE posterior cached. Takes [`Request`]s and their
//! [`Plan`]s, gives written PNGs and [`Report`]s; says what it does through a [`Progress`]. FLUX.1's staging and
//! loop are here; FLUX.2's in [`flux2`].

mod flux2;
mod memory;

use super::load::{self, TransformerKind};
use super::plan::{self, Plan};
use super::progress::{Event, Progress};
use super::record::EditRecord;
use super::request::{Mode, Request};
use super::{edit, inpaint};
use crate::config::{ClipConfig, Family, ModelConfigs};
use crate::error::Result;
use crate::image_io;
use crate::models::clip::ClipLora;
use crate::models::linear::LoraApply;
use crate::models::transformer::{self, Inputs};
use crate::models::vae::AutoencoderKl;
use crate::models::Denoiser;
use crate::output;
use crate::rng;
use crate::source::{ModelFiles, Overrides};
use crate::text::{Conditioning, PromptEncoder};
use crate::weights::flux_keys::Layout;
use crate::weights::lora::{LoraSet, LoraSpec, ModelShapes, ScaleCell};
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
}

/// A prompt's conditioning and what encoding it cost (charged to the first edit that uses it).
struct Encoded {
    cond: Conditioning,
    secs: f64,
}

/// What the Euler loop and the final composition need besides the conditioning.
struct Staged {
    start: edit::Start,
    /// Inpainting: the prepared mask, and the input to compose the result over.
    mask: Option<inpaint::PreparedMask>,
    input: Option<RgbImage>,
    /// Kontext: the reference image's tokens.
    reference: Option<edit::Reference>,
}

/// The VAE posterior (mean, logvar) of the last preprocessed input, keyed by a hash of its pixels.
struct Posterior {
    key: u64,
    mean: Tensor,
    logvar: Tensor,
}

pub struct Session {
    files: ModelFiles,
    kontext: bool,
    /// LoRA adapters in use (as the requests name them) and the scale they run at (side paths read it each step).
    lora: Option<Arc<LoraSet>>,
    lora_specs: Vec<LoraSpec>,
    /// LoRA sets whose notes and warnings were shown.
    loras_told: Vec<Vec<LoraSpec>>,
    lora_scale: ScaleCell,
    /// Whether adapters may be merged into dense weights (not when a batch sweeps the scale).
    lora_merge: bool,
    /// The scale merged into the loaded transformer, if one was.
    merged_at: Option<f64>,
    configs: ModelConfigs,
    kind: Option<TransformerKind>,
    device: Device,
    dtype: DType,
    progress: Arc<dyn Progress>,
    prompts: HashMap<String, Encoded>,
    vae: Option<AutoencoderKl>,
    /// FLUX.2: the VAE's batch-norm statistics (loaded with the VAE).
    bn: Option<super::flux2::BnStats>,
    transformer: Option<Denoiser>,
    posterior: Option<Posterior>,
    /// Loaded weight bytes by dtype and quantization (read from the headers once).
    weight_sizes: HashMap<(&'static str, Option<crate::models::linear::Quant>), crate::engine::memory::WeightSizes>,
    /// GPU memory in use, sampled through every edit (a running peak).
    gpu_peak: super::GpuPeak,
}

impl Session {
    /// Reads the model folder's layout and configs, applies component overrides, checks the weight files exist
    /// and reads the transformer's tensor names; loads no weights yet.
    pub fn open(
        model: &Path,
        o: &Overrides,
        device: &Device,
        dtype: DType,
        progress: Arc<dyn Progress>,
    ) -> Result<Self> {
        let mut files = ModelFiles::from_dir(model)?;
        files.apply(o)?;
        let mut s = Self::with_files(files, device, dtype, progress)?;
        s.inspect()?;
        load::check_components(&s.files, &s.configs.vae)?;
        Ok(s)
    }

    /// Configs only, for planning (dry runs): weight files need not exist, and nothing can be run.
    pub fn open_configs(model: &Path, o: &Overrides, progress: Arc<dyn Progress>) -> Result<Self> {
        let mut files = ModelFiles::configs_only(model)?;
        files.apply(o)?;
        let mut s = Self::with_files(files, &Device::Cpu, DType::F32, progress)?;
        // A swapped transformer decides dev or schnell (and so the default steps) even for a plan.
        if o.transformer.is_some() {
            s.inspect()?;
        }
        Ok(s)
    }

    fn with_files(files: ModelFiles, device: &Device, dtype: DType, progress: Arc<dyn Progress>) -> Result<Self> {
        Ok(Self {
            kontext: files.is_kontext(),
            lora: None,
            lora_specs: Vec::new(),
            loras_told: Vec::new(),
            lora_scale: ScaleCell::new(1.0),
            lora_merge: true,
            merged_at: None,
            configs: ModelConfigs::read(&files.config_files())?,
            files,
            kind: None,
            device: device.clone(),
            dtype,
            progress,
            prompts: HashMap::new(),
            vae: None,
            bn: None,
            transformer: None,
            posterior: None,
            weight_sizes: HashMap::new(),
            gpu_peak: Default::default(),
        })
    }

    /// The weights decide dev or schnell, whatever config.json says.
    fn inspect(&mut self) -> Result<()> {
        let kind = load::inspect_transformer(&self.files, &self.configs.transformer)?;
        if kind.guidance_embeds != self.configs.transformer.guidance_embeds && kind.family == Family::Flux1 {
            let (what, like) = if kind.guidance_embeds {
                ("embed guidance", "dev")
            } else {
                ("have no guidance embedding", "schnell")
            };
            let note =
                format!("the transformer weights {what} ({like}-like); using that, not config.json's guidance_embeds");
            self.progress.event(Event::Note(&note));
            self.configs.transformer.guidance_embeds = kind.guidance_embeds;
        }
        self.kind = Some(kind);
        Ok(())
    }

    pub fn configs(&self) -> &ModelConfigs {
        &self.configs
    }

    /// Whether the model is FLUX.1 Kontext: its `model_index.json` names `FluxKontextPipeline`, or the
    /// transformer file's name says "kontext" (BFL, ComfyUI and GGUF files: the weights look like dev's).
    pub fn is_kontext(&self) -> bool {
        self.kontext
    }

    /// The plan for `req` given its input's size (None for modes without an input; a random seed is drawn when
    /// the request has none).
    pub fn plan(&self, req: &Request, input_size: Option<(u32, u32)>) -> Result<Plan> {
        // The CLI refuses this for the whole batch already; a library caller learns it here, before any load.
        req.kernels.check(&req.device).map_err(crate::Error::Usage)?;
        let seed = req.seed.unwrap_or_else(super::random_seed);
        let references = self.reference_sizes(req, input_size)?;
        plan::plan(req, &self.configs, input_size, &references, seed, super::gpu_geometry(&self.device))
    }

    /// The model's family.
    pub fn family(&self) -> Family {
        self.configs.family
    }

    /// The prompts `req` encodes: its prompt, and the negative prompt when CFG runs.
    fn prompts_of<'r>(&self, req: &'r Request) -> Vec<&'r str> {
        match self.configs.family {
            Family::Flux1 => req.prompts().collect(),
            Family::Flux2 => {
                let cfg = plan::flux2::cfg_scale(req, &self.configs).is_some();
                std::iter::once(req.prompt.as_str()).chain(cfg.then(|| plan::flux2::negative_prompt(req))).collect()
            }
        }
    }

    /// Encodes every prompt (and negative prompt) of `reqs` not yet cached, loading the text encoders once and
    /// dropping them afterwards; with a CLIP LoRA each prompt is encoded at each request's LoRA scale.
    pub fn encode_prompts(&mut self, reqs: &[&Request]) -> Result<()> {
        let Some(first) = reqs.first() else { return Ok(()) };
        self.prepare_loras(first)?;
        let mut todo: Vec<(String, &str, f64)> = Vec::new();
        for r in reqs {
            for p in self.prompts_of(r) {
                let key = self.prompt_key(p, r.lora_scale);
                if !self.prompts.contains_key(&key) && !todo.iter().any(|(k, ..)| *k == key) {
                    todo.push((key, p, r.lora_scale));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let clip_lora =
            self.lora.as_ref().filter(|l| l.touches_clip).map(|set| ClipLora { set, scale: self.lora_scale.clone() });
        let mut enc = PromptEncoder::load(
            &self.files,
            first.max_sequence_length,
            self.dtype,
            &self.device,
            first.quantize,
            clip_lora,
        )?;
        enc.notes().iter().for_each(|n| self.progress.event(Event::Note(n)));
        // The load is charged to the first prompt: one encoder load per batch.
        let mut load = t0.elapsed().as_secs_f64();
        for (key, p, scale) in todo {
            let t0 = Instant::now();
            self.lora_scale.set(scale);
            let (cond, warnings) = enc.encode(p)?;
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
        self.gpu_peak.sample(&self.device);
        Ok(())
    }

    /// The prompt cache key: the prompt, and the LoRA scale when a LoRA changes CLIP.
    fn prompt_key(&self, prompt: &str, scale: f64) -> String {
        match &self.lora {
            Some(l) if l.touches_clip => format!("{prompt}\u{1f}{scale}"),
            _ => prompt.to_string(),
        }
    }

    /// Whether LoRAs may be merged into dense weights: not when images of one session use different LoRA scales.
    pub fn allow_lora_merge(&mut self, allow: bool) {
        self.lora_merge = allow;
    }

    /// Loads `req`'s LoRA adapters when they differ from those in use (checked against the model's shapes; the
    /// transformer and prompt encodings are then rebuilt).
    pub fn prepare_loras(&mut self, req: &Request) -> Result<()> {
        if self.lora_specs == req.loras {
            return Ok(());
        }
        self.transformer = None;
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
        let set = LoraSet::load(&local, &self.lora_shapes()?).inspect_err(|_| self.lora_specs.clear())?;
        // A batch switching between LoRA sets reloads them; what loading found is told once per set.
        if !self.loras_told.contains(&req.loras) {
            set.notes.iter().for_each(|n| self.progress.event(Event::Note(n)));
            set.warnings.iter().for_each(|w| self.progress.event(Event::Warning(w)));
            self.loras_told.push(req.loras.clone());
        }
        self.lora = Some(Arc::new(set));
        Ok(())
    }

    /// The linear layers LoRAs may target, from the configs (and the stored feed-forward width).
    fn lora_shapes(&self) -> Result<ModelShapes> {
        let t = &self.configs.transformer;
        let (transformer, clip) = match self.configs.family {
            Family::Flux1 => {
                let layout = self.kind.as_ref().map(|k| k.layout.clone()).unwrap_or(Layout::Diffusers);
                let mlp = load::mlp_rows(&self.files, t, &layout)?;
                let clip: ClipConfig = crate::config::read_json(&self.files.text_encoder.config)?;
                (transformer::linear_shapes(t, mlp), crate::models::clip::linear_shapes(&clip))
            }
            // FLUX.2's text encoder is Qwen3: LoRA parts for it are left out (counted as unmatched).
            Family::Flux2 => (crate::models::flux2::linear_shapes(t), Vec::new()),
        };
        Ok(ModelShapes {
            transformer: transformer.into_iter().collect(),
            clip: clip.into_iter().collect(),
            double: t.num_layers,
            single: t.num_single_layers,
            family: self.configs.family,
        })
    }

    /// One edit end to end: the input is decoded and the output checked before anything heavy.
    pub fn run(&mut self, req: &Request) -> Result<Report> {
        let input = req.image().map(image_io::load_rgb).transpose()?;
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
        if let Some(set) = &self.lora {
            record.loras.iter_mut().zip(set.hashes()).for_each(|(r, h)| r.hash = Some(h));
        }
        output::write_png(&req.output, &image, &record.png_chunks())?;
        timings.total = start.elapsed().as_secs_f64() + timings.text_encoding;
        let (peak_rss_mib, peak_gpu_mib) = (super::peak_rss_mib(), self.gpu_peak.get());
        let report = Report { output: req.output.clone(), plan, record, timings, peak_rss_mib, peak_gpu_mib };
        self.progress.event(Event::Done(&report));
        Ok(report)
    }

    /// Conditioning, start latents, the Euler loop and decoding, each stage timed and followed by a GPU memory
    /// sample.
    fn render(&mut self, req: &Request, input: Option<RgbImage>, plan: &Plan, t: &mut Timings) -> Result<RgbImage> {
        let cond = self.conditioning(req, t)?;
        self.gpu_peak.sample(&self.device);
        let t0 = Instant::now();
        let staged = self.stage(req, input, plan)?;
        t.vae_encode = t0.elapsed().as_secs_f64();
        self.gpu_peak.sample(&self.device);
        let t0 = Instant::now();
        self.load_transformer(req)?;
        t.load_transformer = t0.elapsed().as_secs_f64();
        self.gpu_peak.sample(&self.device);
        let t0 = Instant::now();
        let latents = self.denoise(&cond, &staged, plan)?;
        t.denoise = t0.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let rgb = self.decode(&latents, &staged.start)?;
        self.gpu_peak.sample(&self.device);
        let rgb = self.finish(rgb, req, plan, staged)?;
        t.vae_decode = t0.elapsed().as_secs_f64();
        Ok(rgb)
    }

    /// The decoded picture as the mode hands it back: composed over the input (inpainting) or at the input's
    /// size (`--keep-size`).
    fn finish(&self, rgb: RgbImage, req: &Request, plan: &Plan, staged: Staged) -> Result<RgbImage> {
        if let (Some(spec), Some(m), Some(input)) = (req.mask(), &staged.mask, &staged.input) {
            if spec.paste_back || m.region.is_some() {
                return inpaint::compose(rgb, input, plan, spec, m);
            }
        }
        match plan.input_size.filter(|s| req.keep_size && rgb.dimensions() != *s) {
            Some((w, h)) => Ok(image_io::resize_lanczos(&rgb, w, h)),
            None => Ok(rgb),
        }
    }

    /// The prompt's conditioning and, with true CFG, the negative prompt's (encoded now if no batch did it
    /// before); their cost is charged once.
    fn conditioning(&mut self, req: &Request, t: &mut Timings) -> Result<(Conditioning, Option<Conditioning>)> {
        self.encode_prompts(&[req])?;
        let scale = req.lora_scale;
        let negative = match self.configs.family {
            Family::Flux1 => req.cfg().map(|c| c.negative_prompt.as_str()),
            Family::Flux2 => plan::flux2::cfg_scale(req, &self.configs).map(|_| plan::flux2::negative_prompt(req)),
        };
        let mut take = |p: &str| {
            let key = self.prompt_key(p, scale);
            let e = self.prompts.get_mut(&key).expect("encoded above");
            t.text_encoding += std::mem::take(&mut e.secs);
            e.cond.clone()
        };
        let cond = take(&req.prompt);
        let negative = negative.map(take);
        Ok((cond, negative))
    }

    fn vae(&mut self) -> Result<&AutoencoderKl> {
        if self.vae.is_none() {
            if self.configs.family == Family::Flux2 {
                self.bn = Some(load::vae_bn(&self.files, &self.configs.vae, self.dtype, &self.device)?);
            }
            self.vae = Some(load::vae(&self.files, &self.configs.vae, self.dtype, &self.device)?);
        }
        Ok(self.vae.as_ref().expect("loaded above"))
    }

    /// What the loop needs besides the conditioning, as the mode's pipeline prepares it: start latents, and the
    /// mask (inpainting) or reference tokens (Kontext).
    fn stage(&mut self, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Staged> {
        if self.configs.family == Family::Flux2 {
            return self.stage_flux2(req, input, plan);
        }
        let mut gen = rng::generator(&req.rng, plan.seed, plan.rng_gpu.unwrap_or(rng::CudaGeometry::H100));
        let (c, f) = (self.configs.vae.latent_channels, self.configs.vae.scale_factor());
        let grid = (c, plan.height as usize / f, plan.width as usize / f);
        let input = match (&req.mode, input) {
            (Mode::Txt2Img, _) => {
                let start = edit::pure_noise(gen.as_mut(), grid, self.dtype, &self.device)?;
                return Ok(Staged { start, mask: None, reference: None, input: None });
            }
            (_, Some(input)) => input,
            (mode, None) => return Err(crate::Error::Usage(format!("{} needs an input image", mode.name()))),
        };
        match &req.mode {
            Mode::Kontext { .. } => {
                let reference = self.reference(&input, plan)?;
                let start = edit::pure_noise(gen.as_mut(), grid, self.dtype, &self.device)?;
                Ok(Staged { start, mask: None, reference: Some(reference), input: None })
            }
            Mode::Inpaint { mask: spec, image, .. } => {
                let mut warnings = Vec::new();
                let m = inpaint::prepare(spec, image, &input, plan, &mut warnings)?;
                warnings.iter().for_each(|w| self.progress.event(Event::Warning(w)));
                let start = self.noised_input(inpaint::model_input(input.clone(), plan, &m), gen.as_mut(), plan)?;
                Ok(Staged { start, mask: Some(m), reference: None, input: Some(input) })
            }
            _ => {
                let start = self.noised_input(edit::fit_to_plan(input, plan), gen.as_mut(), plan)?;
                Ok(Staged { start, mask: None, reference: None, input: None })
            }
        }
    }

    /// Kontext's reference: the input stretched to the planned reference size, encoded (posterior mean), packed.
    fn reference(&mut self, input: &RgbImage, plan: &Plan) -> Result<edit::Reference> {
        let (w, h) = plan.reference_size.expect("planned for Kontext");
        let img = if input.dimensions() == (w, h) { input.clone() } else { image_io::resize_lanczos(input, w, h) };
        let (mean, _) = self.posterior(&img)?;
        Ok(edit::Reference::from_latents(&mean, &edit::LatentSpace::of(&self.configs.vae))?)
    }

    /// The VAE posterior (mean, logvar) of `img`, reused when the same pixels come again (sweeps).
    fn posterior(&mut self, img: &RgbImage) -> Result<(Tensor, Tensor)> {
        let key = edit::pixel_key(img);
        if let Some(p) = self.posterior.as_ref().filter(|p| p.key == key) {
            return Ok((p.mean.clone(), p.logvar.clone()));
        }
        let pixels = image_io::to_tensor(img, &self.device)?.to_dtype(self.dtype)?;
        let (mean, logvar) = self.vae()?.encode(&pixels)?;
        edit::ensure_finite(&mean, "VAE encoding", VAE_CAUSE)?;
        self.posterior = Some(Posterior { key, mean: mean.clone(), logvar: logvar.clone() });
        Ok((mean, logvar))
    }

    /// Preprocessed input → posterior → noised, packed start latents. The posterior noise is the generator's first
    /// draw and the initial noise its second, as in diffusers.
    fn noised_input(&mut self, img: RgbImage, gen: &mut dyn rng::NoiseSource, plan: &Plan) -> Result<edit::Start> {
        let (mean, logvar) = self.posterior(&img)?;
        let latent = edit::LatentSpace::of(&self.configs.vae);
        Ok(edit::start_latents(&mean, &logvar, gen, &latent, plan.schedule.start_sigma())?)
    }

    /// The transformer for `req`: loaded once; rebuilt when its LoRAs change or a merged LoRA must run at another
    /// scale.
    fn load_transformer(&mut self, req: &Request) -> Result<()> {
        if self.merged_at.is_some_and(|s| s != req.lora_scale) {
            self.transformer = None;
        }
        self.lora_scale.set(req.lora_scale);
        if self.transformer.is_some() {
            return Ok(());
        }
        let layout = self.kind.as_ref().map(|k| k.layout.clone()).unwrap_or(Layout::Diffusers);
        let merge = self.lora_merge && req.quantize.is_none() && load::gguf_file(&self.files).is_none();
        let lora = self.lora.clone().map(|set| Arc::new(LoraApply { set, merge, scale: self.lora_scale.clone() }));
        let opts = load::TransformerOptions {
            family: self.configs.family,
            quantize: req.quantize,
            lora,
            dtype: self.dtype,
            device: self.device.clone(),
        };
        let loaded = load::transformer(&self.files, &self.configs.transformer, &layout, &opts)?;
        if let Some(note) = &loaded.note {
            self.progress.event(Event::Note(note));
        }
        if let Some(l) = &self.lora {
            let how = if merge { "merged into the weights (no cost per step)" } else { "run as side paths each step" };
            self.progress.event(Event::Note(&format!("{} LoRA adapter(s) {how}", l.specs().len())));
        }
        self.merged_at = (merge && self.lora.is_some()).then_some(req.lora_scale);
        self.transformer = Some(loaded.model);
        Ok(())
    }

    /// The Euler loop; with true CFG the prompt and the negative prompt go through the transformer as one batch;
    /// Kontext's reference tokens ride along; inpainting puts the kept latents back after every step.
    fn denoise(&self, cond: &(Conditioning, Option<Conditioning>), staged: &Staged, plan: &Plan) -> Result<Tensor> {
        let (dev, dtype, start) = (&self.device, self.dtype, &staged.start);
        let txt = match &cond.1 {
            Some(neg) => Tensor::cat(&[&cond.0.txt, &neg.txt], 0)?,
            None => cond.0.txt.clone(),
        };
        let pooled = match (&cond.0.pooled, cond.1.as_ref().and_then(|n| n.pooled.as_ref())) {
            (Some(p), Some(n)) => Some(Tensor::cat(&[p, n], 0)?),
            (p, _) => p.clone(),
        };
        let (img_ids, txt_ids) = match self.configs.family {
            Family::Flux2 => self.ids_flux2(staged, txt.dim(1)?)?,
            Family::Flux1 => {
                let mut img_ids = edit::image_ids(start.height / 2, start.width / 2, dtype, dev)?;
                if let Some(r) = &staged.reference {
                    img_ids = Tensor::cat(&[&img_ids, &r.ids], 1)?;
                }
                (img_ids, Tensor::zeros((1, txt.dim(1)?, 3), dtype, dev)?)
            }
        };
        let guidance = plan.guidance.map(|g| Tensor::new(&[g as f32], dev)?.to_dtype(dtype)).transpose()?;
        let inputs = Inputs {
            img_ids: &img_ids,
            txt: &txt,
            txt_ids: &txt_ids,
            pooled: pooled.as_ref(),
            guidance: guidance.as_ref(),
        };
        let model = self.transformer.as_ref().expect("loaded before denoising");
        let reference = staged.reference.as_ref().map(|r| &r.tokens);
        let guided = edit::Guided { model, inputs, cfg_scale: plan.cfg_scale, reference };
        let blend = self.blend(staged)?;
        let steps = plan.schedule.steps_to_run();
        let t0 = Instant::now();
        self.progress.event(Event::Step { done: 0, total: steps, elapsed: t0.elapsed() });
        let latents = edit::denoise(
            start.packed.clone(),
            &plan.schedule,
            |x, t| guided.velocity(x, t),
            |x, next| match &blend {
                Some(b) => b.apply(&x, next),
                None => Ok(x),
            },
            |done, total| {
                self.gpu_peak.sample(dev);
                self.progress.event(Event::Step { done, total, elapsed: t0.elapsed() })
            },
        )?;
        Ok(latents)
    }

    /// Inpainting's per-step blend, from the prepared mask and the start's noise and clean latents.
    fn blend(&self, staged: &Staged) -> Result<Option<inpaint::Blend>> {
        let (Some(m), Some(noise), Some(clean)) = (&staged.mask, &staged.start.noise, &staged.start.clean) else {
            return Ok(None);
        };
        let f = self.configs.vae.scale_factor() as u32;
        let (c, dtype, dev) = (staged.start.channels, self.dtype, &self.device);
        let mask = match self.configs.family {
            Family::Flux1 => inpaint::latent_mask(&m.working, f, c, dtype, dev)?,
            Family::Flux2 => super::flux2::mask_tokens(&m.working, 2 * f, c, dtype, dev)?,
        };
        Ok(Some(inpaint::Blend { mask, noise: noise.clone(), clean: clean.clone() }))
    }

    fn decode(&mut self, latents: &Tensor, start: &edit::Start) -> Result<RgbImage> {
        if self.configs.family == Family::Flux2 {
            return self.decode_flux2(latents, start);
        }
        let z = edit::unpack_for_decode(latents, start, &edit::LatentSpace::of(&self.configs.vae))?;
        let decoded = self.vae()?.decode(&z)?;
        edit::ensure_finite(&decoded, "VAE decoding", VAE_CAUSE)?;
        image_io::from_tensor(&decoded)
    }
}

/// Why the VAE's output goes non-finite.
const VAE_CAUSE: &str = "the VAE weights may hold NaN/inf values (check --vae), or f16 overflowed (try --dtype f32)";
