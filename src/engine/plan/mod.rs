//! Request + model configs + the input's size → a [`Plan`]: working size, steps, guidance, seed and schedule,
//! decided before any weight is read. Pure: problems come back as errors, remarks as `Plan::warnings`. FLUX.1
//! here, FLUX.2 in [`flux2`].

pub mod flux2;
pub mod sd;

use super::request::{
    ControlSource, Mode, ReferenceSize, Request, DEFAULT_GUIDANCE, DEFAULT_GUIDANCE_FILL, DEFAULT_STEPS_DEV,
    DEFAULT_STEPS_SCHNELL,
};
use crate::config::{Family, ModelConfigs, TransformerInputs};
use crate::error::{Error, Result};
use crate::image_io::{self, floor_to_multiple, ResizeMode};
use crate::rng::{CudaGeometry, RngKind};
use crate::schedulers::flow_match::{self, Schedule};

/// Above this many pixels the size is worth a warning (FLUX.1 is trained up to about 2 MP).
const LARGE_AREA: f64 = 4.2e6;

/// What will run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub family: Family,
    pub width: u32,
    pub height: u32,
    /// The input's size, for modes that edit one.
    pub input_size: Option<(u32, u32)>,
    /// The input is centre-cropped to the output's aspect first.
    pub crop: bool,
    /// Kontext: the size the reference image is resized (stretched) to.
    pub reference_size: Option<(u32, u32)>,
    /// FLUX.2: the working size of each conditioning image (the input first where it is one).
    pub references: Vec<(u32, u32)>,
    /// Resize mode in effect (crop, fit, pad or stretch).
    pub resize: ResizeMode,
    pub steps: usize,
    pub guidance: Option<f64>,
    /// True CFG in effect: the scale (the negative prompt is the request's).
    pub cfg_scale: Option<f64>,
    pub seed: u64,
    /// The GPU whose CUDA generator is reproduced (torch-cuda only).
    pub rng_gpu: Option<CudaGeometry>,
    pub schedule: Schedule,
    /// How the sampler runs, in words for the plan line ("shift mu 0.4594 (dynamic)", "DPM++ 2M Karras").
    pub sampler: String,
    /// How guidance runs, in words for the plan line ("guidance 3.5", "CFG 7.5 (2 UNet passes per step,
    /// batched)").
    pub guide: String,
    /// How a smaller edit of this mode is asked for (what memory advice may suggest).
    pub size_rule: SizeRule,
    /// Stable Diffusion: the discrete scheduler that runs.
    pub scheduler: Option<crate::schedulers::SchedulerKind>,
    /// Remarks for the user (large size, ignored flags); the plan is still valid.
    pub warnings: Vec<String>,
}

/// What sets an edit's size, and so which flag makes it smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeRule {
    /// `--width` / `--height` (modes without an input, reference editing).
    Given,
    /// The input's size, capped by `--max-megapixels`.
    Input,
    /// The input's size, which no flag changes (FLUX.2 inpainting and `--strength`).
    Fixed,
}

/// The flow-matching schedule's shift, in words.
pub fn shift_words(s: &Schedule) -> String {
    s.mu.map(|m| format!("shift mu {m:.4} (dynamic)")).unwrap_or_else(|| "static shift".into())
}

/// Default steps and guidance for a transformer: dev-like models embed guidance.
pub fn defaults(guidance_embeds: bool) -> (usize, Option<f64>) {
    if guidance_embeds {
        (DEFAULT_STEPS_DEV, Some(DEFAULT_GUIDANCE))
    } else {
        (DEFAULT_STEPS_SCHNELL, None)
    }
}

