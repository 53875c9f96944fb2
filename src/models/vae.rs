//! diffusers `AutoencoderKL` as FLUX.1 uses it: image [B,3,H,W] in [-1,1] ⇄ latents [B,C,H/f,W/f].
//!
//! Structure and names follow `diffusers/models/autoencoders/vae.py`; every size comes from `vae/config.json`
//! (block_out_channels, layers_per_block, latent_channels, norm_num_groups, act_fn, quant convs, mid attention).
//! The encoder returns the posterior's mean and log-variance; sampling is the pipeline's job because the noise
//! must come from the user's generator in diffusers' draw order.

use crate::config::{Act, VaeConfig};
use crate::kernels::{self, Conv2d, GroupNorm};
use candle_core::{Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

const EPS: f64 = 1e-6;

fn empty_blocks() -> candle_core::Error {
    candle_core::Error::Msg("vae config: block_out_channels is empty".into())
}

fn conv3(i: usize, o: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(i, o, 3, 1, 1, vb)
}

fn conv1(i: usize, o: usize, vb: VarBuilder) -> Result<Conv2d> {
    Conv2d::new(i, o, 1, 1, 0, vb)
}

fn group_norm(groups: usize, c: usize, eps: f64, vb: VarBuilder) -> Result<GroupNorm> {
    GroupNorm::new(groups, c, eps, vb)
}

/// GroupNorm then the block activation; SiLU (FLUX's) is fused into the normalisation pass.
fn norm_act(norm: &GroupNorm, act: Act, xs: &Tensor) -> Result<Tensor> {
    match act {
        Act::Silu => norm.forward(xs, true),
        other => other.apply(&norm.forward(xs, false)?),
    }
}

/// `ResnetBlock2D` without time embedding: GN, act, conv, GN, act, conv, plus a 1×1 shortcut when channels change.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
    act: Act,
}

