//! diffusers `UNet2DConditionModel` (Stable Diffusion 1.x/2.x, SDXL): (latents [B,C,h,w], timestep, text states
//! [B,L,D], SDXL's added conditioning) → the model output [B,out,h,w] (noise or v, as the scheduler reads it).
//!
//! Every size comes from `unet/config.json` ([`UNetConfig`]): block channels, block types, layers per block, heads
//! per block, transformer layers per block, linear or 1×1-conv projections, SDXL's `text_time` embedding, 4- or
//! 9-channel inputs. Names follow diffusers' modules (`down_blocks.i.resnets.j.conv1`, ...). Attention layers
//! are in [`super::unet_attention`].

use super::linear::Quantizer;
use super::unet_attention::{SpatialTransformer, TransformerSpec};
use crate::config::unet::UNetConfig;
use crate::kernels::{self, Conv2d, GroupNorm};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

/// diffusers' `get_timestep_embedding` for float timesteps [N]: `[cos, sin]` (flipped) of t·exp(−ln(10⁴)·i/(half −
/// shift)), computed in f32 as torch computes it.
pub fn timestep_embedding(t: &Tensor, dim: usize, flip: bool, shift: usize) -> Result<Tensor> {
    let half = dim / 2;
    let freqs: Vec<f32> =
        (0..half).map(|i| ((-(10000f64.ln() as f32) * i as f32) / (half as f32 - shift as f32)).exp()).collect();
    let freqs = Tensor::from_vec(freqs, (1, half), t.device())?;
    let args = t.to_dtype(DType::F32)?.unsqueeze(1)?.broadcast_mul(&freqs)?;
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip { Tensor::cat(&[cos, sin], 1)? } else { Tensor::cat(&[sin, cos], 1)? };
    if dim % 2 == 1 {
        return emb.pad_with_zeros(1, 0, 1);
    }
    Ok(emb)
}

/// `TimestepEmbedding`: linear, SiLU, linear.
struct TimeMlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeMlp {
    fn new(i: usize, o: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { linear_1: linear(i, o, vb.pp("linear_1"))?, linear_2: linear(o, o, vb.pp("linear_2"))? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply(&self.linear_1)?.silu()?.apply(&self.linear_2)
    }
}

/// `ResnetBlock2D` with the time embedding added between its convolutions.
struct Resnet {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl Resnet {
    fn new(i: usize, o: usize, cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let shortcut = if i != o { Some(Conv2d::new(i, o, 1, 1, 0, vb.pp("conv_shortcut"))?) } else { None };
        Ok(Self {
            norm1: GroupNorm::new(g, i, eps, vb.pp("norm1"))?,
            conv1: Conv2d::new(i, o, 3, 1, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(cfg.time_embed_dim(), o, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(g, o, eps, vb.pp("norm2"))?,
            conv2: Conv2d::new(o, o, 3, 1, 1, vb.pp("conv2"))?,
            shortcut,
        })
    }

    /// `temb_act`: SiLU of the time embedding (each resnet projects it).
    fn forward(&self, x: &Tensor, temb_act: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x, true)?.apply(&self.conv1)?;
        let t = temb_act.apply(&self.time_emb_proj)?.unsqueeze(2)?.unsqueeze(3)?;
        let h = self.norm2.forward(&h.broadcast_add(&t)?, true)?.apply(&self.conv2)?;
        match &self.shortcut {
            Some(c) => x.apply(c)? + h,
            None => x + h,
        }
    }
}

/// One down or up block: resnets, each followed by a spatial transformer in cross-attention blocks, then the
/// resampler.
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<SpatialTransformer>,
    /// Down: the stride-2 convolution; up: the convolution after nearest 2× upsampling.
    resample: Option<Conv2d>,
}

/// Everything one block is built from.
struct BlockSpec {
    cross: bool,
    layers: usize,
    heads: usize,
    depth: usize,
    context: usize,
    resample: bool,
}

impl Block {
    /// A down block from `i` to `o` channels.
    fn down(i: usize, o: usize, s: &BlockSpec, cfg: &UNetConfig, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        let resnets = (0..s.layers)
            .map(|j| Resnet::new(if j == 0 { i } else { o }, o, cfg, vb.pp(format!("resnets.{j}"))))
            .collect::<Result<Vec<_>>>()?;
        let attentions = Self::attentions(o, s, cfg, q, &vb)?;
        let resample = if s.resample { Some(Conv2d::new(o, o, 3, 2, 1, vb.pp("downsamplers.0.conv"))?) } else { None };
        Ok(Self { resnets, attentions, resample })
    }