/// Fill and Control transformers need the input their extra channels are made from: a mask (Fill), a control
/// image (Control, not available yet).
fn check_transformer_inputs(req: &Request, cfg: &ModelConfigs) -> Result<TransformerInputs> {
    let inputs = cfg.inputs().map_err(Error::Usage)?;
    if !req.controlnets.is_empty() && inputs != TransformerInputs::Latents {
        return Err(Error::Usage(
            "--controlnet steers a plain FLUX.1 dev/schnell transformer; this one is a Fill or Control model".into(),
        ));
    }
    if req.control.is_some() && inputs != TransformerInputs::Control {
        return Err(Error::Usage(
            "--control/--control-from need a FLUX.1 Control model (Canny-dev or Depth-dev, or a folder whose \
             transformer takes 2 × the latent channels); this model takes no control image"
                .into(),
        ));
    }
    match (inputs, &req.mode) {
        (TransformerInputs::Fill, Mode::Inpaint { .. }) | (TransformerInputs::Latents, _) => Ok(inputs),
        (TransformerInputs::Control, Mode::Txt2Img | Mode::Img2Img { .. } | Mode::Inpaint { .. }) => {
            match &req.control {
                Some(_) => Ok(inputs),
                None => Err(Error::Usage(
                    "this is a FLUX.1 Control model: give --control IMAGE (edges or a depth map) or --control-from \
                     canny|depth"
                        .into(),
                )),
            }
        }
        (TransformerInputs::Fill, mode) => Err(Error::Usage(format!(
            "this is a FLUX.1 Fill model: it repaints a masked area, not {}; give --mask MASK (or --outpaint \
             L,T,R,B), or use a dev/schnell model",
            mode.name()
        ))),
        (TransformerInputs::Control, mode) => Err(Error::Usage(format!(
            "FLUX.1 Control models run text-to-image, img2img and inpainting, not {}",
            mode.name()
        ))),
    }
}

