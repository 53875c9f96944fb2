//! The FLUX MM-DiT (`FluxTransformer2DModel`): packed latents + conditioning → velocity.
//!
//! The maths are diffusers' `transformer_flux.py`. Weight names are Black Forest Labs' original ones
//! (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, …) because those keep q, k, v (and, in single
//! blocks, the MLP input) fused: one GEMM instead of three or four, and GGUF/BFL files load without splitting
//! quantised tensors. Diffusers checkpoints are presented under these names by [`crate::weights::flux_keys`]
//! (concatenating their separate projections at load). Every size comes from `transformer/config.json` except
//! the feed-forward width, read from the checkpoint. The per-token work (modulated LayerNorm, RMSNorm + RoPE,
//! attention, GELU, gated residuals) goes through [`crate::kernels`].

use super::hooks::{forecast_pair, walk, BlockCache, NoCache, Pass, Residuals};
use super::linear::{LinearLayer, Weights};
use crate::config::TransformerConfig;
use crate::kernels::{self, Angles};
use candle_core::{DType, Device, Result, Tensor, D};

pub(crate) const EPS: f64 = 1e-6;

/// What the transformer needs besides the latents.
pub struct Inputs<'a> {
    /// [B, S_img, n_axes] position ids of the packed latents (3 axes in FLUX.1, 4 in FLUX.2).
    pub img_ids: &'a Tensor,
    /// [B, S_txt, D_t5] T5 hidden states.
    pub txt: &'a Tensor,
    /// [B, S_txt, n_axes] (all zero for FLUX.1; the token index on the last axis for FLUX.2).
    pub txt_ids: &'a Tensor,
    /// [B, D_clip] CLIP pooled output (FLUX.1; FLUX.2 has none).
    pub pooled: Option<&'a Tensor>,
    /// [B] guidance scale, for transformers with a guidance embedder.
    pub guidance: Option<&'a Tensor>,
}

/// diffusers' `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` for values already ×1000:
/// [cos(v·f_k), sin(v·f_k)] with f_k = exp(−ln(10⁴)·k/128) computed in f32 as torch does.
pub(crate) fn sinusoidal(values: &[f32], dtype: DType, dev: &Device) -> Result<Tensor> {
    const HALF: usize = 128;
    let freqs: Vec<f32> = (0..HALF).map(|k| ((-(10000f64.ln()) as f32) * k as f32 / HALF as f32).exp()).collect();
    let mut out = Vec::with_capacity(values.len() * 2 * HALF);
    for &v in values {
        out.extend(freqs.iter().map(|&f| ((v * f) as f64).cos() as f32));
        out.extend(freqs.iter().map(|&f| ((v * f) as f64).sin() as f32));
    }
    Tensor::from_vec(out, (values.len(), 2 * HALF), dev)?.to_dtype(dtype)
}

/// Scalars per batch item as the model sees them: cast to the model dtype, then ×1000 in that dtype (as
/// diffusers' `FluxTransformer2DModel.forward` does: in bf16 this rounds twice, and its numbers carry that).
pub(crate) fn scaled_scalars(t: &Tensor, dtype: DType) -> Result<Vec<f32>> {
    (t.to_dtype(dtype)? * 1000.0)?.to_dtype(DType::F32)?.to_vec1()
}

