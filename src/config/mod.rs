//! Configs read from the model folder's JSON files, with upstream field names (diffusers / transformers).
//!
//! Takes a path, gives a typed config, validated on load: an empty or inconsistent list is a clear error naming
//! the file, never a panic later. Nothing here hard-codes a dev or schnell number: defaults are the ones the
//! upstream classes use when a field is absent. The model family (FLUX.1 or FLUX.2) is read from the classes the
//! configs name; FLUX.2's Qwen3 text encoder config is in [`qwen3`].

pub mod qwen3;
pub mod sd;
pub mod unet;

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// Reads and parses one JSON file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::model_from(path, "cannot read", e))?;
    serde_json::from_str(&text).map_err(|e| Error::model_from(path, "invalid config", e))
}

/// The model generation a pipeline belongs to: the numerics, components and modes differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Family {
    /// FLUX.1 dev, schnell and Kontext: T5 + CLIP, `FluxTransformer2DModel`, `AutoencoderKL`.
    Flux1,
    /// FLUX.2 [klein] (and base): Qwen3, `Flux2Transformer2DModel`, `AutoencoderKLFlux2`.
    Flux2,
    /// Stable Diffusion 1.x and 2.x: CLIP, `UNet2DConditionModel`, `AutoencoderKL`, discrete schedulers.
    Sd,
    /// Stable Diffusion XL: two CLIP encoders and a UNet with size conditioning.
    Sdxl,
}

crate::named_enum!(Family, "model family", [Flux1 = "FLUX.1", Flux2 = "FLUX.2", Sd = "SD", Sdxl = "SDXL"]);

impl Family {
    /// The family a diffusers class name (pipeline, transformer or VAE) belongs to.
    pub fn of_class(name: &str) -> Self {
        if name.starts_with("Flux2") || name == "AutoencoderKLFlux2" {
            Family::Flux2
        } else if name.starts_with("StableDiffusionXL") {
            Family::Sdxl
        } else if name.starts_with("StableDiffusion") {
            Family::Sd
        } else {
            Family::Flux1
        }
    }

    /// Stable Diffusion (any version): a UNet with discrete schedulers, not a FLUX transformer.
    pub fn is_sd(self) -> bool {
        matches!(self, Family::Sd | Family::Sdxl)
    }
}

/// The configs that shape a run: transformer, VAE and scheduler, read and checked together; for FLUX.2 also
/// the pipeline's `is_distilled` (model_index.json).
#[derive(Debug, Clone)]
pub struct ModelConfigs {
    pub family: Family,
    pub transformer: TransformerConfig,
    pub vae: VaeConfig,
    pub scheduler: SchedulerConfig,
    /// FLUX.2: step-distilled (klein 4B/9B: no CFG) rather than a base model (true CFG with `--guidance` > 1).
    pub distilled: bool,
}

/// The one pipeline-level field read from `model_index.json`.
#[derive(Debug, Deserialize, Default)]
struct PipelineIndex {
    #[serde(default)]
    is_distilled: bool,
}

/// Where a pipeline's configs are (what `source` resolved), and the family its folder says it is.
pub struct ConfigFiles<'a> {
    pub family: Family,
    pub transformer: &'a Path,
    pub vae: &'a Path,
    pub scheduler: &'a Path,
    pub model_index: Option<&'a Path>,
}

impl ModelConfigs {
    pub fn read(files: &ConfigFiles) -> Result<Self> {
        let index: PipelineIndex = files.model_index.map(read_json).transpose()?.unwrap_or_default();
        let c = Self {
            family: files.family,
            transformer: read_json(files.transformer)?,
            vae: read_json(files.vae)?,
            scheduler: read_json(files.scheduler)?,
            distilled: index.is_distilled,
        };
        for (class, file, what) in
            [(&c.transformer.class_name, files.transformer, "transformer"), (&c.vae.class_name, files.vae, "vae")]
        {
            if let Some(other) = class.as_deref().map(Family::of_class).filter(|f| *f != c.family) {
                return Err(Error::model(
                    file,
                    format!("the {what} config is {other} but the pipeline is {}; mixed families do not run", c.family),
                ));
            }
        }
        c.transformer.validate(files.transformer, c.family)?;
        c.vae.validate(files.vae)?;
        c.scheduler.validate(files.scheduler)?;
        c.inputs().map_err(|msg| Error::model(files.transformer, msg))?;
        Ok(c)
    }

