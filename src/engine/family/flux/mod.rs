//! FLUX.1 (dev, schnell, Kontext) and FLUX.2 [klein] behind [`ModelFamily`]: configs read at once, the VAE and
//! transformer loaded on first use and kept, the last input's VAE posterior cached. Takes requests and plans,
//! gives start latents (noise, the noised input, Kontext's or klein's reference tokens), flow-matching Euler
//! steps under true CFG and the inpainting blend, and decoded pictures. FLUX.1's staging is here; FLUX.2's in
//! [`flux2`]; ControlNets and Control LoRAs in [`structure`]; the weight sizes of the memory estimate in [`memory`].

mod flux2;
mod memory;
mod structure;

use super::{Env, Loras, ModelFamily, Prepared, PromptUse};
use crate::config::{ClipConfig, Family, ModelConfigs, TransformerInputs};
use crate::engine::cache::{CacheReport, CacheSpec, StepCache};
use crate::engine::flux2::BnStats;
use crate::engine::load::{self, TransformerKind};
use crate::engine::memory::{Estimate, Workload};
use crate::engine::plan::{self, Plan};
use crate::engine::request::{Mode, Request, DEFAULT_GUIDANCE};
use crate::engine::{control, controlnet, edit, fill, inpaint, redux};
use crate::error::{Error, Result};
use crate::image_io;
use crate::models::clip::ClipLora;
use crate::models::linear::{LoraApply, Quant};
use crate::models::redux::ReduxPrior;
use crate::models::transformer::{self, Inputs};
use crate::models::vae::AutoencoderKl;
use crate::models::Denoiser;
use crate::rng::{self, CudaGeometry};
use crate::schedulers::flow_match::Schedule;
use crate::source::{ModelFiles, Overrides};
use crate::text::{Conditioning, EncodeAs, TextEncoder};
use crate::weights::flux_keys::Layout;
use crate::weights::lora::ModelShapes;
use candle_core::Tensor;
use image::RgbImage;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// The VAE posterior (mean, logvar) of the last preprocessed input, keyed by a hash of its pixels.
pub(crate) struct Posterior {
    key: u64,
    mean: Tensor,
    logvar: Tensor,
}

/// The edit in progress: what `prepare` made and `begin` added, for the steps and the decoder.
struct Edit {
    /// The latent grid of the start (channels, height, width) and its noise and clean latents (modes that start
    /// from an input).
    channels: usize,
    height: usize,
    width: usize,
    noise: Option<Tensor>,
    clean: Option<Tensor>,
    /// Kontext's or klein's reference tokens and their ids.
    reference: Option<edit::Reference>,
    /// `--cache`: the step cache asked for.
    cache: Option<CacheSpec>,
    /// Fill and Control: the channels appended to every token.
    extra: Option<Tensor>,
    /// Redux: each image's tokens and weight.
    redux: Vec<(Tensor, f64)>,
    /// ControlNets: each one's control latents and settings.
    controls: Vec<controlnet::Active>,
    /// Set by `begin`.
    run: Option<Run>,
}

/// The transformer's conditioning for every step of one edit.
struct Run {
    txt: Tensor,
    pooled: Option<Tensor>,
    img_ids: Tensor,
    txt_ids: Tensor,
    guidance: Option<Tensor>,
    cfg_scale: Option<f64>,
    blend: Option<inpaint::Blend>,
    schedule: Schedule,
    /// The step cache's state (one per pass), when one runs.
    cache: Option<StepCache>,
    /// What the ControlNets see, when there are any.
    control: Option<ControlCond>,
}

/// The ControlNets' conditioning: the prompt's alone (never the negative prompt's), and guidance when a ControlNet
/// embeds it.
struct ControlCond {
    txt: Tensor,
    pooled: Option<Tensor>,
    guidance: Tensor,
}

