//! The FLUX MM-DiT (`FluxTransformer2DModel`): packed latents + conditioning → velocity.
//!
//! Structure and weight names follow diffusers (`transformer_flux.py`), so a diffusers checkpoint loads as it is
//! stored; spec §6 gives the maths. Every size comes from `transformer/config.json` except the feed-forward
//! width, which diffusers fixes at 4× and we read from the checkpoint. The per-token work (modulated LayerNorm,
//! RMSNorm + RoPE, attention, GELU, gated residuals) goes through [`crate::kernels`].

use crate::config::TransformerConfig;
use crate::kernels;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

const EPS: f64 = 1e-6;

/// What the transformer needs besides the latents.
pub struct Inputs<'a> {
    /// [B, S_img, 3] position ids of the packed latents.
    pub img_ids: &'a Tensor,
    /// [B, S_txt, D_t5] T5 hidden states.
    pub txt: &'a Tensor,
    /// [B, S_txt, 3] (all zero for FLUX.1).
    pub txt_ids: &'a Tensor,
    /// [B, D_clip] CLIP pooled output.
    pub pooled: &'a Tensor,
    /// [B] guidance scale, for transformers with a guidance embedder.
    pub guidance: Option<&'a Tensor>,
}

/// `Linear → SiLU → Linear` (the time, guidance and pooled-text embedders).
struct Mlp {
    linear_1: Linear,
    linear_2: Linear,
}

impl Mlp {
    fn new(i: usize, o: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { linear_1: linear(i, o, vb.pp("linear_1"))?, linear_2: linear(o, o, vb.pp("linear_2"))? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.apply(&self.linear_1)?.silu()?.apply(&self.linear_2)
    }
}

/// diffusers' `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` for values already ×1000:
/// [cos(v·f_k), sin(v·f_k)] with f_k = exp(−ln(10⁴)·k/128) computed in f32 as torch does.
fn sinusoidal(values: &[f32], dtype: DType, dev: &Device) -> Result<Tensor> {
    const HALF: usize = 128;
    let freqs: Vec<f32> = (0..HALF).map(|k| ((-(10000f64.ln()) as f32) * k as f32 / HALF as f32).exp()).collect();
    let mut out = Vec::with_capacity(values.len() * 2 * HALF);
    for &v in values {
        out.extend(freqs.iter().map(|&f| ((v * f) as f64).cos() as f32));
        out.extend(freqs.iter().map(|&f| ((v * f) as f64).sin() as f32));
    }
    Tensor::from_vec(out, (values.len(), 2 * HALF), dev)?.to_dtype(dtype)
}

/// Scalars per batch item as the model sees them: cast to the model dtype, then ×1000 in that dtype (spec §6.4:
/// in bf16 this rounds twice, and diffusers' numbers carry that rounding).
fn scaled_scalars(t: &Tensor, dtype: DType) -> Result<Vec<f32>> {
    (t.to_dtype(dtype)? * 1000.0)?.to_dtype(DType::F32)?.to_vec1()
}

/// RoPE angles for every token (text first, then image): cos and sin [S, head_dim/2]. Frequencies and angles in
/// f64, then cast to f32, as `FluxPosEmbed` does on CPU and CUDA.
fn rope(ids: &Tensor, axes: &[usize], dev: &Device) -> Result<(Tensor, Tensor)> {
    let ids: Vec<Vec<f32>> = ids.to_dtype(DType::F32)?.to_vec2()?;
    let half: usize = axes.iter().sum::<usize>() / 2;
    let (mut cos, mut sin) = (Vec::with_capacity(ids.len() * half), Vec::with_capacity(ids.len() * half));
    for pos in &ids {
        for (a, &d) in axes.iter().enumerate() {
            for k in 0..d / 2 {
                let freq = 1.0 / 10000f64.powf((2 * k) as f64 / d as f64);
                let angle = pos[a] as f64 * freq;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
    }
    let n = ids.len();
    Ok((Tensor::from_vec(cos, (n, half), dev)?, Tensor::from_vec(sin, (n, half), dev)?))
}

/// Splits a modulation output [B, n·D] into its n chunks [B, D].
fn chunks(m: &Tensor, n: usize) -> Result<Vec<Tensor>> {
    let d = m.dim(D::Minus1)? / n;
    (0..n).map(|i| m.narrow(D::Minus1, i * d, d)).collect()
}

/// The angles for a slice of the sequence.
struct Rope<'a> {
    cos: &'a Tensor,
    sin: &'a Tensor,
}

impl Rope<'_> {
    fn range(&self, start: usize, len: usize) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, start, len)?, self.sin.narrow(0, start, len)?))
    }
}

/// q/k/v projections with their RMSNorms for one stream.
struct Qkv {
    q: Linear,
    k: Linear,
    v: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
}

impl Qkv {
    fn new(dim: usize, head_dim: usize, vb: &VarBuilder, names: [&str; 5]) -> Result<Self> {
        Ok(Self {
            q: linear(dim, dim, vb.pp(names[0]))?,
            k: linear(dim, dim, vb.pp(names[1]))?,
            v: linear(dim, dim, vb.pp(names[2]))?,
            norm_q: vb.pp(names[3]).get(head_dim, "weight")?,
            norm_k: vb.pp(names[4]).get(head_dim, "weight")?,
        })
    }

