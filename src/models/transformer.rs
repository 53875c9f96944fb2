//! The FLUX MM-DiT (`FluxTransformer2DModel`): packed latents + conditioning → velocity.
//!
//! The network itself is candle-transformers' FLUX (BFL structure). This module derives its config from
//! diffusers' `transformer/config.json` and, for diffusers checkpoints, translates names through
//! [`crate::weights::flux_keys`] at load time, so the checkpoint is read as it is stored.

use crate::config::TransformerConfig;
use candle_core::{Result, Tensor};
use candle_transformers::models::flux::model::{Config, Flux};
use candle_transformers::models::flux::WithForward;
use candle_nn::VarBuilder;

/// candle's config from diffusers' one. `mlp_hidden` is the width of the feed-forward layer as stored in the
/// checkpoint (diffusers fixes it at 4× the inner dim, but reading it keeps odd checkpoints honest).
pub fn candle_config(cfg: &TransformerConfig, mlp_hidden: Option<usize>) -> Config {
    let hidden = cfg.num_attention_heads * cfg.attention_head_dim;
    let mlp_ratio = mlp_hidden.map(|m| m as f64 / hidden as f64).unwrap_or(4.0);
    Config {
        in_channels: cfg.in_channels,
        vec_in_dim: cfg.pooled_projection_dim,
        context_in_dim: cfg.joint_attention_dim,
        hidden_size: hidden,
        mlp_ratio,
        num_heads: cfg.num_attention_heads,
        depth: cfg.num_layers,
        depth_single_blocks: cfg.num_single_layers,
        axes_dim: cfg.axes_dims_rope.clone(),
        theta: 10_000,
        qkv_bias: true,
        guidance_embed: cfg.guidance_embeds,
    }
}

pub struct FluxTransformer {
    model: Flux,
}

/// What the transformer needs besides the latents, in the shapes candle's FLUX expects.
pub struct Inputs<'a> {
    pub img_ids: &'a Tensor,
    pub txt: &'a Tensor,
    pub txt_ids: &'a Tensor,
    pub pooled: &'a Tensor,
    pub guidance: Option<&'a Tensor>,
}

impl FluxTransformer {
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self { model: Flux::new(cfg, vb)? })
    }

    /// Velocity for `latents` [B,S,C·4] at `timestep` [B] (σ, i.e. diffusers' t/1000).
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, x: &Inputs) -> Result<Tensor> {
        self.model.forward(latents, x.img_ids, x.txt, x.txt_ids, timestep, x.pooled, x.guidance)
    }
}
