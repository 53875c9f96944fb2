//! transformers `CLIPTextModel`: token ids [B,77] → pooled embedding [B,hidden] (what FLUX conditions on).
//!
//! Pre-LN transformer with a causal mask and no padding mask (diffusers passes none). The pooled output is the
//! final-LayerNorm state at the end-of-text token, found the way transformers finds it: with the legacy
//! `eos_token_id == 2` configs (openai's, FLUX.1's) the position of the largest id, otherwise the first position
//! holding `eos_token_id`.

use super::linear::{LinearLayer, SidePath};
use crate::config::{Act, ClipConfig};
use crate::weights::lora::formats::Target;
use crate::weights::lora::{LoraSet, ScaleCell};
use candle_core::{DType, Device, IndexOp, Result, Tensor, D};
use candle_nn::{embedding, layer_norm, linear, Embedding, LayerNorm, Module, VarBuilder};

/// LoRA adapters for CLIP: always side paths (CLIP is small, and the scale may change between prompts).
pub struct ClipLora<'a> {
    pub set: &'a LoraSet,
    pub scale: ScaleCell,
    /// Before the encoder's module names in the set's targets: "" for the only (or first) encoder,
    /// `text_encoder_2.` for SDXL's second.
    pub prefix: &'static str,
}

/// `vb`'s linear `name` (`encoder.layers.N.self_attn.q_proj`) with its LoRA, if any.
fn lora_linear(i: usize, o: usize, vb: VarBuilder, name: String, lora: Option<&ClipLora>) -> Result<LinearLayer> {
    let (dtype, dev) = (vb.dtype(), vb.device().clone());
    let base = LinearLayer::dense(linear(i, o, vb)?);
    let Some(l) = lora else { return Ok(base) };
    match l.set.low_rank(&Target::Clip(format!("{}{name}", l.prefix)), o, i)? {
        Some(pair) => Ok(base.with_lora(Some(SidePath::new(pair, l.scale.clone(), dtype, &dev)?))),
        None => Ok(base),
    }
}

struct Layer {
    ln1: LayerNorm,
    q: LinearLayer,
    k: LinearLayer,
    v: LinearLayer,
    o: LinearLayer,
    ln2: LayerNorm,
    fc1: LinearLayer,
    fc2: LinearLayer,
}

pub struct ClipText {
    /// `CLIPTextModelWithProjection`'s `text_projection` (SDXL's second encoder), when the weights have it.
    projection: Option<candle_nn::Linear>,
    token: Embedding,
    position: Embedding,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    heads: usize,
    act: Act,
    eos_token_id: u32,
}

