//! The FLUX.2 MM-DiT (`Flux2Transformer2DModel`): packed latents (and reference tokens) + Qwen3 prompt
//! embeddings → velocity.
//!
//! The maths are diffusers' `transformer_flux2.py`; what differs from FLUX.1 ([`super::transformer`]): one set of
//! modulations shared by all double blocks (image and text) and one by all single blocks, computed once per step;
//! SwiGLU feed-forwards; no pooled text embedding; four RoPE axes with the config's base; no biases anywhere.
//! Weight names are Black Forest Labs' (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, …), with q, k, v
//! fused, so GGUF and BFL files load as they are; diffusers checkpoints are presented under these names by
//! [`crate::weights::flux_keys`].

use super::hooks::{forecast_pair, walk, BlockCache, NoCache, Pass};
use super::linear::{LinearLayer, Weights};
use super::transformer::{chunks, rope, scaled_scalars, sinusoidal, Embedder, Inputs, Modulation, QkNorm, EPS};
use crate::config::TransformerConfig;
use crate::kernels::{self, Angles};
use candle_core::{DType, Result, Tensor};

/// One stream of a double block: fused qkv, q/k norms, output projection, SwiGLU MLP (`img_*` / `txt_*`).
struct Stream {
    qkv: LinearLayer,
    norm: QkNorm,
    proj: LinearLayer,
    mlp_in: LinearLayer,
    mlp_out: LinearLayer,
    mlp: usize,
}

impl Stream {
    fn new(dim: usize, head_dim: usize, mlp: usize, vb: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            qkv: vb.pp(format!("{p}_attn.qkv")).linear(dim, 3 * dim)?,
            norm: QkNorm::new(head_dim, vb.pp(format!("{p}_attn.norm")))?,
            proj: vb.pp(format!("{p}_attn.proj")).linear(dim, dim)?,
            mlp_in: vb.pp(format!("{p}_mlp.0")).linear(dim, 2 * mlp)?,
            mlp_out: vb.pp(format!("{p}_mlp.2")).linear(mlp, dim)?,
            mlp,
        })
    }

    /// After attention (projected): `x + gate·att`, then `x + gate·MLP(LN(x)·(1+scale)+shift)`.
    fn finish(&self, x: &Tensor, att: &Tensor, attn: &Modulation, mlp: &Modulation) -> Result<Tensor> {
        let x = kernels::gated_residual(x, att, &attn.gate)?;
        let h = mlp.apply(&x)?.apply(&self.mlp_in)?;
        let h = kernels::swiglu(&h, 0, self.mlp)?.apply(&self.mlp_out)?;
        kernels::gated_residual(&x, &h, &mlp.gate)
    }
}

/// The shared modulations of one step: (attention, MLP) for each double-block stream, one for single blocks.
struct StepModulation {
    img: [Modulation; 2],
    txt: [Modulation; 2],
    single: Modulation,
}

fn pair(m: &Tensor) -> Result<[Modulation; 2]> {
    let mut v = Modulation::split(m, 2)?.into_iter();
    Ok([v.next().expect("two"), v.next().expect("two")])
}

/// `double_blocks.N`: image and text streams, joint attention over [text; image].
struct DoubleBlock {
    img: Stream,
    txt: Stream,
}

impl DoubleBlock {
    /// (image, text) after the block; `cache` may forecast the attention module's outputs (block `id`).
    fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        m: &StepModulation,
        run: &mut Pass,
        id: usize,
    ) -> Result<(Tensor, Tensor)> {
        let [att_img, att_txt] = match run.cache.forecast(id)? {
            Some(f) => forecast_pair(f)?,
            None => {
                let out = self.attention(x, ctx, m, run.heads, run.rope)?;
                run.cache.record(id, &out)?;
                out
            }
        };
        let x = self.img.finish(x, &att_img, &m.img[0], &m.img[1])?;
        let ctx = self.txt.finish(ctx, &att_txt, &m.txt[0], &m.txt[1])?;
        Ok((x, ctx))
    }

    /// The block's attention module (diffusers' `attn`): joint attention over [text; image], each stream's output
    /// projected: (image, text).
    fn attention(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        m: &StepModulation,
        heads: usize,
        rope: &Angles,
    ) -> Result<[Tensor; 2]> {
        let st = ctx.dim(1)?;
        let qkv_i = m.img[0].apply(x)?.apply(&self.img.qkv)?;
        let qkv_t = m.txt[0].apply(ctx)?.apply(&self.txt.qkv)?;
        let (qt, kt, vt) = self.txt.norm.split(&qkv_t, heads, rope, 0)?;
        let (qi, ki, vi) = self.img.norm.split(&qkv_i, heads, rope, st)?;
        let q = Tensor::cat(&[qt, qi], 2)?;
        let k = Tensor::cat(&[kt, ki], 2)?;
        let v = Tensor::cat(&[vt, vi], 2)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let att = kernels::attention(&q, &k, &v, scale)?;
        let att_txt = att.narrow(1, 0, st)?.apply(&self.txt.proj)?;
        let att_img = att.narrow(1, st, att.dim(1)? - st)?.apply(&self.img.proj)?;
        Ok([att_img, att_txt])
    }
}