/// RoPE angles for every token (text first, then image): cos and sin [S, head_dim/2], each axis `a` of the ids
/// rotating `axes[a]` dimensions with base `theta` (10000 in FLUX.1). Frequencies and angles in f64, then cast to
/// f32, as `FluxPosEmbed` does on CPU and CUDA; kept with a copy in `dtype` (the model's) for the composed path,
/// cast here once per forward (see [`Angles`]).
pub(crate) fn rope(ids: &Tensor, axes: &[usize], theta: f64, dtype: DType, dev: &Device) -> Result<Angles> {
    let ids: Vec<Vec<f32>> = ids.to_dtype(DType::F32)?.to_vec2()?;
    let half: usize = axes.iter().sum::<usize>() / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(ids.len() * half), Vec::with_capacity(ids.len() * half));
    for pos in &ids {
        for (a, &d) in axes.iter().enumerate() {
            for k in 0..d / 2 {
                let freq = 1.0 / theta.powf((2 * k) as f64 / d as f64);
                let angle = pos[a] as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    let n = ids.len();
    Angles::new(Tensor::from_vec(cos, (n, half), dev)?, Tensor::from_vec(sin, (n, half), dev)?, dtype)
}

/// Splits a modulation output [B, n·D] into its n chunks [B, D].
pub(crate) fn chunks(m: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let d = m.dim(D::Minus1)? / n;
    (0..n).map(|i| m.narrow(D::Minus1, i * d, d)).collect()
}

/// One adaptive-LayerNorm modulation: `LN(x)·(1 + scale) + shift` in front of a sub-layer, and the `gate` of
/// the residual it feeds (BFL's `ModulationOut`).
pub(crate) struct Modulation {
    pub shift: Tensor,
    pub scale: Tensor,
    pub gate: Tensor,
}

impl Modulation {
    /// The `n` modulations a layer's output [B, 3n·D] holds, each as (shift, scale, gate).
    pub(crate) fn split(m: &Tensor, n: usize) -> Result<Vec<Self>> {
        let mut c = chunks(m, 3 * n)?.into_iter();
        let mut next = || c.next().expect("3n chunks");
        Ok((0..n).map(|_| Modulation { shift: next(), scale: next(), gate: next() }).collect())
    }

    /// `LN(x)·(1 + scale) + shift`.
    pub(crate) fn apply(&self, x: &Tensor) -> Result<Tensor> {
        kernels::layer_norm_modulate(x, &self.scale, &self.shift, EPS)
    }
}

/// RMSNorm weights for queries and keys (`norm.query_norm.scale`, `norm.key_norm.scale`).
pub(crate) struct QkNorm {
    q: Tensor,
    k: Tensor,
}

impl QkNorm {
    pub(crate) fn new(head_dim: usize, vb: Weights) -> Result<Self> {
        Ok(Self { q: vb.pp("query_norm").get(head_dim, "scale")?, k: vb.pp("key_norm").get(head_dim, "scale")? })
    }

    /// (q, k, v) [B, H, S, Dh] from a fused projection [B, S, ≥3·H·Dh] laid out [q | k | v | …]; q and k
    /// normalised and rotated with the angles of positions `start..`.
    pub(crate) fn split(
        &self,
        qkv: &Tensor,
        heads: usize,
        rope: &Angles,
        start: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let hd = self.q.dim(0)?;
        let dim = heads * hd;
        let angles = rope.narrow(start, qkv.dim(1)?)?;
        let q = kernels::qk_norm_rope(qkv, 0, heads, &self.q, EPS, &angles)?;
        let k = kernels::qk_norm_rope(qkv, dim, heads, &self.k, EPS, &angles)?;
        let v = kernels::heads_first(qkv, 2 * dim, heads, hd)?;
        Ok((q, k, v))
    }
}

/// One stream of a double block: modulation, fused qkv, q/k norms, output projection, MLP (`img_*`/`txt_*`).
struct Stream {
    modulation: LinearLayer,
    qkv: LinearLayer,
    norm: QkNorm,
    proj: LinearLayer,
    mlp_in: LinearLayer,
    mlp_out: LinearLayer,
}

impl Stream {
    fn new(dim: usize, head_dim: usize, mlp: usize, vb: &Weights, p: &str) -> Result<Self> {
        Ok(Self {
            modulation: vb.pp(format!("{p}_mod.lin")).linear(dim, 6 * dim)?,
            qkv: vb.pp(format!("{p}_attn.qkv")).linear(dim, 3 * dim)?,
            norm: QkNorm::new(head_dim, vb.pp(format!("{p}_attn.norm")))?,
            proj: vb.pp(format!("{p}_attn.proj")).linear(dim, dim)?,
            mlp_in: vb.pp(format!("{p}_mlp.0")).linear(dim, mlp)?,
            mlp_out: vb.pp(format!("{p}_mlp.2")).linear(mlp, dim)?,
        })
    }

    /// (attention, MLP) modulations from the shared time embedding.
    fn modulations(&self, temb: &Tensor) -> Result<(Modulation, Modulation)> {
        let mut m = Modulation::split(&temb.apply(&self.modulation)?, 2)?.into_iter();
        Ok((m.next().expect("two"), m.next().expect("two")))
    }

    /// After attention (projected): `x + gate·att`, then `x + gate·MLP(LN(x)·(1+scale)+shift)`.
    fn finish(&self, x: &Tensor, att: &Tensor, attn: &Modulation, mlp: &Modulation) -> Result<Tensor> {
        let x = kernels::gated_residual(x, att, &attn.gate)?;
        let h = mlp.apply(&x)?.apply(&self.mlp_in)?;
        let h = kernels::gelu_tanh(&h)?.apply(&self.mlp_out)?;
        kernels::gated_residual(&x, &h, &mlp.gate)
    }
}

/// `double_blocks.N`: image and text streams with their own weights, joint attention over [text; image].
pub(crate) struct DoubleBlock {
    img: Stream,
    txt: Stream,
}

impl DoubleBlock {
    pub(crate) fn new(dim: usize, head_dim: usize, mlp: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            img: Stream::new(dim, head_dim, mlp, &vb, "img")?,
            txt: Stream::new(dim, head_dim, mlp, &vb, "txt")?,
        })
    }

    /// The block's attention module (diffusers' `attn`): joint attention over [text; image], each stream's output
    /// projected: (image, text).
    fn attention(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        m: [&Modulation; 2],
        heads: usize,
        rope: &Angles,
    ) -> Result<[Tensor; 2]> {
        let st = ctx.dim(1)?;
        let qkv_i = m[0].apply(x)?.apply(&self.img.qkv)?;
        let qkv_t = m[1].apply(ctx)?.apply(&self.txt.qkv)?;
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

    /// (image, text) after the block; `cache` may forecast the attention module's outputs (block `id`).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        ctx: &Tensor,
        temb: &Tensor,
        run: &mut Pass,
        id: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (img_attn, img_mlp) = self.img.modulations(temb)?;
        let (txt_attn, txt_mlp) = self.txt.modulations(temb)?;
        let [att_img, att_txt] = match run.cache.forecast(id)? {
            Some(f) => forecast_pair(f)?,
            None => {
                let out = self.attention(x, ctx, [&img_attn, &txt_attn], run.heads, run.rope)?;
                run.cache.record(id, &out)?;
                out
            }
        };
        Ok((self.img.finish(x, &att_img, &img_attn, &img_mlp)?, self.txt.finish(ctx, &att_txt, &txt_attn, &txt_mlp)?))
    }
}

