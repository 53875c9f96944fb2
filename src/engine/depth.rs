//! `--control-from depth`: takes the input picture and the request's Depth Anything model (a folder, or a Hub id
//! fetched once); gives its depth map as transformers' `pipeline("depth-estimation")` draws it (grey, at the
//! picture's own size), the model loaded on first use and kept for the batch. The network is
//! [`crate::models::depth_anything`].

use super::family::Env;
use super::request::Request;
use crate::error::{Error, Result};
use crate::models::depth_anything::DepthAnything;
use crate::source::hub;
use image::RgbImage;
use std::path::{Path, PathBuf};

/// The depth model when the request names none: Depth Anything V2 Large in transformers' layout.
pub const DEFAULT_REPO: &str = "depth-anything/Depth-Anything-V2-Large-hf";

/// What a Depth Anything folder holds (preprocessor_config.json is optional: V2's defaults apply without it).
const FILES: [&str; 2] = ["config.json", "model.safetensors"];

/// The depth model of the session, by the `--depth-model` value it came from (located once).
#[derive(Default)]
pub struct DepthMaps {
    loaded: Option<(Option<PathBuf>, DepthAnything)>,
}

impl DepthMaps {
    /// The depth map of `img` by the request's model.
    pub fn map(&mut self, req: &Request, img: &RgbImage, env: &Env) -> Result<RgbImage> {
        if self.loaded.as_ref().is_none_or(|(spec, _)| *spec != req.depth_model) {
            let dir = locate(req.depth_model.as_deref())?;
            env.note(&format!("depth model {} loading", dir.display()));
            self.loaded = Some((req.depth_model.clone(), DepthAnything::load(&dir, env.dtype, env.device)?));
        }
        let (_, model) = self.loaded.as_ref().expect("loaded above");
        model.depth_map(img)
    }
}

/// Checks, before any weight loads, that a local `--depth-model` folder has a config.
pub fn check(model: Option<&Path>) -> Result<()> {
    match model.filter(|m| m.is_dir()) {
        Some(dir) if !dir.join("config.json").is_file() => Err(Error::model(
            dir,
            "--depth-model: no config.json (a Depth Anything folder in transformers' layout: config.json, \
             model.safetensors)",
        )),
        Some(_) => Ok(()),
        None => match model.map(|m| hub::repo_id(&m.to_string_lossy())) {
            Some(None) => {
                Err(Error::model(model.unwrap_or(Path::new("")), "--depth-model: not a folder or a Hub repo id"))
            }
            _ => Ok(()),
        },
    }
}

/// The local folder of the depth model (fetched from the Hub when it names a repo).
pub fn locate(model: Option<&Path>) -> Result<PathBuf> {
    let spec = model.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_REPO));
    if spec.is_dir() {
        return Ok(spec);
    }
    let id = hub::repo_id(&spec.to_string_lossy())
        .ok_or_else(|| Error::model(&spec, "--depth-model: not a folder or a Hub repo id"))?;
    let dir = hub::snapshot(&id, &FILES, true)?;
    // The processor's settings when the repo has them (fetched alongside; V2's defaults otherwise).
    let _ = hub::snapshot(&id, &["preprocessor_config.json"], false);
    Ok(dir)
}

/// The depth model's folder if it is on disk already (a local folder, or a cached Hub snapshot).
pub fn locate_cached(model: Option<&Path>) -> Option<PathBuf> {
    let spec = model.map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(DEFAULT_REPO));
    if spec.is_dir() {
        return Some(spec);
    }
    hub::cached_snapshot(&hub::repo_id(&spec.to_string_lossy())?, "model.safetensors")
}
