//! Stable Diffusion 1.x/2.x and SDXL behind [`ModelFamily`], as diffusers' `StableDiffusion[XL]Pipeline`, its
//! img2img variants and `StableDiffusionInpaintPipeline` run them: CLIP prompts (SDXL: both encoders and the
//! size conditioning), CFG with the negative prompt and the prompt as one batch of two, a discrete scheduler
//! (the checkpoint's or `--scheduler`'s) stepping the UNet's noise or v prediction, inpainting with 9-channel
//! UNets or the 4-channel mask blend, and the VAE at its `scaling_factor`. Configs are read at open; the VAE and
//! UNet load on first use and are kept. The start latents are in [`start`].

mod memory;
mod start;

use super::{Adapt, Env, Loras, ModelFamily, Prepared, PromptUse};
use crate::config::sd::SdConfigs;
use crate::config::Family;
use crate::engine::memory::{Estimate, Workload};
use crate::engine::plan::{self, Plan};
use crate::engine::request::{Mode, Request};
use crate::engine::{edit, inpaint};
use crate::error::{Error, Result};
use crate::image_io;
use crate::models::linear::{Quant, Quantizer};
use crate::models::unet::{Added, UNet};
use crate::models::vae::AutoencoderKl;
use crate::rng::{self, CudaGeometry, NoiseSource};
use crate::schedulers::Scheduler;
use crate::source::sd::SdFiles;
use crate::source::Overrides;
use crate::text::{Conditioning, EncodeAs, TextEncoder};
use crate::weights::flux_keys::Source;
use crate::weights::lora::sd::TEXT_ENCODER_2;
use crate::weights::lora::{merged, shapes, ModelShapes};
use crate::weights::{unet_keys, vae_keys, CheckedWeights, NameMap};
use candle_core::{DType, Tensor};
use image::RgbImage;
use start::{Encoder, InpaintState};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Where an original single file keeps a diffusers VAE tensor: its quant convs at the top, the rest as FLUX's
/// `ae.safetensors` names them.
fn original_vae_name(name: &str, blocks: usize, prefix: &str) -> Source {
    if name.starts_with("quant_conv.") || name.starts_with("post_quant_conv.") {
        return Source::One(format!("{prefix}{name}"));
    }
    vae_keys::diffusers_to_bfl(name, blocks, prefix)
}

/// The edit in progress: its generator (Euler a draws from it at every step), scheduler and conditioning.
struct Edit {
    gen: Box<dyn NoiseSource>,
    sched: Box<dyn Scheduler>,
    t_start: usize,
    inpaint: Option<InpaintState>,
    run: Option<Run>,
}

/// The UNet's conditioning for every step: text states (negative first with CFG), SDXL's added conditioning.
struct Run {
    ctx: Tensor,
    added: Option<(Tensor, Tensor)>,
    cfg_scale: Option<f64>,
}

pub struct Sd {
    files: SdFiles,
    cfg: SdConfigs,
    vae: Option<AutoencoderKl>,
    /// The dtype the VAE runs in (f32 for SDXL's in f16 edits).
    vae_dtype: DType,
    unet: Option<UNet>,
    /// The LoRA scale merged into the loaded UNet, if LoRAs were.
    merged_at: Option<f64>,
    /// The `--quantize` format of the loaded UNet's attention matrices.
    quantized: Option<Quant>,
    edit: Option<Edit>,
}

impl Sd {
    /// Reads the folder's configs (and, with `weights`, finds the weight files) and applies overrides.
    pub fn open(model: &Path, family: Family, o: &Overrides, weights: bool) -> Result<Self> {
        let mut files = SdFiles::resolve(model, family, weights)?;
        files.apply(o)?;
        let cfg = SdConfigs::read(&files.config_files())?;
        Ok(Self {
            files,
            cfg,
            vae: None,
            vae_dtype: DType::F32,
            unet: None,
            merged_at: None,
            quantized: None,
            edit: None,
        })
    }

    /// The VAE, loaded on first use; SDXL's in f32 when the edit runs in f16 (its VAE overflows f16, so diffusers
    /// upcasts it: `force_upcast`).
    fn vae(&mut self, env: &Env) -> Result<&AutoencoderKl> {
        if self.vae.is_none() {
            let dtype = if self.cfg.family == Family::Sdxl && env.dtype == DType::F16 { DType::F32 } else { env.dtype };
            let w = CheckedWeights::open("vae", &self.files.vae.weights)?;
            let map = self.files.original.vae.clone().map(|prefix| {
                let blocks = self.cfg.vae.block_out_channels.len();
                Arc::new(move |n: &str| original_vae_name(n, blocks, &prefix)) as NameMap
            });
            let vb = w.var_builder(dtype, env.device, map);
            let vae = AutoencoderKl::new(&self.cfg.vae, self.cfg.vae.activation(), vb)?;
            w.finish()?;
            (self.vae, self.vae_dtype) = (Some(vae), dtype);
        }
        Ok(self.vae.as_ref().expect("loaded above"))
    }

