//! What one edit asks for: a [`Request`], already checked for type and range by whoever built it (the CLI, or a
//! library user), and the [`Mode`] that says how the picture is made.

use crate::image_io::ResizeMode;
use crate::kernels::Kernels;
use crate::models::linear::Quant;
use crate::rng::RngSettings;
use crate::source::Overrides;
use crate::weights::lora::LoraSpec;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// How the image is made. Each mode is the numerics of one diffusers pipeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// SDEdit, as `FluxImg2ImgPipeline`: the input is encoded, noised to the point `strength` selects (0 keeps
    /// the input, 1 ignores it) and denoised.
    Img2Img { image: PathBuf, strength: f64 },
    /// Text-to-image, as `FluxPipeline`: pure noise of the requested size, every step run.
    Txt2Img,
    /// Inpainting, as `FluxInpaintPipeline`: SDEdit whose unmasked latents are put back after every step.
    Inpaint { image: PathBuf, strength: f64, mask: Mask },
    /// Instruction editing with FLUX.1 Kontext, as `FluxKontextPipeline`: the input is a reference the transformer
    /// sees as extra tokens; the picture starts from pure noise.
    Kontext { image: PathBuf, reference: ReferenceSize },
    /// FLUX.2 reference editing, as `Flux2KleinPipeline` with `image=[input, *references]`: the input (and the
    /// request's further references) are tokens the transformer attends to; the picture starts from pure noise.
    Reference { image: PathBuf },
}

/// Where an inpainting mask comes from and how it is applied. White (after PIL's luma conversion, ≥ 128)
/// marks what is repainted.
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub source: MaskSource,
    /// Swap repainted and kept areas.
    pub invert: bool,
    /// PIL Gaussian blur radius applied to the mask first (as `mask_processor.blur`); 0 = none.
    pub blur: f32,
    /// diffusers' `padding_mask_crop`: edit only the mask's bounding box grown by this many pixels, at the working
    /// size, and paste the result over the original.
    pub crop_padding: Option<u32>,
    /// Paste the result back over the input with a feathered seam: pixels outside the mask stay the input's.
    pub paste_back: bool,
}

/// A Redux image and its weight (`prompt_embeds_scale` and `pooled_prompt_embeds_scale` in diffusers).
#[derive(Debug, Clone, PartialEq)]
pub struct ReduxImage {
    pub path: PathBuf,
    pub weight: f64,
}

/// Where a control image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ControlSource {
    /// A ready control image (edges, a depth map).
    File(PathBuf),
    /// Canny edges of the input, with these hysteresis thresholds (`--control-from canny`).
    Canny { low: f32, high: f32 },
    /// The input's depth map by Depth Anything (`--control-from depth`; the model is the request's `depth_model`).
    Depth,
}

impl ControlSource {
    /// The record's words: a path, or `canny:LOW,HIGH`.
    pub fn words(&self) -> String {
        match self {
            ControlSource::File(p) => p.to_string_lossy().into_owned(),
            ControlSource::Canny { low, high } => format!("canny:{low},{high}"),
            ControlSource::Depth => "depth".into(),
        }
    }
}

/// One FLUX.1 ControlNet of an edit (`--controlnet`), as diffusers' `FluxControlNet*Pipeline` arguments take it.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlNetSpec {
    /// A diffusers `FluxControlNetModel` folder or Hub repo id.
    pub model: PathBuf,
    /// Its control image (`control_image`).
    pub image: ControlSource,
    /// Union checkpoints: the control mode's name (`control_mode`).
    pub mode: Option<String>,
    /// `controlnet_conditioning_scale`.
    pub scale: f64,
    /// The fraction of the steps that run where it starts and ends acting (`control_guidance_start`/`_end`).
    pub start: f64,
    pub end: f64,
}

/// A mask image file, the input's transparency (transparent = repaint), or outpainting's own mask over the grown
/// canvas (the input is then that canvas).
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSource {
    File(PathBuf),
    Alpha,
    Outpaint(crate::image_io::outpaint::Outpaint),
}