pub struct Flux {
    files: ModelFiles,
    configs: ModelConfigs,
    kontext: bool,
    kind: Option<TransformerKind>,
    vae: Option<AutoencoderKl>,
    /// FLUX.2: the VAE's batch-norm statistics (loaded with the VAE).
    bn: Option<BnStats>,
    transformer: Option<Denoiser>,
    /// The LoRA scale merged into the loaded transformer, if one was.
    merged_at: Option<f64>,
    posterior: Option<Posterior>,
    /// The Redux prior and the folder it came from (loaded on first use).
    redux: Option<(std::path::PathBuf, crate::models::redux::ReduxPrior)>,
    /// The ControlNets of the last request, by folder (loaded with the transformer).
    controlnets: Vec<controlnet::Loaded>,
    /// Where each `--controlnet` value was found (a Hub id is looked up once).
    controlnet_dirs: HashMap<std::path::PathBuf, std::path::PathBuf>,
    /// The transformer's own input width (a control LoRA widens `configs`' for the edits that use it).
    base_in_channels: usize,
    /// `--control-from depth`'s model (loaded on first use).
    depth: crate::engine::depth::DepthMaps,
    /// Loaded weight bytes by dtype and quantization (read from the headers once).
    weight_sizes: HashMap<(&'static str, Option<Quant>), crate::engine::memory::WeightSizes>,
    edit: Option<Edit>,
}

impl Flux {
    /// Reads the folder's layout and configs and applies component overrides; with `weights`, checks the weight
    /// files and reads the transformer's tensor names (a configs-only session reads them only for a swapped
    /// transformer, which decides dev or schnell even for a plan).
    pub fn open(model: &Path, o: &Overrides, weights: bool, progress: &dyn crate::engine::Progress) -> Result<Self> {
        let mut files = if weights { ModelFiles::from_dir(model)? } else { ModelFiles::configs_only(model)? };
        files.apply(o)?;
        let mut f = Self {
            kontext: files.is_kontext(),
            configs: ModelConfigs::read(&files.config_files())?,
            files,
            kind: None,
            vae: None,
            bn: None,
            transformer: None,
            merged_at: None,
            posterior: None,
            redux: None,
            controlnets: Vec::new(),
            controlnet_dirs: HashMap::new(),
            base_in_channels: 0,
            depth: Default::default(),
            weight_sizes: HashMap::new(),
            edit: None,
        };
        if weights || o.transformer.is_some() {
            f.inspect(progress)?;
        }
        f.base_in_channels = f.configs.transformer.in_channels;
        if weights {
            load::check_components(&f.files, &f.configs.vae)?;
        }
        Ok(f)
    }

    /// The weights decide dev or schnell, whatever config.json says.
    fn inspect(&mut self, progress: &dyn crate::engine::Progress) -> Result<()> {
        let kind = load::inspect_transformer(&self.files, &self.configs.transformer)?;
        if kind.guidance_embeds != self.configs.transformer.guidance_embeds && kind.family == Family::Flux1 {
            let (what, like) = if kind.guidance_embeds {
                ("embed guidance", "dev")
            } else {
                ("have no guidance embedding", "schnell")
            };
            let note =
                format!("the transformer weights {what} ({like}-like); using that, not config.json's guidance_embeds");
            progress.event(crate::engine::Event::Note(&note));
            self.configs.transformer.guidance_embeds = kind.guidance_embeds;
        }
        if let Some(n) = kind.in_channels.filter(|&n| n != self.configs.transformer.in_channels) {
            progress.event(crate::engine::Event::Note(&format!(
                "the transformer weights take {n} input channels; using that, not config.json's in_channels {}",
                self.configs.transformer.in_channels
            )));
            self.configs.transformer.in_channels = n;
            self.configs.transformer.out_channels = Some(4 * self.configs.vae.latent_channels);
            let file = self.files.transformer.weights.first().cloned().unwrap_or_default();
            self.configs.inputs().map_err(|msg| Error::model(file, msg))?;
        }
        self.kind = Some(kind);
        Ok(())
    }

    /// What the transformer reads besides the latents (checked when the configs were read).
    fn inputs(&self) -> TransformerInputs {
        self.configs.inputs().unwrap_or(TransformerInputs::Latents)
    }