    /// What the transformer takes besides the noisy latents, from its `in_channels` and `out_channels` against
    /// the VAE's packed latent width; the error says what would fit.
    pub fn inputs(&self) -> std::result::Result<TransformerInputs, String> {
        let t = &self.transformer;
        let packed = 4 * self.vae.latent_channels;
        let f = self.vae.scale_factor();
        let out = t.out_channels.unwrap_or(t.in_channels);
        let kind = match t.in_channels {
            n if n == packed => Some(TransformerInputs::Latents),
            n if n == 2 * packed && self.family == Family::Flux1 => Some(TransformerInputs::Control),
            n if n == 2 * packed + 4 * f * f && self.family == Family::Flux1 => Some(TransformerInputs::Fill),
            _ => None,
        };
        match kind {
            Some(k) if out == packed => Ok(k),
            Some(_) => Err(format!("transformer out_channels {out} does not match 4 × vae latent_channels {packed}")),
            None => Err(format!(
                "transformer in_channels {} does not match 4 × vae latent_channels ({packed}), nor a FLUX.1 Control \
                 ({}) or Fill ({}) transformer of this VAE",
                t.in_channels,
                2 * packed,
                2 * packed + 4 * f * f
            )),
        }
    }
}

/// What a transformer reads per image token, told apart by its input width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransformerInputs {
    /// The packed noisy latents alone (dev, schnell, Kontext, klein).
    Latents,
    /// The latents and the packed latents of a control image (FLUX.1 Canny/Depth-dev).
    Control,
    /// The latents, the packed latents of the masked image and the packed pixel mask (FLUX.1 Fill-dev).
    Fill,
}

/// An error naming `file` unless `ok`.
fn ensure(ok: bool, file: &Path, msg: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::model(file, format!("invalid config: {}", msg())))
    }
}

fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}
fn one() -> usize {
    1
}

fn eps_1e6() -> f64 {
    1e-6
}

/// `transformer/config.json` of `FluxTransformer2DModel` (FLUX.1) or `Flux2Transformer2DModel` (FLUX.2: no
/// pooled projection, `mlp_ratio`, `rope_theta`, four RoPE axes).
#[derive(Debug, Clone, Deserialize)]
pub struct TransformerConfig {
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    #[serde(default = "one")]
    pub patch_size: usize,
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    /// FLUX.1's CLIP pooled projection (FLUX.2 has none).
    #[serde(default)]
    pub pooled_projection_dim: Option<usize>,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
    /// FLUX.2: feed-forward width = int(inner · mlp_ratio) (class default 3).
    #[serde(default)]
    pub mlp_ratio: Option<f64>,
    /// FLUX.2: RoPE base (class default 2000; FLUX.1 uses 10000).
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default = "eps_1e6")]
    pub eps: f64,
}

impl TransformerConfig {
    /// Width of the token stream: heads × head dim.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    fn validate(&self, file: &Path, family: Family) -> Result<()> {
        if family == Family::Flux1 {
            ensure(self.pooled_projection_dim.is_some(), file, || {
                "pooled_projection_dim is missing (FLUX.1's CLIP pooled projection)".into()
            })?;
        }
        ensure(self.patch_size == 1, file, || {
            format!(
                "patch_size {} is not supported (FLUX.1 packs 2×2 latent patches itself; expected 1)",
                self.patch_size
            )
        })?;
        ensure(self.num_attention_heads > 0 && self.attention_head_dim > 0, file, || {
            "num_attention_heads and attention_head_dim must be above 0".into()
        })?;
        ensure(self.in_channels > 0 && self.in_channels % 4 == 0, file, || {
            format!("in_channels {} is not a positive multiple of 4 (2×2 packed latents)", self.in_channels)
        })?;
        ensure(self.axes_dims_rope.iter().all(|d| d % 2 == 0), file, || {
            format!("axes_dims_rope {:?} has an odd entry; each axis rotates pairs", self.axes_dims_rope)
        })?;
        ensure(self.axes_dims_rope.iter().sum::<usize>() == self.attention_head_dim, file, || {
            format!(
                "axes_dims_rope {:?} sums to {}, not attention_head_dim {}",
                self.axes_dims_rope,
                self.axes_dims_rope.iter().sum::<usize>(),
                self.attention_head_dim
            )
        })
    }
}