/// What conditions the edit beyond the prompt, for the plan line: Fill, Control's image, Redux, outpainting.
fn conditioning_words(req: &Request, inputs: TransformerInputs) -> String {
    let mut words = Vec::new();
    if inputs == TransformerInputs::Fill {
        words.push("FLUX.1 Fill".to_string());
    }
    if let Some(c) = &req.control {
        words.push(format!("control {}", c.words()));
    }
    for c in &req.controlnets {
        let name = c.model.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mode = c.mode.as_deref().map(|m| format!(" {m}")).unwrap_or_default();
        let window = if (c.start, c.end) == (0.0, 1.0) { String::new() } else { format!(" {}-{}", c.start, c.end) };
        let image = match &c.image {
            ControlSource::File(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            derived => derived.words(),
        };
        words.push(format!("ControlNet {name}{mode} on {image} x{}{window}", c.scale));
    }
    if !req.redux.is_empty() {
        words.push(format!("Redux x{}", req.redux.len()));
    }
    if let Some(o) = req.outpaint() {
        words.push(format!("outpaint ({o})"));
    }
    words.iter().map(|w| format!(", {w}")).collect()
}

/// Redux joins FLUX.1's T5 tokens in the modes diffusers' prior feeds (not Kontext, nor true CFG, whose negative
/// prompt would have fewer tokens than the batch it shares).
fn check_redux(req: &Request, cfg: &ModelConfigs) -> Result<()> {
    if req.redux.is_empty() {
        return Ok(());
    }
    let refuse = |why: &str| Err(Error::Usage(format!("--redux {why}")));
    if cfg.family != Family::Flux1 {
        return refuse("works with FLUX.1 models (its tokens join T5's); FLUX.2 takes --reference images instead");
    }
    if matches!(req.mode, Mode::Kontext { .. }) {
        return refuse("does not go with Kontext, whose input is its reference already");
    }
    if req.cfg().is_some() {
        return refuse("does not go with --true-cfg; drop --negative-prompt/--true-cfg");
    }
    super::redux::check(req)
}

/// Plans `req` for an input of `input` pixels (None: a mode without one) and FLUX.2 references of `references`
/// pixels with `seed`; `gpu` is the CUDA generator's geometry when the request names none (the device's, or an
/// H100's on the CPU).
pub fn plan(
    req: &Request,
    cfg: &ModelConfigs,
    input: Option<(u32, u32)>,
    references: &[(u32, u32)],
    seed: u64,
    gpu: CudaGeometry,
) -> Result<Plan> {
    check_no_sd_flags(req, cfg.family)?;
    if cfg.family == Family::Flux2 && req.control.is_some() {
        return Err(Error::Usage("--control/--control-from need a FLUX.1 Control model; FLUX.2 takes none".into()));
    }
    if cfg.family == Family::Flux2 && !req.controlnets.is_empty() {
        return Err(Error::Usage("--controlnet takes FLUX.1 ControlNets; FLUX.2 models take none".into()));
    }
    check_redux(req, cfg)?;
    if cfg.family == Family::Flux2 {
        return flux2::plan(req, cfg, input, references, seed, gpu);
    }
    check_flux1_request(req)?;
    let multiple = cfg.vae.size_multiple();
    check_size_flags(req, multiple)?;
    let mut warnings = Vec::new();
    let (width, height, crop) = flux1_size(req, input, multiple, &mut warnings)?;
    let reference_size = match (&req.mode, input) {
        (Mode::Kontext { reference, .. }, Some(input)) => Some(reference_size(input, multiple, *reference)),
        _ => None,
    };
    let inputs = check_transformer_inputs(req, cfg)?;
    if let Some(source) = &req.control {
        super::control::check(source, input, (width, height))?;
    }
    super::controlnet::check_request(req, input, (width, height))?;
    if req.derives_depth() {
        super::depth::check(req.depth_model.as_deref())?;
    }
    let (default_steps, mut default_guidance) = defaults(cfg.transformer.guidance_embeds);
    if inputs == TransformerInputs::Fill {
        default_guidance = default_guidance.map(|_| DEFAULT_GUIDANCE_FILL);
    }
    let steps = req.steps.unwrap_or(default_steps);
    let guidance = default_guidance.map(|d| req.guidance.unwrap_or(d));
    if default_guidance.is_none() && req.guidance.is_some() {
        warnings.push("this transformer has no guidance embedding (schnell-like); --guidance is ignored".into());
    }
    let vae_scale = cfg.vae.scale_factor();
    let image_seq_len = (height as usize / vae_scale / 2) * (width as usize / vae_scale / 2);
    let strength = req.strength().unwrap_or(1.0);
    let schedule = flow_match::schedule(&cfg.scheduler, steps, strength, image_seq_len)?;
    if schedule.steps_to_run() == 0 {
        return Err(Error::Usage(format!(
            "--strength {strength} leaves no denoising step out of {steps}; the smallest strength that runs one is \
             any value above 0 (e.g. {:.4} runs exactly 1 step)",
            1.0 / steps as f64
        )));
    }
    let latent_elems = cfg.vae.latent_channels * (height as usize / vae_scale) * (width as usize / vae_scale);
    let rng_gpu = cuda_noise_gpu(req, gpu, latent_elems, &mut warnings);
    let g = guidance.map(|g| g.to_string()).unwrap_or_else(|| "none".into());
    let guide = match req.cfg() {
        Some(c) => format!("guidance {g}, true CFG {} (2 transformer passes per step, batched)", c.scale),
        None => format!("guidance {g}"),
    };
    let guide = guide + &conditioning_words(req, inputs);
    let size_rule = if input.is_none() { SizeRule::Given } else { SizeRule::Input };
    Ok(Plan {
        sampler: shift_words(&schedule),
        guide,
        size_rule,
        family: Family::Flux1,
        width,
        height,
        input_size: input,
        crop,
        reference_size,
        references: Vec::new(),
        resize: req.resize,
        steps,
        guidance,
        cfg_scale: req.cfg().map(|c| c.scale),
        seed,
        rng_gpu,
        schedule,
        scheduler: None,
        warnings,
    })
}

/// Stable Diffusion's flags on a FLUX model: one line naming the flag.
fn check_no_sd_flags(req: &Request, family: Family) -> Result<()> {
    let o = &req.sd;
    let flag = [
        o.scheduler.map(|s| format!("--scheduler {s}")),
        o.clip_skip.map(|n| format!("--clip-skip {n}")),
        o.start_step.map(|n| format!("--start-step {n}")),
    ];
    match flag.into_iter().flatten().next() {
        Some(f) => Err(Error::Usage(format!(
            "{f} is for Stable Diffusion models; this {family} model runs its flow-matching schedule (--strength sets \
             where img2img starts)"
        ))),
        None => Ok(()),
    }
}

/// Kontext's default area (diffusers' `max_area`, 1024²).
const KONTEXT_AREA: f64 = 1024.0 * 1024.0;

/// Kontext's preferred reference sizes (width, height), all about one megapixel.
const KONTEXT_RESOLUTIONS: [(u32, u32); 17] = [
    (672, 1568),
    (688, 1504),
    (720, 1456),
    (752, 1392),
    (800, 1328),
    (832, 1248),
    (880, 1184),
    (944, 1104),
    (1024, 1024),
    (1104, 944),
    (1184, 880),
    (1248, 832),
    (1328, 800),
    (1392, 752),
    (1456, 720),
    (1504, 688),
    (1568, 672),
];

/// Kontext's output: `--width`/`--height` as given (one of them: the other from the input's aspect); neither:
/// the input's aspect at `--max-megapixels` (default 1024²), as diffusers rescales to `max_area`.
fn kontext_size(req: &Request, input: (u32, u32), multiple: u32) -> (u32, u32) {
    if req.width.is_some() || req.height.is_some() {
        return image_io::target_size(input, req.width, req.height, multiple);
    }
    let area = req.max_megapixels.map_or(KONTEXT_AREA, |mp| mp * 1e6);
    let ar = input.0 as f64 / input.1 as f64;
    let side = |v: f64| floor_to_multiple(round_half_even(v), multiple);
    (side((area * ar).sqrt()), side((area / ar).sqrt()))
}

/// Python's `round` (ties to even).
fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// The size Kontext's reference is stretched to: its own floored to the grid, or the preferred resolution with
/// the nearest aspect (ties: smaller width, then smaller height), as diffusers' `_auto_resize`.
fn reference_size(input: (u32, u32), multiple: u32, rule: ReferenceSize) -> (u32, u32) {
    let own = (input.0 - input.0 % multiple, input.1 - input.1 % multiple);
    let (own_w, own_h) = (own.0.max(multiple), own.1.max(multiple));
    if rule == ReferenceSize::Input {
        return (own_w, own_h);
    }
    let ar = own_w as f64 / own_h as f64;
    let key = |&(w, h): &(u32, u32)| ((ar - w as f64 / h as f64).abs(), w, h);
    let best =
        KONTEXT_RESOLUTIONS.iter().min_by(|a, b| key(a).partial_cmp(&key(b)).expect("finite")).expect("non-empty");
    (best.0 - best.0 % multiple, best.1 - best.1 % multiple)
}

/// The size a mode without an input makes: both flags are needed.
pub(super) fn given_size(req: &Request) -> Result<(u32, u32)> {
    match (req.width, req.height) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(Error::Usage(format!(
            "{} without an input image needs the output size: give --width and --height (e.g. 1024)",
            req.mode.name()
        ))),
    }
}