    fn layout(&self) -> Layout {
        self.kind.as_ref().map(|k| k.layout.clone()).unwrap_or(Layout::Diffusers)
    }

    fn vae(&mut self, env: &Env) -> Result<&AutoencoderKl> {
        if self.vae.is_none() {
            if self.configs.family == Family::Flux2 {
                self.bn = Some(load::vae_bn(&self.files, &self.configs.vae, env.dtype, env.device)?);
            }
            self.vae = Some(load::vae(&self.files, &self.configs.vae, env.dtype, env.device)?);
        }
        Ok(self.vae.as_ref().expect("loaded above"))
    }

    /// The VAE posterior (mean, logvar) of `img`, reused when the same pixels come again (sweeps).
    fn posterior(&mut self, env: &Env, img: &RgbImage) -> Result<(Tensor, Tensor)> {
        let key = edit::pixel_key(img);
        if let Some(p) = self.posterior.as_ref().filter(|p| p.key == key) {
            return Ok((p.mean.clone(), p.logvar.clone()));
        }
        let pixels = image_io::to_tensor(img, env.device)?.to_dtype(env.dtype)?;
        let (mean, logvar) = self.vae(env)?.encode(&pixels)?;
        edit::ensure_finite(&mean, "VAE encoding", VAE_CAUSE)?;
        self.posterior = Some(Posterior { key, mean: mean.clone(), logvar: logvar.clone() });
        Ok((mean, logvar))
    }

    /// Kontext's reference: the input stretched to the planned reference size, encoded (posterior mean), packed.
    fn reference(&mut self, env: &Env, input: &RgbImage, plan: &Plan) -> Result<edit::Reference> {
        let (w, h) = plan.reference_size.expect("planned for Kontext");
        let img = if input.dimensions() == (w, h) { input.clone() } else { image_io::resize_lanczos(input, w, h) };
        let (mean, _) = self.posterior(env, &img)?;
        Ok(edit::Reference::from_latents(&mean, &edit::LatentSpace::of(&self.configs.vae))?)
    }

    /// Preprocessed input → posterior → noised, packed start latents. The posterior noise is the generator's first
    /// draw and the initial noise its second, as in diffusers.
    fn noised_input(
        &mut self,
        env: &Env,
        img: RgbImage,
        gen: &mut dyn rng::NoiseSource,
        plan: &Plan,
    ) -> Result<edit::Start> {
        let (mean, logvar) = self.posterior(env, &img)?;
        let latent = edit::LatentSpace::of(&self.configs.vae);
        Ok(edit::start_latents(&mean, &logvar, gen, &latent, plan.schedule.start_sigma())?)
    }

