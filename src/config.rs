//! Configs read from the model folder's JSON files, with upstream field names (diffusers / transformers).
//!
//! Takes a path, gives a typed config. Nothing here hard-codes a dev or schnell number: defaults are the ones the
//! upstream classes use when a field is absent.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::path::Path;

/// Reads and parses one JSON file, naming the file in any error.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::model(path, format!("cannot read: {e}")))?;
    serde_json::from_str(&text).map_err(|e| Error::model(path, format!("invalid config: {e}")))
}

fn default_axes() -> Vec<usize> {
    vec![16, 56, 56]
}
fn one() -> usize {
    1
}

/// `transformer/config.json` of `FluxTransformer2DModel`.
#[derive(Debug, Clone, Deserialize)]
pub struct TransformerConfig {
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
    pub pooled_projection_dim: usize,
    #[serde(default)]
    pub guidance_embeds: bool,
    #[serde(default = "default_axes")]
    pub axes_dims_rope: Vec<usize>,
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
    pub scaling_factor: f64,
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
    /// Parses a name as transformers/diffusers spell it; `file` is named in the error.
    pub fn parse(name: &str, file: &Path) -> Result<Self> {
        Ok(match name {
            "silu" | "swish" => Act::Silu,
            "quick_gelu" => Act::QuickGelu,
            "gelu" => Act::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Act::GeluTanh,
            "relu" => Act::Relu,
            "mish" => Act::Mish,
            other => return Err(Error::model(file, format!("unsupported activation {other:?}"))),
        })
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
