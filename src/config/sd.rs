//! The configs of a Stable Diffusion pipeline, read and checked together: the UNet's, the VAE's, the text
//! encoders', the scheduler's (raw, as each scheduler reads it) and the pipeline-level fields of
//! `model_index.json`. Detects SD 2.x v-prediction from the scheduler's `prediction_type`.

use super::unet::UNetConfig;
use super::{read_json, ClipConfig, Family, VaeConfig};
use crate::error::{Error, Result};
use crate::schedulers::SchedulerKind;
use serde_json::{Map, Value};
use std::path::Path;

/// Where a Stable Diffusion pipeline's configs are (what `source` resolved), and its family.
pub struct SdConfigFiles<'a> {
    pub family: Family,
    pub unet: &'a Path,
    pub vae: &'a Path,
    pub text_encoder: &'a Path,
    /// SDXL's second encoder.
    pub text_encoder_2: Option<&'a Path>,
    pub scheduler: &'a Path,
    pub model_index: Option<&'a Path>,
}

#[derive(Debug, Clone)]
pub struct SdConfigs {
    pub family: Family,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    pub clip: ClipConfig,
    /// SDXL's second encoder.
    pub clip_2: Option<ClipConfig>,
    /// `scheduler_config.json` as written.
    pub scheduler: Map<String, Value>,
    /// The scheduler the checkpoint runs by default.
    pub own_scheduler: SchedulerKind,
    /// SDXL: an absent negative prompt is a zero embedding rather than the encoded empty text.
    pub force_zeros_for_empty_prompt: bool,
    /// The pipeline class `model_index.json` names.
    pub pipeline: Option<String>,
}

impl SdConfigs {
    pub fn read(files: &SdConfigFiles) -> Result<Self> {
        let index: Map<String, Value> = files.model_index.map(read_json).transpose()?.unwrap_or_default();
        let unet: UNetConfig = read_json(files.unet)?;
        unet.validate(files.unet)?;
        let vae: VaeConfig = read_json(files.vae)?;
        vae.validate(files.vae)?;
        let clip: ClipConfig = read_json(files.text_encoder)?;
        clip.validate(files.text_encoder)?;
        let clip_2 = match files.text_encoder_2 {
            Some(c) => {
                let cfg: ClipConfig = read_json(c)?;
                cfg.validate(c)?;
                Some(cfg)
            }
            None => None,
        };
        let scheduler: Map<String, Value> = read_json(files.scheduler)?;
        let class = scheduler.get("_class_name").and_then(Value::as_str).unwrap_or_default();
        let own_scheduler = SchedulerKind::of_config(class, &scheduler).ok_or_else(|| {
            Error::model(
                files.scheduler,
                format!("scheduler {class:?} is not supported; choose one with --scheduler (pndm, ddim, lms, euler, euler-a, dpmpp-2m, dpmpp-2m-karras)"),
            )
        })?;
        let c = Self {
            family: files.family,
            unet,
            vae,
            clip,
            clip_2,
            own_scheduler,
            force_zeros_for_empty_prompt: index
                .get("force_zeros_for_empty_prompt")
                .and_then(Value::as_bool)
                .unwrap_or(true),
            pipeline: index.get("_class_name").and_then(Value::as_str).map(str::to_string),
            scheduler,
        };
        c.check(files)?;
        Ok(c)
    }

    /// The sizes the components must agree on.
    fn check(&self, files: &SdConfigFiles) -> Result<()> {
        let latent = self.vae.latent_channels;
        let u = &self.unet;
        if u.in_channels != latent && u.in_channels != 2 * latent + 1 {
            return Err(Error::model(
                files.unet,
                format!(
                    "UNet in_channels {} is neither the VAE's {latent} latent channels nor an inpainting UNet's {}",
                    u.in_channels,
                    2 * latent + 1
                ),
            ));
        }
        let width = self.clip.hidden_size + self.clip_2.as_ref().map_or(0, |c| c.hidden_size);
        if u.cross_attention_dim.expand(u.blocks()).iter().any(|&d| d != width) {
            return Err(Error::model(
                files.unet,
                format!(
                    "UNet cross_attention_dim {:?} does not match the text encoders' width {width}",
                    u.cross_attention_dim
                ),
            ));
        }
        if u.text_time() != self.clip_2.is_some() {
            return Err(Error::model(
                files.unet,
                "an SDXL UNet (addition_embed_type text_time) needs both text encoders, and only it takes two",
            ));
        }
        Ok(())
    }

    /// An inpainting UNet: the latents, the mask and the masked image's latents as its input.
    pub fn inpainting_unet(&self) -> bool {
        self.unet.in_channels == 2 * self.vae.latent_channels + 1
    }

    /// SD 2.x 768 models and others trained to predict v.
    pub fn v_prediction(&self) -> bool {
        self.scheduler.get("prediction_type").and_then(Value::as_str) == Some("v_prediction")
    }
}