    /// FLUX.1: start latents, the mask (inpainting), reference tokens (Kontext) and the extra channels of Fill and
    /// Control transformers, as each mode's pipeline prepares them, drawing from the generator in its order.
    fn stage(&mut self, env: &Env, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Staged> {
        let mut gen = rng::generator(&req.rng, plan.seed, plan.rng_gpu.unwrap_or(CudaGeometry::H100));
        // FluxControlNet*Pipeline encode their control images before anything else draws.
        let controls = self.controlnet_inputs(env, req, input.as_ref(), plan, gen.as_mut())?;
        let mut staged = self.stage_mode(env, req, input, plan, gen.as_mut())?;
        staged.controls = controls;
        Ok(staged)
    }

    /// [`Self::stage`] after the ControlNets' draws, by mode.
    fn stage_mode(
        &mut self,
        env: &Env,
        req: &Request,
        input: Option<RgbImage>,
        plan: &Plan,
        gen: &mut dyn rng::NoiseSource,
    ) -> Result<Staged> {
        let (c, f) = (self.configs.vae.latent_channels, self.configs.vae.scale_factor());
        let grid = (c, plan.height as usize / f, plan.width as usize / f);
        let control = match self.inputs() {
            TransformerInputs::Control => Some(control::image(req, input.as_ref(), plan, env, &mut self.depth)?),
            _ => None,
        };
        let input = match (&req.mode, input) {
            (Mode::Txt2Img, _) => {
                // FluxControlPipeline encodes the control image before drawing the noise.
                let channels = control.map(|c| self.encoded(env, &c, gen)).transpose()?;
                let start = edit::pure_noise(gen, grid, env.dtype, env.device)?;
                return Ok(Staged { start, mask: None, reference: None, input: None, channels, controls: Vec::new() });
            }
            (_, Some(input)) => input,
            (mode, None) => return Err(Error::Usage(format!("{} needs an input image", mode.name()))),
        };
        match &req.mode {
            Mode::Kontext { .. } => {
                let reference = self.reference(env, &input, plan)?;
                let start = edit::pure_noise(gen, grid, env.dtype, env.device)?;
                Ok(Staged {
                    start,
                    mask: None,
                    reference: Some(reference),
                    input: None,
                    channels: None,
                    controls: Vec::new(),
                })
            }
            Mode::Inpaint { mask: spec, image, .. } => {
                let mut warnings = Vec::new();
                let m = inpaint::prepare(spec, image, &input, plan, &mut warnings)?;
                warnings.iter().for_each(|w| env.warn(w));
                let model_input = inpaint::model_input(input.clone(), plan, &m);
                let control = match control {
                    // FluxControlInpaintPipeline encodes the masked input first (a draw it does not use further).
                    Some(c) => {
                        self.masked_sample(env, &model_input, &m, gen)?;
                        Some(self.encoded(env, &c, gen)?)
                    }
                    None => None,
                };
                let start = self.noised_input(env, model_input.clone(), gen, plan)?;
                let channels = match self.inputs() {
                    TransformerInputs::Fill => Some(self.fill_channels(env, &model_input, &m, gen)?),
                    _ => control,
                };
                Ok(Staged { start, mask: Some(m), reference: None, input: Some(input), channels, controls: Vec::new() })
            }
            _ => {
                let channels = control.map(|c| self.encoded(env, &c, gen)).transpose()?;
                let start = self.noised_input(env, edit::fit_to_plan(input, plan), gen, plan)?;
                Ok(Staged { start, mask: None, reference: None, input: None, channels, controls: Vec::new() })
            }
        }
    }

    /// Redux's image tokens for `req` (none without --redux), the prior loaded once per folder.
    fn redux_tokens(&mut self, env: &Env, req: &Request) -> Result<Vec<(Tensor, f64)>> {
        if req.redux.is_empty() {
            return Ok(Vec::new());
        }
        let root = redux::locate(req)?;
        if self.redux.as_ref().is_none_or(|(r, _)| *r != root) {
            let t5 = self.configs.transformer.joint_attention_dim;
            self.redux = Some((root.clone(), ReduxPrior::load(&root, t5, env.dtype, env.device)?));
        }
        let (_, prior) = self.redux.as_ref().expect("loaded above");
        redux::embed(prior, req, env)
    }

    /// Pixels [1, 3, H, W] encoded and their posterior sampled with the generator's next draw, in latent space
    /// (unpacked).
    fn sampled(&mut self, env: &Env, pixels: &Tensor, gen: &mut dyn rng::NoiseSource) -> Result<Tensor> {
        let (mean, logvar) = self.vae(env)?.encode(&pixels.to_dtype(env.dtype)?)?;
        edit::ensure_finite(&mean, "VAE encoding", VAE_CAUSE)?;
        Ok(edit::sample_with(&mean, &logvar, gen, &edit::LatentSpace::of(&self.configs.vae))?)
    }

    /// A picture at the working size encoded and sampled, packed (Control's control image).
    fn encoded(&mut self, env: &Env, img: &RgbImage, gen: &mut dyn rng::NoiseSource) -> Result<Tensor> {
        let z = self.sampled(env, &image_io::to_tensor(img, env.device)?, gen)?;
        Ok(edit::pack(&z)?)
    }

    /// The masked input's posterior sample, taken only to keep the generator where diffusers has it.
    fn masked_sample(
        &mut self,
        env: &Env,
        img: &RgbImage,
        m: &inpaint::PreparedMask,
        gen: &mut dyn rng::NoiseSource,
    ) -> Result<()> {
        self.sampled(env, &fill::masked_pixels(img, &m.working, env.device)?, gen)?;
        Ok(())
    }

    /// Fill's extra channels: the masked input encoded (its posterior sampled with the generator's third draw,
    /// after the input's sample and the noise), then the packed mask.
    fn fill_channels(
        &mut self,
        env: &Env,
        img: &RgbImage,
        m: &inpaint::PreparedMask,
        gen: &mut dyn rng::NoiseSource,
    ) -> Result<Tensor> {
        let z = self.sampled(env, &fill::masked_pixels(img, &m.working, env.device)?, gen)?;
        fill::channels(&z, &m.working, self.configs.vae.scale_factor())
    }

    /// Inpainting's per-step blend, from the prepared mask and the start's noise and clean latents.
    fn blend(&self, env: &Env, edit: &Edit, mask: Option<&inpaint::PreparedMask>) -> Result<Option<inpaint::Blend>> {
        let (Some(m), Some(noise), Some(clean)) = (mask, &edit.noise, &edit.clean) else {
            return Ok(None);
        };
        // Fill sees the mask as input and keeps the rest itself: diffusers puts nothing back between steps.
        if self.inputs() == TransformerInputs::Fill {
            return Ok(None);
        }
        let f = self.configs.vae.scale_factor() as u32;
        let (c, dtype, dev) = (edit.channels, env.dtype, env.device);
        let mask = match self.configs.family {
            Family::Flux1 => inpaint::latent_mask(&m.working, f, c, dtype, dev)?,
            _ => crate::engine::flux2::mask_tokens(&m.working, 2 * f, c, dtype, dev)?,
        };
        Ok(Some(inpaint::Blend { mask, noise: noise.clone(), clean: clean.clone() }))
    }

    /// The negative prompt's text when CFG runs: FLUX.1's true CFG, or a FLUX.2 base model's CFG.
    fn negative_text<'r>(&self, req: &'r Request) -> Option<&'r str> {
        match self.configs.family {
            Family::Flux1 => req.cfg().map(|c| c.negative_prompt.as_str()),
            _ => plan::flux2::cfg_scale(req, &self.configs).map(|_| plan::flux2::negative_prompt(req)),
        }
    }
}