/// The size Kontext's reference image is brought to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ReferenceSize {
    /// The preferred Kontext resolution (about 1 MP) nearest to its aspect ratio, as diffusers' `_auto_resize`.
    #[default]
    Auto,
    /// Its own size floored to the latent grid.
    Input,
}

crate::named_enum!(ReferenceSize, "reference size", [Auto = "auto", Input = "input"]);

impl Mode {
    /// The name records and plan lines use.
    pub fn name(&self) -> &'static str {
        match self {
            Mode::Img2Img { .. } => "img2img",
            Mode::Txt2Img => "txt2img",
            Mode::Inpaint { .. } => "inpaint",
            Mode::Kontext { .. } => "kontext",
            Mode::Reference { .. } => "reference",
        }
    }
}

/// True classifier-free guidance (`true_cfg_scale` with `negative_prompt` in diffusers): each step runs the
/// transformer on the prompt and on the negative prompt and moves `scale` times further from the latter.
#[derive(Debug, Clone, PartialEq)]
pub struct TrueCfg {
    pub negative_prompt: String,
    pub scale: f64,
}

/// Everything one edit needs.
#[derive(Debug, Clone)]
pub struct Request {
    /// A diffusers-layout folder (or what `source::locate` resolved a Hub id to).
    pub model: PathBuf,
    pub mode: Mode,
    pub prompt: String,
    /// Two passes per step against a negative prompt, when set (and its scale above 1).
    pub true_cfg: Option<TrueCfg>,
    /// None: the model's default (28 for guidance-distilled, dev-like models; 4 otherwise).
    pub steps: Option<usize>,
    /// None: [`DEFAULT_GUIDANCE`] where the transformer embeds guidance; ignored otherwise.
    pub guidance: Option<f64>,
    /// None: a random seed, reported in the plan.
    pub seed: Option<u64>,
    /// Generator, its GPU geometry (torch-cuda) and reduced-precision era (torch-cpu).
    pub rng: RngSettings,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// T5 prompt length in tokens.
    pub max_sequence_length: usize,
    pub device: Device,
    pub dtype: DType,
    pub output: PathBuf,
    /// How a different aspect ratio is handled when both width and height are given.
    pub resize: ResizeMode,
    /// Scale the working size down (keeping its aspect) to at most this many megapixels.
    pub max_megapixels: Option<f64>,
    /// Resize the result back to exactly the input's size.
    pub keep_size: bool,
    /// Component weight files replacing the model folder's.
    pub overrides: Overrides,
    /// Quantize the transformer's block matrices (and T5's) at load.
    pub quantize: Option<Quant>,
    /// LoRA adapters (file and weight), applied to the transformer and CLIP.
    pub loras: Vec<LoraSpec>,
    /// Multiplies every adapter (diffusers' `joint_attention_kwargs` scale); 1 = as the weights say.
    pub lora_scale: f64,
    /// Query rows per chunk of the composed attention (CUDA, f16), bounding its score buffers; None: all at once.
    pub attention_chunk: Option<usize>,
    /// Output rows per band of the VAE's composed convolutions (CUDA, f16), bounding im2col; None: whole images.
    pub vae_band: Option<usize>,
    /// Which implementation runs the models' hot operations (CPU kernels, candle's composition, fused CUDA).
    pub kernels: Kernels,
    /// A step cache skipping transformer work between steps (`--cache`); None: every block of every step runs.
    pub cache: Option<crate::engine::cache::CacheSpec>,
    /// FLUX.2: further reference images, after the mode's own input (text-to-image with references is reference
    /// editing without an input; inpainting takes one, as `image_reference`).
    pub references: Vec<PathBuf>,
    /// FLUX.1 Control transformers (Canny/Depth-dev): the control image, or how it is derived from the input.
    pub control: Option<ControlSource>,
    /// FLUX.1 ControlNets, each with its control image; their residuals add up (`FluxMultiControlNetModel`).
    pub controlnets: Vec<ControlNetSpec>,
    /// `--control-from depth`: the Depth Anything folder or Hub id (None: [`crate::engine::depth::DEFAULT_REPO`]).
    pub depth_model: Option<PathBuf>,
    /// FLUX.1 Redux: images whose SigLIP tokens join the prompt's, each with its weight.
    pub redux: Vec<ReduxImage>,
    /// Where Redux's image encoder and embedder are (a folder or Hub id; None: FLUX.1-Redux-dev).
    pub redux_model: Option<PathBuf>,
    /// Stable Diffusion: how the model is sampled (None: the checkpoint's own scheduler) and prompted.
    pub sd: SdOptions,
}

