//! Depth Anything (V1/V2) as transformers' `DepthAnythingForDepthEstimation`, ported here for `--control-from depth`.
//! Takes a folder in transformers' layout (config.json, model.safetensors, optionally preprocessor_config.json) and
//! a picture; gives the raw `predicted_depth` [B, H', W'] of the processed picture ([`DepthAnything::forward`]) or
//! the grey depth image at the picture's own size that `pipeline("depth-estimation")` returns as `"depth"`
//! ([`DepthAnything::depth_map`]), grey in all three channels.
//!
//! The network: a DINOv2 backbone (CLS token, position grid resized bicubically to the picture's patch grid, layer
//! scale, the final layernorm on the selected hidden states), the DPT-style neck (CLS dropped, 1×1 projection,
//! ConvTranspose2d / strided conv resize, 3×3 convs, fusion stages upsampling bilinearly with aligned corners) and
//! the head (conv, bilinear to the patch grid × patch size, conv, ReLU, conv, ReLU or sigmoid × max_depth).
//! candle-transformers' own port upsamples with nearest and names its weights differently, hence this one.
//! Interpolation gathers and weights input rows/columns with torch's own index and weight rules ([`taps`]).

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::image_io;
use crate::source::weight_files;
use crate::weights::CheckedWeights;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, LayerNorm, Linear, VarBuilder};
use image::RgbImage;
use serde::Deserialize;
use std::path::Path;

// ----------------------------------------------------------------------------------------------------------------
// Configs (transformers' names and defaults)

/// `DepthAnythingConfig` from config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct DepthAnythingConfig {
    #[serde(default)]
    pub model_type: String,
    /// transformers fills a missing backbone config with Depth Anything's small DINOv2.
    #[serde(default = "small_backbone")]
    pub backbone_config: Dinov2Config,
    #[serde(default = "fourteen")]
    pub patch_size: usize,
    #[serde(default = "d384")]
    pub reassemble_hidden_size: usize,
    #[serde(default = "reassemble_factors")]
    pub reassemble_factors: Vec<f64>,
    #[serde(default = "neck_hidden_sizes")]
    pub neck_hidden_sizes: Vec<usize>,
    #[serde(default = "d64")]
    pub fusion_hidden_size: usize,
    #[serde(default = "d32")]
    pub head_hidden_size: usize,
    #[serde(default = "minus_one")]
    pub head_in_index: i64,
    #[serde(default = "relative")]
    pub depth_estimation_type: String,
    /// The head's output factor (transformers multiplies by it for both types; null breaks it there too).
    #[serde(default = "one_f64")]
    pub max_depth: Option<f64>,
}

/// `Dinov2Config` (the backbone's part of config.json).
#[derive(Debug, Clone, Deserialize)]
pub struct Dinov2Config {
    #[serde(default = "dinov2")]
    pub model_type: String,
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "twelve")]
    pub num_hidden_layers: usize,
    #[serde(default = "twelve")]
    pub num_attention_heads: usize,
    #[serde(default = "four")]
    pub mlp_ratio: f64,
    #[serde(default = "gelu")]
    pub hidden_act: String,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "d224")]
    pub image_size: usize,
    #[serde(default = "fourteen")]
    pub patch_size: usize,
    #[serde(default = "three")]
    pub num_channels: usize,
    #[serde(default = "yes")]
    pub qkv_bias: bool,
    #[serde(default = "one_f64_plain")]
    pub layerscale_value: f64,
    #[serde(default)]
    pub use_swiglu_ffn: bool,
    #[serde(default)]
    pub out_indices: Option<Vec<i64>>,
    #[serde(default)]
    pub out_features: Option<Vec<String>>,
    #[serde(default = "yes")]
    pub apply_layernorm: bool,
    #[serde(default = "yes")]
    pub reshape_hidden_states: bool,
}

fn small_backbone() -> Dinov2Config {
    Dinov2Config {
        model_type: dinov2(),
        hidden_size: 384,
        num_hidden_layers: 12,
        num_attention_heads: 6,
        mlp_ratio: 4.0,
        hidden_act: gelu(),
        layer_norm_eps: 1e-6,
        image_size: 518,
        patch_size: 14,
        num_channels: 3,
        qkv_bias: true,
        layerscale_value: 1.0,
        use_swiglu_ffn: false,
        out_indices: Some(vec![9, 10, 11, 12]),
        out_features: None,
        apply_layernorm: true,
        reshape_hidden_states: false,
    }
}
fn fourteen() -> usize {
    14
}
fn d384() -> usize {
    384
}
fn d64() -> usize {
    64
}
fn d32() -> usize {
    32
}
fn d768() -> usize {
    768
}
fn d224() -> usize {
    224
}
fn twelve() -> usize {
    12
}
fn three() -> usize {
    3
}
fn four() -> f64 {
    4.0
}
fn eps() -> f64 {
    1e-6
}
fn minus_one() -> i64 {
    -1
}
fn one_f64() -> Option<f64> {
    Some(1.0)
}
fn one_f64_plain() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn dinov2() -> String {
    "dinov2".into()
}
fn gelu() -> String {
    "gelu".into()
}
fn relative() -> String {
    "relative".into()
}
fn reassemble_factors() -> Vec<f64> {
    vec![4.0, 2.0, 1.0, 0.5]
}
fn neck_hidden_sizes() -> Vec<usize> {
    vec![48, 96, 192, 384]
}

