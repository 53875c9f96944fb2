//! transformers `Qwen3Model` as FLUX.2 uses it: token ids [1, L] and their padding mask → the hidden states of
//! chosen layers, concatenated along the features ([1, L, n·hidden]).
//!
//! Pre-norm decoder layers: RMSNorm (statistics in f32), grouped-query attention with per-head RMSNorm on q and k
//! before half-split (NeoX) RoPE, a causal mask that also hides padding keys (padding sits on the right, so every
//! row keeps at least its first token), SwiGLU MLP. Hidden state k is the raw output of layer k (1-based; 0 is the
//! embeddings): FLUX.2's layers 9, 18 and 27 of a 36-layer model never reach the final norm, so the model stops
//! after the deepest layer asked for and never loads the rest (nor `lm_head`).

use super::linear::{LinearLayer, Weights};
use crate::config::qwen3::Qwen3Config;
use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::Embedding;

/// `weight · x / sqrt(mean(x²) + eps)`, the statistics in f32 and the product in the input's dtype.
struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    fn new(size: usize, eps: f64, w: Weights) -> Result<Self> {
        Ok(Self { weight: w.get(size, "weight")?, eps })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x32 = x.to_dtype(DType::F32)?;
        let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = x32.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight)
    }
}

struct Attention {
    q: LinearLayer,
    k: LinearLayer,
    v: LinearLayer,
    o: LinearLayer,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Layer {
    input_norm: RmsNorm,
    attn: Attention,
    post_norm: RmsNorm,
    gate: LinearLayer,
    up: LinearLayer,
    down: LinearLayer,
}

pub struct Qwen3Encoder {
    embed: Embedding,
    layers: Vec<Layer>,
    rope_theta: f64,
    head_dim: usize,
}

/// Position angles for `len` tokens: cos and sin [len, head_dim/2], computed in f32 as transformers does.
fn rope_tables(len: usize, head_dim: usize, theta: f64, dev: &Device) -> Result<(Tensor, Tensor)> {
    let inv: Vec<f32> =
        (0..head_dim / 2).map(|k| 1.0 / (theta as f32).powf((2 * k) as f32 / head_dim as f32)).collect();
    let mut angles = Vec::with_capacity(len * inv.len());
    for p in 0..len {
        angles.extend(inv.iter().map(|f| p as f32 * f));
    }
    let a = Tensor::from_vec(angles, (len, head_dim / 2), dev)?;
    Ok((a.cos()?, a.sin()?))
}

/// Additive mask [1, 1, L, L]: 0 where query i may see key j (j ≤ i and j is a real token), −∞ elsewhere.
fn causal_padding_mask(keep: &[u8], dtype: DType, dev: &Device) -> Result<Tensor> {
    let l = keep.len();
    let mut m = vec![f32::NEG_INFINITY; l * l];
    for i in 0..l {
        for j in 0..=i {
            if keep[j] == 1 {
                m[i * l + j] = 0.0;
            }
        }
    }
    Tensor::from_vec(m, (1, 1, l, l), dev)?.to_dtype(dtype)
}

impl Attention {
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let hd = self.head_dim;
        // [B, L, H·D] → [B, H, L, D], each head normalised over D before RoPE.
        let heads = |t: Tensor, n: usize| t.reshape((b, l, n, hd))?.transpose(1, 2)?.contiguous();
        let q = self.q_norm.forward(&heads(self.q.forward(x)?, self.heads)?)?;
        let k = self.k_norm.forward(&heads(self.k.forward(x)?, self.kv_heads)?)?;
        let v = heads(self.v.forward(x)?, self.kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, cos, sin)?;
        // Grouped-query attention: each key/value head serves heads / kv_heads query heads.
        let rep = self.heads / self.kv_heads;
        let repeat = |t: Tensor| -> Result<Tensor> {
            if rep == 1 {
                return Ok(t);
            }
            t.unsqueeze(2)?.expand((b, self.kv_heads, rep, l, hd))?.reshape((b, self.heads, l, hd))
        };
        let (k, v) = (repeat(k)?, repeat(v)?);
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?.to_dtype(q.dtype())?;
        let out = probs.matmul(&v.contiguous()?)?; // [B, H, L, D]
        self.o.forward(&out.transpose(1, 2)?.reshape((b, l, self.heads * hd))?)
    }
}