    /// (q, k, v) as [B, H, S, Dh], q and k normalised and rotated with the angles of positions `start..`.
    fn forward(&self, x: &Tensor, heads: usize, rope: &Rope, start: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let (cos, sin) = rope.range(start, x.dim(1)?)?;
        let q = kernels::qk_norm_rope(&x.apply(&self.q)?, heads, &self.norm_q, EPS, &cos, &sin)?;
        let k = kernels::qk_norm_rope(&x.apply(&self.k)?, heads, &self.norm_k, EPS, &cos, &sin)?;
        let v = kernels::heads_first(&x.apply(&self.v)?, heads)?;
        Ok((q, k, v))
    }
}

/// diffusers `FeedForward` with GELU(tanh): `net.0.proj`, `net.2`.
struct FeedForward {
    up: Linear,
    down: Linear,
}

impl FeedForward {
    fn new(dim: usize, hidden: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { up: linear(dim, hidden, vb.pp("net.0.proj"))?, down: linear(hidden, dim, vb.pp("net.2"))? })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::gelu_tanh(&x.apply(&self.up)?)?.apply(&self.down)
    }
}

/// `transformer_blocks.N`: image and text streams with their own weights, joint attention over [text; image].
struct DoubleBlock {
    norm1: Linear,
    norm1_context: Linear,
    img: Qkv,
    txt: Qkv,
    to_out: Linear,
    to_add_out: Linear,
    ff: FeedForward,
    ff_context: FeedForward,
}

impl DoubleBlock {
    fn new(dim: usize, head_dim: usize, mlp: usize, vb: VarBuilder) -> Result<Self> {
        let a = vb.pp("attn");
        Ok(Self {
            norm1: linear(dim, 6 * dim, vb.pp("norm1.linear"))?,
            norm1_context: linear(dim, 6 * dim, vb.pp("norm1_context.linear"))?,
            img: Qkv::new(dim, head_dim, &a, ["to_q", "to_k", "to_v", "norm_q", "norm_k"])?,
            txt: Qkv::new(dim, head_dim, &a, ["add_q_proj", "add_k_proj", "add_v_proj", "norm_added_q", "norm_added_k"])?,
            to_out: linear(dim, dim, a.pp("to_out.0"))?,
            to_add_out: linear(dim, dim, a.pp("to_add_out"))?,
            ff: FeedForward::new(dim, mlp, vb.pp("ff"))?,
            ff_context: FeedForward::new(dim, mlp, vb.pp("ff_context"))?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor, temb: &Tensor, heads: usize, rope: &Rope) -> Result<(Tensor, Tensor)> {
        let m = chunks(&temb.apply(&self.norm1)?, 6)?; // shift, scale, gate (attention); shift, scale, gate (MLP)
        let c = chunks(&temb.apply(&self.norm1_context)?, 6)?;
        let st = ctx.dim(1)?;
        let nx = kernels::layer_norm_modulate(x, &m[1], &m[0], EPS)?;
        let nc = kernels::layer_norm_modulate(ctx, &c[1], &c[0], EPS)?;
        let (qt, kt, vt) = self.txt.forward(&nc, heads, rope, 0)?;
        let (qi, ki, vi) = self.img.forward(&nx, heads, rope, st)?;
        let q = Tensor::cat(&[qt, qi], 2)?;
        let k = Tensor::cat(&[kt, ki], 2)?;
        let v = Tensor::cat(&[vt, vi], 2)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let att = kernels::attention(&q, &k, &v, scale)?;
        let att_txt = att.narrow(1, 0, st)?.apply(&self.to_add_out)?;
        let att_img = att.narrow(1, st, att.dim(1)? - st)?.apply(&self.to_out)?;

        let x = kernels::gated_residual(x, &att_img, &m[2])?;
        let ff = self.ff.forward(&kernels::layer_norm_modulate(&x, &m[4], &m[3], EPS)?)?;
        let x = kernels::gated_residual(&x, &ff, &m[5])?;

        let ctx = kernels::gated_residual(ctx, &att_txt, &c[2])?;
        let ff = self.ff_context.forward(&kernels::layer_norm_modulate(&ctx, &c[4], &c[3], EPS)?)?;
        let ctx = kernels::gated_residual(&ctx, &ff, &c[5])?;
        Ok((x, ctx))
    }
}

/// `single_transformer_blocks.N`: one stream over [text; image], attention and MLP in parallel.
struct SingleBlock {
    norm: Linear,
    qkv: Qkv,
    proj_mlp: Linear,
    proj_out: Linear,
}

impl SingleBlock {
    fn new(dim: usize, head_dim: usize, mlp: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: linear(dim, 3 * dim, vb.pp("norm.linear"))?,
            qkv: Qkv::new(dim, head_dim, &vb.pp("attn"), ["to_q", "to_k", "to_v", "norm_q", "norm_k"])?,
            proj_mlp: linear(dim, mlp, vb.pp("proj_mlp"))?,
            proj_out: linear(dim + mlp, dim, vb.pp("proj_out"))?,
        })
    }

