//! The UNet's attention layers, as diffusers' `Transformer2DModel` (continuous input) with
//! `BasicTransformerBlock`s: feature map [B,C,h,w] and text states [B,L,D] → feature map [B,C,h,w].
//!
//! GroupNorm (eps 1e-6), a 1×1-conv or linear projection in (`use_linear_projection`), `depth` blocks of
//! self-attention, cross-attention to the text and a GEGLU feed-forward (each pre-LayerNorm, residual), the
//! projection out, and the block's input added back.

use crate::config::unet::UNetConfig;
use crate::kernels::{self, Conv2d, GroupNorm};
use crate::models::linear::{LinearLayer, Quantizer};
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{layer_norm, LayerNorm, Module, VarBuilder};

/// `Attention` with bias-free q/k/v and a biased output projection.
struct Attention {
    to_q: LinearLayer,
    to_k: LinearLayer,
    to_v: LinearLayer,
    to_out: LinearLayer,
    heads: usize,
    /// `upcast_attention` (SD 2.1): scores in f32 when the model runs in f16/bf16, where they overflow.
    upcast: bool,
}

impl Attention {
    fn new(dim: usize, context: usize, heads: usize, upcast: bool, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            upcast,
            to_q: q.linear(dim, dim, false, vb.pp("to_q"))?,
            to_k: q.linear(context, dim, false, vb.pp("to_k"))?,
            to_v: q.linear(context, dim, false, vb.pp("to_v"))?,
            to_out: q.linear(dim, dim, true, vb.pp("to_out.0"))?,
            heads,
        })
    }

    /// `x` [B,S,dim] attending to `ctx` [B,L,context] (itself for self-attention).
    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let (b, s, dim) = x.dims3()?;
        let d = dim / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            let l = t.dim(1)?;
            t.reshape((b, l, self.heads, d))?.transpose(1, 2)?.contiguous()
        };
        let q = split(x.apply(&self.to_q)?)?;
        let k = split(ctx.apply(&self.to_k)?)?;
        let v = split(ctx.apply(&self.to_v)?)?;
        let scale = 1.0 / (d as f64).sqrt();
        let dtype = q.dtype();
        if self.upcast && dtype != DType::F32 {
            let f = |t: &Tensor| t.to_dtype(DType::F32);
            let o = kernels::composed::attention(&f(&q)?, &f(&k)?, &f(&v)?, scale, 0)?.to_dtype(dtype)?;
            return o.apply(&self.to_out);
        }
        // The CPU kernel takes equal query and key lengths; cross-attention runs the composed path.
        let o = if k.dim(2)? == s {
            kernels::attention(&q, &k, &v, scale)?
        } else {
            kernels::composed::attention(&q, &k, &v, scale, 0)?
        };
        o.apply(&self.to_out)
    }
}

/// `FeedForward` with GEGLU: the projection's first half times the exact GELU of its second half.
struct GeGlu {
    proj: LinearLayer,
    out: LinearLayer,
    inner: usize,
}

impl GeGlu {
    fn new(dim: usize, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        let inner = 4 * dim;
        let proj = q.linear(dim, 2 * inner, true, vb.pp("net.0.proj"))?;
        Ok(Self { proj, out: q.linear(inner, dim, true, vb.pp("net.2"))?, inner })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.apply(&self.proj)?;
        let (a, gate) = (h.narrow(D::Minus1, 0, self.inner)?, h.narrow(D::Minus1, self.inner, self.inner)?);
        (a * gate.gelu_erf()?)?.apply(&self.out)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: GeGlu,
}

impl TransformerBlock {
    fn new(dim: usize, heads: usize, context: usize, upcast: bool, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(dim, 1e-5, vb.pp("norm1"))?,
            attn1: Attention::new(dim, dim, heads, upcast, q, vb.pp("attn1"))?,
            norm2: layer_norm(dim, 1e-5, vb.pp("norm2"))?,
            attn2: Attention::new(dim, context, heads, upcast, q, vb.pp("attn2"))?,
            norm3: layer_norm(dim, 1e-5, vb.pp("norm3"))?,
            ff: GeGlu::new(dim, q, vb.pp("ff"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let x = (self.attn1.forward(&h, &h)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x)?, ctx)? + x)?;
        self.ff.forward(&self.norm3.forward(&x)?)? + x
    }
}

/// A projection in or out: a 1×1 convolution on the feature map, or a linear layer on the tokens.
enum Proj {
    Conv(Conv2d),
    Linear(LinearLayer),
}

/// A spatial transformer's attention heads, block count and text width.
#[derive(Clone, Copy)]
pub struct TransformerSpec {
    pub heads: usize,
    pub depth: usize,
    pub context: usize,
}

pub struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl SpatialTransformer {
    /// `c` channels in `heads` heads (of `c / heads` each), `depth` blocks, text states of width `context`; the
    /// blocks' matrices (and linear projections) built by `q`, which quantizes them under `--quantize`.
    pub fn new(c: usize, s: TransformerSpec, cfg: &UNetConfig, q: &Quantizer, vb: VarBuilder) -> Result<Self> {
        let TransformerSpec { heads, depth, context } = s;
        let proj = |name: &str| -> Result<Proj> {
            Ok(if cfg.use_linear_projection {
                Proj::Linear(q.linear(c, c, true, vb.pp(name))?)
            } else {
                Proj::Conv(Conv2d::new(c, c, 1, 1, 0, vb.pp(name))?)
            })
        };
        let blocks = (0..depth)
            .map(|k| {
                let vb = vb.pp(format!("transformer_blocks.{k}"));
                TransformerBlock::new(c, heads, context, cfg.upcast_attention, q, vb)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            norm: GroupNorm::new(cfg.norm_num_groups, c, 1e-6, vb.pp("norm"))?,
            proj_in: proj("proj_in")?,
            blocks,
            proj_out: proj("proj_out")?,
        })
    }

    pub fn forward(&self, x: &Tensor, ctx: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let mut t = self.norm.forward(x, false)?;
        if let Proj::Conv(conv) = &self.proj_in {
            t = t.apply(conv)?;
        }
        // [B,C,h,w] → [B,hw,C]
        t = t.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        if let Proj::Linear(l) = &self.proj_in {
            t = t.apply(l)?;
        }
        for block in &self.blocks {
            t = block.forward(&t, ctx)?;
        }
        if let Proj::Linear(l) = &self.proj_out {
            t = t.apply(l)?;
        }
        t = t.transpose(1, 2)?.reshape((b, c, h, w))?;
        if let Proj::Conv(conv) = &self.proj_out {
            t = t.apply(conv)?;
        }
        t + x
    }
}
