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
    /// Components read from a single-file checkpoint in the original (CompVis) layout.
    pub original: Original,
}

/// Which components come from an original-layout single file, and under which name prefix.
#[derive(Debug, Clone, Default)]
pub struct Original {
    pub unet: bool,
    pub vae: Option<String>,
    pub clip: Option<String>,
}

/// Prefixes of an original single-file checkpoint: the UNet, the VAE, SD 1.x's CLIP (transformers names), and
/// the OpenCLIP text encoders of SD 2.x and SDXL.
const UNET_PREFIX: &str = crate::weights::unet_keys::PREFIX;
const VAE_PREFIX: &str = "first_stage_model.";
const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
const OPEN_CLIP: [&str; 2] = ["cond_stage_model.model.", "conditioner.embedders."];

/// Pickle checkpoints can run code when loaded: refused, with the way out.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if matches!(ext.as_str(), "ckpt" | "pt" | "pth" | "bin") {
        return Err(Error::Usage(format!(
            "{}: .{ext} files are Python pickles, which can run code when read and are not loaded here; convert it \
             to .safetensors first (e.g. diffusers' StableDiffusionPipeline.from_single_file, then save_pretrained)",
            path.display()
        )));
    }
    Ok(())
}

/// The tensor names of a safetensors file.
fn names(path: &Path) -> Result<Vec<String>> {
    Ok(crate::weights::CheckedWeights::open("checkpoint", &[path.to_path_buf()])?.names())
}

/// Whether `path` is a single-file checkpoint in the original layout (a UNet under `model.diffusion_model.`).
pub fn is_original_checkpoint(path: &Path) -> bool {
    path.is_file() && names(path).is_ok_and(|n| n.iter().any(|k| k.starts_with(UNET_PREFIX)))
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
        if xl && !root.join("text_encoder").is_dir() && root.join("text_encoder_2").is_dir() {
            return Err(Error::model(
                root,
                "is an SDXL refiner (one text encoder, aesthetic-score conditioning), which is not supported; use an \
                 SDXL base model (--model sdxl)",
            ));
        }
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
            original: Original::default(),
        })
    }

    /// `--transformer FILE` naming a whole original checkpoint: its UNet, and its VAE and CLIP where it has them
    /// and no `--vae` / `--text-encoder` says otherwise.
    fn adopt_checkpoint(&mut self, file: &Path, o: &Overrides) -> Result<()> {
        let names = names(file)?;
        let has = |p: &str| names.iter().any(|n| n.starts_with(p));
        if OPEN_CLIP.iter().any(|p| has(p)) {
            return Err(Error::Usage(format!(
                "{}: an SD 2.x or SDXL single file (OpenCLIP text encoder), which is not read yet; convert it to a \
                 diffusers folder (StableDiffusion[XL]Pipeline.from_single_file, then save_pretrained)",
                file.display()
            )));
        }
        self.unet.weights = vec![file.to_path_buf()];
        self.original.unet = true;
        if has(VAE_PREFIX) && o.vae.is_none() {
            self.vae.weights = vec![file.to_path_buf()];
            self.original.vae = Some(VAE_PREFIX.into());
        }
        if has(CLIP_PREFIX) && o.text_encoder.is_none() {
            self.text_encoder.weights = vec![file.to_path_buf()];
            self.original.clip = Some(CLIP_PREFIX.into());
        }
        Ok(())
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
        for f in [&o.transformer, &o.vae, &o.text_encoder, &o.text_encoder_2].into_iter().flatten() {
            refuse_pickle(f)?;
        }
        let whole = o.transformer.as_deref().filter(|f| is_original_checkpoint(f));
        if let Some(f) = whole {
            self.adopt_checkpoint(f, o)?;
        }
        let unet_file = if whole.is_some() { &None } else { &o.transformer };
        let te2 = self.text_encoder_2.as_mut();
        for (file, comp, flag) in [
            (unet_file, Some(&mut self.unet), "--transformer"),
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
