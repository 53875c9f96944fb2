//! An InstantX-layout FLUX.1 ControlNet (diffusers' `FluxControlNetModel`): packed latents + packed control-image
//! latents + the transformer's conditioning → per-block residuals for the main transformer ([`Residuals`]).
//!
//! It is a shortened FLUX.1 transformer (our own [`DoubleBlock`]/[`SingleBlock`] and embedders, same BFL names
//! through [`crate::weights::flux_keys`]) whose image stream starts as `img_in(x) + controlnet_x_embedder(cond)`,
//! with one output projection (`controlnet_blocks.N`, `controlnet_single_blocks.N`) per block, all × the
//! conditioning scale. Union checkpoints prepend the mode's embedding (`controlnet_mode_embedder`) to the text
//! tokens, with a copy of the first text position id. XLabs checkpoints take the control image in pixel space
//! through a small convolutional `input_hint_block` ([`HintBlock`]) instead of VAE latents, and their few double
//! blocks' residuals repeat over the main transformer's blocks. No step cache runs here.

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
    /// XLabs: the pixel-space control encoder and its token patch size.
    hint: Option<(HintBlock, usize)>,
    heads: usize,
    axes: Vec<usize>,
    dtype: DType,
}

/// The ControlNet's inputs beyond the transformer's: packed control latents, Union mode, scale.
pub struct ControlInput<'a> {
    /// [B, S_img, C·4] the VAE-encoded, shifted and scaled, packed control image; XLabs: [B, 3, H, W] its pixels
    /// in [-1, 1].
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
            hint: match cfg.conditioning_embedding_channels {
                Some(c) => Some((HintBlock::new(c, &vb.pp("input_hint_block"))?, cfg.base.patch_size.max(1))),
                None => None,
            },
            heads: c.num_attention_heads,
            axes: c.axes_dims_rope.clone(),
            dtype: vb.dtype(),
        })
    }

    /// Whether the control image goes in as pixels (XLabs' `input_hint_block`), not VAE latents; such ControlNets'
    /// residuals repeat over the main blocks (diffusers' `controlnet_blocks_repeat`).
    pub fn takes_pixels(&self) -> bool {
        self.hint.is_some()
    }

    /// The control input as tokens: packed latents as given, or pixels through the hint block, patchified.
    fn control_tokens(&self, cond: &Tensor) -> Result<Tensor> {
        let Some((hint, p)) = &self.hint else { return Ok(cond.clone()) };
        let x = hint.forward(&cond.to_dtype(self.dtype)?)?;
        let (b, c, h, w) = x.dims4()?;
        let (p, h, w) = (*p, h / p, w / p);
        x.reshape((b, c, h, p, w, p))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, h * w, c * p * p))
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
        let mut x = (latents.apply(&self.img_in)? + self.control_tokens(ctl.cond)?.apply(&self.control_in)?)?;
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
        Ok(Residuals { double, single, repeat: self.takes_pixels() })
    }
}

/// diffusers' `ControlNetConditioningEmbedding` as FLUX ControlNets build it: a 3×3 convolution from RGB to 16
/// channels, three pairs of 3×3 convolutions (the second of each with stride 2, so ÷8 in all), then a 3×3
/// convolution to `out` channels, SiLU after every one but the last.
struct HintBlock {
    convs: Vec<(Tensor, Tensor, usize)>,
}

/// The widths of the hint block FLUX ControlNets use (`block_out_channels=(16, 16, 16, 16)`).
const HINT_WIDTHS: [usize; 4] = [16, 16, 16, 16];

impl HintBlock {
    fn new(out: usize, vb: &Weights) -> Result<Self> {
        let conv = |name: String, i: usize, o: usize, stride: usize| -> Result<(Tensor, Tensor, usize)> {
            let v = vb.pp(name);
            Ok((v.get((o, i, 3, 3), "weight")?, v.get(o, "bias")?, stride))
        };
        let mut convs = vec![conv("conv_in".into(), 3, HINT_WIDTHS[0], 1)?];
        for i in 0..HINT_WIDTHS.len() - 1 {
            let (c, next) = (HINT_WIDTHS[i], HINT_WIDTHS[i + 1]);
            convs.push(conv(format!("blocks.{}", 2 * i), c, c, 1)?);
            convs.push(conv(format!("blocks.{}", 2 * i + 1), c, next, 2)?);
        }
        convs.push(conv("conv_out".into(), HINT_WIDTHS[HINT_WIDTHS.len() - 1], out, 1)?);
        Ok(Self { convs })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let last = self.convs.len() - 1;
        let mut x = x.clone();
        for (i, (w, b, stride)) in self.convs.iter().enumerate() {
            x = x.conv2d(w, 1, *stride, 1, 1)?.broadcast_add(&b.reshape((1, (), 1, 1))?)?;
            if i < last {
                x = x.silu()?;
            }
        }
        Ok(x)
    }
}

#[cfg(test)]
#[path = "controlnet_tests.rs"]
mod tests;