/// `single_blocks.N`: `linear1` gives [q | k | v | SwiGLU input (2·mlp)], `linear2` projects [attention | MLP].
struct SingleBlock {
    linear1: LinearLayer,
    norm: QkNorm,
    linear2: LinearLayer,
    mlp: usize,
}

impl SingleBlock {
    fn new(dim: usize, head_dim: usize, mlp: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            linear1: vb.pp("linear1").linear(dim, 3 * dim + 2 * mlp)?,
            norm: QkNorm::new(head_dim, vb.pp("norm"))?,
            linear2: vb.pp("linear2").linear(dim + mlp, dim)?,
            mlp,
        })
    }

    /// The block after its gated residual; `cache` may forecast its attention module (diffusers'
    /// `Flux2ParallelSelfAttention`: everything between the modulated norm and the gated residual), block `id`.
    fn forward(&self, h: &Tensor, m: &Modulation, run: &mut Pass, id: usize) -> Result<Tensor> {
        let out = match run.cache.forecast(id)? {
            Some(mut f) if f.len() == 1 => f.remove(0),
            Some(f) => candle_core::bail!("a single-block forecast of {} tensors, not 1", f.len()),
            None => {
                let out = self.attention(&m.apply(h)?, run.heads, run.rope)?;
                run.cache.record(id, std::slice::from_ref(&out))?;
                out
            }
        };
        kernels::gated_residual(h, &out, &m.gate)
    }

    fn attention(&self, normed: &Tensor, heads: usize, rope: &Angles) -> Result<Tensor> {
        let fused = normed.apply(&self.linear1)?;
        let dim = fused.dim(2)? - 2 * self.mlp;
        let mlp = kernels::swiglu(&fused, dim, self.mlp)?;
        let (q, k, v) = self.norm.split(&fused, heads, rope, 0)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let att = kernels::attention(&q, &k, &v, scale)?;
        Tensor::cat(&[att, mlp], 2)?.apply(&self.linear2)
    }
}

pub struct Flux2Transformer {
    img_in: LinearLayer,
    txt_in: LinearLayer,
    time_in: Embedder,
    guidance_in: Option<Embedder>,
    mod_img: LinearLayer,
    mod_txt: LinearLayer,
    mod_single: LinearLayer,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    final_modulation: LinearLayer,
    final_linear: LinearLayer,
    heads: usize,
    axes: Vec<usize>,
    theta: f64,
    dtype: DType,
}

/// The feed-forward width: `int(inner · mlp_ratio)` (class default ratio 3).
pub fn mlp_hidden(cfg: &TransformerConfig) -> usize {
    (cfg.inner_dim() as f64 * cfg.mlp_ratio.unwrap_or(3.0)) as usize
}

/// Every linear layer of the model (BFL module name → [out, in]): what LoRA files are checked against.
pub fn linear_shapes(cfg: &TransformerConfig) -> Vec<(String, (usize, usize))> {
    let (d, mlp) = (cfg.inner_dim(), mlp_hidden(cfg));
    let mut out = vec![
        ("img_in".to_string(), (d, cfg.in_channels)),
        ("txt_in".into(), (d, cfg.joint_attention_dim)),
        ("time_in.in_layer".into(), (d, 256)),
        ("time_in.out_layer".into(), (d, d)),
        ("double_stream_modulation_img.lin".into(), (6 * d, d)),
        ("double_stream_modulation_txt.lin".into(), (6 * d, d)),
        ("single_stream_modulation.lin".into(), (3 * d, d)),
        ("final_layer.linear".into(), (cfg.out_channels.unwrap_or(cfg.in_channels), d)),
        ("final_layer.adaLN_modulation.1".into(), (2 * d, d)),
    ];
    if cfg.guidance_embeds {
        out.extend([("guidance_in.in_layer".into(), (d, 256)), ("guidance_in.out_layer".into(), (d, d))]);
    }
    for n in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            out.extend([
                (format!("double_blocks.{n}.{s}_attn.qkv"), (3 * d, d)),
                (format!("double_blocks.{n}.{s}_attn.proj"), (d, d)),
                (format!("double_blocks.{n}.{s}_mlp.0"), (2 * mlp, d)),
                (format!("double_blocks.{n}.{s}_mlp.2"), (d, mlp)),
            ]);
        }
    }
    for n in 0..cfg.num_single_layers {
        out.extend([
            (format!("single_blocks.{n}.linear1"), (3 * d + 2 * mlp, d)),
            (format!("single_blocks.{n}.linear2"), (d, d + mlp)),
        ]);
    }
    out
}