    /// An up block to `o` channels from `prev` (the block below), taking skips of `skip_in` channels on its last
    /// resnet (the matching down block's input) and `o` on the others.
    fn up(
        prev: usize,
        o: usize,
        skip_in: usize,
        s: &BlockSpec,
        cfg: &UNetConfig,
        q: &Quantizer,
        vb: VarBuilder,
    ) -> Result<Self> {
        let resnets = (0..s.layers)
            .map(|j| {
                let skip = if j + 1 == s.layers { skip_in } else { o };
                let input = if j == 0 { prev } else { o };
                Resnet::new(input + skip, o, cfg, vb.pp(format!("resnets.{j}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let attentions = Self::attentions(o, s, cfg, q, &vb)?;
        let resample = if s.resample { Some(Conv2d::new(o, o, 3, 1, 1, vb.pp("upsamplers.0.conv"))?) } else { None };
        Ok(Self { resnets, attentions, resample })
    }

    fn attentions(
        c: usize,
        s: &BlockSpec,
        cfg: &UNetConfig,
        q: &Quantizer,
        vb: &VarBuilder,
    ) -> Result<Vec<SpatialTransformer>> {
        if !s.cross {
            return Ok(Vec::new());
        }
        let spec = TransformerSpec { heads: s.heads, depth: s.depth, context: s.context };
        (0..s.layers).map(|j| SpatialTransformer::new(c, spec, cfg, q, vb.pp(format!("attentions.{j}")))).collect()
    }

    fn layer(&self, j: usize, x: &Tensor, temb: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let x = self.resnets[j].forward(x, temb)?;
        match self.attentions.get(j) {
            Some(a) => a.forward(&x, ctx),
            None => Ok(x),
        }
    }
}

/// `UNetMidBlock2DCrossAttn`: resnet, then (transformer, resnet).
struct Mid {
    first: Resnet,
    rest: Vec<(SpatialTransformer, Resnet)>,
}

/// SDXL's added conditioning: the pooled text embedding and the six size numbers per batch row.
pub struct Added<'a> {
    pub text_embeds: &'a Tensor,
    pub time_ids: &'a Tensor,
}

pub struct UNet {
    conv_in: Conv2d,
    time_embedding: TimeMlp,
    add_embedding: Option<TimeMlp>,
    down: Vec<Block>,
    mid: Mid,
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    cfg: UNetConfig,
}

impl UNet {
    /// The UNet of `cfg` from `vb` (any LoRA already merged by the builder); `q` builds the attention blocks'
    /// matrices, quantized under `--quantize`.
    pub fn new(cfg: &UNetConfig, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let (heads, layers) = (cfg.heads(), cfg.layers_per_block.expand(n));
        let (depth, context) = (cfg.transformer_layers_per_block.expand(n), cfg.cross_attention_dim.expand(n));
        let temb = cfg.time_embed_dim();
        let add_embedding = match (cfg.text_time(), cfg.projection_class_embeddings_input_dim) {
            (true, Some(i)) => Some(TimeMlp::new(i, temb, vb.pp("add_embedding"))?),
            _ => None,
        };
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let cross = cfg.down_block_types[i].starts_with("CrossAttn");
            let s = BlockSpec {
                cross,
                layers: layers[i],
                heads: heads[i],
                depth: depth[i],
                context: context[i],
                resample: i + 1 < n,
            };
            let input = if i == 0 { ch[0] } else { ch[i - 1] };
            down.push(Block::down(input, ch[i], &s, cfg, q, vb.pp(format!("down_blocks.{i}")))?);
        }
        let spec = TransformerSpec { heads: heads[n - 1], depth: depth[n - 1], context: context[n - 1] };
        let mid = Self::mid(cfg, spec, q, vb.pp("mid_block"))?;
        let mut up = Vec::with_capacity(n);
        for i in 0..n {
            // Up block i mirrors down block n−1−i: reversed per-block settings, one more resnet than layers.
            let r = n - 1 - i;
            let s = BlockSpec {
                cross: cfg.up_block_types[i].starts_with("CrossAttn"),
                layers: layers[r] + 1,
                heads: heads[r],
                depth: depth[r],
                context: context[r],
                resample: i + 1 < n,
            };
            let prev = if i == 0 { ch[n - 1] } else { ch[r + 1] };
            let skip_in = ch[r.saturating_sub(1)];
            up.push(Block::up(prev, ch[r], skip_in, &s, cfg, q, vb.pp(format!("up_blocks.{i}")))?);
        }
        Ok(Self {
            conv_in: Conv2d::new(cfg.in_channels, ch[0], 3, 1, 1, vb.pp("conv_in"))?,
            time_embedding: TimeMlp::new(ch[0], temb, vb.pp("time_embedding"))?,
            add_embedding,
            down,
            mid,
            up,
            norm_out: GroupNorm::new(cfg.norm_num_groups, ch[0], cfg.norm_eps, vb.pp("conv_norm_out"))?,
            conv_out: Conv2d::new(ch[0], cfg.out_channels, 3, 1, 1, vb.pp("conv_out"))?,
            cfg: cfg.clone(),
        })
    }

    fn mid(cfg: &UNetConfig, spec: TransformerSpec, q: &Quantizer, vb: VarBuilder) -> Result<Mid> {
        let c = *cfg.block_out_channels.last().expect("validated non-empty");
        let first = Resnet::new(c, c, cfg, vb.pp("resnets.0"))?;
        let attn = SpatialTransformer::new(c, spec, cfg, q, vb.pp("attentions.0"))?;
        let second = Resnet::new(c, c, cfg, vb.pp("resnets.1"))?;
        Ok(Mid { first, rest: vec![(attn, second)] })
    }

    /// The config the model was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// The time embedding (plus SDXL's added embedding) for timesteps `t` [B], in `dtype`.
    fn embedding(&self, t: &Tensor, added: Option<&Added>, dtype: DType) -> Result<Tensor> {
        let c = &self.cfg;
        let proj = timestep_embedding(t, c.block_out_channels[0], c.flip_sin_to_cos, c.freq_shift)?;
        let mut emb = self.time_embedding.forward(&proj.to_dtype(dtype)?)?;
        if let (Some(add), Some(a)) = (&self.add_embedding, added) {
            let dim = c.addition_time_embed_dim.expect("validated with text_time");
            let b = a.time_ids.dim(0)?;
            let ids = a.time_ids.flatten_all()?;
            let time = timestep_embedding(&ids, dim, c.flip_sin_to_cos, c.freq_shift)?.reshape((b, ()))?;
            let input = Tensor::cat(&[&a.text_embeds.to_dtype(DType::F32)?, &time], D::Minus1)?.to_dtype(dtype)?;
            emb = (emb + add.forward(&input)?)?;
        }
        Ok(emb)
    }

    /// The model output for `x` at timesteps `t` ([B], f32) with text states `ctx`.
    pub fn forward(&self, x: &Tensor, t: &Tensor, ctx: &Tensor, added: Option<&Added>) -> Result<Tensor> {
        let temb = self.embedding(t, added, x.dtype())?.silu()?;
        let mut h = x.apply(&self.conv_in)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for j in 0..block.resnets.len() {
                h = block.layer(j, &h, &temb, ctx)?;
                skips.push(h.clone());
            }
            if let Some(conv) = &block.resample {
                h = h.apply(conv)?;
                skips.push(h.clone());
            }
        }
        h = self.mid.first.forward(&h, &temb)?;
        for (attn, res) in &self.mid.rest {
            h = res.forward(&attn.forward(&h, ctx)?, &temb)?;
        }
        for block in &self.up {
            for j in 0..block.resnets.len() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = block.layer(j, &Tensor::cat(&[&h, &skip], 1)?, &temb, ctx)?;
            }
            if let Some(conv) = &block.resample {
                // The size of the skip the next block takes: odd latent sizes do not double back exactly.
                let (_, _, sh, sw) = skips.last().expect("skips left for the next block").dims4()?;
                let (_, _, hh, hw) = h.dims4()?;
                h = if (sh, sw) == (2 * hh, 2 * hw) { kernels::upsample2x(&h)? } else { h.upsample_nearest2d(sh, sw)? };
                h = h.apply(conv)?;
            }
        }
        self.norm_out.forward(&h, true)?.apply(&self.conv_out)
    }
}
