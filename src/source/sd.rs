//! A Stable Diffusion pipeline folder in diffusers layout (SD 1.x/2.x, SDXL; txt2img, img2img and inpainting
//! checkpoints alike) → the typed paths of its components. Checks only that the files exist.

use super::{component, Component, Overrides};
use crate::config::Family;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Every file of a diffusers-layout Stable Diffusion pipeline that flux-img2img reads.
#[derive(Debug, Clone)]
pub struct SdFiles {
    pub family: Family,
    pub unet: Component,
    pub vae: Component,
    pub text_encoder: Component,
    pub tokenizer: PathBuf,
    /// SDXL's second encoder (`CLIPTextModelWithProjection`) and its tokenizer.
    pub text_encoder_2: Option<Component>,
    pub tokenizer_2: Option<PathBuf>,
    pub scheduler_config: PathBuf,
    pub model_index: Option<PathBuf>,
}

impl SdFiles {
    /// The folder's components; `weights`: also find the weight files (not needed to plan a dry run).
    pub fn resolve(root: &Path, family: Family, weights: bool) -> Result<Self> {
        let sub = |name: &str| -> Result<PathBuf> {
            let dir = root.join(name);
            if dir.is_dir() {
                Ok(dir)
            } else {
                Err(Error::model(root, format!("component folder {name}/ is missing (expected diffusers layout)")))
            }
        };
        let scheduler_config = sub("scheduler")?.join("scheduler_config.json");
        if !scheduler_config.is_file() {
            return Err(Error::model(&scheduler_config, "missing"));
        }
        let xl = family == Family::Sdxl;
        let stem = "diffusion_pytorch_model";
        Ok(Self {
            family,
            unet: component(root, "unet", stem, weights)?,
            vae: component(root, "vae", stem, weights)?,
            text_encoder: component(root, "text_encoder", "model", weights)?,
            tokenizer: sub("tokenizer")?,
            text_encoder_2: if xl { Some(component(root, "text_encoder_2", "model", weights)?) } else { None },
            tokenizer_2: if xl { Some(sub("tokenizer_2")?) } else { None },
            scheduler_config,
            model_index: Some(root.join("model_index.json")).filter(|p| p.is_file()),
        })
    }

    /// Points components at override files: `--transformer` names the UNet's weights here.
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let (Some(f), None) = (&o.text_encoder_2, &self.text_encoder_2) {
            return Err(Error::Usage(format!(
                "--text-encoder-2 {}: this {} model has one text encoder (use --text-encoder)",
                f.display(),
                self.family
            )));
        }
        let te2 = self.text_encoder_2.as_mut();
        for (file, comp, flag) in [
            (&o.transformer, Some(&mut self.unet), "--transformer"),
            (&o.vae, Some(&mut self.vae), "--vae"),
            (&o.text_encoder, Some(&mut self.text_encoder), "--text-encoder"),
            (&o.text_encoder_2, te2, "--text-encoder-2"),
        ] {
            if let (Some(f), Some(comp)) = (file, comp) {
                if !f.is_file() {
                    return Err(Error::Usage(format!("{flag} {}: no such file", f.display())));
                }
                comp.weights = vec![f.clone()];
            }
        }
        Ok(())
    }
}