/// Stable Diffusion's own settings (FLUX models refuse them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SdOptions {
    /// `--scheduler`: None runs the checkpoint's own.
    pub scheduler: Option<crate::schedulers::SchedulerKind>,
    /// `--clip-skip N`: the prompt's text states N encoder layers before the last (diffusers' `clip_skip`).
    pub clip_skip: Option<usize>,
    /// `--start-step N`: img2img and inpainting start at step N of the schedule instead of where the strength
    /// puts them.
    pub start_step: Option<usize>,
}

/// Embedded guidance of dev-like models when none is asked for (diffusers' `guidance_scale` default).
pub const DEFAULT_GUIDANCE: f64 = 3.5;
/// FLUX.1 Fill's embedded guidance when none is asked for (`FluxFillPipeline`'s `guidance_scale` default).
pub const DEFAULT_GUIDANCE_FILL: f64 = 30.0;
/// Steps of guidance-distilled (dev-like) models and of timestep-distilled (schnell-like) ones.
pub const DEFAULT_STEPS_DEV: usize = 28;
pub const DEFAULT_STEPS_SCHNELL: usize = 4;

impl Request {
    /// The input image, for modes that edit one.
    pub fn image(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Img2Img { image, .. }
            | Mode::Inpaint { image, .. }
            | Mode::Kontext { image, .. }
            | Mode::Reference { image } => Some(image),
            Mode::Txt2Img => None,
        }
    }

    /// Whether a control image is the input's depth map (the Control transformer's, or a ControlNet's).
    pub fn derives_depth(&self) -> bool {
        self.control.iter().chain(self.controlnets.iter().map(|c| &c.image)).any(|c| *c == ControlSource::Depth)
    }

    /// The inpainting mask, for that mode.
    /// Outpainting's geometry, when the request outpaints.
    pub fn outpaint(&self) -> Option<&crate::image_io::outpaint::Outpaint> {
        match self.mask().map(|m| &m.source) {
            Some(MaskSource::Outpaint(o)) => Some(o),
            _ => None,
        }
    }

    pub fn mask(&self) -> Option<&Mask> {
        match &self.mode {
            Mode::Inpaint { mask, .. } => Some(mask),
            _ => None,
        }
    }

    /// The true-CFG scale and negative prompt when they take effect (scale above 1, as diffusers decides).
    pub fn cfg(&self) -> Option<&TrueCfg> {
        self.true_cfg.as_ref().filter(|c| c.scale > 1.0)
    }

    /// The prompts this request encodes: the prompt, and the negative prompt with true CFG.
    pub fn prompts(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.prompt.as_str()).chain(self.cfg().map(|c| c.negative_prompt.as_str()))
    }

    /// Points the edit at another copy of its input (a downloaded URL, standard input saved to a file).
    pub fn set_image(&mut self, path: std::path::PathBuf) {
        if let Mode::Img2Img { image, .. }
        | Mode::Inpaint { image, .. }
        | Mode::Kontext { image, .. }
        | Mode::Reference { image } = &mut self.mode
        {
            *image = path;
        }
    }

    /// How much of the input is replaced, for modes that start from a noised input.
    pub fn strength(&self) -> Option<f64> {
        match self.mode {
            Mode::Img2Img { strength, .. } | Mode::Inpaint { strength, .. } => Some(strength),
            Mode::Txt2Img | Mode::Kontext { .. } | Mode::Reference { .. } => None,
        }
    }
}
