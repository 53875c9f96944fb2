//! The models' hot operations, one function (or layer) each, tensors in, tensors out, with up to three backends:
//!
//! - `cpu`: hand-written parallel f32 kernels ([`cpu`]); the operations that also have a fused kernel reach them as
//!   the `cpu_fwd` of their candle `CustomOp` ([`ops`], applied by [`cpu_ops`]). candle alone on CPU does these as
//!   chains of single-threaded passes with a fresh buffer each, and builds a whole-image im2col for convolutions:
//!   on the CPU benchmark that made the run 1.9× slower than torch.
//! - `composed`: a cast-free composition of candle ops ([`composed`]); CUDA and f16 run it, and it is what every
//!   fused operation falls back to.
//! - `fused`: the same `CustomOp`s' `cuda_fwd`, launching a compiled Triton kernel ([`fused`] chooses the variant
//!   from the [`manifest`] and loads it, [`launch`] works out the launch, [`gpu`] makes it), and biased linear
//!   layers as one cuBLASLt GEMM with the bias in its epilogue ([`gemm`]). Under `fused`, an operation with no
//!   kernel of its own, or none that fits its tensors, runs the composition.
//!
//! The CPU kernels and the composition are each tested against a plain f64 reference ([`reference`], tests.rs); the
//! manifest, the artifacts and every launch against the kernel sources and contracts (manifest_tests.rs); the
//! fused kernels against the composition on a GPU by [`check`] (`examples/gpu_check.rs`).
//!
//! Which one runs is the [`Kernels`] selection (`--kernels`), set once per edit before any model runs, and the
//! tensors' device and dtype: see [`backend`].

pub mod check;
pub mod composed;
pub mod cpu;
pub mod cpu_ops;
pub mod fused;
pub mod gemm;
pub mod gpu;
pub mod launch;
pub mod manifest;
pub mod ops;
pub mod reference;

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

/// Which implementation of the hot operations an edit runs (`--kernels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Kernels {
    /// The CPU's f32 kernels for CPU f32 tensors, the fused kernels on CUDA (the composition where none fits),
    /// the composed path for everything else (CPU f16/bf16).
    #[default]
    Auto,
    /// The composed path everywhere, the CPU's f32 tensors included (what CUDA runs, checkable on the CPU).
    Composed,
    /// The fused CUDA kernels where a compiled variant fits, the composed path elsewhere; refused on the CPU.
    Fused,
}

crate::named_enum!(Kernels, "kernel selection", [Auto = "auto", Composed = "composed", Fused = "fused"]);

impl Kernels {
    /// The selection if it can run on `device`; else the one-line message for the user.
    pub fn check(self, device: &Device) -> std::result::Result<Self, String> {
        match self {
            Kernels::Fused => fused::unavailable(device).map_or(Ok(self), Err),
            Kernels::Auto | Kernels::Composed => Ok(self),
        }
    }

    /// Whether activations of `dtype` on `device` take the composed path (what the memory estimate counts).
    pub fn composed_on(self, cuda: bool, dtype: DType) -> bool {
        match self {
            Kernels::Composed => true,
            Kernels::Auto | Kernels::Fused => cuda || dtype != DType::F32,
        }
    }
}

/// The selection in effect. Process-wide, like the chunk and band sizes below, and for the same reason: it is a
/// property of the run (one device, one request's flags), set by the session before each edit, and the operations
/// are free functions called from deep inside models that a session loads once and keeps across edits. Carrying
/// it in every model struct would bake the value in at load time and thread a parameter through every
/// constructor and forward for a choice that never varies within an edit. Tests that compare backends call
/// [`cpu_ops`] and [`composed`] directly, so none of them depends on this value.
static KERNELS: AtomicU8 = AtomicU8::new(0);

/// Sets the selection for the edits that follow (the session calls it before each edit).
pub fn set_kernels(k: Kernels) {
    KERNELS.store(k as u8, Ordering::Relaxed);
}

/// The selection in effect.
pub fn kernels() -> Kernels {
    match KERNELS.load(Ordering::Relaxed) {
        1 => Kernels::Composed,
        2 => Kernels::Fused,
        _ => Kernels::Auto,
    }
}