/// What FLUX.1's and FLUX.2's staging gives: the start, its mask and kept input, and any reference tokens.
pub(crate) struct Staged {
    start: edit::Start,
    mask: Option<inpaint::PreparedMask>,
    input: Option<RgbImage>,
    reference: Option<edit::Reference>,
    channels: Option<Tensor>,
    /// FLUX.1 ControlNets' inputs (drawn first).
    controls: Vec<controlnet::Active>,
}

impl ModelFamily for Flux {
    fn family(&self) -> Family {
        self.configs.family
    }

    fn size_multiple(&self) -> u32 {
        self.configs.vae.size_multiple()
    }

    fn adapt(&self, req: &mut Request, how: &super::Adapt) -> Option<String> {
        match (&mut req.mode, self.inputs()) {
            // FluxFillPipeline repaints from pure noise unless a strength is asked for.
            (Mode::Inpaint { strength, .. }, TransformerInputs::Fill) if !how.strength_given => *strength = 1.0,
            _ => {}
        }
        if req.outpaint().is_some() && self.inputs() != TransformerInputs::Fill {
            return Some(
                "FLUX.1 Fill (--model fill) is the model made for outpainting; this model runs it as ordinary \
                 inpainting"
                    .into(),
            );
        }
        match (&req.mode, self.configs.family, self.kontext) {
            // FLUX.2 edits by reference; --strength asks for the noised-input edit instead.
            (Mode::Img2Img { image, .. }, Family::Flux2, _) if !how.strength_given => {
                req.mode = Mode::Reference { image: image.clone() };
                None
            }
            // A Kontext checkpoint edits by instruction: the input becomes its reference.
            (Mode::Img2Img { image, .. }, _, true) => {
                req.mode = Mode::Kontext { image: image.clone(), reference: how.reference_size };
                how.strength_given.then(|| {
                    "this is a FLUX.1 Kontext model: the input is a reference and --strength is ignored".into()
                })
            }
            _ => None,
        }
    }