impl Resnet {
    fn new(i: usize, o: usize, groups: usize, act: Act, vb: VarBuilder) -> Result<Self> {
        let shortcut = if i != o { Some(conv1(i, o, vb.pp("conv_shortcut"))?) } else { None };
        Ok(Self {
            norm1: group_norm(groups, i, EPS, vb.pp("norm1"))?,
            conv1: conv3(i, o, vb.pp("conv1"))?,
            norm2: group_norm(groups, o, EPS, vb.pp("norm2"))?,
            conv2: conv3(o, o, vb.pp("conv2"))?,
            shortcut,
            act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = norm_act(&self.norm1, self.act, xs)?.apply(&self.conv1)?;
        let h = norm_act(&self.norm2, self.act, &h)?.apply(&self.conv2)?;
        let skip = match &self.shortcut {
            Some(c) => xs.apply(c)?,
            None => xs.clone(),
        };
        skip + h
    }
}

/// The mid-block attention: one head over all pixels, GroupNorm first, residual added.
struct Attention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl Attention {
    fn new(c: usize, groups: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(groups, c, EPS, vb.pp("group_norm"))?,
            q: linear(c, c, vb.pp("to_q"))?,
            k: linear(c, c, vb.pp("to_k"))?,
            v: linear(c, c, vb.pp("to_v"))?,
            out: linear(c, c, vb.pp("to_out.0"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        // [B,C,H,W] → [B,HW,C]
        let t = self.norm.forward(xs, false)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        // One head over all pixels: [B,HW,C] → [B,1,HW,C].
        let q = t.apply(&self.q)?.unsqueeze(1)?;
        let k = t.apply(&self.k)?.unsqueeze(1)?;
        let v = t.apply(&self.v)?.unsqueeze(1)?;
        let o = kernels::attention(&q, &k, &v, 1.0 / (c as f64).sqrt())?.apply(&self.out)?;
        // [B,HW,C] → [B,C,H,W]
        let o = o.transpose(1, 2)?.reshape((b, c, h, w))?;
        xs + o
    }
}

struct MidBlock {
    res0: Resnet,
    attn: Option<Attention>,
    res1: Resnet,
}

impl MidBlock {
    fn new(c: usize, cfg: &VaeConfig, act: Act, vb: VarBuilder) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let attn = if cfg.mid_block_add_attention { Some(Attention::new(c, g, vb.pp("attentions.0"))?) } else { None };
        Ok(Self {
            res0: Resnet::new(c, c, g, act, vb.pp("resnets.0"))?,
            attn,
            res1: Resnet::new(c, c, g, act, vb.pp("resnets.1"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = self.res0.forward(xs)?;
        if let Some(a) = &self.attn {
            h = a.forward(&h)?;
        }
        self.res1.forward(&h)
    }
}

struct DownBlock {
    resnets: Vec<Resnet>,
    downsample: Option<Conv2d>,
}

struct UpBlock {
    resnets: Vec<Resnet>,
    upsample: Option<Conv2d>,
}

pub struct Encoder {
    conv_in: Conv2d,
    down: Vec<DownBlock>,
    mid: MidBlock,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(cfg: &VaeConfig, act: Act, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let (&first, &last) = ch.first().zip(ch.last()).ok_or_else(empty_blocks)?;
        let g = cfg.norm_num_groups;
        let conv_in = conv3(cfg.in_channels, first, vb.pp("conv_in"))?;
        let mut down = Vec::new();
        let mut out_c = first;
        for (i, &c) in ch.iter().enumerate() {
            let in_c = out_c;
            out_c = c;
            let vbi = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| Resnet::new(if j == 0 { in_c } else { out_c }, out_c, g, act, vbi.pp(format!("resnets.{j}"))))
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < ch.len() {
                Some(Conv2d::new(out_c, out_c, 3, 2, 0, vbi.pp("downsamplers.0.conv"))?)
            } else {
                None
            };
            down.push(DownBlock { resnets, downsample });
        }
        Ok(Self {
            conv_in,
            down,
            mid: MidBlock::new(last, cfg, act, vb.pp("mid_block"))?,
            norm_out: group_norm(g, last, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(last, 2 * cfg.latent_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut h = xs.apply(&self.conv_in)?;
        for block in &self.down {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.downsample {
                // diffusers pads right and bottom by one, then convolves with stride 2 and no padding.
                h = h.pad_with_zeros(D::Minus1, 0, 1)?.pad_with_zeros(D::Minus2, 0, 1)?.apply(conv)?;
            }
        }
        let h = self.mid.forward(&h)?;
        // The encoder's and decoder's final activation is always SiLU in diffusers, whatever act_fn says.
        self.norm_out.forward(&h, true)?.apply(&self.conv_out)
    }
}

pub struct Decoder {
    conv_in: Conv2d,
    mid: MidBlock,
    up: Vec<UpBlock>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(cfg: &VaeConfig, act: Act, vb: VarBuilder) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let (&deepest, &first) = rev.first().zip(rev.last()).ok_or_else(empty_blocks)?;
        let g = cfg.norm_num_groups;
        let conv_in = conv3(cfg.latent_channels, deepest, vb.pp("conv_in"))?;
        let mid = MidBlock::new(deepest, cfg, act, vb.pp("mid_block"))?;
        let mut up = Vec::new();
        let mut out_c = deepest;
        for (i, &c) in rev.iter().enumerate() {
            let prev = out_c;
            out_c = c;
            let vbi = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| Resnet::new(if j == 0 { prev } else { out_c }, out_c, g, act, vbi.pp(format!("resnets.{j}"))))
                .collect::<Result<Vec<_>>>()?;
            let upsample =
                if i + 1 < rev.len() { Some(conv3(out_c, out_c, vbi.pp("upsamplers.0.conv"))?) } else { None };
            up.push(UpBlock { resnets, upsample });
        }
        Ok(Self {
            conv_in,
            mid,
            up,
            norm_out: group_norm(g, first, EPS, vb.pp("conv_norm_out"))?,
            conv_out: conv3(first, cfg.out_channels, vb.pp("conv_out"))?,
        })
    }

    fn forward(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = self.mid.forward(&z.apply(&self.conv_in)?)?;
        for block in &self.up {
            for r in &block.resnets {
                h = r.forward(&h)?;
            }
            if let Some(conv) = &block.upsample {
                h = kernels::upsample2x(&h)?.apply(conv)?;
            }
        }
        self.norm_out.forward(&h, true)?.apply(&self.conv_out)
    }
}

/// The autoencoder; `encode` gives posterior parameters, `decode` gives pixels in about [-1,1].
pub struct AutoencoderKl {
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    latent_channels: usize,
}

impl AutoencoderKl {
    pub fn new(cfg: &VaeConfig, act: Act, vb: VarBuilder) -> Result<Self> {
        let l = cfg.latent_channels;
        let quant_conv = if cfg.use_quant_conv { Some(conv1(2 * l, 2 * l, vb.pp("quant_conv"))?) } else { None };
        let post_quant_conv = if cfg.use_post_quant_conv { Some(conv1(l, l, vb.pp("post_quant_conv"))?) } else { None };
        Ok(Self {
            encoder: Encoder::new(cfg, act, vb.pp("encoder"))?,
            decoder: Decoder::new(cfg, act, vb.pp("decoder"))?,
            quant_conv,
            post_quant_conv,
            latent_channels: l,
        })
    }

    /// Posterior (mean, logvar), each [B,C,h,w]; logvar clamped to [-30, 20] as `DiagonalGaussianDistribution` does.
    pub fn encode(&self, image: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut p = self.encoder.forward(image)?;
        if let Some(q) = &self.quant_conv {
            p = p.apply(q)?;
        }
        let mean = p.narrow(1, 0, self.latent_channels)?;
        let logvar = p.narrow(1, self.latent_channels, self.latent_channels)?.clamp(-30f32, 20f32)?;
        Ok((mean, logvar))
    }

    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let z = match &self.post_quant_conv {
            Some(c) => z.apply(c)?,
            None => z.clone(),
        };
        self.decoder.forward(&z)
    }
}

impl Module for AutoencoderKl {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.decode(&self.encode(xs)?.0)
    }
}
