//! The whole img2img run: a validated [`Request`] → a PNG on disk and a [`Report`].
//!
//! Order (spec §1): configs and input checks first, so bad input fails before any weight is read; then the
//! plan is printed; text encoding (encoders dropped after); VAE encode with the posterior noise drawn first and
//! the initial noise second from the same generator; the Euler loop; decode; atomic PNG write.

use crate::config::{read_json, Act, SchedulerConfig, TransformerConfig, VaeConfig};
use crate::error::{Error, Result};
use crate::image_io::{self, ResizeMode};
use crate::models::linear::{gguf_names, Quant, QuantStats, Weights};
use crate::models::transformer::{FluxTransformer, Inputs, MLP_PROBE};
use std::sync::atomic::Ordering;
use crate::models::vae::AutoencoderKl;
use crate::output;
use crate::rng::{self, RngKind};
use crate::schedule::{self, Schedule};
use crate::sdedit;
use crate::source::{ModelFiles, Overrides};
use crate::text::{self, Conditioning};
use crate::weights::flux_keys::{self, Source};
use crate::weights::{vae_keys, CheckedWeights, NameMap};
use std::sync::Arc;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Everything one edit needs, already checked for type and range by the CLI.
#[derive(Debug, Clone)]
pub struct Request {
    pub model: PathBuf,
    pub image: PathBuf,
    pub prompt: String,
    pub strength: f64,
    /// None: 28 for guidance-distilled (dev-like) models, 4 otherwise (schnell).
    pub steps: Option<usize>,
    /// None: 3.5 where the transformer embeds guidance; ignored otherwise.
    pub guidance: Option<f64>,
    /// None: a random seed, reported.
    pub seed: Option<u64>,
    pub rng: RngKind,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub max_sequence_length: usize,
    pub device: Device,
    pub dtype: DType,
    pub output: PathBuf,
    pub quiet: bool,
    /// How a different aspect ratio is handled when both width and height are given.
    pub resize: ResizeMode,
    /// Scale the output size down (keeping its aspect) to at most this many megapixels.
    pub max_megapixels: Option<f64>,
    /// Resize the result back to exactly the input's size.
    pub keep_size: bool,
    /// Component weight files replacing the model folder's.
    pub overrides: Overrides,
    /// Quantise the transformer's block matrices at load.
    pub quantize: Option<Quant>,
}

/// What will run, decided before loading weights.
#[derive(Debug, Clone)]
pub struct Plan {
    pub width: u32,
    pub height: u32,
    pub input_size: (u32, u32),
    pub crop: bool,
    /// Resize mode in effect (crop, fit, pad or stretch).
    pub resize: ResizeMode,
    pub steps: usize,
    pub guidance: Option<f64>,
    pub seed: u64,
    pub schedule: Schedule,
    pub latent_channels: usize,
    pub vae_scale: usize,
}

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

#[derive(Debug, Clone)]
pub struct Report {
    pub output: PathBuf,
    pub plan: Plan,
    pub timings: Timings,
    /// Host peak RSS of the process when this image was written (Linux), MiB.
    pub peak_rss_mib: Option<f64>,
}

/// Default steps and guidance for a transformer: dev-like models embed guidance.
pub fn defaults(t: &TransformerConfig) -> (usize, Option<f64>) {
    if t.guidance_embeds {
        (28, Some(3.5))
    } else {
        (4, None)
    }
}

/// Pixel multiple every output size must have: the VAE's downscale times the 2×2 packing — 16 for FLUX.1's
/// 4-block VAE (diffusers' `vae_scale_factor * 2`), smaller for the shallow VAEs of test pipelines.
pub fn size_multiple(vae: &VaeConfig) -> u32 {
    (2 * vae.scale_factor()) as u32
}