/// A fused result, or the composition when no kernel fitted (see [`fused`]).
fn or_composed(fused: Result<Option<Tensor>>, composed: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
    match fused? {
        Some(y) => Ok(y),
        None => composed(),
    }
}

/// The implementation one call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Cpu,
    Composed,
    Fused,
}

/// The backend for an operation on `inputs` under the current selection: the CPU kernels need every input on the
/// CPU in f32; fused kernels (`fused`, and `auto` on CUDA) every input on CUDA; anything else is composed.
pub fn backend(inputs: &[&Tensor]) -> Backend {
    let all = |f: &dyn Fn(&Tensor) -> bool| inputs.iter().all(|t| f(t));
    match kernels() {
        Kernels::Composed => Backend::Composed,
        // `auto` takes the fused kernels on CUDA since gpu-check passed on an H200 (45 kernel cases, every parity
        // fixture, 0.26 s against the composition's 0.62 s per 1024² FLUX.1-dev step).
        Kernels::Fused | Kernels::Auto if all(&|t| t.device().is_cuda()) => Backend::Fused,
        _ if all(&|t| t.device().is_cpu() && t.dtype() == DType::F32) => Backend::Cpu,
        _ => Backend::Composed,
    }
}

/// candle's `Linear` (`x·Wᵀ + b`); on the fused backend a biased layer is one cuBLASLt GEMM with the bias in its
/// epilogue ([`gemm`]), where candle adds it in a separate broadcast pass.
pub fn linear(x: &Tensor, l: &candle_nn::Linear) -> Result<Tensor> {
    match (backend(&[x]), l.bias()) {
        (Backend::Fused, Some(b)) => or_composed(gemm::linear_bias(x, l.weight(), b), || l.forward(x)),
        _ => l.forward(x),
    }
}

/// A 2-D convolution (one group, dilation 1) with diffusers' `weight`/`bias` names. No fused kernel: cuDNN or
/// im2col + cuBLAS is what CUDA has for it.
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(c_in: usize, c_out: usize, k: usize, stride: usize, pad: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((c_out, c_in, k, k), "weight")?;
        let bias = Some(vb.get(c_out, "bias")?);
        Ok(Self { weight, bias, stride, pad })
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if backend(&[x, &self.weight]) == Backend::Cpu {
            return cpu_ops::conv2d(x, &self.weight, self.bias.as_ref(), self.stride, self.pad);
        }
        let y = composed_conv(x, &self.weight, self.stride, self.pad, CONV_BAND.load(Ordering::Relaxed))?;
        match &self.bias {
            Some(bias) => y.broadcast_add(&bias.reshape((1, bias.dim(0)?, 1, 1))?),
            None => Ok(y),
        }
    }
}

/// Output rows per band of the composed convolution; 0 = the whole image at once. Process-wide, set once from
/// `--vae-band` before any model runs (it bounds candle's im2col buffer, never changes the result).
static CONV_BAND: AtomicUsize = AtomicUsize::new(0);

/// Bounds the composed convolution's im2col buffer to `rows` output rows at a time (0: unbounded).
pub fn set_conv_band(rows: usize) {
    CONV_BAND.store(rows, Ordering::Relaxed);
}

/// candle's convolution (im2col + GEMM on CUDA), `band` output rows at a time (0: all). The zero padding is made
/// explicit first, so each band reads exactly the padded rows the whole image would; 1×1 convolutions need no
/// im2col buffer and run whole.
fn composed_conv(x: &Tensor, weight: &Tensor, stride: usize, pad: usize, band: usize) -> Result<Tensor> {
    let (_, _, h, _) = x.dims4()?;
    let kh = weight.dim(2)?;
    let h_out = (h + 2 * pad - kh) / stride + 1;
    if band == 0 || kh == 1 || band >= h_out {
        return x.conv2d(weight, pad, stride, 1, 1);
    }
    let padded = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
    let parts = (0..h_out).step_by(band).map(|r0| {
        let rows = band.min(h_out - r0);
        padded.narrow(2, r0 * stride, (rows - 1) * stride + kh)?.conv2d(weight, 0, stride, 1, 1)
    });
    Tensor::cat(&parts.collect::<Result<Vec<_>>>()?, 2)
}