    fn plan(&self, req: &Request, input: Option<(u32, u32)>, seed: u64, gpu: CudaGeometry) -> Result<Plan> {
        let references = self.reference_sizes(req, input)?;
        // A Hub LoRA is fetched here only when a control image asks for a Control model (a control LoRA).
        let configs = match self.control_lora_width(req, req.control.is_some()) {
            Some(width) => std::borrow::Cow::Owned(self.control_lora_configs(req, width)?),
            None => std::borrow::Cow::Borrowed(&self.configs),
        };
        let plan = plan::plan(req, &configs, input, &references, seed, gpu)?;
        controlnet::check_models(req, &self.configs.transformer)?;
        Ok(plan)
    }

    fn memory(&mut self, req: &Request, work: &Workload, quant: Option<Quant>) -> Result<Option<Estimate>> {
        self.estimate(req, work, quant)
    }

    fn prequantized(&self) -> bool {
        load::gguf_file(&self.files).is_some()
    }

    /// The linear layers LoRAs may target, from the configs (and the stored feed-forward width).
    fn lora_shapes(&self) -> Result<ModelShapes> {
        let t = &self.configs.transformer;
        let (transformer, clip) = match self.configs.family {
            Family::Flux1 => {
                let mlp = load::mlp_rows(&self.files, t, &self.layout())?;
                let clip: ClipConfig = crate::config::read_json(&self.files.text_encoder.config)?;
                (transformer::linear_shapes(t, mlp), crate::models::clip::linear_shapes(&clip))
            }
            // FLUX.2's text encoder is Qwen3: LoRA parts for it are left out (counted as unmatched).
            _ => (crate::models::flux2::linear_shapes(t), Vec::new()),
        };
        Ok(ModelShapes {
            transformer: transformer.into_iter().collect(),
            clip: clip.into_iter().collect(),
            double: t.num_layers,
            single: t.num_single_layers,
            family: self.configs.family,
            aliases: Default::default(),
        })
    }