fn plan(req: &Request, t: &TransformerConfig, vae: &VaeConfig, sched: &SchedulerConfig, input: (u32, u32)) -> Result<Plan> {
    let multiple = size_multiple(vae);
    for (flag, v) in [("--width", req.width), ("--height", req.height)] {
        if let Some(v) = v {
            if v == 0 || v % multiple != 0 {
                let lo = (v / multiple).max(1) * multiple;
                return Err(Error::Usage(format!(
                    "{flag} {v} is not a multiple of {multiple} (the model's VAE downscale × 2); use {lo} or {}",
                    lo + multiple
                )));
            }
        }
    }
    let (mut width, mut height) = image_io::target_size(input, req.width, req.height, multiple);
    let other_aspect =
        req.width.is_some() && req.height.is_some() && (input.0 as u64 * height as u64 != input.1 as u64 * width as u64);
    let floor = |v: f64| ((v / multiple as f64).floor() as u32).max(1) * multiple;
    if other_aspect && req.resize == ResizeMode::Fit {
        let (w, h) = image_io::fit_inside(input, width, height);
        (width, height) = (floor(w as f64), floor(h as f64));
    }
    if let Some(mp) = req.max_megapixels {
        if mp.is_nan() || mp <= 0.0 {
            return Err(Error::Usage(format!("--max-megapixels {mp} must be above 0")));
        }
        let area = width as f64 * height as f64;
        if area > mp * 1e6 {
            let f = (mp * 1e6 / area).sqrt();
            (width, height) = (floor(width as f64 * f), floor(height as f64 * f));
        }
    } else if width as f64 * height as f64 > 4.2e6 && !req.quiet {
        eprintln!(
            "warning: {width}x{height} is {:.1} megapixels; FLUX.1 is trained up to ~2 MP and this needs a lot of \
             memory; --max-megapixels 1 (with --keep-size) edits at 1 MP and gives back the input's size",
            width as f64 * height as f64 / 1e6
        );
    }
    let crop = other_aspect && req.resize == ResizeMode::Crop;
    let (default_steps, default_guidance) = defaults(t);
    let steps = req.steps.unwrap_or(default_steps);
    let guidance = if t.guidance_embeds { Some(req.guidance.or(default_guidance).unwrap_or(3.5)) } else { None };
    if !t.guidance_embeds && req.guidance.is_some() && !req.quiet {
        eprintln!("warning: this transformer has no guidance embedding (schnell-like); --guidance is ignored");
    }
    let vsf = vae.scale_factor();
    let image_seq_len = (height as usize / vsf / 2) * (width as usize / vsf / 2);
    let schedule = schedule::schedule(sched, steps, req.strength, image_seq_len)?;
    if schedule.steps_to_run() == 0 {
        return Err(Error::Usage(format!(
            "--strength {} leaves no denoising step out of {steps}; the smallest strength that runs one is any value \
             above 0 (e.g. {:.4} runs exactly 1 step)",
            req.strength,
            1.0 / steps as f64
        )));
    }
    if t.in_channels % 4 != 0 || t.in_channels / 4 != vae.latent_channels {
        return Err(Error::model(
            &req.model,
            format!(
                "transformer in_channels {} does not match 4 × vae latent_channels {}",
                t.in_channels, vae.latent_channels
            ),
        ));
    }
    let seed = req.seed.unwrap_or_else(random_seed);
    Ok(Plan {
        width,
        height,
        input_size: input,
        crop,
        resize: req.resize,
        steps,
        guidance,
        seed,
        schedule,
        latent_channels: vae.latent_channels,
        vae_scale: vsf,
    })
}

/// A seed below 2^32: torch keeps only the low 32 bits, so larger ones would only confuse.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() & 0xffff_ffff
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// Peak resident memory of this process so far (Linux `VmHWM`), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// One model folder opened for any number of edits: configs read at once, weights loaded on first use and kept
/// (VAE, transformer), prompt encodings cached. A batch loads each model once, not once per image.
pub struct Session {
    pub files: ModelFiles,
    pub transformer_config: TransformerConfig,
    pub vae_config: VaeConfig,
    pub scheduler_config: SchedulerConfig,
    vae_act: Act,
    device: Device,
    dtype: DType,
    prompts: HashMap<String, (Conditioning, f64)>,
    vae: Option<AutoencoderKl>,
    transformer: Option<FluxTransformer>,
    transformer_layout: Option<flux_keys::Layout>,
    /// Set by a batch that draws its own bar on a terminal.
    pub progress: Option<indicatif::MultiProgress>,
    /// (hash of the preprocessed input, posterior mean, logvar) of the last VAE encode.
    last_posterior: Option<(u64, Tensor, Tensor)>,
}

impl Session {
    /// Reads the model folder's layout and configs, applies component overrides and checks the weight files
    /// exist; loads no weights yet.
    pub fn open(model: &Path, overrides: &Overrides, device: &Device, dtype: DType) -> Result<Self> {
        let mut files = ModelFiles::from_dir(model)?;
        files.apply(overrides)?;
        let mut s = Self::with_files(files, device, dtype)?;
        s.detect_guidance()?;
        Ok(s)
    }