/// GroupNorm over [B, C, H, W] with affine weights, optionally fused with the SiLU that follows it everywhere
/// in the VAE.
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(channels, "weight")?, bias: vb.get(channels, "bias")?, groups, eps })
    }

    pub fn forward(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let (_, c, _, _) = x.dims4()?;
        if c % self.groups != 0 {
            candle_core::bail!("group norm: {c} channels in {} groups", self.groups);
        }
        match backend(&[x, &self.weight, &self.bias]) {
            Backend::Cpu => cpu_ops::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu),
            Backend::Composed => self.composed(x, silu),
            Backend::Fused => {
                or_composed(fused::group_norm(x, (&self.weight, &self.bias), self.groups, self.eps, silu), || {
                    self.composed(x, silu)
                })
            }
        }
    }

    /// The composed path; with VAE banding, GN_CHUNK groups at a time: each group's statistics are the same
    /// operations on the same elements, and the intermediates shrink to the chunk's.
    fn composed(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        let g = self.groups;
        let step = if CONV_BAND.load(Ordering::Relaxed) > 0 { GN_CHUNK.min(g) } else { g };
        let part =
            |g0: usize| composed::group_norm(x, (&self.weight, &self.bias), g, (g0, step.min(g - g0)), self.eps, silu);
        if step == g {
            return part(0);
        }
        Tensor::cat(&(0..g).step_by(step).map(part).collect::<Result<Vec<_>>>()?, 1)
    }
}

/// Groups a banded group norm normalises at a time (of FLUX's 32: an eighth of the intermediates).
pub const GN_CHUNK: usize = 4;

/// Nearest-neighbour 2× upsampling of [B, C, H, W]. No fused kernel: a copy is all it is.
pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    match backend(&[x]) {
        Backend::Cpu => cpu_ops::upsample2x(x),
        Backend::Composed | Backend::Fused => x.upsample_nearest2d(2 * h, 2 * w),
    }
}

/// GELU with the tanh approximation (FLUX's feed-forward activation).
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    match backend(&[x]) {
        Backend::Cpu => cpu_ops::gelu_tanh(x),
        Backend::Composed => x.gelu(),
        Backend::Fused => or_composed(fused::gelu_tanh(x), || x.gelu()),
    }
}

/// `LayerNorm(x)·(1 + scale) + shift` for x [B, S, D], scale and shift [B, D]; LayerNorm without affine.
pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    match backend(&[x, scale, shift]) {
        Backend::Cpu => cpu_ops::layer_norm_modulate(x, scale, shift, eps),
        Backend::Composed => composed::layer_norm_modulate(x, scale, shift, eps),
        Backend::Fused => or_composed(fused::layer_norm_modulate(x, scale, shift, eps), || {
            composed::layer_norm_modulate(x, scale, shift, eps)
        }),
    }
}

/// `x + gate·y` for x, y [B, S, D] and gate [B, D].
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    match backend(&[x, y, gate]) {
        Backend::Cpu => cpu_ops::gated_residual(x, y, gate),
        Backend::Composed => composed::gated_residual(x, y, gate),
        Backend::Fused => or_composed(fused::gated_residual(x, y, gate), || composed::gated_residual(x, y, gate)),
    }
}

/// GELU-tanh of columns `col..col+width` of x [B, S, W] (the MLP part of a fused projection) → [B, S, width].
pub fn gelu_tanh_cols(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    match backend(&[x]) {
        Backend::Cpu => cpu_ops::gelu_tanh_cols(x, col, width),
        Backend::Composed => x.narrow(2, col, width)?.gelu(),
        Backend::Fused => {
            or_composed(fused::cols(x, ops::ColsAct::Gelu, col, width), || x.narrow(2, col, width)?.gelu())
        }
    }
}

/// RoPE angles of a run of positions, cos and sin [S, D/2] (one angle per pair (2i, 2i+1)), kept twice: in f32 as
/// the models make them, packed as one tensor [2, S, D/2] (cos, then sin: what the CPU kernel reads, and the fused
/// kernel's two f32 pointers in kernels/triton/README.md, one custom-op input), and in the activations' dtype (what
/// candle's `rope_i` reads), cast once per forward rather than in every block.
#[derive(Debug, Clone)]
pub struct Angles {
    rot: Tensor,
    cos_dt: Tensor,
    sin_dt: Tensor,
}

