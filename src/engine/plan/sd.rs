//! Stable Diffusion planning: request + configs + the input's size → [`Plan`], as `StableDiffusion[XL]Pipeline`
//! and its img2img/inpainting variants decide them: the working size (the input's, floored to the VAE's grid, or
//! `--width`/`--height`), 50 steps, CFG 7.5 (SDXL 5.0), the checkpoint's scheduler unless `--scheduler` names
//! another, and the first step: `steps − int(steps·strength)`, or `--start-step`.

use super::{check_size_flags, cuda_noise_gpu, given_size, working_size, Plan, SizeRule};
use crate::config::sd::SdConfigs;
use crate::config::Family;
use crate::engine::request::{Mode, Request};
use crate::error::{Error, Result};
use crate::rng::CudaGeometry;
use crate::schedulers::flow_match::Schedule;
use crate::schedulers::{self, Scheduler, SchedulerKind, Settings};

/// diffusers' `num_inference_steps` default.
pub const STEPS: usize = 50;
/// diffusers' `guidance_scale` defaults: SD 1.x/2.x, SDXL.
pub const GUIDANCE: f64 = 7.5;
pub const GUIDANCE_XL: f64 = 5.0;

/// The CFG scale `req` runs with (CFG runs above 1).
pub fn guidance(req: &Request, cfg: &SdConfigs) -> f64 {
    req.guidance.unwrap_or(if cfg.family == Family::Sdxl { GUIDANCE_XL } else { GUIDANCE })
}

/// The scheduler `req` runs.
pub fn kind(req: &Request, cfg: &SdConfigs) -> SchedulerKind {
    req.sd.scheduler.unwrap_or(cfg.own_scheduler)
}

/// The scheduler `kind` set up for `steps` steps with the checkpoint's config, as `Kind.from_config` reads it.
pub fn scheduler(cfg: &SdConfigs, kind: SchedulerKind, steps: usize) -> Result<Box<dyn Scheduler>> {
    let settings = Settings::for_kind(&cfg.scheduler, kind).map_err(|e| {
        Error::Usage(format!("--scheduler {kind}: the checkpoint's scheduler config does not fit: {e}"))
    })?;
    schedulers::build(kind, &settings, steps).map_err(|e| Error::Usage(format!("--scheduler {kind}: {e}")))
}

/// The index of the first step: 0 without an input; `--start-step`; else `steps − int(steps·strength)` as
/// diffusers' `get_timesteps` computes it.
fn first_step(req: &Request, steps: usize) -> Result<usize> {
    match (req.strength(), req.sd.start_step) {
        (None, Some(n)) => Err(Error::Usage(format!("--start-step {n} needs an input image (img2img or inpainting)"))),
        (None, None) => Ok(0),
        (Some(_), Some(n)) if n >= steps => Err(Error::Usage(format!(
            "--start-step {n} must be below --steps {steps} (it is the index of the first step that runs)"
        ))),
        (Some(_), Some(n)) => Ok(n),
        (Some(s), None) => Ok(steps - ((steps as f64 * s) as usize).min(steps)),
    }
}

/// FLUX's flags and modes on an SD model: one line each.
fn check_request(req: &Request) -> Result<()> {
    if let Some(c) = req.cfg() {
        return Err(Error::Usage(format!(
            "--true-cfg {} is for FLUX models; Stable Diffusion always runs CFG: its scale is --guidance (e.g. 7.5)",
            c.scale
        )));
    }
    if !req.references.is_empty() || matches!(req.mode, Mode::Reference { .. }) {
        return Err(Error::Usage(
            "--reference is for FLUX.2 models; Stable Diffusion takes no reference images".into(),
        ));
    }
    if req.control.is_some() {
        return Err(Error::Usage(
            "--control/--control-from need a FLUX.1 Control model (--model with a Canny or Depth transformer)".into(),
        ));
    }
    if !req.controlnets.is_empty() {
        return Err(Error::Usage(
            "--controlnet takes FLUX.1 ControlNets (FluxControlNetModel); Stable Diffusion ControlNets are not \
             supported"
                .into(),
        ));
    }
    if let Some(c) = &req.cache {
        return Err(Error::Usage(format!(
            "--cache {c} skips FLUX transformer blocks; Stable Diffusion's UNet has no step cache here"
        )));
    }
    if !req.redux.is_empty() {
        return Err(Error::Usage(
            "--redux is for FLUX.1 models (its tokens join T5's); Stable Diffusion takes none".into(),
        ));
    }
    if matches!(req.mode, Mode::Kontext { .. }) {
        return Err(Error::Usage(
            "--kontext is for FLUX.1 Kontext models; with Stable Diffusion the input is edited by img2img (--strength)"
                .into(),
        ));
    }
    Ok(())
}

/// Plans `req` for an input of `input` pixels (None: text-to-image).
pub fn plan(req: &Request, cfg: &SdConfigs, input: Option<(u32, u32)>, seed: u64, gpu: CudaGeometry) -> Result<Plan> {
    check_request(req)?;
    let f = cfg.vae.scale_factor();
    check_size_flags(req, f as u32)?;
    let mut warnings = Vec::new();
    let (width, height, crop) = match input {
        Some(i) => working_size(req, i, f as u32, &mut warnings)?,
        None => {
            let (w, h) = given_size(req)?;
            (w, h, false)
        }
    };
    let steps = req.steps.unwrap_or(STEPS);
    if steps == 0 {
        return Err(Error::Usage("--steps must be at least 1".into()));
    }
    let kind = kind(req, cfg);
    let sched = scheduler(cfg, kind, steps)?;
    let t_start = first_step(req, steps)?;
    let n = sched.timesteps().len();
    if t_start >= n {
        return Err(Error::Usage(format!(
            "--strength {} leaves no denoising step out of {steps}; use at least {:.4}",
            req.strength().unwrap_or(0.0),
            1.0 / steps as f64
        )));
    }
    let schedule = Schedule {
        sigmas: (0..n).map(|i| sched.sigma_at(i) as f32).chain([0.0]).collect(),
        timesteps: sched.timesteps().iter().map(|&t| t as f32).collect(),
        t_start,
        mu: None,
    };
    let g = guidance(req, cfg);
    let latent_elems = cfg.vae.latent_channels * (height as usize / f) * (width as usize / f);
    let rng_gpu = cuda_noise_gpu(req, gpu, latent_elems, &mut warnings);
    let v = if cfg.v_prediction() { ", v-prediction" } else { "" };
    Ok(Plan {
        family: cfg.family,
        width,
        height,
        input_size: input,
        crop,
        reference_size: None,
        references: Vec::new(),
        resize: req.resize,
        steps,
        guidance: (g <= 1.0).then_some(g),
        cfg_scale: (g > 1.0).then_some(g),
        seed,
        rng_gpu,
        schedule,
        sampler: format!("{} ({kind}{v})", kind.a1111()),
        guide: if g > 1.0 { format!("CFG {g} (2 UNet passes per step, batched)") } else { format!("CFG {g}: off") },
        size_rule: if input.is_none() { SizeRule::Given } else { SizeRule::Input },
        scheduler: Some(kind),
        warnings,
    })
}
