//! An InstantX-layout FLUX.1 ControlNet (diffusers' `FluxControlNetModel`): packed latents + packed control-image
//! latents + the transformer's conditioning → per-block residuals for the main transformer ([`Residuals`]).
//!
//! It is a shortened FLUX.1 transformer (our own [`DoubleBlock`]/[`SingleBlock`] and embedders, same BFL names
//! through [`crate::weights::flux_keys`]) whose image stream starts as `img_in(x) + controlnet_x_embedder(cond)`,
//! with one output projection (`controlnet_blocks.N`, `controlnet_single_blocks.N`) per block, all × the
//! conditioning scale. Union checkpoints prepend the mode's embedding (`controlnet_mode_embedder`) to the text
//! tokens, with a copy of the first text position id. No step cache runs here.

use super::hooks::{NoCache, Pass, Residuals};
use super::linear::{LinearLayer, Weights};
use super::transformer::{rope, DoubleBlock, Inputs, SingleBlock, TimeText};
use crate::config::ControlNetConfig;
use candle_core::{DType, Module, Result, Tensor};

pub struct FluxControlNet {
    img_in: LinearLayer,
    txt_in: LinearLayer,
    time_text: TimeText,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    control_in: LinearLayer,
    double_out: Vec<LinearLayer>,
    single_out: Vec<LinearLayer>,
    /// [num_mode, D] for Union checkpoints.
    modes: Option<Tensor>,
    heads: usize,
    axes: Vec<usize>,
    dtype: DType,
}

/// The ControlNet's inputs beyond the transformer's: packed control latents, Union mode, scale.
pub struct ControlInput<'a> {
    /// [B, S_img, C·4] the VAE-encoded, shifted and scaled, packed control image.
    pub cond: &'a Tensor,
    /// Union mode index (required by Union checkpoints, refused by others).
    pub mode: Option<usize>,
    pub scale: f64,
}

impl FluxControlNet {
    /// `vb` presents BFL names for the transformer parts, `controlnet_*` names as stored; `mlp` is the stored
    /// feed-forward width.
    pub fn new(cfg: &ControlNetConfig, mlp: usize, vb: Weights) -> Result<Self> {
        let c = &cfg.base;
        let (dim, hd) = (c.inner_dim(), c.attention_head_dim);
        let outs = |name: &str, n: usize| -> Result<Vec<LinearLayer>> {
            (0..n).map(|i| vb.pp(format!("{name}.{i}")).dense_linear(dim, dim)).collect()
        };
        Ok(Self {
            img_in: vb.pp("img_in").dense_linear(c.in_channels, dim)?,
            txt_in: vb.pp("txt_in").dense_linear(c.joint_attention_dim, dim)?,
            time_text: TimeText::new(c, dim, &vb)?,
            double: (0..c.num_layers)
                .map(|i| DoubleBlock::new(dim, hd, mlp, vb.pp(format!("double_blocks.{i}"))))
                .collect::<Result<_>>()?,
            single: (0..c.num_single_layers)
                .map(|i| SingleBlock::new(dim, hd, mlp, vb.pp(format!("single_blocks.{i}"))))
                .collect::<Result<_>>()?,
            control_in: vb.pp("controlnet_x_embedder").dense_linear(c.in_channels, dim)?,
            double_out: outs("controlnet_blocks", c.num_layers)?,
            single_out: outs("controlnet_single_blocks", c.num_single_layers)?,
            modes: cfg.num_mode.map(|n| vb.pp("controlnet_mode_embedder").get((n, dim), "weight")).transpose()?,
            heads: c.num_attention_heads,
            axes: c.axes_dims_rope.clone(),
            dtype: vb.dtype(),
        })
    }

    /// Whether this is a Union checkpoint (takes a control mode).
    pub fn is_union(&self) -> bool {
        self.modes.is_some()
    }

    /// Text tokens and their position ids [S, 3], with the Union mode's token in front.
    fn text(&self, inp: &Inputs, mode: Option<usize>) -> Result<(Tensor, Tensor)> {
        let ctx = inp.txt.apply(&self.txt_in)?;
        let ids = inp.txt_ids.get(0)?;
        match (&self.modes, mode) {
            (None, None) => Ok((ctx, ids)),
            (Some(m), Some(k)) if k < m.dim(0)? => {
                let token = m.narrow(0, k, 1)?.unsqueeze(0)?.repeat((ctx.dim(0)?, 1, 1))?;
                Ok((Tensor::cat(&[&token, &ctx], 1)?, Tensor::cat(&[&ids.narrow(0, 0, 1)?, &ids], 0)?))
            }
            (Some(m), Some(k)) => {
                candle_core::bail!("control mode {k} is beyond this Union ControlNet's {}", m.dim(0)?)
            }
            (Some(_), None) => candle_core::bail!("a Union ControlNet needs a control mode"),
            (None, Some(_)) => candle_core::bail!("a control mode needs a Union ControlNet"),
        }
    }

    /// The residuals for the main transformer at `timestep` (σ) for `latents` [B, S_img, C·4].
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, inp: &Inputs, ctl: &ControlInput) -> Result<Residuals> {
        let temb = self.time_text.forward(timestep, inp, self.dtype)?;
        let (mut ctx, txt_ids) = self.text(inp, ctl.mode)?;
        let ids = Tensor::cat(&[txt_ids, inp.img_ids.get(0)?], 0)?;
        let rope = rope(&ids, &self.axes, 10000.0, self.dtype, latents.device())?;
        let mut x = (latents.apply(&self.img_in)? + ctl.cond.apply(&self.control_in)?)?;
        let mut run = Pass { heads: self.heads, rope: &rope, cache: &mut NoCache, control: None };
        let mut double = Vec::with_capacity(self.double.len());
        for (id, (block, out)) in self.double.iter().zip(&self.double_out).enumerate() {
            (x, ctx) = block.forward(&x, &ctx, &temb, &mut run, id)?;
            double.push((out.forward(&x)? * ctl.scale)?);
        }
        let st = ctx.dim(1)?;
        let mut h = Tensor::cat(&[&ctx, &x], 1)?;
        let mut single = Vec::with_capacity(self.single.len());
        for (i, (block, out)) in self.single.iter().zip(&self.single_out).enumerate() {
            h = block.forward(&h, &temb, &mut run, self.double.len() + i)?;
            let img = h.narrow(1, st, h.dim(1)? - st)?;
            single.push((out.forward(&img)? * ctl.scale)?);
        }
        Ok(Residuals { double, single, repeat: false })
    }
}

#[cfg(test)]
#[path = "controlnet_tests.rs"]
mod tests;