impl Angles {
    /// From f32 angles; `dtype` is the activations'.
    pub fn new(cos: Tensor, sin: Tensor, dtype: DType) -> Result<Self> {
        let (cos_dt, sin_dt) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        Ok(Self { rot: Tensor::stack(&[&cos, &sin], 0)?, cos_dt, sin_dt })
    }

    /// Positions `start..start+len` (views, no copy: each half of the packed angles stays contiguous).
    pub fn narrow(&self, start: usize, len: usize) -> Result<Self> {
        let n = |t: &Tensor| t.narrow(0, start, len);
        Ok(Self { rot: self.rot.narrow(1, start, len)?, cos_dt: n(&self.cos_dt)?, sin_dt: n(&self.sin_dt)? })
    }

    /// The f32 angles [2, S, D/2].
    pub fn packed(&self) -> &Tensor {
        &self.rot
    }
}

/// Per-head RMSNorm (learned weight) and RoPE for queries or keys taken from columns `col..col+H·D` of
/// x [B, S, W] (a fused qkv projection) → [B, H, S, D], rotated by `angles` (S positions).
pub fn qk_norm_rope(
    x: &Tensor,
    col: usize,
    heads: usize,
    weight: &Tensor,
    eps: f64,
    angles: &Angles,
) -> Result<Tensor> {
    match backend(&[x, weight]) {
        Backend::Cpu => cpu_ops::qk_norm_rope(x, col, heads, weight, eps, &angles.rot),
        Backend::Composed => composed::qk_norm_rope(x, col, heads, weight, eps, (&angles.cos_dt, &angles.sin_dt)),
        Backend::Fused => or_composed(fused::qk_norm_rope(x, (col, heads), weight, eps, angles), || {
            composed::qk_norm_rope(x, col, heads, weight, eps, (&angles.cos_dt, &angles.sin_dt))
        }),
    }
}

/// Columns `col..col+heads·d` of x [B, S, W] → [B, H, S, d] (values, which get no norm or RoPE).
pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Tensor> {
    match backend(&[x]) {
        Backend::Cpu => cpu_ops::heads_first(x, col, heads, d),
        Backend::Composed => composed::heads_first(x, col, heads, d),
        Backend::Fused => or_composed(fused::heads_first(x, col, heads, d), || composed::heads_first(x, col, heads, d)),
    }
}

/// FLUX.2's SwiGLU feed-forward activation: `silu(a)·b` for a = columns `col..col+width` of x [B, S, W] and b the
/// `width` columns after them → [B, S, width]. The CPU backend runs candle's two ops (the custom op's CPU side is a
/// reference loop, kept out of the CPU backend so FLUX.2's measured CPU figures stand).
pub fn swiglu(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    match backend(&[x]) {
        Backend::Cpu | Backend::Composed => composed::swiglu(x, col, width),
        Backend::Fused => {
            or_composed(fused::cols(x, ops::ColsAct::Swiglu, col, width), || composed::swiglu(x, col, width))
        }
    }
}

/// Query rows per chunk of the composed attention; 0 = all rows at once. Process-wide, set once from
/// `--attention-chunk` before any model runs (it changes how big the score buffers get, never the result).
static ATTENTION_CHUNK: AtomicUsize = AtomicUsize::new(0);

/// Bounds the composed attention's [B, H, rows, S] score buffers to `rows` query rows at a time (0: unbounded).
pub fn set_attention_chunk(rows: usize) {
    ATTENTION_CHUNK.store(rows, Ordering::Relaxed);
}

/// Unmasked scaled dot-product attention: q, k, v [B, H, S, D] → [B, S, H·D].
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    match backend(&[q, k, v]) {
        Backend::Cpu => cpu_ops::attention(q, k, v, scale),
        Backend::Composed => composed::attention(q, k, v, scale, ATTENTION_CHUNK.load(Ordering::Relaxed)),
        // The flash kernel has no S×S buffer, so --attention-chunk only shapes the fallback.
        Backend::Fused => or_composed(fused::attention(q, k, v, scale), || {
            composed::attention(q, k, v, scale, ATTENTION_CHUNK.load(Ordering::Relaxed))
        }),
    }
}

#[cfg(test)]
mod manifest_tests;
#[cfg(test)]
mod tests;