    /// Names in an original single-file UNet (one `layers_per_block` for every level, as that layout has).
    fn unet_map(&self) -> Result<NameMap> {
        let u = &self.cfg.unet;
        let layers = u.layers_per_block.expand(u.blocks());
        if layers.iter().any(|&l| l != layers[0]) {
            return Err(Error::Usage("a single-file UNet needs one layers_per_block for every block".into()));
        }
        let (per, up): (usize, Vec<bool>) =
            (layers[0], u.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect());
        Ok(Arc::new(move |n: &str| Source::One(unet_keys::diffusers_to_ldm(n, per, &up))))
    }

    /// Each UNet module's name in the original layout (`input_blocks.4.1.…`, as kohya's SDXL LoRAs name them) →
    /// its diffusers name; none when the block layout has no original form.
    fn original_names<'a>(&self, names: impl Iterator<Item = &'a str>) -> HashMap<String, String> {
        let u = &self.cfg.unet;
        let layers = u.layers_per_block.expand(u.blocks());
        if layers.iter().any(|&l| l != layers[0]) {
            return HashMap::new();
        }
        let up: Vec<bool> = u.up_block_types.iter().map(|t| t.starts_with("CrossAttn")).collect();
        names
            .filter_map(|n| {
                let module = n.strip_suffix(".weight")?;
                let ldm = unet_keys::diffusers_to_ldm(n, layers[0], &up);
                let ldm = ldm.strip_prefix(unet_keys::PREFIX)?.strip_suffix(".weight")?;
                Some((ldm.to_string(), module.to_string()))
            })
            .collect()
    }

    /// The CFG scale when CFG runs.
    fn cfg_scale(&self, req: &Request) -> Option<f64> {
        Some(plan::sd::guidance(req, &self.cfg)).filter(|g| *g > 1.0)
    }

    /// Start latents (and inpainting's state) for `req`, drawing from `gen` in the pipeline's order.
    fn start(
        &mut self,
        env: &Env,
        req: &Request,
        input: Option<&RgbImage>,
        plan: &Plan,
        gen: &mut dyn NoiseSource,
        sched: &dyn Scheduler,
    ) -> Result<(Tensor, Option<inpaint::PreparedMask>, Option<InpaintState>)> {
        let f = self.cfg.vae.scale_factor();
        let c = self.cfg.vae.latent_channels;
        let t_start = plan.schedule.t_start;
        let nine = self.cfg.inpainting_unet();
        if nine && !matches!(req.mode, Mode::Inpaint { .. }) {
            return Err(Error::Usage("this is an inpainting UNet (9 input channels): give --mask with --image".into()));
        }
        let Some(input) = input.filter(|_| req.mode != Mode::Txt2Img) else {
            let grid = (c, plan.height as usize / f, plan.width as usize / f);
            return Ok((start::txt2img(gen, grid, sched, env.dtype, env.device)?, None, None));
        };
        let scale = self.cfg.vae.latent_scale();
        self.vae(env)?;
        let (dtype, dev) = (self.vae_dtype, env.device.clone());
        match &req.mode {
            Mode::Inpaint { mask: spec, image, .. } => {
                let mut warnings = Vec::new();
                let m = inpaint::prepare(spec, image, input, plan, &mut warnings)?;
                warnings.iter().for_each(|w| env.warn(w));
                let model_input = inpaint::model_input(input.clone(), plan, &m);
                let pixels = image_io::to_tensor(&model_input, &dev)?.to_dtype(dtype)?;
                let enc = Encoder { vae: self.vae(env)?, scale, channels: c };
                let (latents, state) = start::inpaint(&enc, &pixels, &m, gen, sched, t_start, nine, f)?;
                Ok((latents.to_dtype(env.dtype)?, Some(m), Some(state.into_dtype(env.dtype)?)))
            }
            _ => {
                let pixels = image_io::to_tensor(&edit::fit_to_plan(input.clone(), plan), &dev)?.to_dtype(dtype)?;
                let enc = Encoder { vae: self.vae(env)?, scale, channels: c };
                Ok((start::img2img(&enc, &pixels, gen, sched, t_start)?.to_dtype(env.dtype)?, None, None))
            }
        }
    }

    /// SDXL's `add_time_ids`: original size, crop's top-left, target size (height first), for each batch row.
    fn time_ids(plan: &Plan, rows: usize, dev: &candle_core::Device) -> Result<Tensor> {
        let (h, w) = (plan.height as f32, plan.width as f32);
        let one = [h, w, 0.0, 0.0, h, w];
        Ok(Tensor::new(&one, dev)?.unsqueeze(0)?.repeat((rows, 1))?)
    }
}

