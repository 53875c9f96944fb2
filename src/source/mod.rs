//! Model sources: a local folder in diffusers layout (or a Hub repo, fetched into the cache by [`hub`]) →
//! typed paths of every component.
//!
//! Takes the `--model` folder, gives [`ModelFiles`]: for each component its folder, config and weight files
//! (one `*.safetensors`, or every shard listed by `*.safetensors.index.json`, as the real FLUX.1 repos ship the
//! transformer and T5). Checks only that files exist; parsing happens in the stages that use them.

use crate::config::Family;
use crate::error::{Error, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

pub mod hub;
pub mod sd;

/// (folder, weight-file stem) of the weighted components of a diffusers FLUX.1 pipeline; FLUX.2 has the first
/// three (its text encoder is Qwen3).
pub const COMPONENTS: [(&str, &str); 4] = [
    ("transformer", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
];

/// The weighted components of a Stable Diffusion pipeline (SDXL has the fourth).
pub const SD_COMPONENTS: [(&str, &str); 4] = [
    ("unet", "diffusion_pytorch_model"),
    ("vae", "diffusion_pytorch_model"),
    ("text_encoder", "model"),
    ("text_encoder_2", "model"),
];

/// The weighted components of a `family` pipeline.
pub fn components(family: Family) -> &'static [(&'static str, &'static str)] {
    match family {
        Family::Flux1 => &COMPONENTS,
        Family::Flux2 => &COMPONENTS[..3],
        Family::Sd => &SD_COMPONENTS[..3],
        Family::Sdxl => &SD_COMPONENTS,
    }
}

/// The `_class_name` a JSON config names, if it can be read.
fn class_in(path: &Path) -> Option<String> {
    crate::config::read_json::<serde_json::Value>(path)
        .ok()
        .and_then(|v| v.get("_class_name").and_then(|c| c.as_str()).map(str::to_string))
}

/// The pipeline class `model_index.json` names.
fn pipeline_class(root: &Path) -> Option<String> {
    class_in(&root.join("model_index.json"))
}

/// The family a pipeline folder holds: `model_index.json`'s class, else the transformer config's (or, without
/// one, a UNet's: SDXL when there is a second text encoder).
pub fn family_of(root: &Path) -> Family {
    if let Some(c) = pipeline_class(root).or_else(|| class_in(&root.join("transformer").join("config.json"))) {
        return Family::of_class(&c);
    }
    match (root.join("unet").join("config.json").is_file(), root.join("text_encoder_2").is_dir()) {
        (true, true) => Family::Sdxl,
        (true, false) => Family::Sd,
        _ => Family::Flux1,
    }
}

/// `<stem>.safetensors.index.json`: which shard file holds each tensor.
#[derive(Debug, serde::Deserialize)]
pub struct ShardIndex {
    weight_map: HashMap<String, String>,
}

impl ShardIndex {
    pub fn read(path: &Path) -> Result<Self> {
        crate::config::read_json(path)
    }

    /// The shard file names, sorted, each once.
    pub fn shards(&self) -> Vec<&str> {
        self.weight_map.values().map(String::as_str).collect::<BTreeSet<_>>().into_iter().collect()
    }
}

/// `--model` (a folder, an alias or a Hub repo id) → a local diffusers-layout folder. `weights`: fetch the
/// weight files too (not needed to plan a dry run); `bars`: show download progress bars.
pub fn locate(model: &Path, o: &Overrides, weights: bool, bars: bool) -> Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    match hub::repo_id(&model.to_string_lossy()) {
        Some(id) => hub::resolve(&id, o.revision.as_deref(), weights, o, bars),
        None => Ok(model.to_path_buf()),
    }
}

/// One model component (transformer, vae, text encoder) on disk.
#[derive(Debug, Clone)]
pub struct Component {
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
}

/// Each override file given (the denoiser's `denoiser_file`, then `--vae`, `--text-encoder`, `--text-encoder-2`) as
/// its component's only weight file, after checking it exists; what a family's `apply` ends with.
pub(crate) fn point_at(
    o: &Overrides,
    denoiser_file: &Option<PathBuf>,
    [denoiser, vae, text_encoder]: [&mut Component; 3],
    text_encoder_2: Option<&mut Component>,
) -> Result<()> {
    for (file, comp, flag) in [
        (denoiser_file, Some(denoiser), "--transformer"),
        (&o.vae, Some(vae), "--vae"),
        (&o.text_encoder, Some(text_encoder), "--text-encoder"),
        (&o.text_encoder_2, text_encoder_2, "--text-encoder-2"),
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

/// Every file of a diffusers-layout FLUX pipeline that flux-img2img reads.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub family: Family,
    pub transformer: Component,
    pub vae: Component,
    /// CLIP (FLUX.1) or Qwen3 (FLUX.2).
    pub text_encoder: Component,
    /// T5 (FLUX.1 only).
    pub text_encoder_2: Option<Component>,
    pub tokenizer: PathBuf,
    pub tokenizer_2: Option<PathBuf>,
    pub scheduler_config: PathBuf,
    /// The folder's `model_index.json`, if it has one.
    pub model_index: Option<PathBuf>,
}

/// Single weight files that replace one component's weights from `--model` (configs stay the folder's).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub transformer: Option<PathBuf>,
    pub vae: Option<PathBuf>,
    pub text_encoder: Option<PathBuf>,
    pub text_encoder_2: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) when `--model` is a repo.
    pub revision: Option<String>,
}