    fn prompts<'r>(&self, req: &'r Request) -> Vec<PromptUse<'r>> {
        let plain = |text| PromptUse { text, how: EncodeAs::default() };
        std::iter::once(plain(req.prompt.as_str())).chain(self.negative_text(req).map(plain)).collect()
    }

    fn negative<'r>(&self, req: &'r Request) -> Option<PromptUse<'r>> {
        self.negative_text(req).map(|text| PromptUse { text, how: EncodeAs::default() })
    }

    fn text_encoder(&self, env: &Env, first: &Request, loras: &Loras) -> Result<Box<dyn TextEncoder>> {
        let (msl, q) = (first.max_sequence_length, first.quantize);
        Ok(match self.configs.family {
            Family::Flux1 => {
                let clip_lora = loras.set.as_deref().filter(|l| l.touches_clip).map(|set| ClipLora {
                    set,
                    scale: loras.scale.clone(),
                    prefix: "",
                });
                Box::new(crate::text::TextEncoders::load(&self.files, msl, env.dtype, env.device, q, clip_lora)?)
            }
            _ => Box::new(crate::text::qwen::QwenText::load(&self.files, msl, env.dtype, env.device, q)?),
        })
    }

    fn prepare(&mut self, env: &Env, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Prepared> {
        if self.configs.family == Family::Flux1 {
            // A control LoRA makes the transformer a Control one for this edit (the session loaded its files).
            let width = self.control_lora_width(req, true).unwrap_or(self.base_in_channels);
            structure::set_input_width(&mut self.configs, width);
        }
        let staged = match self.configs.family {
            Family::Flux1 => self.stage(env, req, input, plan)?,
            _ => self.stage_flux2(env, req, input, plan)?,
        };
        let Staged { start, mask, input, reference, channels, controls } = staged;
        self.edit = Some(Edit {
            channels: start.channels,
            height: start.height,
            width: start.width,
            noise: start.noise,
            clean: start.clean,
            reference,
            cache: req.cache,
            extra: channels,
            redux: self.redux_tokens(env, req)?,
            controls,
            run: None,
        });
        Ok(Prepared { latents: start.packed, mask, input })
    }

    /// The transformer for `req`: loaded once; rebuilt when a merged LoRA must run at another scale.
    fn load_denoiser(&mut self, env: &Env, req: &Request, loras: &Loras) -> Result<()> {
        if self.merged_at.is_some_and(|s| s != req.lora_scale) {
            self.transformer = None;
        }
        if self.transformer.is_some() {
            // The ControlNets follow each request even when the transformer stays.
            return self.load_controlnets(env, req);
        }
        let merge = loras.merge && req.quantize.is_none() && load::gguf_file(&self.files).is_none();
        let lora = loras.set.clone().map(|set| Arc::new(LoraApply { set, merge, scale: loras.scale.clone() }));
        let opts = load::TransformerOptions {
            family: self.configs.family,
            quantize: req.quantize,
            lora,
            dtype: env.dtype,
            device: env.device.clone(),
        };
        let loaded = load::transformer(&self.files, &self.configs.transformer, &self.layout(), &opts)?;
        if let Some(note) = &loaded.note {
            env.note(note);
        }
        if let Some(l) = &loras.set {
            let how = if merge { "merged into the weights (no cost per step)" } else { "run as side paths each step" };
            env.note(&format!("{} LoRA adapter(s) {how}", l.specs().len()));
        }
        self.merged_at = (merge && loras.set.is_some()).then_some(req.lora_scale);
        self.transformer = Some(loaded.model);
        self.load_controlnets(env, req)
    }

    fn unload_denoiser(&mut self) {
        self.transformer = None;
    }

    /// The transformer's inputs for the whole loop: with CFG the prompt and the negative prompt go through it as
    /// one batch; Kontext's and klein's reference tokens ride along; inpainting puts the kept latents back after
    /// every step.
    fn begin(
        &mut self,
        env: &Env,
        cond: &Conditioning,
        negative: Option<&Conditioning>,
        prepared: &Prepared,
        plan: &Plan,
    ) -> Result<usize> {
        let (dev, dtype) = (env.device, env.dtype);
        let edit = self.edit.as_ref().expect("prepared before begin");
        // Redux joins its image tokens to the prompt's (the plan refuses it with CFG's negative prompt).
        let (cond_txt, cond_pooled) = redux::condition(&cond.txt, cond.pooled.as_ref(), &edit.redux)?;
        let control = match edit.controls.is_empty() {
            true => None,
            // A schnell-like base plans no guidance; a ControlNet that embeds it gets the default.
            false => Some(ControlCond {
                txt: cond_txt.clone(),
                pooled: cond_pooled.clone(),
                guidance: Tensor::new(&[plan.guidance.unwrap_or(DEFAULT_GUIDANCE) as f32], dev)?.to_dtype(dtype)?,
            }),
        };
        let txt = match negative {
            Some(neg) => Tensor::cat(&[&cond_txt, &neg.txt], 0)?,
            None => cond_txt,
        };
        let pooled = match (&cond_pooled, negative.and_then(|n| n.pooled.as_ref())) {
            (Some(p), Some(n)) => Some(Tensor::cat(&[p, n], 0)?),
            (p, _) => p.clone(),
        };
        let (img_ids, txt_ids) = match self.configs.family {
            Family::Flux1 => {
                let mut img_ids = edit::image_ids(edit.height / 2, edit.width / 2, dtype, dev)?;
                if let Some(r) = &edit.reference {
                    img_ids = Tensor::cat(&[&img_ids, &r.ids], 1)?;
                }
                (img_ids, Tensor::zeros((1, txt.dim(1)?, 3), dtype, dev)?)
            }
            _ => flux2::ids(edit, txt.dim(1)?, dtype, dev)?,
        };
        let guidance = plan.guidance.map(|g| Tensor::new(&[g as f32], dev)?.to_dtype(dtype)).transpose()?;
        let blend = self.blend(env, edit, prepared.mask.as_ref())?;
        let model = self.transformer.as_ref().expect("loaded before begin");
        let cache = edit.cache.map(|spec| StepCache::new(spec, model.blocks())).transpose()?;
        let run = Run {
            txt,
            pooled,
            img_ids,
            txt_ids,
            guidance,
            cfg_scale: plan.cfg_scale,
            blend,
            schedule: plan.schedule.clone(),
            cache,
            control,
        };
        let steps = run.schedule.steps_to_run();
        self.edit.as_mut().expect("prepared before begin").run = Some(run);
        Ok(steps)
    }

    /// One Euler step of the flow at the schedule's `t_start + k`, then the inpainting blend.
    fn step(&mut self, x: Tensor, k: usize) -> Result<Tensor> {
        let edit = self.edit.as_mut().expect("prepared before stepping");
        let run = edit.run.as_mut().expect("begun before stepping");
        let model = self.transformer.as_ref().expect("loaded before denoising");
        let inputs = Inputs {
            img_ids: &run.img_ids,
            txt: &run.txt,
            txt_ids: &run.txt_ids,
            pooled: run.pooled.as_ref(),
            guidance: run.guidance.as_ref(),
        };
        let reference = edit.reference.as_ref().map(|r| &r.tokens);
        let channels = edit.extra.as_ref();
        let control = run.control.as_ref().map(|c| controlnet::ControlStep {
            nets: &self.controlnets,
            active: &edit.controls,
            inputs: Inputs { txt: &c.txt, pooled: c.pooled.as_ref(), guidance: Some(&c.guidance), ..inputs },
            k,
            steps: run.schedule.steps_to_run(),
        });
        let guided = edit::Guided { model, inputs, cfg_scale: run.cfg_scale, reference, channels, control };
        let i = run.schedule.t_start + k;
        let x = match run.cache.as_mut() {
            Some(cache) => edit::euler_step(x, &run.schedule, i, |x, t| guided.velocity_cached(x, t, cache))?,
            None => edit::euler_step(x, &run.schedule, i, |x, t| guided.velocity(x, t))?,
        };
        let next = (i + 1 < run.schedule.timesteps.len()).then(|| run.schedule.sigmas[i + 1]);
        Ok(match &run.blend {
            Some(b) => b.apply(&x, next)?,
            None => x,
        })
    }

    fn cache_report(&self) -> Option<(CacheSpec, CacheReport)> {
        let cache = self.edit.as_ref()?.run.as_ref()?.cache.as_ref()?;
        Some((cache.spec(), cache.report()))
    }

    fn decode(&mut self, env: &Env, latents: &Tensor) -> Result<RgbImage> {
        let edit = self.edit.take().expect("prepared before decoding");
        self.decode_grid(env, latents, (edit.channels, edit.height, edit.width))
    }

    fn preview(&mut self, env: &Env, latents: &Tensor) -> Result<Option<RgbImage>> {
        let Some(edit) = &self.edit else { return Ok(None) };
        let grid = (edit.channels, edit.height, edit.width);
        self.decode_grid(env, latents, grid).map(Some)
    }
}

impl Flux {
    /// Packed latents of `(channels, height, width)` through the VAE.
    fn decode_grid(&mut self, env: &Env, latents: &Tensor, grid: (usize, usize, usize)) -> Result<RgbImage> {
        if self.configs.family != Family::Flux1 {
            return self.decode_flux2(env, latents, grid.1, grid.2);
        }
        let z = edit::unpack_for_decode(latents, grid, &edit::LatentSpace::of(&self.configs.vae))?;
        let decoded = self.vae(env)?.decode(&z)?;
        edit::ensure_finite(&decoded, "VAE decoding", VAE_CAUSE)?;
        image_io::from_tensor(&decoded)
    }
}

/// Why the VAE's output goes non-finite.
pub(crate) const VAE_CAUSE: &str =
    "the VAE weights may hold NaN/inf values (check --vae), or f16 overflowed (try --dtype f32)";
