//! Depth Anything's config.json (transformers' `DepthAnythingConfig` with its `Dinov2Config` backbone) and
//! preprocessor_config.json (`DPTImageProcessor`), with transformers' names and defaults, checked on reading.

use serde::Deserialize;
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

pub(super) fn small_backbone() -> Dinov2Config {
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
pub(super) fn fourteen() -> usize {
    14
}
pub(super) fn d384() -> usize {
    384
}
pub(super) fn d64() -> usize {
    64
}
pub(super) fn d32() -> usize {
    32
}
pub(super) fn d768() -> usize {
    768
}
pub(super) fn d224() -> usize {
    224
}
pub(super) fn twelve() -> usize {
    12
}
pub(super) fn three() -> usize {
    3
}
pub(super) fn four() -> f64 {
    4.0
}
pub(super) fn eps() -> f64 {
    1e-6
}
pub(super) fn minus_one() -> i64 {
    -1
}
pub(super) fn one_f64() -> Option<f64> {
    Some(1.0)
}
pub(super) fn one_f64_plain() -> f64 {
    1.0
}
pub(super) fn yes() -> bool {
    true
}
pub(super) fn dinov2() -> String {
    "dinov2".into()
}
pub(super) fn gelu() -> String {
    "gelu".into()
}
pub(super) fn relative() -> String {
    "relative".into()
}
pub(super) fn reassemble_factors() -> Vec<f64> {
    vec![4.0, 2.0, 1.0, 0.5]
}
pub(super) fn neck_hidden_sizes() -> Vec<usize> {
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

pub(super) fn stage_index(name: &str, stages: usize) -> std::result::Result<usize, String> {
    let i = match name {
        "stem" => Some(0),
        _ => name.strip_prefix("stage").and_then(|d| d.parse::<usize>().ok()),
    };
    i.filter(|&i| i < stages).ok_or_else(|| format!("out_features names {name:?}, not a stage of this backbone"))
}

impl DepthAnythingConfig {
    /// Everything transformers would refuse or this port does not cover, as one sentence.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
pub(super) fn valid_factor(f: f64) -> bool {
    (f > 1.0 && f.fract() == 0.0) || (f > 0.0 && f < 1.0)
}

/// `DPTImageProcessor`'s fields (transformers' names; the defaults are the class's, used when the file has no
/// such field).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct ProcessorConfig {
    #[serde(default = "yes")]
    pub(super) do_resize: bool,
    #[serde(default = "dpt_size")]
    pub(super) size: Size,
    #[serde(default)]
    pub(super) keep_aspect_ratio: bool,
    #[serde(default = "one_usize")]
    pub(super) ensure_multiple_of: usize,
    /// PIL's resample code; only bicubic (3) is ported.
    #[serde(default = "bicubic")]
    pub(super) resample: u32,
    #[serde(default = "yes")]
    pub(super) do_rescale: bool,
    #[serde(default = "rescale")]
    pub(super) rescale_factor: f64,
    #[serde(default = "yes")]
    pub(super) do_normalize: bool,
    #[serde(default = "half")]
    pub(super) image_mean: [f32; 3],
    #[serde(default = "half")]
    pub(super) image_std: [f32; 3],
    #[serde(default)]
    pub(super) do_pad: bool,
    #[serde(default)]
    pub(super) size_divisor: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
pub(super) struct Size {
    pub(super) height: u32,
    pub(super) width: u32,
}

pub(super) fn dpt_size() -> Size {
    Size { height: 384, width: 384 }
}
pub(super) fn one_usize() -> usize {
    1
}
pub(super) fn bicubic() -> u32 {
    3
}
pub(super) fn rescale() -> f64 {
    1.0 / 255.0
}
pub(super) fn half() -> [f32; 3] {
    [0.5; 3]
}

impl ProcessorConfig {
    /// Depth-Anything-V2's preprocessor_config.json on the Hub, for a folder without one.
    pub(super) fn depth_anything() -> Self {
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

    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
    pub(super) fn target_size(&self, w: u32, h: u32) -> (u32, u32) {
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
