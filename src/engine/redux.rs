//! FLUX.1 Redux in an edit, as `FluxPriorReduxPipeline` feeds the Flux pipelines: takes the request's Redux images
//! and the prompt's conditioning; gives the conditioning with each image's tokens appended to the T5 tokens and
//! the images' weights applied — `Σᵢ wᵢ·[T5, imageᵢ]` and `Σᵢ wᵢ·pooled`, the prior's per-image scales summed over
//! its batch.

use super::family::Env;
use super::request::Request;
use crate::error::{Error, Result};
use crate::image_io::{self, Role};
use crate::models::redux::ReduxPrior;
use crate::source::hub;
use candle_core::Tensor;
use std::path::PathBuf;

/// The Hub repo Redux's parts come from when no --redux-model is given.
pub const DEFAULT_REPO: &str = "black-forest-labs/FLUX.1-Redux-dev";

/// The files of a Redux prior, relative to its folder.
const FILES: [&str; 5] = [
    "feature_extractor/preprocessor_config.json",
    "image_encoder/config.json",
    "image_encoder/model.safetensors",
    "image_embedder/config.json",
    "image_embedder/diffusion_pytorch_model.safetensors",
];

/// Checks, before any weight loads, that each image has a readable header and that a local Redux folder has the
/// SigLIP encoder.
pub fn check(req: &Request) -> Result<()> {
    for r in &req.redux {
        image_io::dimensions_as(&r.path, Role::Redux)?;
    }
    match req.redux_model.as_deref().filter(|m| m.is_dir()) {
        Some(dir) if !dir.join("image_encoder/config.json").is_file() => Err(Error::model(
            dir,
            "has no image_encoder/ (SigLIP): --redux-model needs a folder in FLUX.1-Redux-dev's layout \
             (image_encoder/, image_embedder/, feature_extractor/)",
        )),
        _ => Ok(()),
    }
}

/// The local folder of the request's Redux prior (fetched from the Hub when it names a repo).
pub fn locate(req: &Request) -> Result<PathBuf> {
    let spec = req.redux_model.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_REPO));
    if spec.is_dir() {
        return Ok(spec);
    }
    match hub::repo_id(&spec.to_string_lossy()) {
        Some(id) => hub::snapshot(&id, &FILES, false),
        None => Err(Error::model(&spec, "--redux-model: not a folder or a Hub repo id")),
    }
}

/// The request's Redux prior folder if it is on disk already: a local folder, or a snapshot of its Hub repo in the
/// cache (no network: the memory estimate sizes what a run would load).
pub fn locate_cached(req: &Request) -> Result<PathBuf> {
    let spec = req.redux_model.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_REPO));
    if spec.is_dir() {
        return Ok(spec);
    }
    let id = hub::repo_id(&spec.to_string_lossy()).ok_or_else(|| Error::model(&spec, "not a folder or a repo id"))?;
    hub::cached_snapshot(&id, "image_encoder/config.json")
        .ok_or_else(|| Error::model(&spec, "not in the Hub cache (no image_encoder/)"))
}

/// Each Redux image's tokens with its weight.
pub fn embed(prior: &ReduxPrior, req: &Request, env: &Env) -> Result<Vec<(Tensor, f64)>> {
    req.redux
        .iter()
        .map(|r| {
            let img = image_io::load_rgb_as(&r.path, Role::Redux)?;
            Ok((prior.embed(&img)?.to_dtype(env.dtype)?, r.weight))
        })
        .collect()
}

/// The prompt's T5 tokens and pooled CLIP vector with the images joined in.
pub fn condition(txt: &Tensor, pooled: Option<&Tensor>, images: &[(Tensor, f64)]) -> Result<(Tensor, Option<Tensor>)> {
    if images.is_empty() {
        return Ok((txt.clone(), pooled.cloned()));
    }
    let mut sum_txt: Option<Tensor> = None;
    for (tokens, w) in images {
        let t = (Tensor::cat(&[txt, tokens], 1)? * *w)?;
        sum_txt = Some(match sum_txt {
            Some(s) => (s + t)?,
            None => t,
        });
    }
    let total: f64 = images.iter().map(|(_, w)| w).sum();
    let pooled = pooled.map(|p| p * total).transpose()?;
    Ok((sum_txt.expect("at least one image"), pooled))
}