    /// dev or schnell is decided by the transformer's tensors (a guidance embedder or none), which may differ
    /// from the folder's config when `--transformer` swaps the weights.
    fn detect_guidance(&mut self) -> Result<()> {
        let names = match self.gguf_transformer() {
            Some(path) => gguf_names(&path)?,
            None => CheckedWeights::open("transformer", &self.files.transformer.weights)?.names(),
        };
        let Some(layout) = flux_keys::transformer_layout(&names) else {
            return Err(Error::Tensors {
                component: "transformer".into(),
                detail: format!(
                    "{} has neither diffusers (transformer_blocks.0.attn.to_q) nor Black Forest Labs \
                     (double_blocks.0.img_attn.qkv) FLUX tensor names",
                    self.files.transformer.weights.first().map(|p| p.display().to_string()).unwrap_or_default()
                ),
            });
        };
        let probe = match &layout {
            flux_keys::Layout::Diffusers => "time_text_embed.guidance_embedder.linear_1.weight".to_string(),
            flux_keys::Layout::Bfl { prefix } => format!("{prefix}guidance_in.in_layer.weight"),
        };
        let has = names.contains(&probe);
        if has != self.transformer_config.guidance_embeds {
            eprintln!(
                "note: the transformer weights {} ({}-like); using that, not config.json's guidance_embeds",
                if has { "embed guidance" } else { "have no guidance embedding" },
                if has { "dev" } else { "schnell" }
            );
            self.transformer_config.guidance_embeds = has;
        }
        self.transformer_layout = Some(layout);
        Ok(())
    }

    /// Configs only, for planning (dry runs): weight files need not exist, and nothing can be run.
    pub fn open_configs(model: &Path, overrides: &Overrides) -> Result<Self> {
        let mut files = ModelFiles::configs_only(model)?;
        let swapped = overrides.transformer.is_some();
        files.apply(overrides)?;
        let mut s = Self::with_files(files, &Device::Cpu, DType::F32)?;
        // A swapped transformer decides dev or schnell (and so the default steps) even for a plan.
        if swapped {
            s.detect_guidance()?;
        }
        Ok(s)
    }

    fn with_files(files: ModelFiles, device: &Device, dtype: DType) -> Result<Self> {
        let transformer_config: TransformerConfig = read_json(&files.transformer.config)?;
        let vae_config: VaeConfig = read_json(&files.vae.config)?;
        let scheduler_config: SchedulerConfig = read_json(&files.scheduler_config)?;
        let vae_act = Act::parse(&vae_config.act_fn, &files.vae.config)?;
        Ok(Self {
            files,
            transformer_config,
            vae_config,
            scheduler_config,
            vae_act,
            device: device.clone(),
            dtype,
            prompts: HashMap::new(),
            vae: None,
            transformer: None,
            last_posterior: None,
            transformer_layout: None,
            progress: None,
        })
    }

    /// The plan for `req` given its input's size: validates size flags, steps left by strength, channels.
    pub fn plan(&self, req: &Request, input_size: (u32, u32)) -> Result<Plan> {
        plan(req, &self.transformer_config, &self.vae_config, &self.scheduler_config, input_size)
    }

    /// Encodes every prompt not yet cached, loading the text encoders once and dropping them afterwards.
    pub fn encode_prompts(&mut self, prompts: &[&str], max_sequence_length: usize, quantize: Option<Quant>) -> Result<()> {
        let todo: Vec<&str> = prompts.iter().copied().filter(|p| !self.prompts.contains_key(*p)).collect();
        if todo.is_empty() {
            return Ok(());
        }
        let t0 = Instant::now();
        let mut enc =
            text::TextEncoders::load(&self.files, max_sequence_length, self.dtype, &self.device, quantize.map(Quant::ggml))?;
        let load = secs(t0);
        for p in todo {
            if self.prompts.contains_key(p) {
                continue;
            }
            let t0 = Instant::now();
            let cond = enc.encode(p)?;
            // The load is charged to the first prompt: one encoder load per batch.
            let took = secs(t0) + if self.prompts.is_empty() { load } else { 0.0 };
            self.prompts.insert(p.to_string(), (cond, took));
        }
        Ok(())
    }