/// A true-CFG scale must be a number; at or below 1 the negative pass would change nothing.
fn check_true_cfg(req: &Request) -> Result<()> {
    let Some(cfg) = &req.true_cfg else { return Ok(()) };
    if !cfg.scale.is_finite() {
        return Err(Error::Usage(format!("--true-cfg {} is not a number", cfg.scale)));
    }
    if cfg.scale <= 1.0 {
        return Err(Error::Usage(
            "--negative-prompt needs --true-cfg F (F > 1, e.g. 4) with FLUX.1: it is guidance-distilled and only uses \
             a negative prompt through true classifier-free guidance"
                .into(),
        ));
    }
    Ok(())
}

/// `--width` / `--height` must be positive multiples of the latent grid.
/// What FLUX.1 cannot do: FLUX.2 references, and `--paste-back` over a padded input; and true CFG's flags.
fn check_flux1_request(req: &Request) -> Result<()> {
    if !req.references.is_empty() {
        return Err(Error::Usage(
            "--reference is for FLUX.2 models; FLUX.1 Kontext takes its one reference as the input (--image)".into(),
        ));
    }
    if matches!(req.mode, Mode::Reference { .. }) {
        return Err(Error::Usage("reference editing needs a FLUX.2 model; for FLUX.1 use Kontext (--kontext)".into()));
    }
    check_true_cfg(req)?;
    if let (Mode::Inpaint { mask, .. }, ResizeMode::Pad) = (&req.mode, req.resize) {
        if mask.paste_back && mask.crop_padding.is_none() {
            return Err(Error::Usage("--paste-back does not work with --resize pad; use crop, fit or stretch".into()));
        }
    }
    Ok(())
}

/// FLUX.1's working size and whether the input is cropped, by mode.
fn flux1_size(
    req: &Request,
    input: Option<(u32, u32)>,
    multiple: u32,
    warnings: &mut Vec<String>,
) -> Result<(u32, u32, bool)> {
    Ok(match (input, &req.mode) {
        (Some(input), Mode::Kontext { .. }) => {
            let (w, h) = kontext_size(req, input, multiple);
            (w, h, false)
        }
        (Some(input), Mode::Inpaint { mask, .. }) if mask.crop_padding.is_some() => {
            // The mask's region is edited instead of the centre: its size follows from the flags alone.
            let (w, h) = image_io::target_size(input, req.width, req.height, multiple);
            (w, h, false)
        }
        (Some(input), _) => working_size(req, input, multiple, warnings)?,
        (None, _) => {
            let (w, h) = given_size(req)?;
            (w, h, false)
        }
    })
}