impl ClipText {
    pub fn new(cfg: &ClipConfig, act: Act, vb: VarBuilder, lora: Option<&ClipLora>) -> Result<Self> {
        let projection = match cfg.projection_dim {
            Some(p) if vb.contains_tensor("text_projection.weight") => {
                Some(candle_nn::linear_no_bias(cfg.hidden_size, p, vb.pp("text_projection"))?)
            }
            _ => None,
        };
        // transformers ≤ 4 saved `text_model.`-prefixed names (as in the FLUX.1 repos); transformers 5 does not
        // (but keeps the prefix for `CLIPTextModelWithProjection`).
        let vb =
            if vb.contains_tensor("text_model.embeddings.token_embedding.weight") { vb.pp("text_model") } else { vb };
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let emb = vb.pp("embeddings");
        let token = embedding(cfg.vocab_size, h, emb.pp("token_embedding"))?;
        let position = embedding(cfg.max_position_embeddings, h, emb.pp("position_embedding"))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let l = vb.pp(format!("encoder.layers.{i}"));
                let lin = |i_: usize, o_: usize, p: &str| {
                    lora_linear(i_, o_, l.pp(p), format!("encoder.layers.{i}.{p}"), lora)
                };
                Ok(Layer {
                    ln1: layer_norm(h, eps, l.pp("layer_norm1"))?,
                    q: lin(h, h, "self_attn.q_proj")?,
                    k: lin(h, h, "self_attn.k_proj")?,
                    v: lin(h, h, "self_attn.v_proj")?,
                    o: lin(h, h, "self_attn.out_proj")?,
                    ln2: layer_norm(h, eps, l.pp("layer_norm2"))?,
                    fc1: lin(h, cfg.intermediate_size, "mlp.fc1")?,
                    fc2: lin(cfg.intermediate_size, h, "mlp.fc2")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_ln = layer_norm(h, eps, vb.pp("final_layer_norm"))?;
        Ok(Self {
            projection,
            token,
            position,
            layers,
            final_ln,
            heads: cfg.num_attention_heads,
            act,
            eos_token_id: cfg.eos_token_id,
        })
    }

    fn causal_mask(len: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
        let m: Vec<f32> =
            (0..len).flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        Tensor::from_vec(m, (len, len), dev)?.to_dtype(dtype)
    }

    /// The hidden state after the first `layers` encoder layers for `ids` ([B, L] u32), before the final norm.
    pub fn hidden(&self, ids: &Tensor, layers: usize) -> Result<Tensor> {
        let (b, len) = ids.dims2()?;
        let dev = ids.device();
        let pos = Tensor::arange(0u32, len as u32, dev)?;
        let mut x = self.token.forward(ids)?.broadcast_add(&self.position.forward(&pos)?)?;
        let mask = Self::causal_mask(len, x.dtype(), dev)?;
        let hd = x.dim(D::Minus1)? / self.heads;
        let scale = 1.0 / (hd as f64).sqrt();
        for l in self.layers.iter().take(layers) {
            let h = x.apply(&l.ln1)?;
            // [B,L,H·d] → [B,H,L,d]
            let split =
                |t: Tensor| -> Result<Tensor> { t.reshape((b, len, self.heads, hd))?.transpose(1, 2)?.contiguous() };
            let q = split((h.apply(&l.q)? * scale)?)?;
            let k = split(h.apply(&l.k)?)?;
            let v = split(h.apply(&l.v)?)?;
            let att = q.matmul(&k.t()?)?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&att)?;
            let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, len, self.heads * hd))?.apply(&l.o)?;
            x = (x + o)?;
            let h = self.act.apply(&x.apply(&l.ln2)?.apply(&l.fc1)?)?.apply(&l.fc2)?;
            x = (x + h)?;
        }
        Ok(x)
    }

    /// The number of encoder layers.
    pub fn depth(&self) -> usize {
        self.layers.len()
    }

    /// The final LayerNorm (what `last_hidden_state` has and the other hidden states lack).
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        x.apply(&self.final_ln)
    }

    /// The pooled output for `ids` ([B, L] u32).
    pub fn pooled(&self, ids: &Tensor) -> Result<Tensor> {
        let x = self.final_norm(&self.hidden(ids, self.layers.len())?)?;
        self.pool(ids, &x)
    }

    /// The rows of the final-norm state `x` at each row's end-of-text token.
    pub fn pool(&self, ids: &Tensor, x: &Tensor) -> Result<Tensor> {
        let ids_v = ids.to_vec2::<u32>()?;
        let rows =
            ids_v.iter().enumerate().map(|(i, row)| x.i((i, self.eos_position(row)))).collect::<Result<Vec<_>>>()?;
        Tensor::stack(&rows, 0)
    }

    /// `text_embeds` of `CLIPTextModelWithProjection`: the pooled output projected (None without the weights).
    pub fn project(&self, pooled: &Tensor) -> Result<Option<Tensor>> {
        self.projection.as_ref().map(|p| pooled.apply(p)).transpose()
    }

    fn eos_position(&self, row: &[u32]) -> usize {
        if self.eos_token_id == 2 {
            // torch.argmax returns the first maximal index.
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).unwrap_or(0)
        } else {
            row.iter().position(|&t| t == self.eos_token_id).unwrap_or(0)
        }
    }
}

/// CLIP's linear layers (`encoder.layers.N.…` → [out, in]): what LoRA files are checked against.
pub fn linear_shapes(cfg: &ClipConfig) -> Vec<(String, (usize, usize))> {
    let (h, m) = (cfg.hidden_size, cfg.intermediate_size);
    (0..cfg.num_hidden_layers)
        .flat_map(|i| {
            let p = format!("encoder.layers.{i}");
            [
                (format!("{p}.self_attn.q_proj"), (h, h)),
                (format!("{p}.self_attn.k_proj"), (h, h)),
                (format!("{p}.self_attn.v_proj"), (h, h)),
                (format!("{p}.self_attn.out_proj"), (h, h)),
                (format!("{p}.mlp.fc1"), (m, h)),
                (format!("{p}.mlp.fc2"), (h, m)),
            ]
        })
        .collect()
}