    fn vae(&mut self) -> Result<&AutoencoderKl> {
        if self.vae.is_none() {
            let w = CheckedWeights::open("vae", &self.files.vae.weights)?;
            // Black Forest Labs' ae.safetensors names are mapped to the diffusers ones the model asks for.
            let map: Option<NameMap> = vae_keys::bfl_prefix(&w.names()).map(|prefix| {
                let blocks = self.vae_config.block_out_channels.len();
                Arc::new(move |n: &str| vae_keys::diffusers_to_bfl(n, blocks, &prefix)) as NameMap
            });
            let vae = AutoencoderKl::new(&self.vae_config, self.vae_act, w.var_builder(self.dtype, &self.device, map))?;
            w.finish()?;
            self.vae = Some(vae);
        }
        Ok(self.vae.as_ref().expect("loaded above"))
    }

    /// The transformer file when it is GGUF.
    fn gguf_transformer(&self) -> Option<PathBuf> {
        let w = &self.files.transformer.weights;
        (w.len() == 1 && w[0].extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))).then(|| w[0].clone())
    }

    fn load_transformer(&mut self, quantize: Option<Quant>) -> Result<()> {
        if self.transformer.is_none() {
            if let Some(path) = self.gguf_transformer() {
                let t = &self.transformer_config;
                let inner = t.num_attention_heads * t.attention_head_dim;
                let prefix = match &self.transformer_layout {
                    Some(flux_keys::Layout::Bfl { prefix }) => prefix.clone(),
                    _ => return Err(Error::model(&path, "GGUF transformers must use Black Forest Labs tensor names")),
                };
                let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&path, &self.device)
                    .map_err(|e| Error::model(&path, format!("unreadable GGUF: {e}")))?;
                let vb = if prefix.is_empty() { vb } else { vb.pp(prefix.trim_end_matches('.')) };
                let mlp_hidden = vb.get_no_shape(MLP_PROBE).map_or(4 * inner, |w| w.shape().dims()[0]);
                let w = Weights::Gguf { vb, dtype: self.dtype };
                let model = FluxTransformer::new(t, mlp_hidden, w)
                    .map_err(|e| Error::model(&path, format!("does not fit transformer/config.json: {e}")))?;
                self.transformer = Some(model);
                return Ok(());
            }
            let tw = CheckedWeights::open("transformer", &self.files.transformer.weights)?;
            let t = &self.transformer_config;
            let inner = t.num_attention_heads * t.attention_head_dim;
            // The model reads BFL names; a diffusers checkpoint is translated (and its q/k/v concatenated).
            let layout = self.transformer_layout.clone().unwrap_or(flux_keys::Layout::Diffusers);
            let map: NameMap = Arc::new(flux_keys::transformer_map(&layout));
            let mlp_hidden = match map(MLP_PROBE) {
                Source::One(name) => tw.shape_of(&name).map_or(4 * inner, |s| s[0]),
                _ => 4 * inner,
            };
            let stats = Arc::new(QuantStats::default());
            let w = Weights::Dense {
                vb: tw.var_builder(self.dtype, &self.device, Some(map.clone())),
                cpu: tw.var_builder(DType::F32, &Device::Cpu, Some(map)),
                quant: quantize.map(Quant::ggml),
                stats: stats.clone(),
            };
            let model = FluxTransformer::new(t, mlp_hidden, w)?;
            tw.finish()?;
            if let Some(q) = quantize {
                let (n, f) = (stats.requested.load(Ordering::Relaxed), stats.fallback.load(Ordering::Relaxed));
                eprintln!(
                    "quantized {n} transformer matrices to {}{}",
                    q.name(),
                    if f > 0 { format!(" ({f} narrower than 256 columns to the nearest 32-block format)") } else { String::new() }
                );
            }
            self.transformer = Some(model);
        }
        Ok(())
    }

    /// Runs one edit: checks the input and output first (nothing heavy happens for bad input), then text
    /// (cached), VAE encode with the posterior noise drawn first and the initial noise second, the Euler loop,
    /// decode, atomic PNG write.
    pub fn run(&mut self, req: &Request) -> Result<Report> {
        let input = image_io::load_rgb(&req.image)?;
        output::check_output(&req.output, &req.image)?;
        let plan = self.plan(req, input.dimensions())?;
        self.run_planned(req, input, plan)
    }

    /// Runs one edit whose input is decoded and whose plan is made (a batch plans every item up front).
    pub fn run_planned(&mut self, req: &Request, input: RgbImage, plan: Plan) -> Result<Report> {
        let start = Instant::now();
        let s = plan.schedule.clone();
        // Under a batch's bars, lines go above them instead of through them.
        let bars = self.progress.clone();
        let say = |msg: String| {
            if !req.quiet {
                match &bars {
                    Some(mp) => {
                        let _ = mp.println(&msg);
                    }
                    None => eprintln!("{msg}"),
                }
            }
        };
        say(format!(
            "plan: {}x{} from {}x{}{}, {} of {} steps (t_start {}), start sigma {:.6}{}, guidance {}, seed {} ({})",
            plan.width,
            plan.height,
            plan.input_size.0,
            plan.input_size.1,
            if plan.crop { " (centre-cropped to aspect)" } else { "" },
            s.steps_to_run(),
            plan.steps,
            s.t_start,
            s.start_sigma(),
            s.mu.map(|m| format!(", mu {m:.4}")).unwrap_or_default(),
            plan.guidance.map(|g| g.to_string()).unwrap_or_else(|| "none".into()),
            plan.seed,
            req.rng,
        ));
        let (dev, dtype) = (self.device.clone(), self.dtype);
        let mut timings = Timings::default();

        self.encode_prompts(&[req.prompt.as_str()], req.max_sequence_length, req.quantize)?;
        let (cond, text_secs) = self.prompts.get(req.prompt.as_str()).cloned().expect("encoded above");
        timings.text_encoding = text_secs;
        // Charged once: later items reuse the encoding.
        if let Some(e) = self.prompts.get_mut(req.prompt.as_str()) {
            e.1 = 0.0;
        }

        // Image → latents (posterior noise is random draw #1).
        let t0 = Instant::now();
        let mut img = input;
        if plan.crop {
            img = image_io::center_crop_to_aspect(&img, plan.width, plan.height);
        }
        if plan.resize == ResizeMode::Pad && img.dimensions() != (plan.width, plan.height) {
            img = image_io::pad_to(&img, plan.width, plan.height);
        }
        if img.dimensions() != (plan.width, plan.height) {
            img = image_io::resize_lanczos(&img, plan.width, plan.height);
        }
        // Sweeps edit the same pixels again and again: the posterior (mean, logvar) of the last input is kept, and
        // only the noise drawn from it changes with the seed.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (img.dimensions(), img.as_raw()).hash(&mut h);
            h.finish()
        };
        let (mean, logvar) = match &self.last_posterior {
            Some((k, m, l)) if *k == key => (m.clone(), l.clone()),
            _ => {
                let pixels = image_io::to_tensor(&img, &dev)?.to_dtype(dtype)?;
                let (m, l) = self.vae()?.encode(&pixels)?;
                self.last_posterior = Some((key, m.clone(), l.clone()));
                (m, l)
            }
        };
        let shape = mean.shape().clone();
        let mut gen = rng::generator(req.rng, plan.seed);
        let eps = Tensor::from_vec(gen.randn(shape.elem_count()), &shape, &dev)?.to_dtype(dtype)?;
        let shift = self.vae_config.shift_factor.unwrap_or(0.0);
        let scale = self.vae_config.scaling_factor;
        let z = sdedit::sample_latents(&mean, &logvar, &eps, shift, scale)?;
        // Initial noise: random draw #2, same generator.
        let noise = Tensor::from_vec(gen.randn(shape.elem_count()), &shape, &dev)?.to_dtype(dtype)?;
        let latents = sdedit::pack(&sdedit::noise_to(&z, &noise, s.start_sigma())?)?;
        let (_, c, h, w) = shape.dims4()?;
        timings.vae_encode = secs(t0);

        let t0 = Instant::now();
        self.load_transformer(req.quantize)?;
        timings.load_transformer = secs(t0);

        let t0 = Instant::now();
        let img_ids = sdedit::image_ids(h / 2, w / 2, dtype, &dev)?;
        let txt_ids = Tensor::zeros((1, cond.t5.dim(1)?, 3), dtype, &dev)?;
        let guidance = match plan.guidance {
            Some(g) => Some(Tensor::new(&[g as f32], &dev)?.to_dtype(dtype)?),
            None => None,
        };
        let inputs =
            Inputs { img_ids: &img_ids, txt: &cond.t5, txt_ids: &txt_ids, pooled: &cond.pooled, guidance: guidance.as_ref() };
        let step_start = Instant::now();
        let model = self.transformer.as_ref().expect("loaded above");
        // A bar on a terminal; plain lines for logs and pipes (scripts and CI read those).
        let bar = (!req.quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(s.steps_to_run() as u64);
            // Under a batch bar, drawn by the same MultiProgress so the two do not overwrite each other.
            let b = match &self.progress {
                Some(mp) => mp.add(b),
                None => b,
            };
            b.set_style(
                indicatif::ProgressStyle::with_template("denoise {bar:30} {pos}/{len} steps  {per_sec}  eta {eta}")
                    .expect("valid template"),
            );
            b
        });
        let latents = sdedit::denoise(model, latents, &inputs, &s, |i, n| match &bar {
            Some(b) => b.set_position(i as u64),
            None if !req.quiet => {
                let el = step_start.elapsed().as_secs_f64();
                eprintln!("denoise: step {i}/{n} ({:.2}s/step)", el / i as f64);
            }
            None => {}
        })?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        timings.denoise = secs(t0);

        // Latents → image.
        let t0 = Instant::now();
        let z = ((sdedit::unpack(&latents, c, h, w)? / scale)? + shift)?;
        let decoded = self.vae()?.decode(&z)?;
        let mut rgb = image_io::from_tensor(&decoded)?;
        if req.keep_size && rgb.dimensions() != plan.input_size {
            rgb = image_io::resize_lanczos(&rgb, plan.input_size.0, plan.input_size.1);
        }
        timings.vae_decode = secs(t0);
        output::write_png(&req.output, &rgb, &metadata(req, &plan))?;
        timings.total = secs(start) + timings.text_encoding;
        say(format!(
            "done in {:.2}s (text {:.2}s, vae encode {:.2}s, transformer load {:.2}s, denoise {:.2}s, decode {:.2}s)",
            timings.total, timings.text_encoding, timings.vae_encode, timings.load_transformer, timings.denoise, timings.vae_decode
        ));
        Ok(Report { output: req.output.clone(), plan, timings, peak_rss_mib: peak_rss_mib() })
    }
}