impl ModelFamily for Sd {
    fn family(&self) -> Family {
        self.cfg.family
    }

    fn size_multiple(&self) -> u32 {
        self.cfg.vae.scale_factor() as u32
    }

    fn adapt(&self, _: &mut Request, _: &Adapt) -> Option<String> {
        None
    }

    fn plan(&self, req: &Request, input: Option<(u32, u32)>, seed: u64, gpu: CudaGeometry) -> Result<Plan> {
        plan::sd::plan(req, &self.cfg, input, seed, gpu)
    }

    fn memory(&mut self, req: &Request, work: &Workload, quantize: Option<Quant>) -> Result<Option<Estimate>> {
        self.estimate(req, work, quantize)
    }

    fn prequantized(&self) -> bool {
        false
    }

    /// The UNet's linear and convolution layers (as the model code asks for them) and each CLIP's linears.
    fn lora_shapes(&self) -> Result<ModelShapes> {
        let unet = shapes::requested(|vb| UNet::new(&self.cfg.unet, &Quantizer::default(), vb))?;
        let mut clip = crate::models::clip::linear_shapes(&self.cfg.clip);
        if let Some(c2) = &self.cfg.clip_2 {
            let second = crate::models::clip::linear_shapes(c2);
            clip.extend(second.into_iter().map(|(n, s)| (format!("{TEXT_ENCODER_2}{n}"), s)));
        }
        Ok(ModelShapes {
            aliases: self.original_names(unet.iter().map(|(n, _)| n.as_str())),
            transformer: shapes::lora_targets(&unet).into_iter().collect(),
            clip: clip.into_iter().collect(),
            double: 0,
            single: 0,
            family: self.cfg.family,
        })
    }