/// `single_blocks.N`: one stream over [text; image]; `linear1` gives [q | k | v | MLP input] at once and
/// `linear2` projects [attention | GELU(MLP)] back.
pub(crate) struct SingleBlock {
    modulation: LinearLayer,
    linear1: LinearLayer,
    norm: QkNorm,
    linear2: LinearLayer,
    mlp: usize,
}

impl SingleBlock {
    pub(crate) fn new(dim: usize, head_dim: usize, mlp: usize, vb: Weights) -> Result<Self> {
        Ok(Self {
            modulation: vb.pp("modulation.lin").linear(dim, 3 * dim)?,
            linear1: vb.pp("linear1").linear(dim, 3 * dim + mlp)?,
            norm: QkNorm::new(head_dim, vb.pp("norm"))?,
            linear2: vb.pp("linear2").linear(dim + mlp, dim)?,
            mlp,
        })
    }

    /// The block after its gated residual; `cache` may forecast its attention module's output (block `id`; the
    /// module is only the attention here, as in diffusers: the MLP half of `linear1` still runs).
    pub(crate) fn forward(&self, h: &Tensor, temb: &Tensor, run: &mut Pass, id: usize) -> Result<Tensor> {
        let m = Modulation::split(&temb.apply(&self.modulation)?, 1)?.remove(0);
        let normed = m.apply(h)?;
        let (att, mlp) = match run.cache.forecast(id)? {
            Some(mut f) if f.len() == 1 => {
                let mlp = self.linear1.forward_rows(&normed, 3 * h.dim(2)?, self.mlp)?;
                (f.remove(0), kernels::gelu_tanh(&mlp)?)
            }
            Some(f) => candle_core::bail!("a single-block forecast of {} tensors, not 1", f.len()),
            None => {
                let fused = normed.apply(&self.linear1)?;
                let dim = fused.dim(2)? - self.mlp;
                let mlp = kernels::gelu_tanh_cols(&fused, dim, self.mlp)?;
                let (q, k, v) = self.norm.split(&fused, run.heads, run.rope, 0)?;
                let scale = 1.0 / (q.dim(3)? as f64).sqrt();
                let att = kernels::attention(&q, &k, &v, scale)?;
                run.cache.record(id, std::slice::from_ref(&att))?;
                (att, mlp)
            }
        };
        let out = Tensor::cat(&[att, mlp], 2)?.apply(&self.linear2)?;
        kernels::gated_residual(h, &out, &m.gate)
    }
}

