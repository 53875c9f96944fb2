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
//! Interpolation gathers and weights input rows/columns with torch's own index and weight rules ([`interp`]).

mod backbone;
mod config;
mod interp;
mod neck;

use crate::config::read_json;
use crate::error::{Error, Result};
use crate::image_io;
use crate::source::weight_files;
use crate::weights::CheckedWeights;
use backbone::Backbone;
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use config::ProcessorConfig;
pub use config::{DepthAnythingConfig, Dinov2Config};
use image::RgbImage;
use interp::{resize, Interp};
use neck::{Fusion, Head, Reassemble};
use std::path::Path;

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
mod tests;