/// The GPU whose CUDA generator torch-cuda noise reproduces, with a warning when the latents are large enough for
/// the GPU's size to matter and none was named.
pub(super) fn cuda_noise_gpu(
    req: &Request,
    gpu: CudaGeometry,
    latent_elems: usize,
    warnings: &mut Vec<String>,
) -> Option<CudaGeometry> {
    let rng_gpu = (req.rng.kind == RngKind::TorchCuda).then(|| req.rng.gpu.unwrap_or(gpu));
    if let (Some(g), None) = (rng_gpu, req.rng.gpu) {
        if latent_elems > g.max_independent() {
            warnings.push(format!(
                "torch-cuda noise for {latent_elems} latent values depends on the GPU's size; this reproduces a {g} \
                 (SMs x threads per SM) GPU — give --rng-gpu for another (e.g. 4090, l4, a100)"
            ));
        }
    }
    rng_gpu
}

pub(super) fn check_size_flags(req: &Request, multiple: u32) -> Result<()> {
    for (flag, v) in [("--width", req.width), ("--height", req.height)] {
        if let Some(v) = v.filter(|v| *v == 0 || v % multiple != 0) {
            let lo = (v / multiple).max(1) * multiple;
            return Err(Error::Usage(format!(
                "{flag} {v} is not a multiple of {multiple} (the model's VAE downscale × 2); use {lo} or {}",
                lo + multiple
            )));
        }
    }
    Ok(())
}

/// The size the model works at (after resize mode and the megapixel cap) and whether the input is cropped.
fn working_size(
    req: &Request,
    input: (u32, u32),
    multiple: u32,
    warnings: &mut Vec<String>,
) -> Result<(u32, u32, bool)> {
    let (mut width, mut height) = image_io::target_size(input, req.width, req.height, multiple);
    let other_aspect = req.width.is_some()
        && req.height.is_some()
        && (input.0 as u64 * height as u64 != input.1 as u64 * width as u64);
    let floor = |v: f64| floor_to_multiple(v, multiple);
    if other_aspect && req.resize == ResizeMode::Fit {
        let (w, h) = image_io::fit_inside(input, width, height);
        (width, height) = (floor(w as f64), floor(h as f64));
    }
    let area = width as f64 * height as f64;
    match req.max_megapixels {
        Some(mp) if mp.is_nan() || mp <= 0.0 => {
            return Err(Error::Usage(format!("--max-megapixels {mp} must be above 0")));
        }
        Some(mp) if area > mp * 1e6 => {
            let f = (mp * 1e6 / area).sqrt();
            (width, height) = (floor(width as f64 * f), floor(height as f64 * f));
        }
        None if area > LARGE_AREA => warnings.push(format!(
            "{width}x{height} is {:.1} megapixels; FLUX.1 is trained up to ~2 MP and this needs a lot of memory; \
             --max-megapixels 1 (with --keep-size) edits at 1 MP and gives back the input's size",
            area / 1e6
        )),
        _ => {}
    }
    Ok((width, height, other_aspect && req.resize == ResizeMode::Crop))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kontext_reference_sizes_match_diffusers() {
        // Examples from diffusers' FluxKontextPipeline on FLUX.1's 16-pixel grid.
        assert_eq!(reference_size((96, 64), 16, ReferenceSize::Auto), (1248, 832));
        assert_eq!(reference_size((100, 60), 16, ReferenceSize::Auto), (1456, 720));
        assert_eq!(reference_size((48, 64), 16, ReferenceSize::Auto), (880, 1184));
        assert_eq!(reference_size((80, 80), 16, ReferenceSize::Auto), (1024, 1024));
        assert_eq!(reference_size((100, 60), 16, ReferenceSize::Input), (96, 48));
    }

    #[test]
    fn python_rounding() {
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(3.5), 4.0);
        assert_eq!(round_half_even(1168.4), 1168.0);
    }
}
