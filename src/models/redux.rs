//! FLUX.1 Redux's image prior (`FluxPriorReduxPipeline`'s parts): a SigLIP vision tower (candle-transformers'
//! `siglip`, transformers' names) and the Redux embedder (`redux_up` → SiLU → `redux_down`). Takes a picture; gives
//! its image tokens in the T5 width, which the edit appends to the prompt's tokens. Preprocessing is
//! `SiglipImageProcessor`'s: PIL bicubic to its size, rescale, normalise.

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::image_io;
use crate::source::weight_files;
use crate::weights::CheckedWeights;
use candle_core::{DType, Device, Module, Tensor};
use candle_transformers::models::siglip;
use image::RgbImage;
use serde::Deserialize;
use std::path::Path;

/// `ReduxImageEncoder`'s config.
#[derive(Debug, Deserialize)]
struct EmbedderConfig {
    redux_dim: usize,
    txt_in_features: usize,
}

/// The image processor's fields the tool uses (transformers' names and defaults).
#[derive(Debug, Deserialize)]
struct ProcessorConfig {
    #[serde(default = "yes")]
    do_resize: bool,
    size: Size,
    #[serde(default = "rescale")]
    rescale_factor: f64,
    #[serde(default = "half")]
    image_mean: [f32; 3],
    #[serde(default = "half")]
    image_std: [f32; 3],
    /// PIL's resample code; only bicubic (3) is ported.
    #[serde(default = "bicubic")]
    resample: u32,
}

#[derive(Debug, Deserialize)]
struct Size {
    height: u32,
    width: u32,
}

fn yes() -> bool {
    true
}
fn rescale() -> f64 {
    1.0 / 255.0
}
fn half() -> [f32; 3] {
    [0.5; 3]
}
fn bicubic() -> u32 {
    3
}

pub struct ReduxPrior {
    vision: siglip::VisionModel,
    up: candle_nn::Linear,
    down: candle_nn::Linear,
    processor: ProcessorConfig,
    device: Device,
    dtype: DType,
}

impl ReduxPrior {
    /// Loads `root`'s image_encoder/, image_embedder/ and feature_extractor/ (the FLUX.1-Redux-dev layout).
    pub fn load(root: &Path, t5_width: usize, dtype: DType, device: &Device) -> Result<Self> {
        let processor: ProcessorConfig = read_json(&root.join("feature_extractor/preprocessor_config.json"))?;
        if processor.resample != 3 {
            return Err(Error::model(
                root.join("feature_extractor/preprocessor_config.json"),
                format!("resample {} is not bicubic (3), the only one ported", processor.resample),
            ));
        }
        let vcfg: siglip::VisionConfig = read_json(&root.join("image_encoder/config.json"))?;
        let ecfg: EmbedderConfig = read_json(&root.join("image_embedder/config.json"))?;
        if ecfg.redux_dim != vcfg.hidden_size || ecfg.txt_in_features != t5_width {
            return Err(Error::model(
                root.join("image_embedder/config.json"),
                format!(
                    "redux_dim {} / txt_in_features {} do not fit the SigLIP width {} and this model's T5 width {}",
                    ecfg.redux_dim, ecfg.txt_in_features, vcfg.hidden_size, t5_width
                ),
            ));
        }
        let enc = CheckedWeights::open("Redux image encoder", &weight_files(&root.join("image_encoder"), "model")?)?;
        // transformers 4 saved SiglipVisionModel under `vision_model.`; transformers 5 saves it without.
        let prefixed = enc.names().iter().any(|n| n.starts_with("vision_model."));
        let vb = enc.var_builder(dtype, device, None);
        let vision = siglip::VisionModel::new(&vcfg, false, if prefixed { vb.pp("vision_model") } else { vb })?;
        enc.finish()?;
        let emb = CheckedWeights::open(
            "Redux image embedder",
            &weight_files(&root.join("image_embedder"), "diffusion_pytorch_model")?,
        )?;
        let vb = emb.var_builder(dtype, device, None);
        let up = candle_nn::linear(ecfg.redux_dim, 3 * ecfg.txt_in_features, vb.pp("redux_up"))?;
        let down = candle_nn::linear(3 * ecfg.txt_in_features, ecfg.txt_in_features, vb.pp("redux_down"))?;
        emb.finish()?;
        Ok(Self { vision, up, down, processor, device: device.clone(), dtype })
    }

    /// The image tokens of `img`: [1, N, T5 width].
    pub fn embed(&self, img: &RgbImage) -> Result<Tensor> {
        let pixels = self.preprocess(img)?.to_dtype(self.dtype)?;
        let hidden = self.vision.forward(&pixels)?;
        Ok(self.down.forward(&candle_nn::ops::silu(&self.up.forward(&hidden)?)?)?)
    }

    /// [1, 3, H, W] as the image processor makes it: resized, `x · rescale`, then `(x − mean) / std` in f32.
    fn preprocess(&self, img: &RgbImage) -> Result<Tensor> {
        let p = &self.processor;
        let img = match p.do_resize && img.dimensions() != (p.size.width, p.size.height) {
            true => image_io::resize_bicubic(img, p.size.width, p.size.height),
            false => img.clone(),
        };
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0f32; 3 * h * w];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let x = (px.0[c] as f64 * p.rescale_factor) as f32;
                data[c * h * w + i] = (x - p.image_mean[c]) / p.image_std[c];
            }
        }
        Ok(Tensor::from_vec(data, (1, 3, h, w), &self.device)?)
    }
}