fn three() -> usize {
    3
}
fn thirty_two() -> usize {
    32
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn bn_eps() -> f64 {
    1e-4
}

/// `vae/config.json` of `AutoencoderKL`.
#[derive(Debug, Clone, Deserialize)]
pub struct VaeConfig {
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "one")]
    pub layers_per_block: usize,
    pub latent_channels: usize,
    #[serde(default = "thirty_two")]
    pub norm_num_groups: usize,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(rename = "_class_name", default)]
    pub class_name: Option<String>,
    /// FLUX.1 (`AutoencoderKL`): latents are `(z − shift)·scale`; FLUX.2 has none (batch-norm statistics instead).
    #[serde(default)]
    pub scaling_factor: Option<f64>,
    /// FLUX.2 (`AutoencoderKLFlux2`): eps of the batch-norm statistics that normalise patchified latents.
    #[serde(default = "bn_eps")]
    pub batch_norm_eps: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "yes")]
    pub use_quant_conv: bool,
    #[serde(default = "yes")]
    pub use_post_quant_conv: bool,
    #[serde(default = "yes")]
    pub mid_block_add_attention: bool,
}

impl VaeConfig {
    /// Pixels per latent cell: `2^(len(block_out_channels) - 1)` (8 for FLUX.1).
    pub fn scale_factor(&self) -> usize {
        1 << (self.block_out_channels.len().saturating_sub(1))
    }

    /// Pixel multiple every output size must have: the VAE's downscale times the 2×2 packing — 16 for FLUX.1's
    /// 4-block VAE (diffusers' `vae_scale_factor * 2`), smaller for the shallow VAEs of test pipelines.
    pub fn size_multiple(&self) -> u32 {
        (2 * self.scale_factor()) as u32
    }

    /// `scaling_factor`, or `AutoencoderKL`'s class default (0.18215) when the config has none.
    pub fn latent_scale(&self) -> f64 {
        self.scaling_factor.unwrap_or(0.18215)
    }

    /// The block activation (checked by `validate`).
    pub fn activation(&self) -> Act {
        Act::from_name(&self.act_fn).unwrap_or(Act::Silu)
    }

    fn validate(&self, file: &Path) -> Result<()> {
        ensure(!self.block_out_channels.is_empty(), file, || "block_out_channels is empty".into())?;
        ensure(self.block_out_channels.len() <= 8, file, || {
            format!(
                "block_out_channels has {} entries; a 2^{} downscale is not a FLUX VAE",
                self.block_out_channels.len(),
                self.block_out_channels.len() - 1
            )
        })?;
        ensure(self.norm_num_groups > 0, file, || "norm_num_groups must be above 0".into())?;
        let bad = self.block_out_channels.iter().find(|&&c| c == 0 || c % self.norm_num_groups != 0);
        ensure(bad.is_none(), file, || {
            format!(
                "block_out_channels {:?}: every entry must be a positive multiple of norm_num_groups {}",
                self.block_out_channels, self.norm_num_groups
            )
        })?;
        ensure(self.latent_channels > 0 && self.layers_per_block > 0, file, || {
            "latent_channels and layers_per_block must be above 0".into()
        })?;
        let scale = self.scaling_factor.unwrap_or(1.0);
        ensure(scale.is_finite() && scale != 0.0, file, || {
            format!("scaling_factor {scale} must be a non-zero number")
        })?;
        Act::parse(&self.act_fn, file).map(|_| ())
    }
}

fn f_one() -> f64 {
    1.0
}
fn base_shift() -> f64 {
    0.5
}
fn max_shift() -> f64 {
    1.15
}
fn base_seq() -> usize {
    256
}
fn max_seq() -> usize {
    4096
}
fn thousand() -> usize {
    1000
}
fn exponential() -> String {
    "exponential".into()
}

