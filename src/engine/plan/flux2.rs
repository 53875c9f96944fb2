//! FLUX.2 (klein) planning: request + configs + the sizes of the input and references → [`Plan`], as
//! `Flux2KleinPipeline` and `Flux2KleinInpaintPipeline` decide them.
//!
//! - Sizes: references are area-capped at 1024² and floored to the 16-pixel grid; text-to-image and reference
//!   editing work at `--width`/`--height`, else at the first reference's size; inpainting and `--strength` (our
//!   SDEdit extension: the inpainting pipeline with an all-white mask) at the input's capped, floored size.
//! - Steps: 4 for step-distilled models (klein 4B/9B, as Black Forest Labs runs them), 50 for base models.
//! - Guidance: base models run true CFG with scale `--guidance` (default 4, 8 when inpainting: diffusers'
//!   defaults) against the empty or `--negative-prompt`; distilled models have none.
//! - Schedule: `mu` from `compute_empirical_mu` over the noise tokens and the full step count.

use super::{check_size_flags, given_size, Plan};
use crate::config::ModelConfigs;
use crate::engine::flux2::working_size;
use crate::engine::request::{Mode, Request};
use crate::error::{Error, Result};
use crate::image_io::ResizeMode;
use crate::rng::CudaGeometry;
use crate::schedulers::flow_match::{self, MuRule};

/// Steps of step-distilled klein models, and of base models (diffusers' default).
pub const STEPS_DISTILLED: usize = 4;
pub const STEPS_BASE: usize = 50;
/// diffusers' `guidance_scale` defaults: reference editing / text-to-image, and inpainting.
pub const GUIDANCE: f64 = 4.0;
pub const GUIDANCE_INPAINT: f64 = 8.0;

/// The true-CFG scale a FLUX.2 request runs with: base models with guidance above 1; distilled models never.
pub fn cfg_scale(req: &Request, cfg: &ModelConfigs) -> Option<f64> {
    if cfg.distilled {
        return None;
    }
    let default =
        if matches!(req.mode, Mode::Inpaint { .. } | Mode::Img2Img { .. }) { GUIDANCE_INPAINT } else { GUIDANCE };
    Some(req.guidance.unwrap_or(default)).filter(|g| *g > 1.0)
}

/// The negative prompt of a FLUX.2 base model's CFG: `--negative-prompt`, else empty (as diffusers).
pub fn negative_prompt(req: &Request) -> &str {
    req.true_cfg.as_ref().map_or("", |c| c.negative_prompt.as_str())
}

/// Plans `req` for an input of `input` pixels and references of `references` pixels (original sizes).
pub fn plan(
    req: &Request,
    cfg: &ModelConfigs,
    input: Option<(u32, u32)>,
    references: &[(u32, u32)],
    seed: u64,
    gpu: CudaGeometry,
) -> Result<Plan> {
    let multiple = cfg.vae.size_multiple();
    check_size_flags(req, multiple)?;
    let mut warnings = Vec::new();
    let own = |size: (u32, u32)| working_size(size, multiple);
    // Conditioning images in order: the input where the mode makes it one, then the references.
    let conditioning: Vec<(u32, u32)> = match (&req.mode, input) {
        (Mode::Reference { .. } | Mode::Inpaint { .. } | Mode::Img2Img { .. }, Some(i)) => {
            std::iter::once(own(i)).chain(references.iter().map(|&r| own(r))).collect()
        }
        _ => references.iter().map(|&r| own(r)).collect(),
    };
    let (width, height) = output_size(req, input, references, &conditioning, multiple, &mut warnings)?;
    let steps = req.steps.unwrap_or(if cfg.distilled { STEPS_DISTILLED } else { STEPS_BASE });
    if cfg.distilled && req.guidance.is_some() {
        warnings.push("this FLUX.2 model is step-distilled (no CFG); --guidance is ignored".into());
    }
    if req.true_cfg.as_ref().is_some_and(|c| c.scale.is_finite() && c.scale != 1.0) {
        warnings.push("--true-cfg is not used with FLUX.2: base models take the CFG scale from --guidance".into());
    }
    let strength = req.strength().unwrap_or(1.0);
    let seq = (height / multiple) as usize * (width / multiple) as usize;
    let schedule = flow_match::schedule_with(&cfg.scheduler, steps, strength, seq, MuRule::Empirical)?;
    if schedule.steps_to_run() == 0 {
        return Err(Error::Usage(format!(
            "--strength {strength} leaves no denoising step out of {steps}; use a larger strength or more --steps"
        )));
    }
    let latent_elems = seq * cfg.transformer.in_channels;
    let rng_gpu = super::cuda_noise_gpu(req, gpu, latent_elems, &mut warnings);
    let cfg_scale = cfg_scale(req, cfg);
    let guide = match cfg_scale {
        Some(g) => format!("CFG {g} (2 transformer passes per step, batched)"),
        None => "no CFG (step-distilled)".into(),
    };
    let size_rule = match req.mode {
        Mode::Inpaint { .. } | Mode::Img2Img { .. } => super::SizeRule::Fixed,
        _ => super::SizeRule::Given,
    };
    Ok(Plan {
        sampler: super::shift_words(&schedule),
        guide,
        size_rule,
        family: crate::config::Family::Flux2,
        width,
        height,
        input_size: input,
        crop: false,
        reference_size: None,
        references: conditioning,
        resize: ResizeMode::Stretch,
        steps,
        guidance: None,
        cfg_scale,
        seed,
        rng_gpu,
        schedule,
        scheduler: None,
        warnings,
    })
}

/// The size the picture is made at: the input's for inpainting and `--strength`, else `--width`/`--height`, else
/// the first conditioning image's.
fn output_size(
    req: &Request,
    input: Option<(u32, u32)>,
    references: &[(u32, u32)],
    conditioning: &[(u32, u32)],
    multiple: u32,
    warnings: &mut Vec<String>,
) -> Result<(u32, u32)> {
    Ok(match (&req.mode, input) {
        (Mode::Kontext { .. }, _) => {
            return Err(Error::Usage(
                "--kontext is for FLUX.1 Kontext; FLUX.2 models edit by reference without it (drop --kontext)".into(),
            ))
        }
        (Mode::Inpaint { mask, .. }, _) if mask.crop_padding.is_some() => {
            return Err(Error::Usage(
                "--mask-crop is not available for FLUX.2 inpainting; drop it (--paste-back keeps the unmasked \
                 pixels)"
                    .into(),
            ))
        }
        (Mode::Inpaint { .. } | Mode::Img2Img { .. }, Some(i)) => {
            if references.len() > 1 {
                return Err(Error::Usage(format!(
                    "FLUX.2 inpainting and --strength take one --reference besides the input (as diffusers' \
                     image_reference); got {}",
                    references.len()
                )));
            }
            let size = working_size(i, multiple);
            if req.width.is_some_and(|w| w != size.0) || req.height.is_some_and(|h| h != size.1) {
                warnings.push(format!(
                    "FLUX.2 inpainting and --strength work at the input's size (at most 1 MP, floored to the 16-pixel \
                     grid: {}x{}), as diffusers does; --width/--height are ignored",
                    size.0, size.1
                ));
            }
            size
        }
        _ => match (conditioning.first(), req.width, req.height) {
            (Some(&(w, h)), None, None) => (w, h),
            (Some(&(w, h)), rw, rh) => (rw.unwrap_or(w), rh.unwrap_or(h)),
            (None, _, _) => given_size(req)?,
        },
    })
}