    fn prompts<'r>(&self, req: &'r Request) -> Vec<PromptUse<'r>> {
        let how = EncodeAs { clip_skip: req.sd.clip_skip, ..Default::default() };
        std::iter::once(PromptUse { text: req.prompt.as_str(), how }).chain(self.negative(req)).collect()
    }

    /// With CFG: `--negative-prompt`, else the empty text (SDXL: zeros, where its config says so).
    fn negative<'r>(&self, req: &'r Request) -> Option<PromptUse<'r>> {
        self.cfg_scale(req)?;
        let zeros = req.true_cfg.is_none() && self.cfg.family == Family::Sdxl && self.cfg.force_zeros_for_empty_prompt;
        let text = req.true_cfg.as_ref().map_or("", |c| c.negative_prompt.as_str());
        Some(PromptUse { text, how: EncodeAs { negative: true, clip_skip: None, zeros } })
    }

    fn text_encoder(&self, env: &Env, _: &Request, loras: &Loras) -> Result<Box<dyn TextEncoder>> {
        let lora = loras.set.as_deref().filter(|l| l.touches_clip).map(|set| (set, loras.scale.clone()));
        Ok(Box::new(crate::text::sd::SdText::load(&self.files, &self.cfg, env.dtype, env.device, lora)?))
    }

    fn prepare(&mut self, env: &Env, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Prepared> {
        let mut gen = rng::generator(&req.rng, plan.seed, plan.rng_gpu.unwrap_or(CudaGeometry::H100));
        let sched = plan::sd::scheduler(&self.cfg, plan::sd::kind(req, &self.cfg), plan.steps)?;
        let (latents, mask, inpaint) = self.start(env, req, input.as_ref(), plan, gen.as_mut(), sched.as_ref())?;
        edit::ensure_finite(&latents, "VAE encoding", crate::engine::family::flux::VAE_CAUSE)?;
        let t_start = plan.schedule.t_start;
        self.edit = Some(Edit { gen, sched, t_start, inpaint, run: None });
        let input = if mask.is_some() { input } else { None };
        Ok(Prepared { latents, mask, input })
    }

    /// The UNet, loaded once; its LoRAs merged into the weights at the request's scale (rebuilt when another
    /// scale is asked for: the UNet is small next to FLUX's transformer, and merged layers cost nothing per step),
    /// then its attention matrices quantized under `--quantize` (merged first, so a LoRA costs nothing either).
    fn load_denoiser(&mut self, env: &Env, req: &Request, loras: &Loras) -> Result<()> {
        if self.merged_at.is_some_and(|s| s != req.lora_scale) || self.quantized != req.quantize {
            self.unet = None;
        }
        if self.unet.is_none() {
            let w = CheckedWeights::open("unet", &self.files.unet.weights)?;
            let map = self.files.original.unet.then(|| self.unet_map()).transpose()?;
            let mut vb = w.var_builder(env.dtype, env.device, map);
            if let Some(set) = &loras.set {
                vb = merged::var_builder(vb, set.clone(), req.lora_scale);
                env.note(&format!("{} LoRA adapter(s) merged into the UNet", set.specs().len()));
            }
            let q = Quantizer::new(req.quantize.map(Quant::ggml));
            let unet = UNet::new(&self.cfg.unet, &q, vb)?;
            w.finish()?;
            if let Some(f) = req.quantize {
                let why = Some("a UNet is quantized at each load, in seconds".to_string());
                env.note(&crate::engine::load::quantize_note("UNet", f, &q.stats, None, why));
            }
            self.quantized = req.quantize;
            self.unet = Some(unet);
            self.merged_at = loras.set.is_some().then_some(req.lora_scale);
        }
        Ok(())
    }

    fn unload_denoiser(&mut self) {
        self.unet = None;
        self.merged_at = None;
        self.quantized = None;
    }

    fn begin(
        &mut self,
        env: &Env,
        cond: &Conditioning,
        negative: Option<&Conditioning>,
        _: &Prepared,
        plan: &Plan,
    ) -> Result<usize> {
        let pair = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 0);
        let ctx = match negative {
            Some(n) => pair(&n.txt, &cond.txt)?,
            None => cond.txt.clone(),
        };
        let added = match (&cond.pooled, negative.map(|n| &n.pooled)) {
            (Some(p), Some(Some(np))) => Some((pair(np, p)?, Self::time_ids(plan, 2, env.device)?)),
            (Some(p), _) => Some((p.clone(), Self::time_ids(plan, 1, env.device)?)),
            (None, _) => None,
        };
        let edit = self.edit.as_mut().expect("prepared before begin");
        edit.run = Some(Run { ctx, added, cfg_scale: negative.and(plan.cfg_scale) });
        Ok(edit.sched.timesteps().len() - edit.t_start)
    }

    /// Step `t_start + k`: the UNet on both halves of the CFG batch, the guided prediction, the scheduler's step,
    /// then the 4-channel inpainting blend.
    fn step(&mut self, x: Tensor, k: usize) -> Result<Tensor> {
        let edit = self.edit.as_mut().expect("prepared before stepping");
        let run = edit.run.as_ref().expect("begun before stepping");
        let unet = self.unet.as_ref().expect("loaded before denoising");
        let i = edit.t_start + k;
        let rows = run.ctx.dim(0)?;
        let doubled = if rows == 2 { Tensor::cat(&[&x, &x], 0)? } else { x.clone() };
        let mut input = edit.sched.scale_input(&doubled, i)?;
        if let Some(masked) = edit.inpaint.as_ref().and_then(|s| s.masked.as_ref().map(|m| (&s.mask, m))) {
            let rep = |t: &Tensor| t.repeat((rows, 1, 1, 1));
            input = Tensor::cat(&[&input, &rep(masked.0)?.to_dtype(input.dtype())?, &rep(masked.1)?], 1)?;
        }
        let t = Tensor::full(edit.sched.timesteps()[i] as f32, rows, x.device())?;
        let added = run.added.as_ref().map(|(text_embeds, time_ids)| Added { text_embeds, time_ids });
        let out = unet.forward(&input, &t, &run.ctx, added.as_ref())?;
        let guided = match run.cfg_scale {
            Some(g) => {
                let (uncond, text) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
                (&uncond + ((text - &uncond)? * g)?)?
            }
            None => out,
        };
        let gen = &mut edit.gen;
        let mut noise = |like: &Tensor| edit::draw(gen.as_mut(), like);
        let x = edit.sched.step(&guided, i, &x, &mut noise)?;
        Ok(match &edit.inpaint {
            Some(s) => s.blend(&x, edit.sched.as_ref(), i)?,
            None => x,
        })
    }

    fn decode(&mut self, env: &Env, latents: &Tensor) -> Result<RgbImage> {
        self.edit = None;
        self.decode_latents(env, latents)
    }

    fn preview(&mut self, env: &Env, latents: &Tensor) -> Result<Option<RgbImage>> {
        self.decode_latents(env, latents).map(Some)
    }
}

impl Sd {
    /// Latents through the VAE, at its scale and dtype.
    fn decode_latents(&mut self, env: &Env, latents: &Tensor) -> Result<RgbImage> {
        let scale = self.cfg.vae.latent_scale();
        self.vae(env)?;
        let z = (latents / scale)?.to_dtype(self.vae_dtype)?;
        let decoded = self.vae(env)?.decode(&z)?;
        edit::ensure_finite(&decoded, "VAE decoding", crate::engine::family::flux::VAE_CAUSE)?;
        image_io::from_tensor(&decoded)
    }
}