    fn forward(&self, h: &Tensor, temb: &Tensor, heads: usize, rope: &Rope) -> Result<Tensor> {
        let m = chunks(&temb.apply(&self.norm)?, 3)?; // shift, scale, gate
        let n = kernels::layer_norm_modulate(h, &m[1], &m[0], EPS)?;
        let mlp = kernels::gelu_tanh(&n.apply(&self.proj_mlp)?)?;
        let (q, k, v) = self.qkv.forward(&n, heads, rope, 0)?;
        let scale = 1.0 / (q.dim(3)? as f64).sqrt();
        let att = kernels::attention(&q, &k, &v, scale)?;
        let out = Tensor::cat(&[att, mlp], 2)?.apply(&self.proj_out)?;
        kernels::gated_residual(h, &out, &m[2])
    }
}

pub struct FluxTransformer {
    x_embedder: Linear,
    context_embedder: Linear,
    time: Mlp,
    guidance: Option<Mlp>,
    text: Mlp,
    double: Vec<DoubleBlock>,
    single: Vec<SingleBlock>,
    norm_out: Linear,
    proj_out: Linear,
    heads: usize,
    axes: Vec<usize>,
    dtype: DType,
}

impl FluxTransformer {
    /// `mlp_hidden`: the feed-forward width as stored (diffusers: 4 × inner dim).
    pub fn new(cfg: &TransformerConfig, mlp_hidden: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.num_attention_heads * cfg.attention_head_dim;
        let hd = cfg.attention_head_dim;
        let out_channels = cfg.out_channels.unwrap_or(cfg.in_channels);
        let t = vb.pp("time_text_embed");
        Ok(Self {
            x_embedder: linear(cfg.in_channels, dim, vb.pp("x_embedder"))?,
            context_embedder: linear(cfg.joint_attention_dim, dim, vb.pp("context_embedder"))?,
            time: Mlp::new(256, dim, t.pp("timestep_embedder"))?,
            guidance: if cfg.guidance_embeds { Some(Mlp::new(256, dim, t.pp("guidance_embedder"))?) } else { None },
            text: Mlp::new(cfg.pooled_projection_dim, dim, t.pp("text_embedder"))?,
            double: (0..cfg.num_layers)
                .map(|i| DoubleBlock::new(dim, hd, mlp_hidden, vb.pp(format!("transformer_blocks.{i}"))))
                .collect::<Result<_>>()?,
            single: (0..cfg.num_single_layers)
                .map(|i| SingleBlock::new(dim, hd, mlp_hidden, vb.pp(format!("single_transformer_blocks.{i}"))))
                .collect::<Result<_>>()?,
            norm_out: linear(dim, 2 * dim, vb.pp("norm_out.linear"))?,
            proj_out: linear(dim, out_channels, vb.pp("proj_out"))?,
            heads: cfg.num_attention_heads,
            axes: cfg.axes_dims_rope.clone(),
            dtype: vb.dtype(),
        })
    }

    /// Velocity for `latents` [B, S, C·4] at `timestep` [B] (σ, i.e. diffusers' t/1000).
    pub fn forward(&self, latents: &Tensor, timestep: &Tensor, inp: &Inputs) -> Result<Tensor> {
        let dev = latents.device();
        let (dtype, heads) = (self.dtype, self.heads);
        let mut temb = sinusoidal(&scaled_scalars(timestep, dtype)?, dtype, dev)?.apply(&self.time.linear_1)?;
        temb = temb.silu()?.apply(&self.time.linear_2)?;
        if let (Some(g), Some(mlp)) = (inp.guidance, &self.guidance) {
            let mut gv = scaled_scalars(g, dtype)?;
            gv.resize(temb.dim(0)?, gv[0]);
            temb = (temb + mlp.forward(&sinusoidal(&gv, dtype, dev)?)?)?;
        }
        temb = (temb + self.text.forward(inp.pooled)?)?;
        // Every modulation layer reads SiLU(temb).
        let temb = temb.silu()?;

        let ids = Tensor::cat(&[inp.txt_ids.get(0)?, inp.img_ids.get(0)?], 0)?;
        let (cos, sin) = rope(&ids, &self.axes, dev)?;
        let rope = Rope { cos: &cos, sin: &sin };

        let mut x = latents.apply(&self.x_embedder)?;
        let mut ctx = inp.txt.apply(&self.context_embedder)?;
        for block in &self.double {
            (x, ctx) = block.forward(&x, &ctx, &temb, heads, &rope)?;
        }
        let st = ctx.dim(1)?;
        let mut h = Tensor::cat(&[ctx, x], 1)?;
        for block in &self.single {
            h = block.forward(&h, &temb, heads, &rope)?;
        }
        let x = h.narrow(1, st, h.dim(1)? - st)?;
        let m = chunks(&temb.apply(&self.norm_out)?, 2)?; // scale, shift — this order here (spec §6.9)
        kernels::layer_norm_modulate(&x, &m[0], &m[1], EPS)?.apply(&self.proj_out)
    }
}
