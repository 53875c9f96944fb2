//! `text_encoder/config.json` of `Qwen3ForCausalLM` (FLUX.2's text encoder), validated.
//!
//! transformers 5 writes the RoPE base inside `rope_parameters`; older files (the FLUX.2 klein repos) have a
//! top-level `rope_theta`. Both are read.

use super::{ensure, Act};
use crate::error::Result;
use serde::Deserialize;
use std::path::Path;

fn eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}

#[derive(Debug, Clone, Deserialize, Default)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Qwen3Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Explicit in Qwen3 (heads × head_dim need not equal hidden_size); hidden / heads when absent.
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "eps")]
    pub rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "silu")]
    pub hidden_act: String,
}

impl Qwen3Config {
    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// The RoPE base: `rope_parameters.rope_theta`, else `rope_theta`, else Qwen3's default 1e6.
    pub fn rope_theta(&self) -> f64 {
        self.rope_parameters.as_ref().and_then(|r| r.rope_theta).or(self.rope_theta).unwrap_or(1e6)
    }

    /// Checks what the encoder divides by and that the hidden states FLUX.2 reads exist.
    pub fn validate(&self, file: &Path, out_layers: &[usize]) -> Result<()> {
        ensure(self.num_attention_heads > 0 && self.num_key_value_heads > 0, file, || {
            "num_attention_heads and num_key_value_heads must be above 0".into()
        })?;
        ensure(self.num_attention_heads % self.num_key_value_heads == 0, file, || {
            format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )
        })?;
        ensure(self.head_dim() > 0 && self.head_dim() % 2 == 0, file, || {
            format!("head_dim {} must be a positive even number (RoPE rotates halves)", self.head_dim())
        })?;
        let deepest = out_layers.iter().copied().max().unwrap_or(0);
        ensure(deepest <= self.num_hidden_layers, file, || {
            format!(
                "FLUX.2 reads the hidden states of layers {out_layers:?}, but this encoder has {} layers",
                self.num_hidden_layers
            )
        })?;
        Act::parse(&self.hidden_act, file).map(|_| ())
    }
}