impl Flux2Transformer {
    /// `vb` presents BFL names and has no biases.
    pub fn new(cfg: &TransformerConfig, vb: Weights) -> Result<Self> {
        let (dim, hd, mlp) = (cfg.inner_dim(), cfg.attention_head_dim, mlp_hidden(cfg));
        let out_channels = cfg.out_channels.unwrap_or(cfg.in_channels);
        let double = (0..cfg.num_layers)
            .map(|i| {
                let vb = vb.pp(format!("double_blocks.{i}"));
                Ok(DoubleBlock {
                    img: Stream::new(dim, hd, mlp, &vb, "img")?,
                    txt: Stream::new(dim, hd, mlp, &vb, "txt")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            img_in: vb.pp("img_in").dense_linear(cfg.in_channels, dim)?,
            txt_in: vb.pp("txt_in").dense_linear(cfg.joint_attention_dim, dim)?,
            time_in: Embedder::new(256, dim, vb.pp("time_in"))?,
            guidance_in: if cfg.guidance_embeds { Some(Embedder::new(256, dim, vb.pp("guidance_in"))?) } else { None },
            mod_img: vb.pp("double_stream_modulation_img.lin").linear(dim, 6 * dim)?,
            mod_txt: vb.pp("double_stream_modulation_txt.lin").linear(dim, 6 * dim)?,
            mod_single: vb.pp("single_stream_modulation.lin").linear(dim, 3 * dim)?,
            double,
            single: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::new(dim, hd, mlp, vb.pp(format!("single_blocks.{i}"))))
                .collect::<Result<_>>()?,
            final_modulation: vb.pp("final_layer.adaLN_modulation.1").linear(dim, 2 * dim)?,
            final_linear: vb.pp("final_layer.linear").dense_linear(dim, out_channels)?,
            heads: cfg.num_attention_heads,
            axes: cfg.axes_dims_rope.clone(),
            theta: cfg.rope_theta.unwrap_or(2000.0),
            dtype: vb.dtype(),
        })
    }

    /// SiLU of the time (and guidance) embedding, which every modulation layer reads.
    fn time_embedding(&self, timestep: &Tensor, guidance: Option<&Tensor>) -> Result<Tensor> {
        let (dtype, dev) = (self.dtype, timestep.device());
        let mut temb = self.time_in.forward(&sinusoidal(&scaled_scalars(timestep, dtype)?, dtype, dev)?)?;
        if let (Some(g), Some(mlp)) = (guidance, &self.guidance_in) {
            let mut gv = scaled_scalars(g, dtype)?;
            gv.resize(temb.dim(0)?, gv[0]);
            temb = (temb + mlp.forward(&sinusoidal(&gv, dtype, dev)?)?)?;
        }
        temb.silu()
    }

    /// Velocity for `tokens` [B, S, C] (latents, then any reference tokens) at `timestep` [B] (σ).
    pub fn forward(&self, tokens: &Tensor, timestep: &Tensor, inp: &Inputs) -> Result<Tensor> {
        self.forward_cached(tokens, timestep, inp, &mut NoCache)
    }

    /// (double blocks, single blocks).
    pub fn blocks(&self) -> (usize, usize) {
        (self.double.len(), self.single.len())
    }

    /// [`Self::forward`] with a step cache deciding which blocks run.
    pub fn forward_cached(
        &self,
        tokens: &Tensor,
        timestep: &Tensor,
        inp: &Inputs,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        let heads = self.heads;
        let temb = self.time_embedding(timestep, inp.guidance)?;
        let m = StepModulation {
            img: pair(&temb.apply(&self.mod_img)?)?,
            txt: pair(&temb.apply(&self.mod_txt)?)?,
            single: Modulation::split(&temb.apply(&self.mod_single)?, 1)?.remove(0),
        };
        let ids = Tensor::cat(&[inp.txt_ids.get(0)?, inp.img_ids.get(0)?], 0)?;
        let rope = rope(&ids, &self.axes, self.theta, self.dtype, tokens.device())?;

        let x = tokens.apply(&self.img_in)?;
        let ctx = inp.txt.apply(&self.txt_in)?;
        let mut run = Pass { heads, rope: &rope, cache, control: None };
        let x = walk(
            (&self.double, &self.single),
            (x, ctx),
            &mut run,
            |b, x, ctx, run, id| b.forward(x, ctx, &m, run, id),
            |b, h, run, id| b.forward(h, &m.single, run, id),
        )?;
        // (shift, scale): BFL's order, the reverse of diffusers' `norm_out` (its halves are swapped at load).
        let f = chunks(&temb.apply(&self.final_modulation)?, 2)?;
        kernels::layer_norm_modulate(&x, &f[1], &f[0], EPS)?.apply(&self.final_linear)
    }
}
