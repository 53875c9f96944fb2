//! `unet/config.json` of diffusers' `UNet2DConditionModel`, as Stable Diffusion 1.x/2.x and SDXL checkpoints
//! write it. Per-block settings may be one number or one per down block, as diffusers accepts them; the class's
//! defaults fill absent fields. Settings the port does not implement are refused by name, so a checkpoint that
//! would compute something else fails on load rather than giving wrong pictures.

use super::ensure;
use crate::error::Result;
use serde::Deserialize;
use std::path::Path;

/// A per-block setting: one value for every block, or one per down block.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PerBlock {
    One(usize),
    Each(Vec<usize>),
}

impl PerBlock {
    /// The value for each of `n` blocks.
    pub fn expand(&self, n: usize) -> Vec<usize> {
        match self {
            PerBlock::One(v) => vec![*v; n],
            PerBlock::Each(v) => v.clone(),
        }
    }

    fn len_ok(&self, n: usize) -> bool {
        matches!(self, PerBlock::One(_)) || matches!(self, PerBlock::Each(v) if v.len() == n)
    }
}

fn four() -> usize {
    4
}
fn eight() -> PerBlock {
    PerBlock::One(8)
}
fn one_each() -> PerBlock {
    PerBlock::One(1)
}
fn two_each() -> PerBlock {
    PerBlock::One(2)
}
fn groups() -> usize {
    32
}
fn norm_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}
fn silu() -> String {
    "silu".into()
}
fn one_f() -> f64 {
    1.0
}
fn cross_dim() -> PerBlock {
    PerBlock::One(1280)
}
fn default_shift() -> String {
    "default".into()
}
fn positional() -> String {
    "positional".into()
}
fn mid_default() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}

/// The fields of `UNet2DConditionModel`'s config this port reads.
#[derive(Debug, Clone, Deserialize)]
pub struct UNetConfig {
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: usize,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    #[serde(default = "mid_default")]
    pub mid_block_type: Option<String>,
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two_each")]
    pub layers_per_block: PerBlock,
    #[serde(default = "groups")]
    pub norm_num_groups: usize,
    #[serde(default = "norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: PerBlock,
    #[serde(default = "one_each")]
    pub transformer_layers_per_block: PerBlock,
    /// diffusers' historical name: without `num_attention_heads`, this is the number of heads per block.
    #[serde(default = "eight")]
    pub attention_head_dim: PerBlock,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock>,
    #[serde(default)]
    pub use_linear_projection: bool,
    /// SDXL: "text_time" (pooled text embedding + size conditioning added to the time embedding).
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub addition_time_embed_dim: Option<usize>,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    /// Attention scores in f32 whatever the run's dtype (SD 2.1, whose scores overflow f16).
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "default_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
}

impl UNetConfig {
    pub fn blocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Heads per down block (diffusers reads `attention_head_dim` as the head count when `num_attention_heads`
    /// is absent).
    pub fn heads(&self) -> Vec<usize> {
        self.num_attention_heads.as_ref().unwrap_or(&self.attention_head_dim).expand(self.blocks())
    }

    /// The width of the time embedding: 4 × the first block's channels.
    pub fn time_embed_dim(&self) -> usize {
        4 * self.block_out_channels[0]
    }

    /// Whether this is SDXL's UNet (pooled text and size conditioning).
    pub fn text_time(&self) -> bool {
        self.addition_embed_type.as_deref() == Some("text_time")
    }

    pub fn validate(&self, file: &Path) -> Result<()> {
        let n = self.blocks();
        ensure(n > 0, file, || "block_out_channels is empty".into())?;
        ensure(self.down_block_types.len() == n && self.up_block_types.len() == n, file, || {
            format!(
                "{n} block_out_channels but {} down and {} up blocks",
                self.down_block_types.len(),
                self.up_block_types.len()
            )
        })?;
        for (name, v) in [
            ("layers_per_block", &self.layers_per_block),
            ("cross_attention_dim", &self.cross_attention_dim),
            ("transformer_layers_per_block", &self.transformer_layers_per_block),
            ("attention_head_dim", &self.attention_head_dim),
        ] {
            ensure(v.len_ok(n), file, || format!("{name} must be one number or one per block ({n})"))?;
        }
        let heads = self.heads();
        ensure(heads.len() == n, file, || format!("num_attention_heads must be one number or one per block ({n})"))?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            ensure(h > 0 && c % h == 0 && c % self.norm_num_groups == 0, file, || {
                format!("block {i}: {c} channels do not split into {h} heads and {} groups", self.norm_num_groups)
            })?;
        }
        let known = |t: &String, ok: &[&str]| ok.contains(&t.as_str());
        for t in &self.down_block_types {
            ensure(known(t, &["CrossAttnDownBlock2D", "DownBlock2D"]), file, || {
                format!("down block {t} is not supported")
            })?;
        }
        for t in &self.up_block_types {
            ensure(known(t, &["CrossAttnUpBlock2D", "UpBlock2D"]), file, || format!("up block {t} is not supported"))?;
        }
        ensure(self.mid_block_type.as_deref() == Some("UNetMidBlock2DCrossAttn"), file, || {
            format!("mid_block_type {:?} is not supported (expected UNetMidBlock2DCrossAttn)", self.mid_block_type)
        })?;
        self.validate_unported(file)?;
        if self.addition_embed_type.is_some() {
            ensure(self.text_time(), file, || {
                format!(
                    "addition_embed_type {:?} is not supported (only SDXL's \"text_time\")",
                    self.addition_embed_type
                )
            })?;
            ensure(
                self.addition_time_embed_dim.is_some() && self.projection_class_embeddings_input_dim.is_some(),
                file,
                || "text_time needs addition_time_embed_dim and projection_class_embeddings_input_dim".into(),
            )?;
        }
        ensure(crate::config::Act::from_name(&self.act_fn) == Some(crate::config::Act::Silu), file, || {
            format!("act_fn {:?} is not supported (Stable Diffusion UNets use silu)", self.act_fn)
        })
    }

    /// Settings no Stable Diffusion checkpoint uses: refused by name rather than computed wrongly.
    fn validate_unported(&self, file: &Path) -> Result<()> {
        let unported = [
            ("resnet_time_scale_shift", self.resnet_time_scale_shift != "default"),
            ("time_embedding_type", self.time_embedding_type != "positional"),
            ("class_embed_type", self.class_embed_type.is_some()),
            ("encoder_hid_dim_type", self.encoder_hid_dim_type.is_some()),
            ("time_cond_proj_dim", self.time_cond_proj_dim.is_some()),
            (
                "only_cross_attention",
                !matches!(self.only_cross_attention, serde_json::Value::Null | serde_json::Value::Bool(false)),
            ),
            ("dual_cross_attention", self.dual_cross_attention),
            (
                "reverse_transformer_layers_per_block",
                self.reverse_transformer_layers_per_block.as_ref().is_some_and(|v| !v.is_null()),
            ),
            ("mid_block_scale_factor", self.mid_block_scale_factor != 1.0),
            ("resnet_out_scale_factor", self.resnet_out_scale_factor != 1.0),
        ];
        match unported.iter().find(|(_, set)| *set) {
            Some((name, _)) => Err(crate::error::Error::model(file, format!("UNet setting {name} is not supported"))),
            None => Ok(()),
        }
    }
}