/// `in_layer → SiLU → out_layer` (BFL's MLPEmbedder: time, guidance and pooled-text embedders; FLUX.2's too).
pub(crate) struct Embedder {
    in_layer: LinearLayer,
    out_layer: LinearLayer,
}

impl Embedder {
    pub(crate) fn new(i: usize, o: usize, vb: Weights) -> Result<Self> {
        Ok(Self { in_layer: vb.pp("in_layer").dense_linear(i, o)?, out_layer: vb.pp("out_layer").dense_linear(o, o)? })
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply(&self.in_layer)?.silu()?.apply(&self.out_layer)
    }
}

/// The time, guidance and pooled-text embedders (diffusers' `time_text_embed`), shared by the transformer and
/// its ControlNets: σ, guidance and CLIP's pooled output → SiLU(temb), what every modulation layer reads.
pub(crate) struct TimeText {
    time_in: Embedder,
    guidance_in: Option<Embedder>,
    vector_in: Embedder,
}

impl TimeText {
    pub(crate) fn new(cfg: &TransformerConfig, dim: usize, vb: &Weights) -> Result<Self> {
        Ok(Self {
            time_in: Embedder::new(256, dim, vb.pp("time_in"))?,
            guidance_in: if cfg.guidance_embeds { Some(Embedder::new(256, dim, vb.pp("guidance_in"))?) } else { None },
            vector_in: Embedder::new(cfg.pooled_projection_dim.unwrap_or(0), dim, vb.pp("vector_in"))?,
        })
    }

    /// SiLU(time + guidance + pooled embeddings) [B, D].
    pub(crate) fn forward(&self, timestep: &Tensor, inp: &Inputs, dtype: DType) -> Result<Tensor> {
        let dev = timestep.device();
        let mut temb = self.time_in.forward(&sinusoidal(&scaled_scalars(timestep, dtype)?, dtype, dev)?)?;
        if let (Some(g), Some(mlp)) = (inp.guidance, &self.guidance_in) {
            let mut gv = scaled_scalars(g, dtype)?;
            gv.resize(temb.dim(0)?, gv[0]);
            temb = (temb + mlp.forward(&sinusoidal(&gv, dtype, dev)?)?)?;
        }
        let pooled = inp.pooled.ok_or_else(|| candle_core::Error::Msg("FLUX.1 needs CLIP's pooled output".into()))?;
        temb = (temb + self.vector_in.forward(pooled)?)?;
        // Every modulation layer reads SiLU(temb).
        temb.silu()
    }
}

pub struct FluxTransformer {
    img_in: LinearLayer,
    txt_in: LinearLayer,
    time_text: TimeText,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    final_modulation: LinearLayer,
    final_linear: LinearLayer,
    heads: usize,
    axes: Vec<usize>,
    dtype: DType,
}

/// Every linear layer of the model (BFL module name → [out, in]), from the same config and feed-forward width
/// the constructor uses: what LoRA files are checked against before anything is loaded.
pub fn linear_shapes(cfg: &TransformerConfig, mlp: usize) -> Vec<(String, (usize, usize))> {
    let d = cfg.inner_dim();
    let mut out = vec![
        ("img_in".to_string(), (d, cfg.in_channels)),
        ("txt_in".into(), (d, cfg.joint_attention_dim)),
        ("time_in.in_layer".into(), (d, 256)),
        ("time_in.out_layer".into(), (d, d)),
        ("vector_in.in_layer".into(), (d, cfg.pooled_projection_dim.unwrap_or(0))),
        ("vector_in.out_layer".into(), (d, d)),
        ("final_layer.linear".into(), (cfg.out_channels.unwrap_or(cfg.in_channels), d)),
        ("final_layer.adaLN_modulation.1".into(), (2 * d, d)),
    ];
    if cfg.guidance_embeds {
        out.extend([("guidance_in.in_layer".into(), (d, 256)), ("guidance_in.out_layer".into(), (d, d))]);
    }
    for n in 0..cfg.num_layers {
        for s in ["img", "txt"] {
            out.extend([
                (format!("double_blocks.{n}.{s}_mod.lin"), (6 * d, d)),
                (format!("double_blocks.{n}.{s}_attn.qkv"), (3 * d, d)),
                (format!("double_blocks.{n}.{s}_attn.proj"), (d, d)),
                (format!("double_blocks.{n}.{s}_mlp.0"), (mlp, d)),
                (format!("double_blocks.{n}.{s}_mlp.2"), (d, mlp)),
            ]);
        }
    }
    for n in 0..cfg.num_single_layers {
        out.extend([
            (format!("single_blocks.{n}.modulation.lin"), (3 * d, d)),
            (format!("single_blocks.{n}.linear1"), (3 * d + mlp, d)),
            (format!("single_blocks.{n}.linear2"), (d, d + mlp)),
        ]);
    }
    out
}