impl Overrides {
    /// The file replacing component `name` (a diffusers folder name), if any.
    pub fn for_component(&self, name: &str) -> Option<&PathBuf> {
        match name {
            "transformer" => self.transformer.as_ref(),
            "vae" => self.vae.as_ref(),
            "text_encoder" => self.text_encoder.as_ref(),
            "text_encoder_2" => self.text_encoder_2.as_ref(),
            _ => None,
        }
    }
}

impl ModelFiles {
    /// The config files, for [`crate::config::ModelConfigs::read`].
    pub fn config_files(&self) -> crate::config::ConfigFiles<'_> {
        crate::config::ConfigFiles {
            family: self.family,
            transformer: &self.transformer.config,
            vae: &self.vae.config,
            scheduler: &self.scheduler_config,
            model_index: self.model_index.as_deref(),
        }
    }

    /// FLUX.1 Kontext: `model_index.json` names `FluxKontextPipeline`, or the transformer file's name says so.
    pub fn is_kontext(&self) -> bool {
        let by_index =
            self.model_index.as_ref().and_then(|p| crate::config::read_json::<serde_json::Value>(p).ok()).is_some_and(
                |v| {
                    v.get("_class_name")
                        .and_then(|c| c.as_str())
                        .is_some_and(|c| c.to_ascii_lowercase().contains("kontext"))
                },
            );
        let by_name = self
            .transformer
            .weights
            .iter()
            .any(|w| w.file_name().is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().contains("kontext")));
        by_index || by_name
    }

    /// Points components at override files (BFL or diffusers names; the loaders detect which).
    pub fn apply(&mut self, o: &Overrides) -> Result<()> {
        if let (Some(f), None) = (&o.text_encoder_2, &self.text_encoder_2) {
            return Err(Error::Usage(format!(
                "--text-encoder-2 {}: this {} model has no second text encoder (its text encoder is Qwen3: use --text-encoder)",
                f.display(),
                self.family
            )));
        }
        let te2 = self.text_encoder_2.as_mut();
        point_at(o, &o.transformer, [&mut self.transformer, &mut self.vae, &mut self.text_encoder], te2)
    }

    /// T5's files (FLUX.1): its component and tokenizer folder.
    pub fn t5(&self) -> Result<(&Component, &Path)> {
        match (&self.text_encoder_2, &self.tokenizer_2) {
            (Some(c), Some(t)) => Ok((c, t)),
            _ => Err(Error::Usage(format!("this {} model has no T5 text encoder", self.family))),
        }
    }

    /// Resolves a local diffusers-layout folder (the layout of black-forest-labs/FLUX.1-dev on the Hub).
    pub fn from_dir(root: &Path) -> Result<Self> {
        Self::resolve(root, true)
    }

    /// The same without looking for weight files (their lists stay empty): enough to plan a run.
    pub fn configs_only(root: &Path) -> Result<Self> {
        Self::resolve(root, false)
    }

    fn resolve(root: &Path, weights: bool) -> Result<Self> {
        if root.is_file() {
            return Err(Error::model(
                root,
                "is a file, not a model folder: give a single-file transformer with --transformer FILE, and --model \
                 the pipeline it belongs to (a diffusers folder, a Hub repo id, or an alias such as dev or schnell) \
                 for the other components",
            ));
        }
        if !root.is_dir() {
            return Err(Error::model(
                root,
                "no such folder; pass --model a FLUX pipeline folder in diffusers layout (model_index.json, \
                 transformer/, vae/, text_encoder/, tokenizer/, scheduler/, and for FLUX.1 text_encoder_2/, \
                 tokenizer_2/), a Hub repo id (org/name) or an alias (dev, schnell, kontext, klein-4b, ...)",
            ));
        }
        let family = family_of(root);
        if pipeline_class(root).as_deref() == Some("Flux2Pipeline") {
            return Err(Error::model(
                root,
                "is FLUX.2 [dev] (32B, Mistral text encoder), which is not supported; FLUX.2 [klein] 4B/9B are \
                 (--model klein-4b, klein-9b)",
            ));
        }
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
        let [transformer, vae, text_encoder, t5] = COMPONENTS.map(|(name, stem)| component(root, name, stem, weights));
        let flux1 = family == Family::Flux1;
        Ok(Self {
            family,
            transformer: transformer?,
            vae: vae?,
            text_encoder: text_encoder?,
            text_encoder_2: if flux1 { Some(t5?) } else { None },
            model_index: Some(root.join("model_index.json")).filter(|p| p.is_file()),
            tokenizer: sub("tokenizer")?,
            tokenizer_2: if flux1 { Some(sub("tokenizer_2")?) } else { None },
            scheduler_config,
        })
    }
}

fn component(root: &Path, name: &str, stem: &str, with_weights: bool) -> Result<Component> {
    let dir = root.join(name);
    if !dir.is_dir() {
        return Err(Error::model(root, format!("component folder {name}/ is missing (expected diffusers layout)")));
    }
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::model(&config, "missing"));
    }
    let weights = if with_weights { weight_files(&dir, stem)? } else { Vec::new() };
    Ok(Component { config, weights })
}

/// The safetensors files of one component: the shards named by the index, or the single file.
pub fn weight_files(dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    let index = dir.join(format!("{stem}.safetensors.index.json"));
    if index.is_file() {
        let mut out = Vec::new();
        for f in ShardIndex::read(&index)?.shards() {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(Error::model(&p, format!("shard listed in {} is missing", index.display())));
            }
            out.push(p);
        }
        return Ok(out);
    }
    let single = dir.join(format!("{stem}.safetensors"));
    if single.is_file() {
        return Ok(vec![single]);
    }
    Err(Error::model(dir, format!("no weights: expected {stem}.safetensors or {stem}.safetensors.index.json")))
}
