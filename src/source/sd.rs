//! A Stable Diffusion pipeline folder in diffusers layout (SD 1.x/2.x, SDXL; txt2img, img2img and inpainting
//! checkpoints alike) → the typed paths of its components. Checks only that the files exist.

use super::{component, Component, Overrides};
use crate::config::Family;
use crate::error::{Error, Result};
use crate::weights::open_clip_keys::TextKeys;
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
    pub clip: Option<TextKeys>,
    pub clip_2: Option<TextKeys>,
}

/// Prefixes of an original single-file checkpoint: the UNet, the VAE.
const UNET_PREFIX: &str = crate::weights::unet_keys::PREFIX;
const VAE_PREFIX: &str = "first_stage_model.";
/// Text encoders: SD 1.x's CLIP (transformers names), SD 2.x's OpenCLIP, SDXL's CLIP-L (transformers names) and
/// OpenCLIP bigG.
const CLIP_PREFIX: &str = "cond_stage_model.transformer.";
const OPEN_CLIP_PREFIX: &str = "cond_stage_model.model.";
const XL_CLIP_PREFIX: &str = "conditioner.embedders.0.transformer.";
const XL_OPEN_CLIP_PREFIX: &str = "conditioner.embedders.1.model.";

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
    /// The config files, for [`crate::config::sd::SdConfigs::read`].
    pub fn config_files(&self) -> crate::config::sd::SdConfigFiles<'_> {
        crate::config::sd::SdConfigFiles {
            family: self.family,
            unet: &self.unet.config,
            vae: &self.vae.config,
            text_encoder: &self.text_encoder.config,
            text_encoder_2: self.text_encoder_2.as_ref().map(|c| c.config.as_path()),
            scheduler: &self.scheduler_config,
            model_index: self.model_index.as_deref(),
        }
    }

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
        let xl_file = has("conditioner.");
        if xl_file != (self.family == Family::Sdxl) {
            let kind = if xl_file { "an SDXL" } else { "an SD 1.x/2.x" };
            return Err(Error::Usage(format!(
                "{}: {kind} single file, but --model is a {} pipeline; give --model {kind} pipeline",
                file.display(),
                self.family
            )));
        }
        self.unet.weights = vec![file.to_path_buf()];
        self.original.unet = true;
        if has(VAE_PREFIX) && o.vae.is_none() {
            self.vae.weights = vec![file.to_path_buf()];
            self.original.vae = Some(VAE_PREFIX.into());
        }
        let first = [(CLIP_PREFIX, false), (OPEN_CLIP_PREFIX, true), (XL_CLIP_PREFIX, false)];
        if let (Some(&(prefix, open)), None) = (first.iter().find(|(p, _)| has(p)), &o.text_encoder) {
            self.text_encoder.weights = vec![file.to_path_buf()];
            let prefix = prefix.to_string();
            // SD 2.x's stored projection is not part of its diffusers encoder (CLIPTextModel).
            self.original.clip = Some(if open {
                TextKeys::OpenClip { prefix, projection: false }
            } else {
                TextKeys::Transformers(prefix)
            });
        }
        if let (true, None, Some(te2)) = (has(XL_OPEN_CLIP_PREFIX), &o.text_encoder_2, self.text_encoder_2.as_mut()) {
            te2.weights = vec![file.to_path_buf()];
            self.original.clip_2 = Some(TextKeys::OpenClip { prefix: XL_OPEN_CLIP_PREFIX.into(), projection: true });
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
        super::point_at(o, unet_file, [&mut self.unet, &mut self.vae, &mut self.text_encoder], te2)
    }
}
