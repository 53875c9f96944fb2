//! The DINOv2 backbone: patch embeddings with the CLS token and the position grid resized bicubically to the
//! picture's patch grid, pre-norm layers with layer scale, the final layernorm on each selected stage.

use super::*;
use crate::error::{Error, Result};
use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, LayerNorm, Linear, VarBuilder};
pub(super) struct Embeddings {
    pub(super) patch: Conv2d,
    pub(super) cls: Tensor,
    /// [1, 1 + grid², D]
    pub(super) pos: Tensor,
    pub(super) grid: usize,
}

impl Embeddings {
    pub(super) fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let grid = cfg.image_size / cfg.patch_size;
        let d = cfg.hidden_size;
        let conv = Conv2dConfig { stride: cfg.patch_size, ..Default::default() };
        Ok(Self {
            patch: candle_nn::conv2d(cfg.num_channels, d, cfg.patch_size, conv, vb.pp("patch_embeddings.projection"))?,
            cls: vb.get((1, 1, d), "cls_token")?,
            pos: vb.get((1, grid * grid + 1, d), "position_embeddings")?,
            grid,
        })
    }

    /// [B, 1 + ph·pw, D]: CLS token then patches, plus the position embeddings for a ph×pw grid.
    pub(super) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.patch.forward(pixels)?; // [B, D, ph, pw]
        let (b, d, ph, pw) = x.dims4()?;
        let x = x.flatten_from(2)?.transpose(1, 2)?;
        let cls = self.cls.broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&cls, &x], 1)?;
        x.broadcast_add(&self.positions(ph, pw)?)
    }

    /// The stored grid resized bicubically (in f32, as transformers does) unless it already fits. transformers 5
    /// asks `interpolate` for `size=(H / patch, W / patch)`, so the scale is grid / size (older releases passed a
    /// scale factor nudged by 0.1 instead). It also skips only when the pixel height equals the width; a same-size bicubic resize is the identity
    /// (weights 0, 1, 0, 0 exactly), so the grid test alone gives the same numbers.
    pub(super) fn positions(&self, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
        if ph == self.grid && pw == self.grid {
            return Ok(self.pos.clone());
        }
        let d = self.pos.dim(2)?;
        let cls = self.pos.narrow(1, 0, 1)?;
        let grid = self.pos.narrow(1, 1, self.grid * self.grid)?.reshape((1, self.grid, self.grid, d))?;
        let grid = grid.permute((0, 3, 1, 2))?.to_dtype(DType::F32)?;
        let grid = resize(&grid, ph, pw, Interp::Bicubic)?.to_dtype(self.pos.dtype())?;
        let grid = grid.permute((0, 2, 3, 1))?.reshape((1, ph * pw, d))?;
        Tensor::cat(&[&cls, &grid], 1)
    }
}

pub(super) struct Attention {
    pub(super) q: Linear,
    pub(super) k: Linear,
    pub(super) v: Linear,
    pub(super) o: Linear,
    pub(super) heads: usize,
}

impl Attention {
    /// transformers 5 loads the Hub's `attention.attention.{query,key,value}` + `attention.output.dense` (which
    /// its save_pretrained also writes) as `attention.{q,k,v,o}_proj`; both layouts are read.
    pub(super) fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        let qkv = |name: &str, new: &str| {
            let path = if renamed { format!("attention.{new}") } else { format!("attention.attention.{name}") };
            match cfg.qkv_bias {
                true => candle_nn::linear(d, d, vb.pp(path)),
                false => candle_nn::linear_no_bias(d, d, vb.pp(path)),
            }
        };
        let o = if renamed { "attention.o_proj" } else { "attention.output.dense" };
        Ok(Self {
            q: qkv("query", "q_proj")?,
            k: qkv("key", "k_proj")?,
            v: qkv("value", "v_proj")?,
            o: candle_nn::linear(d, d, vb.pp(o))?,
            heads: cfg.num_attention_heads,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let hd = d / self.heads;
        let split = |t: Tensor| t.reshape((b, n, self.heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.q.forward(x)?)?;
        let k = split(self.k.forward(x)?)?;
        let v = split(self.v.forward(x)?)?;
        let scores = (q.matmul(&k.t()?)? * (hd as f64).powf(-0.5))?;
        let out = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        self.o.forward(&out.transpose(1, 2)?.reshape((b, n, d))?)
    }
}

pub(super) struct Layer {
    pub(super) norm1: LayerNorm,
    pub(super) attention: Attention,
    pub(super) scale1: Tensor,
    pub(super) norm2: LayerNorm,
    pub(super) fc1: Linear,
    pub(super) fc2: Linear,
    pub(super) scale2: Tensor,
}

impl Layer {
    pub(super) fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
        let d = cfg.hidden_size;
        let mlp = (d as f64 * cfg.mlp_ratio) as usize; // int(hidden_size * mlp_ratio)
        Ok(Self {
            norm1: candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("norm1"))?,
            attention: Attention::new(cfg, vb.clone(), renamed)?,
            scale1: vb.get(d, "layer_scale1.lambda1")?,
            norm2: candle_nn::layer_norm(d, cfg.layer_norm_eps, vb.pp("norm2"))?,
            fc1: candle_nn::linear(d, mlp, vb.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(mlp, d, vb.pp("mlp.fc2"))?,
            scale2: vb.get(d, "layer_scale2.lambda1")?,
        })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(&self.norm1.forward(x)?)?.broadcast_mul(&self.scale1)?;
        let x = (a + x)?;
        let m = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        m.broadcast_mul(&self.scale2)? + x
    }
}

pub(super) struct Backbone {
    pub(super) embeddings: Embeddings,
    pub(super) layers: Vec<Layer>,
    /// Applied to each selected hidden state when `apply_layernorm` (the default).
    pub(super) layernorm: Option<LayerNorm>,
    pub(super) stages: Vec<usize>,
}

impl Backbone {
    pub(super) fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::new(cfg, vb.pp(format!("encoder.layer.{i}")), renamed))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = match cfg.apply_layernorm {
            true => Some(candle_nn::layer_norm(cfg.hidden_size, cfg.layer_norm_eps, vb.pp("layernorm"))?),
            false => None,
        };
        let stages = cfg.stages().map_err(Error::Usage)?;
        Ok(Self { embeddings: Embeddings::new(cfg, vb.pp("embeddings"))?, layers, layernorm, stages })
    }

    /// The selected hidden states [B, 1 + N, D] (stage 0 = the embeddings, stage i = after layer i).
    pub(super) fn forward(&self, pixels: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let mut x = self.embeddings.forward(pixels)?;
        let mut out = Vec::with_capacity(self.stages.len());
        for stage in 0..=self.layers.len() {
            if stage > 0 {
                x = self.layers[stage - 1].forward(&x)?;
            }
            if self.stages.contains(&stage) {
                out.push(match &self.layernorm {
                    Some(ln) => ln.forward(&x)?,
                    None => x.clone(),
                });
            }
            if out.len() == self.stages.len() {
                break;
            }
        }
        Ok(out)
    }
}
