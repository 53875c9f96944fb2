//! Model families behind one small interface the session drives: a [`ModelFamily`] plans an edit, encodes prompts
//! (through the [`TextEncoder`] it loads), prepares the start latents, runs one denoising step at a time and
//! decodes. The session owns what every family shares (prompt cache, LoRA files, the step loop, progress, the
//! final composition); each family owns its configs, loaded models and the state of the edit in progress.
//!
//! - [`flux`]: FLUX.1 (dev, schnell, Kontext) and FLUX.2 [klein], flow matching with a transformer;
//! - [`sd`]: Stable Diffusion 1.x/2.x and SDXL, a UNet with the discrete schedulers of [`crate::schedulers`].
//!
//! Adding a family is one more module implementing the trait and one line in [`open`].

pub mod flux;
pub mod sd;

use super::inpaint::PreparedMask;
use super::memory::{Estimate, Workload};
use super::plan::Plan;
use super::progress::{Event, Progress};
use super::request::Request;
use crate::config::Family;
use crate::error::Result;
use crate::models::linear::Quant;
use crate::rng::CudaGeometry;
use crate::source::Overrides;
use crate::text::{Conditioning, EncodeAs, TextEncoder};
use crate::weights::lora::{LoraSet, ModelShapes, ScaleCell};
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::Path;
use std::sync::Arc;

/// Where a family's stages run and whom they tell.
pub struct Env<'a> {
    pub device: &'a Device,
    pub dtype: DType,
    pub progress: &'a dyn Progress,
}

impl Env<'_> {
    pub fn note(&self, text: &str) {
        self.progress.event(Event::Note(text));
    }

    pub fn warn(&self, text: &str) {
        self.progress.event(Event::Warning(text));
    }
}

/// The LoRA adapters of the session, as a family applies them.
#[derive(Clone)]
pub struct Loras {
    pub set: Option<Arc<LoraSet>>,
    /// The scale side paths read at each step (and the prompt encoder at each prompt).
    pub scale: ScaleCell,
    /// Whether adapters may be merged into dense weights (not when a batch sweeps the scale).
    pub merge: bool,
}

/// What the batch knows about a request that its mode does not say: whether `--strength` was given, and the
/// reference size Kontext would use.
#[derive(Debug, Clone, Copy, Default)]
pub struct Adapt {
    pub strength_given: bool,
    pub reference_size: crate::engine::request::ReferenceSize,
}

/// One prompt an edit encodes, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptUse<'r> {
    pub text: &'r str,
    pub how: EncodeAs,
}

/// The start of an edit as its mode prepares it, and what the session needs to finish the picture.
pub struct Prepared {
    /// The latents the first denoising step takes (packed tokens or a latent image, as the family works).
    pub latents: Tensor,
    /// Inpainting: the prepared mask, and the input the result is composed over.
    pub mask: Option<PreparedMask>,
    pub input: Option<RgbImage>,
}

/// A model family's stages; the session calls them in this order for each edit: [`ModelFamily::prepare`],
/// [`ModelFamily::load_denoiser`], [`ModelFamily::begin`], [`ModelFamily::step`] for each step, then
/// [`ModelFamily::decode`].
pub trait ModelFamily {
    /// The family of the opened model.
    fn family(&self) -> Family;

    /// The pixel multiple every working size has.
    fn size_multiple(&self) -> u32;

    /// Adjusts a request's mode to the model (a Kontext checkpoint edits by instruction, FLUX.2 by reference);
    /// gives a warning to show once when a flag is ignored on the way.
    fn adapt(&self, req: &mut Request, how: &Adapt) -> Option<String>;

    /// The plan of `req` for an input of `input` pixels (None for modes without one).
    fn plan(&self, req: &Request, input: Option<(u32, u32)>, seed: u64, gpu: CudaGeometry) -> Result<Plan>;

    /// The expected peak memory of `work` at `quant`; None when a weight file is not on disk.
    fn memory(&mut self, req: &Request, work: &Workload, quant: Option<Quant>) -> Result<Option<Estimate>>;

    /// Whether the denoiser is quantized as stored (GGUF), so that `--quantize` would not change it.
    fn prequantized(&self) -> bool;

    /// The linear layers LoRA files are checked against.
    fn lora_shapes(&self) -> Result<ModelShapes>;

    /// The prompts `req` encodes: its prompt, and the negative prompt when guidance needs one.
    fn prompts<'r>(&self, req: &'r Request) -> Vec<PromptUse<'r>>;

    /// The negative prompt among [`ModelFamily::prompts`], when there is one.
    fn negative<'r>(&self, req: &'r Request) -> Option<PromptUse<'r>>;

    /// The text encoders for a batch whose first request is `first`.
    fn text_encoder(&self, env: &Env, first: &Request, loras: &Loras) -> Result<Box<dyn TextEncoder>>;

    /// The start latents of `req` (noise, or the encoded and noised input), with its mask and references.
    fn prepare(&mut self, env: &Env, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Prepared>;

    /// Loads the denoiser for `req` (once; again when a merged LoRA must run at another scale).
    fn load_denoiser(&mut self, env: &Env, req: &Request, loras: &Loras) -> Result<()>;

    /// Drops the denoiser (its LoRAs changed).
    fn unload_denoiser(&mut self);

    /// Sets up the denoising of the prepared edit with the prompt's conditioning (and the negative prompt's);
    /// gives the number of steps that run.
    fn begin(
        &mut self,
        env: &Env,
        cond: &Conditioning,
        negative: Option<&Conditioning>,
        prepared: &Prepared,
        plan: &Plan,
    ) -> Result<usize>;

    /// Step `k` (0-based among the steps that run): the latents after it.
    fn step(&mut self, x: Tensor, k: usize) -> Result<Tensor>;

    /// The denoised latents as a picture at the working size.
    fn decode(&mut self, env: &Env, latents: &Tensor) -> Result<RgbImage>;

    /// The picture the current latents show, mid-edit, leaving the edit's state as it is; None where a family
    /// has no preview.
    fn preview(&mut self, _env: &Env, _latents: &Tensor) -> Result<Option<RgbImage>> {
        Ok(None)
    }

    /// What the step cache (`--cache`) of the edit in progress skipped so far; None without one (or for a family
    /// that has none).
    fn cache_report(&self) -> Option<(super::cache::CacheSpec, super::cache::CacheReport)> {
        None
    }
}

/// Opens the family the folder holds; `weights`: check the weight files and read what the weights say (a
/// configs-only session for dry runs passes false).
pub fn open(model: &Path, o: &Overrides, weights: bool, progress: &dyn Progress) -> Result<Box<dyn ModelFamily>> {
    if model.is_file() {
        crate::source::sd::refuse_pickle(model)?;
        if crate::source::sd::is_original_checkpoint(model) {
            return Err(crate::Error::Usage(format!(
                "{} is a Stable Diffusion single-file checkpoint: give --model the pipeline it belongs to (sd15, \
                 or a diffusers folder) and the file as --transformer",
                model.display()
            )));
        }
    }
    let family = crate::source::family_of(model);
    if family.is_sd() {
        return Ok(Box::new(sd::Sd::open(model, family, o, weights)?));
    }
    Ok(Box::new(flux::Flux::open(model, o, weights, progress)?))
}