impl Layer {
    /// Matrices through `w` (quantized there if `--quantize` asks), norms dense.
    fn new(cfg: &Qwen3Config, w: Weights) -> Result<Self> {
        let (h, hd, eps) = (cfg.hidden_size, cfg.head_dim(), cfg.rms_norm_eps);
        let (q_width, kv_width) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
        let a = w.pp("self_attn").with_bias(cfg.attention_bias);
        let m = w.pp("mlp").with_bias(false);
        Ok(Self {
            input_norm: RmsNorm::new(h, eps, w.pp("input_layernorm"))?,
            attn: Attention {
                q: a.pp("q_proj").linear(h, q_width)?,
                k: a.pp("k_proj").linear(h, kv_width)?,
                v: a.pp("v_proj").linear(h, kv_width)?,
                o: a.pp("o_proj").linear(q_width, h)?,
                q_norm: RmsNorm::new(hd, eps, a.pp("q_norm"))?,
                k_norm: RmsNorm::new(hd, eps, a.pp("k_norm"))?,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.num_key_value_heads,
                head_dim: hd,
            },
            post_norm: RmsNorm::new(h, eps, w.pp("post_attention_layernorm"))?,
            gate: m.pp("gate_proj").linear(h, cfg.intermediate_size)?,
            up: m.pp("up_proj").linear(h, cfg.intermediate_size)?,
            down: m.pp("down_proj").linear(cfg.intermediate_size, h)?,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.input_norm.forward(x)?, cos, sin, mask)?)?;
        let h = self.post_norm.forward(&x)?;
        let mlp = (self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?;
        x + self.down.forward(&mlp)?
    }
}

impl Qwen3Encoder {
    /// Loads the embeddings and layers 0..`depth` (the deepest hidden state needed); `w` at the model root
    /// (`embed_tokens`, `layers.N`), whatever prefix the file had.
    pub fn new(cfg: &Qwen3Config, depth: usize, w: Weights) -> Result<Self> {
        let table = w.get((cfg.vocab_size, cfg.hidden_size), "embed_tokens.weight")?;
        Ok(Self {
            embed: Embedding::new(table, cfg.hidden_size),
            layers: (0..depth).map(|i| Layer::new(cfg, w.pp(format!("layers.{i}")))).collect::<Result<_>>()?,
            rope_theta: cfg.rope_theta(),
            head_dim: cfg.head_dim(),
        })
    }

    /// Hidden states `out_layers` (each ≤ depth) of `ids` [1, L] whose `keep` marks real tokens (1) and padding (0),
    /// concatenated along the last dim in the order given.
    pub fn hidden_states(&self, ids: &Tensor, keep: &[u8], out_layers: &[usize]) -> Result<Tensor> {
        let dev = ids.device();
        let l = ids.dim(1)?;
        let mut x = self.embed.forward(ids)?;
        let (cos, sin) = rope_tables(l, self.head_dim, self.rope_theta, dev)?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        let mask = causal_padding_mask(keep, x.dtype(), dev)?;
        let mut picked = vec![None; out_layers.len()];
        for (k, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, &mask)?;
            for (slot, &want) in picked.iter_mut().zip(out_layers) {
                if want == k + 1 {
                    *slot = Some(x.clone());
                }
            }
        }
        let picked: Vec<Tensor> = picked.into_iter().collect::<Option<_>>().ok_or_else(|| {
            candle_core::Error::Msg(format!("hidden states {out_layers:?} need {} loaded layers", self.layers.len()))
        })?;
        Tensor::cat(&picked, D::Minus1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_keys_are_hidden_but_no_row_is_empty() {
        let m = causal_padding_mask(&[1, 1, 0, 0], DType::F32, &Device::Cpu).unwrap();
        let m: Vec<Vec<f32>> = m.squeeze(0).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(m[0], vec![0.0, f32::NEG_INFINITY, f32::NEG_INFINITY, f32::NEG_INFINITY]);
        // A padding query sees the real tokens before it, not itself.
        assert_eq!(m[3], vec![0.0, 0.0, f32::NEG_INFINITY, f32::NEG_INFINITY]);
    }
}