/// `scheduler/scheduler_config.json` of `FlowMatchEulerDiscreteScheduler`.
#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerConfig {
    #[serde(default = "thousand")]
    pub num_train_timesteps: usize,
    #[serde(default = "f_one")]
    pub shift: f64,
    #[serde(default)]
    pub use_dynamic_shifting: bool,
    #[serde(default = "base_shift")]
    pub base_shift: f64,
    #[serde(default = "max_shift")]
    pub max_shift: f64,
    #[serde(default = "base_seq")]
    pub base_image_seq_len: usize,
    #[serde(default = "max_seq")]
    pub max_image_seq_len: usize,
    #[serde(default = "exponential")]
    pub time_shift_type: String,
    #[serde(default)]
    pub shift_terminal: Option<f64>,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub use_exponential_sigmas: bool,
    #[serde(default)]
    pub use_beta_sigmas: bool,
    #[serde(default)]
    pub invert_sigmas: bool,
}

impl SchedulerConfig {
    fn validate(&self, file: &Path) -> Result<()> {
        ensure(self.num_train_timesteps > 0, file, || "num_train_timesteps must be above 0".into())?;
        ensure(!self.use_dynamic_shifting || self.max_image_seq_len != self.base_image_seq_len, file, || {
            "max_image_seq_len equals base_image_seq_len; the dynamic shift is undefined".into()
        })
    }
}

fn quick_gelu() -> String {
    "quick_gelu".into()
}
fn eps_1e5() -> f64 {
    1e-5
}
fn two() -> u32 {
    2
}

/// `text_encoder/config.json` of `CLIPTextModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "quick_gelu")]
    pub hidden_act: String,
    #[serde(default = "eps_1e5")]
    pub layer_norm_eps: f64,
    /// transformers keeps the legacy pooling (argmax of the ids) when this is 2, as in openai's CLIP configs.
    #[serde(default = "two")]
    pub eos_token_id: u32,
    /// `CLIPTextModelWithProjection`'s `text_projection` width (SDXL's second encoder).
    #[serde(default)]
    pub projection_dim: Option<usize>,
}

impl ClipConfig {
    /// Checks the sizes the model code divides by.
    pub fn validate(&self, file: &Path) -> Result<()> {
        ensure(self.num_attention_heads > 0 && self.hidden_size % self.num_attention_heads == 0, file, || {
            format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )
        })?;
        Act::parse(&self.hidden_act, file).map(|_| ())
    }
}

/// Activations named in the model configs; computed as torch computes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Silu,
    /// `quick_gelu`: x·sigmoid(1.702x), CLIP's original activation.
    QuickGelu,
    /// `gelu`: the exact erf form (torch's default `nn.GELU()`).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    Mish,
}

impl Act {
    /// The activation transformers/diffusers call `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "silu" | "swish" => Act::Silu,
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Act::GeluTanh,
            "relu" => Act::Relu,
            "mish" => Act::Mish,
            _ => return None,
        })
    }

    /// Parses a name as transformers/diffusers spell it; `file` is named in the error.
    pub fn parse(name: &str, file: &Path) -> Result<Self> {
        Self::from_name(name).ok_or_else(|| Error::model(file, format!("unsupported activation {name:?}")))
    }

    pub fn apply(self, xs: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        match self {
            Act::Silu => xs.silu(),
            Act::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Act::Gelu => xs.gelu_erf(),
            Act::GeluTanh => xs.gelu(),
            Act::Relu => xs.relu(),
            Act::Mish => candle_nn::ops::mish(xs),
        }
    }
}

/// A FLUX.1 ControlNet's `config.json` (diffusers' `FluxControlNetModel`): the transformer's
/// fields plus the Union mode count.
#[derive(Debug, Clone, Deserialize)]
pub struct ControlNetConfig {
    #[serde(flatten)]
    pub base: TransformerConfig,
    /// Union checkpoints: how many control modes `controlnet_mode_embedder` holds.
    #[serde(default)]
    pub num_mode: Option<usize>,
    /// XLabs checkpoints: the channels their pixel-space `input_hint_block` gives (in `patch_size` patches).
    #[serde(default)]
    pub conditioning_embedding_channels: Option<usize>,
}