/// Runs one edit end to end: bad input fails before any weight is read.
pub fn run(req: &Request) -> Result<Report> {
    let dir = crate::source::locate(&req.model, &req.overrides, true, req.quiet)?;
    Session::open(&dir, &req.overrides, &req.device, req.dtype)?.run(req)
}

/// PNG text chunks: A1111's `parameters` line (read by image sites) and a JSON record of everything.
fn metadata(req: &Request, plan: &Plan) -> Vec<(&'static str, String)> {
    let model = req.model.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let mut params = format!(
        "{}\nSteps: {}, Sampler: Euler (flow matching), Seed: {}, Size: {}x{}, Model: {}, Denoising strength: {}, RNG: {}",
        req.prompt, plan.steps, plan.seed, plan.width, plan.height, model, req.strength, req.rng
    );
    if let Some(g) = plan.guidance {
        params.push_str(&format!(", Guidance: {g}"));
    }
    let mut json = record(req, plan);
    json["tool"] = serde_json::json!(concat!("flux-img2img ", env!("CARGO_PKG_VERSION")));
    vec![("parameters", params), ("flux-img2img", json.to_string())]
}

/// Every parameter of an edit and what the plan made of it: the PNG's JSON chunk (which `--from-metadata` reads
/// back) and, with an index, output and status added, each `--json` line.
pub fn record(req: &Request, plan: &Plan) -> serde_json::Value {
    let s = &plan.schedule;
    serde_json::json!({
        "prompt": req.prompt,
        "model": req.model,
        "input": req.image,
        "strength": req.strength,
        "steps": plan.steps,
        "steps_run": s.steps_to_run(),
        "t_start": s.t_start,
        "start_sigma": s.start_sigma(),
        "mu": s.mu,
        "guidance": plan.guidance,
        "seed": plan.seed,
        "rng": req.rng,
        "resize": plan.resize,
        "max_megapixels": req.max_megapixels,
        "keep_size": req.keep_size,
        "quantize": req.quantize,
        "width": plan.width,
        "height": plan.height,
        "input_width": plan.input_size.0,
        "input_height": plan.input_size.1,
        "max_sequence_length": req.max_sequence_length,
        "dtype": format!("{:?}", req.dtype).to_lowercase(),
        "device": if req.device.is_cpu() { "cpu" } else { "cuda" },
    })
}