impl Dinov2Config {
    /// The hidden-state indices the backbone hands on (0 = the embeddings, i = after layer i), in stage order as
    /// `Dinov2Backbone` returns them; `out_indices` wins over `out_features`, neither means the last stage.
    pub fn stages(&self) -> std::result::Result<Vec<usize>, String> {
        let n = self.num_hidden_layers as i64 + 1;
        let mut out = match (&self.out_indices, &self.out_features) {
            (Some(idx), _) => idx
                .iter()
                .map(|&i| match if i < 0 { i + n } else { i } {
                    j if (0..n).contains(&j) => Ok(j as usize),
                    _ => Err(format!("out_indices {i} is outside the {} stages", n)),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?,
            (None, Some(names)) => {
                names.iter().map(|s| stage_index(s, n as usize)).collect::<std::result::Result<_, _>>()?
            }
            (None, None) => vec![self.num_hidden_layers],
        };
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

fn stage_index(name: &str, stages: usize) -> std::result::Result<usize, String> {
    let i = match name {
        "stem" => Some(0),
        _ => name.strip_prefix("stage").and_then(|d| d.parse::<usize>().ok()),
    };
    i.filter(|&i| i < stages).ok_or_else(|| format!("out_features names {name:?}, not a stage of this backbone"))
}

impl DepthAnythingConfig {
    /// Everything transformers would refuse or this port does not cover, as one sentence.
    fn check(&self) -> std::result::Result<(), String> {
        let b = &self.backbone_config;
        if self.model_type != "depth_anything" {
            return Err(format!(
                "model_type {:?} is not \"depth_anything\" (transformers' DepthAnythingForDepthEstimation)",
                self.model_type
            ));
        }
        if b.model_type != "dinov2" {
            return Err(format!("backbone model_type {:?} is not \"dinov2\", the only backbone ported", b.model_type));
        }
        if b.use_swiglu_ffn {
            return Err("backbone use_swiglu_ffn is true: the SwiGLU feed-forward (giant DINOv2) is not ported".into());
        }
        if b.hidden_act != "gelu" {
            return Err(format!("backbone hidden_act {:?} is not \"gelu\", the only activation ported", b.hidden_act));
        }
        if b.reshape_hidden_states {
            return Err("backbone reshape_hidden_states is true: Depth Anything's neck needs token sequences".into());
        }
        if b.num_attention_heads == 0 || b.hidden_size % b.num_attention_heads != 0 {
            return Err(format!("hidden_size {} is not split by {} heads", b.hidden_size, b.num_attention_heads));
        }
        if b.patch_size == 0 || b.image_size < b.patch_size {
            return Err(format!("backbone image_size {} holds no {}-pixel patch", b.image_size, b.patch_size));
        }
        if b.patch_size != self.patch_size {
            return Err(format!("backbone patch_size {} differs from the neck's {}", b.patch_size, self.patch_size));
        }
        if b.num_channels != 3 {
            return Err(format!("num_channels {} is not 3 (RGB)", b.num_channels));
        }
        let stages = b.stages()?.len();
        let (necks, factors) = (self.neck_hidden_sizes.len(), self.reassemble_factors.len());
        if necks != stages || factors != stages {
            return Err(format!(
                "{stages} backbone stages, {necks} neck_hidden_sizes and {factors} reassemble_factors must match"
            ));
        }
        if let Some(f) = self.reassemble_factors.iter().find(|&&f| !(f == 1.0 || valid_factor(f))) {
            return Err(format!("reassemble factor {f} is neither an integer ≥ 1 nor in (0, 1)"));
        }
        let head = self.head_in_index;
        if head >= necks as i64 || head < -(necks as i64) {
            return Err(format!("head_in_index {head} is outside the {necks} fused features"));
        }
        if !matches!(self.depth_estimation_type.as_str(), "relative" | "metric") {
            return Err(format!("depth_estimation_type {:?} is not relative or metric", self.depth_estimation_type));
        }
        if self.max_depth.is_none() {
            return Err("max_depth is null (transformers multiplies the head's output by it)".into());
        }
        Ok(())
    }
}

/// An integer upsampling factor > 1 (ConvTranspose2d's kernel and stride), or a factor in (0, 1) whose downsampling
/// stride transformers takes as `int(1 / factor)`.
fn valid_factor(f: f64) -> bool {
    (f > 1.0 && f.fract() == 0.0) || (f > 0.0 && f < 1.0)
}

/// `DPTImageProcessor`'s fields (transformers' names; the defaults are the class's, used when the file has no
/// such field).
#[derive(Debug, Clone, Deserialize)]
struct ProcessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    #[serde(default = "dpt_size")]
    size: Size,
    #[serde(default)]
    keep_aspect_ratio: bool,
    #[serde(default = "one_usize")]
    ensure_multiple_of: usize,
    /// PIL's resample code; only bicubic (3) is ported.
    #[serde(default = "bicubic")]
    resample: u32,
    #[serde(default = "yes")]
    do_rescale: bool,
    #[serde(default = "rescale")]
    rescale_factor: f64,
    #[serde(default = "yes")]
    do_normalize: bool,
    #[serde(default = "half")]
    image_mean: [f32; 3],
    #[serde(default = "half")]
    image_std: [f32; 3],
    #[serde(default)]
    do_pad: bool,
    #[serde(default)]
    size_divisor: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
struct Size {
    height: u32,
    width: u32,
}

fn dpt_size() -> Size {
    Size { height: 384, width: 384 }
}
fn one_usize() -> usize {
    1
}
fn bicubic() -> u32 {
    3
}
fn rescale() -> f64 {
    1.0 / 255.0
}
fn half() -> [f32; 3] {
    [0.5; 3]
}

impl ProcessorConfig {
    /// Depth-Anything-V2's preprocessor_config.json on the Hub, for a folder without one.
    fn depth_anything() -> Self {
        ProcessorConfig {
            do_resize: true,
            size: Size { height: 518, width: 518 },
            keep_aspect_ratio: true,
            ensure_multiple_of: 14,
            resample: 3,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: [0.485, 0.456, 0.406],
            image_std: [0.229, 0.224, 0.225],
            do_pad: false,
            size_divisor: None,
        }
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.resample != 3 {
            return Err(format!("resample {} is not bicubic (3), the only one ported", self.resample));
        }
        if self.do_pad && self.size_divisor.is_some() {
            return Err("do_pad with size_divisor (padding to a multiple) is not ported".into());
        }
        if self.ensure_multiple_of == 0 {
            return Err("ensure_multiple_of is 0".into());
        }
        Ok(())
    }

    /// (width, height) the processor resizes a `w`×`h` picture to: DPT's `get_resize_output_image_size`, scaling
    /// as little as possible when keeping the aspect ratio, each side rounded (half to even, as Python's `round`)
    /// to a multiple of `ensure_multiple_of`.
    fn target_size(&self, w: u32, h: u32) -> (u32, u32) {
        if !self.do_resize {
            return (w, h);
        }
        let mut sh = self.size.height as f64 / h as f64;
        let mut sw = self.size.width as f64 / w as f64;
        if self.keep_aspect_ratio {
            if (1.0 - sw).abs() < (1.0 - sh).abs() {
                sh = sw;
            } else {
                sw = sh;
            }
        }
        let m = self.ensure_multiple_of as f64;
        let constrain = |v: f64| ((v / m).round_ties_even() * m) as u32;
        (constrain(sw * w as f64), constrain(sh * h as f64))
    }
}

// ----------------------------------------------------------------------------------------------------------------
// Interpolation as torch computes it

/// torch's `interpolate` modes this model uses.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Interp {
    Bilinear {
        align_corners: bool,
    },
    /// `mode="bicubic", align_corners=False` (A = −0.75, edge indices clamped).
    Bicubic,
}

/// torch's cubic convolution kernel with A = −0.75, |x| ≤ 1 and 1 < |x| < 2.
fn cubic1(x: f32) -> f32 {
    const A: f32 = -0.75;
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}
fn cubic2(x: f32) -> f32 {
    const A: f32 = -0.75;
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// The (input index, weight) taps of output index `o`, with torch's f32 index arithmetic (upsample kernels' scale
/// `in/out` when a size is given, or `(in−1)/(out−1)` with aligned corners).
fn taps(input: usize, output: usize, o: usize, mode: Interp) -> Vec<(usize, f32)> {
    let last = input as i64 - 1;
    let clamp = |i: i64| i.clamp(0, last) as usize;
    match mode {
        Interp::Bilinear { align_corners } => {
            let src = if align_corners {
                let scale = if output > 1 { last as f32 / (output - 1) as f32 } else { 0.0 };
                scale * o as f32
            } else {
                let scale = input as f32 / output as f32;
                (scale * (o as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src.floor() as i64).min(last);
            let l1 = (src - i0 as f32).clamp(0.0, 1.0);
            let i1 = if i0 < last { i0 + 1 } else { i0 };
            vec![(clamp(i0), 1.0 - l1), (clamp(i1), l1)]
        }
        Interp::Bicubic => {
            let scale = input as f32 / output as f32;
            let src = scale * (o as f32 + 0.5) - 0.5;
            let i0 = (src.floor() as i64).min(last);
            let t = (src - i0 as f32).clamp(0.0, 1.0);
            let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
            (0..4).map(|j| (clamp(i0 - 1 + j as i64), w[j])).collect()
        }
    }
}

/// `F.interpolate(x, size=(h, w), mode)` for x [B, C, H, W]: along the width, then along the height (torch's
/// nesting: each output is Σ_y w_y · (Σ_x w_x · x)).
fn resize(x: &Tensor, h: usize, w: usize, mode: Interp) -> candle_core::Result<Tensor> {
    resize_dim(&resize_dim(x, 3, w, mode)?, 2, h, mode)
}

/// One axis of [`resize`]: tap k of every output gathered with `index_select`, weighted, and the taps summed in
/// torch's order (t0·w0 + t1·w1, then + t2·w2 + t3·w3), clamped edge taps kept apart as torch keeps them.
fn resize_dim(x: &Tensor, dim: usize, out: usize, mode: Interp) -> candle_core::Result<Tensor> {
    let input = x.dim(dim)?;
    if input == out {
        // Same size: every mode samples at the input indices exactly (bicubic weights 0, 1, 0, 0): the identity.
        return Ok(x.clone());
    }
    let all: Vec<Vec<(usize, f32)>> = (0..out).map(|o| taps(input, out, o, mode)).collect();
    let mut shape = vec![1; x.rank()];
    shape[dim] = out;
    let x = x.contiguous()?;
    let mut sum: Option<Tensor> = None;
    for k in 0..all.first().map_or(0, Vec::len) {
        let index = Tensor::from_vec(all.iter().map(|t| t[k].0 as u32).collect(), out, x.device())?;
        let weight = Tensor::from_vec(all.iter().map(|t| t[k].1).collect(), shape.as_slice(), x.device())?;
        let term = x.index_select(&index, dim)?.broadcast_mul(&weight.to_dtype(x.dtype())?)?;
        sum = Some(match sum {
            None => term,
            Some(s) => (s + term)?,
        });
    }
    sum.ok_or_else(|| candle_core::Error::Msg("resize to size 0".into()))
}

// ----------------------------------------------------------------------------------------------------------------
// DINOv2 backbone

struct Embeddings {
    patch: Conv2d,
    cls: Tensor,
    /// [1, 1 + grid², D]
    pos: Tensor,
    grid: usize,
}

impl Embeddings {
    fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
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
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Tensor> {
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
    fn positions(&self, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
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

struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    heads: usize,
}

impl Attention {
    /// transformers 5 loads the Hub's `attention.attention.{query,key,value}` + `attention.output.dense` (which
    /// its save_pretrained also writes) as `attention.{q,k,v,o}_proj`; both layouts are read.
    fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
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

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
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

struct Layer {
    norm1: LayerNorm,
    attention: Attention,
    scale1: Tensor,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    scale2: Tensor,
}

impl Layer {
    fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
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

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = self.attention.forward(&self.norm1.forward(x)?)?.broadcast_mul(&self.scale1)?;
        let x = (a + x)?;
        let m = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.gelu_erf()?)?;
        m.broadcast_mul(&self.scale2)? + x
    }
}

struct Backbone {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// Applied to each selected hidden state when `apply_layernorm` (the default).
    layernorm: Option<LayerNorm>,
    stages: Vec<usize>,
}

impl Backbone {
    fn new(cfg: &Dinov2Config, vb: VarBuilder, renamed: bool) -> Result<Self> {
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
    fn forward(&self, pixels: &Tensor) -> candle_core::Result<Vec<Tensor>> {
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

// ----------------------------------------------------------------------------------------------------------------
// Neck and head

/// A reassemble layer's resize: ConvTranspose2d(k = s = factor), identity, or a 3×3 conv with stride 1/factor.
enum Resample {
    Up(ConvTranspose2d),
    Same,
    Down(Conv2d),
}

struct Reassemble {
    projection: Conv2d,
    resample: Resample,
}

impl Reassemble {
    fn new(cfg: &DepthAnythingConfig, channels: usize, factor: f64, vb: VarBuilder) -> Result<Self> {
        let projection =
            candle_nn::conv2d(cfg.reassemble_hidden_size, channels, 1, Default::default(), vb.pp("projection"))?;
        let resample = if factor > 1.0 {
            let k = factor as usize;
            let c = ConvTranspose2dConfig { stride: k, ..Default::default() };
            Resample::Up(candle_nn::conv_transpose2d(channels, channels, k, c, vb.pp("resize"))?)
        } else if factor == 1.0 {
            Resample::Same
        } else {
            let c = Conv2dConfig { stride: (1.0 / factor) as usize, padding: 1, ..Default::default() };
            Resample::Down(candle_nn::conv2d(channels, channels, 3, c, vb.pp("resize"))?)
        };
        Ok(Self { projection, resample })
    }

    /// [B, 1 + ph·pw, D] → [B, C, h, w]: the CLS token dropped (transformers' `hidden_state[:, 1:]`), the tokens
    /// laid out as the patch grid, projected and resized.
    fn forward(&self, x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let x = x.narrow(1, 1, n - 1)?.reshape((b, ph, pw, d))?.permute((0, 3, 1, 2))?.contiguous()?;
        let x = self.projection.forward(&x)?;
        match &self.resample {
            Resample::Up(c) => c.forward(&x),
            Resample::Same => Ok(x),
            Resample::Down(c) => c.forward(&x),
        }
    }
}

fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    candle_nn::conv2d(cin, cout, 3, Conv2dConfig { padding: 1, ..Default::default() }, vb)
}

/// `DepthAnythingPreActResidualLayer`: x + conv2(relu(conv1(relu(x)))).
struct Residual {
    conv1: Conv2d,
    conv2: Conv2d,
}

impl Residual {
    fn new(f: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { conv1: conv3x3(f, f, vb.pp("convolution1"))?, conv2: conv3x3(f, f, vb.pp("convolution2"))? })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv2.forward(&self.conv1.forward(&x.relu()?)?.relu()?)? + x
    }
}

struct Fusion {
    projection: Conv2d,
    residual1: Residual,
    residual2: Residual,
}

impl Fusion {
    fn new(f: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            projection: candle_nn::conv2d(f, f, 1, Default::default(), vb.pp("projection"))?,
            residual1: Residual::new(f, vb.pp("residual_layer1"))?,
            residual2: Residual::new(f, vb.pp("residual_layer2"))?,
        })
    }

    /// `DepthAnythingFeatureFusionLayer.forward`: the skip feature (bilinearly resized, corners not aligned, if its
    /// shape differs) through residual 1 added, residual 2, then bilinear with aligned corners to `size` or ×2,
    /// then the 1×1 projection.
    fn forward(&self, x: &Tensor, skip: Option<&Tensor>, size: Option<(usize, usize)>) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(skip) = skip {
            let (_, _, h, w) = x.dims4()?;
            let skip = match skip.dims() == x.dims() {
                true => skip.clone(),
                false => resize(skip, h, w, Interp::Bilinear { align_corners: false })?,
            };
            x = (x + self.residual1.forward(&skip)?)?;
        }
        let x = self.residual2.forward(&x)?;
        let (_, _, h, w) = x.dims4()?;
        let (h, w) = size.unwrap_or((2 * h, 2 * w));
        self.projection.forward(&resize(&x, h, w, Interp::Bilinear { align_corners: true })?)
    }
}

struct Head {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
    metric: bool,
    max_depth: f64,
    patch: usize,
}

impl Head {
    fn new(cfg: &DepthAnythingConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let f = cfg.fusion_hidden_size;
        Ok(Self {
            conv1: conv3x3(f, f / 2, vb.pp("conv1"))?,
            conv2: conv3x3(f / 2, cfg.head_hidden_size, vb.pp("conv2"))?,
            conv3: candle_nn::conv2d(cfg.head_hidden_size, 1, 1, Default::default(), vb.pp("conv3"))?,
            metric: cfg.depth_estimation_type == "metric",
            max_depth: cfg.max_depth.unwrap_or(1.0),
            patch: cfg.patch_size,
        })
    }

    /// [B, F, h, w] → [B, ph·patch, pw·patch].
    fn forward(&self, x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(x)?;
        let x = resize(&x, ph * self.patch, pw * self.patch, Interp::Bilinear { align_corners: true })?;
        let x = self.conv3.forward(&self.conv2.forward(&x)?.relu()?)?;
        let x = match self.metric {
            true => candle_nn::ops::sigmoid(&x)?,
            false => x.relu()?,
        };
        (x * self.max_depth)?.squeeze(1)
    }
}

// ----------------------------------------------------------------------------------------------------------------
// The model

pub struct DepthAnything {
    backbone: Backbone,
    reassemble: Vec<Reassemble>,
    convs: Vec<Conv2d>,
    fusion: Vec<Fusion>,
    head: Head,
    head_in: usize,
    patch: usize,
    processor: ProcessorConfig,
    dtype: DType,
    device: Device,
}

impl DepthAnything {
    /// Reads `dir`'s config.json, model.safetensors (or a sharded index) and preprocessor_config.json (Depth
    /// Anything V2's Hub settings when absent). Every failure is one line naming the file or tensors at fault.
    pub fn load(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let cfg: DepthAnythingConfig = read_json(&cfg_path)?;
        cfg.check().map_err(|m| Error::model(&cfg_path, m))?;
        let proc_path = dir.join("preprocessor_config.json");
        let processor = match proc_path.is_file() {
            true => read_json::<ProcessorConfig>(&proc_path)?,
            false => ProcessorConfig::depth_anything(),
        };
        processor.check().map_err(|m| Error::model(&proc_path, m))?;
        let weights = CheckedWeights::open("Depth Anything", &weight_files(dir, "model")?)?;
        let renamed = weights.names().iter().any(|n| n.contains(".attention.q_proj."));
        let vb = weights.var_builder(dtype, device, None);
        let model = Self::new(&cfg, vb, renamed, processor, dtype, device);
        // Missing or mis-shaped tensors are reported together, before any error the placeholders might cause.
        weights.finish()?;
        model
    }

    fn new(
        cfg: &DepthAnythingConfig,
        vb: VarBuilder,
        renamed: bool,
        processor: ProcessorConfig,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let backbone = Backbone::new(&cfg.backbone_config, vb.pp("backbone"), renamed)?;
        let neck = vb.pp("neck");
        let pairs = cfg.neck_hidden_sizes.iter().zip(&cfg.reassemble_factors).enumerate();
        let reassemble = pairs
            .map(|(i, (&c, &f))| Reassemble::new(cfg, c, f, neck.pp(format!("reassemble_stage.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let f = cfg.fusion_hidden_size;
        let no_bias = Conv2dConfig { padding: 1, ..Default::default() };
        let convs = (cfg.neck_hidden_sizes.iter().enumerate())
            .map(|(i, &c)| candle_nn::conv2d_no_bias(c, f, 3, no_bias, neck.pp(format!("convs.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fusion = (0..cfg.neck_hidden_sizes.len())
            .map(|i| Fusion::new(f, neck.pp(format!("fusion_stage.layers.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let n = cfg.neck_hidden_sizes.len() as i64;
        let head_in = (if cfg.head_in_index < 0 { cfg.head_in_index + n } else { cfg.head_in_index }) as usize;
        Ok(Self {
            backbone,
            reassemble,
            convs,
            fusion,
            head: Head::new(cfg, vb.pp("head"))?,
            head_in,
            patch: cfg.patch_size,
            processor,
            dtype,
            device: device.clone(),
        })
    }

    /// `predicted_depth` [B, ph·patch, pw·patch] for `pixel_values` [B, 3, H, W] (ph = H / patch, floored), in
    /// the model's dtype.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = pixel_values.dims4()?;
        let (ph, pw) = (h / self.patch, w / self.patch);
        if ph == 0 || pw == 0 {
            return Err(Error::Usage(format!(
                "a {w}x{h} input is smaller than the depth model's {0}x{0} patch",
                self.patch
            )));
        }
        let pixels = pixel_values.to_dtype(self.dtype)?;
        let hidden = self.backbone.forward(&pixels)?;
        let features = (hidden.iter().zip(&self.reassemble).zip(&self.convs))
            .map(|((x, r), conv)| conv.forward(&r.forward(x, ph, pw)?))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let fused = self.fuse(&features)?;
        Ok(self.head.forward(&fused[self.head_in], ph, pw)?)
    }

    /// `DepthAnythingFeatureFusionStage`: from the coarsest feature up, each layer resized to the next feature's
    /// size (the last one ×2); returned in that (coarsest-first) order, as transformers' list is.
    fn fuse(&self, features: &[Tensor]) -> candle_core::Result<Vec<Tensor>> {
        let rev: Vec<&Tensor> = features.iter().rev().collect();
        let mut out: Vec<Tensor> = Vec::with_capacity(rev.len());
        for (i, (x, layer)) in rev.iter().zip(&self.fusion).enumerate() {
            let size = match rev.get(i + 1) {
                Some(next) => Some((next.dim(2)?, next.dim(3)?)),
                None => None,
            };
            let y = match out.last() {
                None => layer.forward(x, None, size)?,
                Some(prev) => layer.forward(prev, Some(x), size)?,
            };
            out.push(y);
        }
        Ok(out)
    }

    /// [1, 3, H, W] f32 as the image processor makes it: resized (PIL bicubic), `x · rescale` in f64 rounded to
    /// f32, then `(x − mean) / std` in f32.
    pub fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let p = &self.processor;
        let (w, h) = p.target_size(img.width(), img.height());
        if w == 0 || h == 0 {
            return Err(Error::Usage(format!(
                "a {}x{} image resizes to {w}x{h} for the depth model; it is too thin",
                img.width(),
                img.height()
            )));
        }
        let img = match p.do_resize {
            true => image_io::resize_bicubic(img, w, h),
            false => img.clone(),
        };
        let (w, h) = (w as usize, h as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let mut x = match p.do_rescale {
                    true => (px.0[c] as f64 * p.rescale_factor) as f32,
                    false => px.0[c] as f32,
                };
                if p.do_normalize {
                    x = (x - p.image_mean[c]) / p.image_std[c];
                }
                data[c * h * w + i] = x;
            }
        }
        Ok(Tensor::from_vec(data, (1, 3, h, w), &self.device)?)
    }

    /// `pipeline("depth-estimation")(img)["depth"]` converted to RGB: [`DepthAnything::grey_levels`] truncated to
    /// u8 (numpy's `astype("uint8")`), the same grey in all three channels (PIL's `convert("RGB")`).
    pub fn depth_map(&self, img: &RgbImage) -> Result<RgbImage> {
        let raw: Vec<u8> = self.grey_levels(img)?.into_iter().flat_map(|g| [g as u8; 3]).collect();
        RgbImage::from_raw(img.width(), img.height(), raw)
            .ok_or_else(|| Error::Usage("depth map size mismatch (internal)".into()))
    }

    /// The depth of `img` at its own size as unquantised grey levels, row-major: the processed picture's
    /// `predicted_depth` resized by torch's bicubic (f32, as `post_process_depth_estimation`), then
    /// `(d − min) / (max − min) · 255` in f32 as the pipeline computes it with numpy. A constant depth (where numpy
    /// would divide 0 by 0) gives 0 everywhere.
    pub fn grey_levels(&self, img: &RgbImage) -> Result<Vec<f32>> {
        let depth = self.forward(&self.preprocess(img)?)?.to_dtype(DType::F32)?.unsqueeze(1)?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let depth = resize(&depth, h, w, Interp::Bicubic)?.flatten_all()?.to_vec1::<f32>()?;
        if depth.iter().any(|d| !d.is_finite()) {
            return Err(Error::NonFinite { stage: "depth model".into(), cause: "check its weights".into() });
        }
        let min = depth.iter().copied().fold(f32::INFINITY, f32::min);
        let max = depth.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let range = max - min;
        Ok(depth.iter().map(|&d| if range > 0.0 { (d - min) / range * 255.0 } else { 0.0 }).collect())
    }
}

#[cfg(test)]
mod tests {
    //! Parity with transformers on scripts/make_depth_fixtures.py's tiny random model, f32 on the CPU. The
    //! fixture also records how far transformers' own output moves for a wrong fusion upsampling, a wrong (or no)
    //! position-embedding interpolation and another input image: each must be far below the bars here.

    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// predicted_depth PSNR (peak = the reference's largest value). f32 reorderings (SDPA vs matmul-softmax,
    /// im2col convs, FMA in the interpolation sums) differ by ~1e-7 relative per op; through 4 layers and the
    /// neck that stays far above this, while every sensitivity in the fixture is below 40 dB.
    const DEPTH_BAR_DB: f64 = 100.0;
    /// Largest |ours − transformers| allowed, relative to the reference's peak.
    const MAX_ABS_REL: f32 = 1e-5;

    #[derive(Deserialize)]
    struct Fixture {
        vectors: String,
        model: String,
        cases: Vec<Case>,
        metric: Metric,
    }

    #[derive(Deserialize)]
    struct Metric {
        case: String,
        max_depth: f64,
        vector: String,
        sensitivity_depth_psnr_db: HashMap<String, f64>,
    }

    #[derive(Deserialize)]
    struct Case {
        name: String,
        image: String,
        expected: String,
        processed_size: [usize; 2],
        pixel_values_sha256: String,
        sensitivity_png_psnr_db: HashMap<String, f64>,
        sensitivity_depth_psnr_db: HashMap<String, f64>,
    }

    /// (max |a − reference|, PSNR dB with the reference's largest magnitude as the peak, that peak).
    fn compare(a: &Tensor, reference: &Tensor) -> (f32, f64, f32) {
        assert_eq!(a.dims(), reference.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let r = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let peak = r.iter().fold(0f32, |m, x| m.max(x.abs()));
        let max_abs = a.iter().zip(&r).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        let mse = a.iter().zip(&r).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / r.len() as f64;
        (max_abs, 10.0 * ((peak as f64).powi(2) / mse).log10(), peak)
    }

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
    }

    fn fixture() -> Fixture {
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("depth-cases.json")).unwrap()).unwrap()
    }

    fn model(f: &Fixture) -> DepthAnything {
        model_on(f, &Device::Cpu)
    }

    fn model_on(f: &Fixture, device: &Device) -> DepthAnything {
        DepthAnything::load(&fixtures().join(&f.model), DType::F32, device).unwrap()
    }

    fn input(case: &Case) -> RgbImage {
        image::open(fixtures().join("images").join(&case.image)).unwrap().to_rgb8()
    }

    #[test]
    fn depth_predicted_depth_matches_transformers() {
        predicted_depth_matches(&Device::Cpu);
    }

    fn predicted_depth_matches(device: &Device) {
        let f = fixture();
        let m = model_on(&f, device);
        let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
        for case in &f.cases {
            let pixels = m.preprocess(&input(case)).unwrap();
            let [w, h] = case.processed_size;
            assert_eq!(pixels.dims(), &[1, 3, h, w], "{}", case.name);
            // The processor's output bit for bit: PIL's bicubic, f64 rescale, f32 normalisation.
            let bytes: Vec<u8> =
                pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
            let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(digest, case.pixel_values_sha256, "{}: pixel_values differ from transformers'", case.name);

            let reference = &vectors[&format!("{}.predicted_depth", case.name)];
            assert_eq!(reference.dims(), &[1, h, w], "{}", case.name);
            let (max_abs, psnr, peak) = compare(&m.forward(&pixels).unwrap(), reference);
            let worst = case.sensitivity_depth_psnr_db.values().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
            eprintln!(
                "{} on {:?}: predicted_depth {w}x{h} max |err| {max_abs:.3e} (peak {peak:.3}), PSNR {psnr:.1} dB \
                 (bar {DEPTH_BAR_DB} dB; sensitivities {:?})",
                case.name,
                device.location(),
                case.sensitivity_depth_psnr_db
            );
            assert!(worst < DEPTH_BAR_DB - 30.0, "{}: the fixture cannot tell a wrong port apart", case.name);
            assert!(psnr >= DEPTH_BAR_DB, "{}: PSNR {psnr:.1} dB below {DEPTH_BAR_DB}", case.name);
            assert!(max_abs <= MAX_ABS_REL * peak, "{}: max |err| {max_abs} over {}", case.name, MAX_ABS_REL * peak);
        }
    }

    /// How close to a grey-level boundary our unquantised value must lie for a pixel to be allowed one level off
    /// transformers': the measured predicted_depth error (≤ 2.4e-4 of a 72 peak, ≈ 1e-3 grey levels after the
    /// min-max scaling) with a tenfold margin. On this machine no pixel differs at all; another CPU's summation
    /// order may move a value sitting on a boundary across it, and only such a value.
    const BOUNDARY_EPS: f32 = 0.01;

    #[test]
    fn depth_map_matches_the_pipeline_png() {
        png_matches(&Device::Cpu);
    }

    fn png_matches(device: &Device) {
        let f = fixture();
        let m = model_on(&f, device);
        for case in &f.cases {
            let img = input(case);
            let ours = m.depth_map(&img).unwrap();
            let levels = m.grey_levels(&img).unwrap();
            let expected = image::open(fixtures().join(&case.expected)).unwrap().to_rgb8();
            assert_eq!(ours.dimensions(), img.dimensions(), "{}: the depth map has the input's size", case.name);
            assert_eq!(ours.dimensions(), expected.dimensions(), "{}", case.name);
            assert!(ours.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]), "{}: not grey", case.name);
            let mut differing = 0;
            for (i, (a, b)) in ours.pixels().zip(expected.pixels()).enumerate() {
                let (a, b) = (a.0[0], b.0[0]);
                if a != b {
                    differing += 1;
                    let boundary = a.max(b) as f32;
                    assert!(
                        a.abs_diff(b) == 1 && (levels[i] - boundary).abs() < BOUNDARY_EPS,
                        "{}: pixel {i} is {a}, transformers' {b} (unquantised {})",
                        case.name,
                        levels[i]
                    );
                }
            }
            // Values this close to a boundary are the ones another machine could see land one level off (the min
            // and max pixels sit exactly on 0 and 255 by construction and are not counted).
            let near =
                levels.iter().filter(|&&v| v != 0.0 && v != 255.0 && (v - v.round()).abs() < BOUNDARY_EPS).count();
            let psnr = image_io::psnr(&ours, &expected);
            eprintln!(
                "{} on {:?}: depth PNG {}x{}: {differing} of {} pixels differ, PSNR {psnr:.1} dB; {near} values lie within \
                 {BOUNDARY_EPS} of a grey-level boundary (sensitivities {:?})",
                case.name,
                device.location(),
                img.width(),
                img.height(),
                levels.len(),
                case.sensitivity_png_psnr_db
            );
            let worst = case.sensitivity_png_psnr_db.values().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
            assert!(worst < 45.0, "{}: the fixture cannot tell a wrong port apart", case.name);
        }
    }

    #[test]
    fn depth_metric_head_matches_transformers() {
        let f = fixture();
        let dir = broken(|d| {
            edit_config(d, |v| {
                v["depth_estimation_type"] = "metric".into();
                v["max_depth"] = f.metric.max_depth.into();
            })
        });
        let m = DepthAnything::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let case = f.cases.iter().find(|c| c.name == f.metric.case).unwrap();
        let ours = m.forward(&m.preprocess(&input(case)).unwrap()).unwrap();
        let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
        let (max_abs, psnr, peak) = compare(&ours, &vectors[&f.metric.vector]);
        eprintln!(
            "{} (metric head, max_depth {}): max |err| {max_abs:.3e} (peak {peak:.3}), PSNR {psnr:.1} dB \
             (relative head instead: {:?})",
            case.name, f.metric.max_depth, f.metric.sensitivity_depth_psnr_db
        );
        // The same pre-activation error as the relative head's (bounded by MAX_ABS_REL of that head's peak), through
        // the sigmoid's steepest slope 1/4 and the ×max_depth; the metric peak itself saturates at max_depth.
        let relative = &vectors[&format!("{}.predicted_depth", case.name)];
        let relative_peak = relative.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        let bound = MAX_ABS_REL * relative_peak * f.metric.max_depth as f32 / 4.0;
        assert!(psnr >= DEPTH_BAR_DB, "{}: PSNR {psnr:.1} dB below {DEPTH_BAR_DB}", case.name);
        assert!(max_abs <= bound, "{}: max |err| {max_abs} over {bound}", case.name);
    }

    /// A folder holding the fixture's files, `edit`ed.
    fn broken(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let src = fixtures().join("tiny-depth-anything");
        for name in ["config.json", "model.safetensors", "preprocessor_config.json"] {
            std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
        }
        edit(dir.path());
        dir
    }

    fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
        let path = dir.join("config.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        edit(&mut v);
        std::fs::write(&path, v.to_string()).unwrap();
    }

    fn load_error(dir: &Path) -> String {
        match DepthAnything::load(dir, DType::F32, &Device::Cpu) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(e) => {
                let line = e.one_line();
                eprintln!("{line}");
                assert!(!line.contains('\n'), "{line}");
                line
            }
        }
    }

    #[test]
    fn depth_bad_folders_give_one_clear_line() {
        let empty = tempfile::tempdir().unwrap();
        let line = load_error(empty.path());
        assert!(line.contains("config.json") && line.contains("cannot read"), "{line}");

        let other = broken(|d| edit_config(d, |v| v["model_type"] = "dpt".into()));
        assert!(load_error(other.path()).contains("model_type \"dpt\" is not \"depth_anything\""));

        let swiglu = broken(|d| edit_config(d, |v| v["backbone_config"]["use_swiglu_ffn"] = true.into()));
        assert!(load_error(swiglu.path()).contains("use_swiglu_ffn"));

        let no_weights = broken(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
        assert!(load_error(no_weights.path()).contains("model.safetensors"));

        let missing = broken(|d| {
            let path = d.join("model.safetensors");
            let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
            t.remove("head.conv3.weight");
            t.remove("backbone.encoder.layer.2.mlp.fc1.bias");
            candle_core::safetensors::save(&t, &path).unwrap();
        });
        let line = load_error(missing.path());
        assert!(line.contains("2 missing") && line.contains("head.conv3.weight"), "{line}");

        let wide = broken(|d| edit_config(d, |v| v["backbone_config"]["hidden_size"] = 32.into()));
        assert!(load_error(wide.path()).contains("mis-shaped"));
    }

    #[test]
    fn depth_interpolation_follows_torch() {
        // torch's F.interpolate of one random [1, 2, 4, 6] input (|x| < 3) to sizes up, down and mixed (the fixture
        // script). torch's compiled kernel contracts the index and cubic-coefficient arithmetic into FMAs, so its
        // weights differ from these plain f32 ones by about an ulp: measured ≤ 1.4e-6 here. A wrong kernel (A = −0.5,
        // nearest, corners aligned or not) is off by 1e-2 or more.
        let f = fixture();
        let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
        let x = &vectors["interp.input"];
        let mut checked = 0;
        for (name, expected) in vectors.iter().filter(|(n, _)| n.starts_with("interp.") && *n != "interp.input") {
            let mode = match name.split('.').nth(1).unwrap() {
                "bicubic" => Interp::Bicubic,
                "bilinear" => Interp::Bilinear { align_corners: false },
                "bilinear_aligned" => Interp::Bilinear { align_corners: true },
                other => panic!("{other}"),
            };
            let (_, _, h, w) = expected.dims4().unwrap();
            let ours = resize(x, h, w, mode).unwrap();
            let err = (ours - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
            eprintln!("{name}: max |err| {err:.2e}");
            assert!(err < 1e-5, "{name}: {err}");
            checked += 1;
        }
        assert_eq!(checked, 9);
    }

    /// The same two parity checks on a GPU: `cargo test --features cuda --lib depth_on_cuda -- --ignored` on a
    /// machine with one (candle's CUDA kernels for the convolutions, gathers and attention).
    #[test]
    #[ignore = "needs a CUDA device and --features cuda"]
    fn depth_on_cuda_matches_transformers() {
        let device = Device::new_cuda(0).unwrap();
        predicted_depth_matches(&device);
        png_matches(&device);
    }

    /// f16 weights and activations (the fixture's weights are stored in f16, so only the arithmetic rounds):
    /// measured 60.7 and 64.8 dB against transformers' f32 PNG; every sensitivity stays under 40 dB.
    const HALF_BAR_DB: f64 = 50.0;

    #[test]
    fn depth_map_in_f16_stays_close() {
        let f = fixture();
        let m = DepthAnything::load(&fixtures().join(&f.model), DType::F16, &Device::Cpu).unwrap();
        for case in &f.cases {
            let ours = m.depth_map(&input(case)).unwrap();
            let expected = image::open(fixtures().join(&case.expected)).unwrap().to_rgb8();
            let psnr = image_io::psnr(&ours, &expected);
            eprintln!("{}: depth PNG in f16: PSNR {psnr:.1} dB (bar {HALF_BAR_DB} dB)", case.name);
            assert!(psnr >= HALF_BAR_DB, "{}: {psnr:.1} dB", case.name);
        }
    }

    #[test]
    fn depth_hub_config_fills_in_transformers_defaults() {
        // Depth-Anything-V2-Small-hf's config.json names only what differs from the defaults.
        let cfg: DepthAnythingConfig = serde_json::from_str(
            r#"{"model_type": "depth_anything", "architectures": ["DepthAnythingForDepthEstimation"],
                "backbone_config": {"architectures": ["Dinov2Model"], "hidden_size": 384, "image_size": 518,
                  "model_type": "dinov2", "num_attention_heads": 6, "out_features": ["stage3", "stage6", "stage9",
                  "stage12"], "out_indices": [3, 6, 9, 12], "reshape_hidden_states": false},
                "depth_estimation_type": "relative", "fusion_hidden_size": 64, "head_hidden_size": 32,
                "head_in_index": -1, "neck_hidden_sizes": [48, 96, 192, 384], "patch_size": 14,
                "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": 384}"#,
        )
        .unwrap();
        let b = &cfg.backbone_config;
        assert_eq!((b.num_hidden_layers, b.mlp_ratio, b.layer_norm_eps), (12, 4.0, 1e-6));
        assert_eq!(b.stages().unwrap(), vec![3, 6, 9, 12]);
        assert_eq!(cfg.max_depth, Some(1.0));
        cfg.check().unwrap();
        // An explicit null: transformers 5.23's head multiplies by None and raises, so the port refuses it.
        let null = DepthAnythingConfig { max_depth: None, ..cfg.clone() };
        assert!(null.check().unwrap_err().contains("max_depth is null"));
        // Only out_features: the same stages.
        let b = Dinov2Config { out_indices: None, ..cfg.backbone_config.clone() };
        assert_eq!(b.stages().unwrap(), vec![3, 6, 9, 12]);
        // Neither: the last stage only.
        let b = Dinov2Config { out_features: None, ..b };
        assert_eq!(b.stages().unwrap(), vec![12]);
    }

    #[test]
    fn depth_without_preprocessor_config_uses_depth_anything_v2_settings() {
        let dir = broken(|d| std::fs::remove_file(d.join("preprocessor_config.json")).unwrap());
        let m = DepthAnything::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
        let img = image::open(fixtures().join("images/photo-96x64.png")).unwrap().to_rgb8();
        assert_eq!(m.preprocess(&img).unwrap().dims(), &[1, 3, 350, 518]);
    }

    #[test]
    fn depth_reads_transformers_5_attention_names() {
        // The names transformers 5 uses in memory (`attention.{q,k,v,o}_proj`), as a checkpoint might store them.
        let renamed = broken(|d| {
            let path = d.join("model.safetensors");
            let renames = [
                ("attention.attention.query.", "attention.q_proj."),
                ("attention.attention.key.", "attention.k_proj."),
                ("attention.attention.value.", "attention.v_proj."),
                ("attention.output.dense.", "attention.o_proj."),
            ];
            let t: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
                .unwrap()
                .into_iter()
                .map(|(n, t)| (renames.iter().fold(n, |n, (a, b)| n.replace(a, b)), t))
                .collect();
            assert!(t.keys().any(|n| n.contains(".attention.q_proj.")));
            candle_core::safetensors::save(&t, &path).unwrap();
        });
        let f = fixture();
        let (a, b) = (model(&f), DepthAnything::load(renamed.path(), DType::F32, &Device::Cpu).unwrap());
        let pixels = a.preprocess(&input(&f.cases[0])).unwrap();
        let diff = (a.forward(&pixels).unwrap() - b.forward(&pixels).unwrap()).unwrap().abs().unwrap();
        assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn depth_processor_sizes_follow_dpt() {
        let p = ProcessorConfig::depth_anything();
        // 96x64: the width scales least (518/96), the height follows and rounds to a multiple of 14.
        assert_eq!(p.target_size(96, 64), (518, 350));
        let mut small = p.clone();
        small.size = Size { height: 70, width: 70 };
        // 105 / 14 = 7.5 rounds half to even: 8 · 14 = 112 (the fixture's processed size).
        assert_eq!(small.target_size(96, 64), (112, 70));
        assert_eq!(small.target_size(80, 80), (70, 70));
    }
}