/// BFL name of the tensor that gives the feed-forward width (rows of the first MLP layer).
pub const MLP_PROBE: &str = "double_blocks.0.img_mlp.0.weight";

impl FluxTransformer {
    /// `vb` presents BFL names; `mlp_hidden` is the feed-forward width as stored (4 × inner dim in FLUX.1).
    pub fn new(cfg: &TransformerConfig, mlp_hidden: usize, vb: Weights) -> Result<Self> {
        let dim = cfg.num_attention_heads * cfg.attention_head_dim;
        let hd = cfg.attention_head_dim;
        let out_channels = cfg.out_channels.unwrap_or(cfg.in_channels);
        Ok(Self {
            img_in: vb.pp("img_in").dense_linear(cfg.in_channels, dim)?,
            txt_in: vb.pp("txt_in").dense_linear(cfg.joint_attention_dim, dim)?,
            time_text: TimeText::new(cfg, dim, &vb)?,
            double: (0..cfg.num_layers)
                .map(|i| DoubleBlock::new(dim, hd, mlp_hidden, vb.pp(format!("double_blocks.{i}"))))
                .collect::<Result<_>>()?,
            single: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::new(dim, hd, mlp_hidden, vb.pp(format!("single_blocks.{i}"))))
                .collect::<Result<_>>()?,
            final_modulation: vb.pp("final_layer.adaLN_modulation.1").linear(dim, 2 * dim)?,
            final_linear: vb.pp("final_layer.linear").dense_linear(dim, out_channels)?,
            heads: cfg.num_attention_heads,
            axes: cfg.axes_dims_rope.clone(),
            dtype: vb.dtype(),
        })
    }

    /// Velocity for `latents` [B, S, C·4] at `timestep` [B] (σ, i.e. diffusers' t/1000).
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, inp: &Inputs) -> Result<Tensor> {
        self.forward_cached(latents, timestep, inp, &mut NoCache)
    }

    /// (double blocks, single blocks).
    pub fn blocks(&self) -> (usize, usize) {
        (self.double.len(), self.single.len())
    }

    /// [`Self::forward`] with a step cache deciding which blocks run.
    pub fn forward_cached(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        inp: &Inputs,
        cache: &mut dyn BlockCache,
    ) -> Result<Tensor> {
        self.forward_controlled(latents, timestep, inp, cache, None)
    }

    /// [`Self::forward_cached`] with ControlNet residuals added to the image stream after the blocks.
    pub fn forward_controlled(
        &self,
        latents: &Tensor,
        timestep: &Tensor,
        inp: &Inputs,
        cache: &mut dyn BlockCache,
        control: Option<&Residuals>,
    ) -> Result<Tensor> {
        let dev = latents.device();
        let (dtype, heads) = (self.dtype, self.heads);
        let temb = self.time_text.forward(timestep, inp, dtype)?;

        let ids = Tensor::cat(&[inp.txt_ids.get(0)?, inp.img_ids.get(0)?], 0)?;
        let rope = rope(&ids, &self.axes, 10000.0, dtype, dev)?;

        let x = latents.apply(&self.img_in)?;
        let ctx = inp.txt.apply(&self.txt_in)?;
        let mut run = Pass { heads, rope: &rope, cache, control };
        let x = walk(
            (&self.double, &self.single),
            (x, ctx),
            &mut run,
            |b, x, ctx, run, id| b.forward(x, ctx, &temb, run, id),
            |b, h, run, id| b.forward(h, &temb, run, id),
        )?;
        // (shift, scale): BFL's order, the reverse of diffusers' `norm_out` (its halves are swapped at load).
        let m = chunks(&temb.apply(&self.final_modulation)?, 2)?;
        let (shift, scale) = (&m[0], &m[1]);
        kernels::layer_norm_modulate(&x, scale, shift, EPS)?.apply(&self.final_linear)
    }
}
