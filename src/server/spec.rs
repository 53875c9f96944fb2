//! A remote job's JSON (the manifest row's field names, images as base64) → one checked batch [`Item`], built by
//! the CLI's own expansion (`Args` → `into_batch`) so a job and the same command line give the same request.
//! Takes the body and the server's limits; gives the item, with the uploads written into the job's private folder.
//! Remote requests never name server files: images come in the body, models and LoRAs by configured name only.

use crate::batch::Item;
use crate::cli::Args;
use base64::Engine as _;
use clap::Parser;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// What a job may set: a manifest row's fields plus the few flags that shape one edit.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub true_cfg: Option<f64>,
    pub strength: Option<f64>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// The input picture, base64 (a `data:` URL prefix is accepted); absent: text-to-image.
    pub image: Option<String>,
    /// The inpainting mask, base64, or `alpha` (the input's transparency).
    pub mask: Option<String>,
    #[serde(default)]
    pub invert_mask: bool,
    pub mask_blur: Option<f32>,
    #[serde(default)]
    pub keep_size: bool,
    /// One of the server's `--model` values (the first when absent).
    pub model: Option<String>,
    /// LoRA names from the server's `--lora-dir`, `NAME[:WEIGHT]`.
    #[serde(default)]
    pub lora: Vec<String>,
    /// The control image of a Control model, control LoRA or ControlNet: base64, or `canny` / `depth` to derive
    /// it from the input.
    pub control: Option<String>,
    /// One of the server's `--controlnet` values, with its settings as the CLI's flags take them.
    pub controlnet: Option<String>,
    pub control_mode: Option<String>,
    pub control_scale: Option<f64>,
    pub control_start: Option<f64>,
    pub control_end: Option<f64>,
    /// `"control": "canny"`: the hysteresis thresholds (the CLI's defaults when absent).
    pub canny_low: Option<f32>,
    pub canny_high: Option<f32>,
    /// Names recorded in the PNG for the uploads (base names only), as the CLI records the paths it was given.
    pub image_name: Option<String>,
    pub mask_name: Option<String>,
    pub control_name: Option<String>,
    /// Send a `preview` event (a small PNG of the picture so far) every N denoising steps; each costs a VAE decode.
    pub preview_every: Option<usize>,
}

/// What the server allows and where jobs run.
#[derive(Debug, Clone)]
pub struct Limits {
    pub models: Vec<String>,
    pub lora_dir: Option<PathBuf>,
    /// ControlNets jobs may name; the depth model of `"control": "depth"`.
    pub controlnets: Vec<String>,
    pub depth_model: Option<String>,
    pub max_pixels: u64,
    pub device: String,
    pub dtype: Option<String>,
}

/// A request the server refuses: the message for the client (HTTP 400 or 413).
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub msg: String,
}

fn bad(msg: impl Into<String>) -> Refusal {
    Refusal { status: 400, msg: msg.into() }
}

/// A checked job: the item (paths inside `dir`) and the names its PNG records instead of those paths.
pub struct Built {
    pub item: Item,
    pub model: String,
    pub image_name: Option<String>,
    pub mask_name: Option<String>,
    pub control_name: Option<String>,
    pub preview_every: Option<usize>,
}

impl JobSpec {
    /// Writes the uploads into `dir` and expands the job as the CLI would.
    pub fn build(&self, dir: &Path, limits: &Limits) -> Result<Built, Refusal> {
        let model = self.model(limits)?;
        let mut argv: Vec<String> = vec!["flux-img2img".into(), format!("--model={model}")];
        argv.push(format!("--device={}", limits.device));
        if let Some(d) = &limits.dtype {
            argv.push(format!("--dtype={d}"));
        }
        let prompt = self.prompt.as_deref().ok_or_else(|| bad("`prompt` is required"))?;
        argv.push(format!("--prompt={prompt}"));
        self.scalars(&mut argv);
        let image_name = match &self.image {
            Some(b64) => {
                let path = upload(b64, dir, "input", "image", limits.max_pixels)?;
                argv.push(format!("--image={}", path.display()));
                Some(base_name(self.image_name.as_deref(), &path)?)
            }
            None => None,
        };
        let mask_name = match self.mask.as_deref() {
            Some("alpha") => {
                argv.push("--mask=alpha".into());
                None
            }
            Some(b64) => {
                let path = upload(b64, dir, "mask", "mask", limits.max_pixels)?;
                argv.push(format!("--mask={}", path.display()));
                Some(base_name(self.mask_name.as_deref(), &path)?)
            }
            None => None,
        };
        for l in &self.lora {
            argv.push(format!("--lora={}", lora_path(l, limits)?));
        }
        let control_name = self.control_args(dir, limits, &mut argv)?;
        argv.push(format!("--output={}", dir.join("out.png").display()));
        let args = Args::try_parse_from(&argv).map_err(|e| bad(first_line(&e.to_string())))?;
        let batch = args.into_batch().map_err(|e| bad(e.one_line()))?;
        let [item] = <[Item; 1]>::try_from(batch.items).map_err(|_| bad("a job makes exactly one image"))?;
        if self.preview_every == Some(0) {
            return Err(bad("`preview_every` counts steps: give 1 or more (or leave it out)"));
        }
        Ok(Built { item, model, image_name, mask_name, control_name, preview_every: self.preview_every })
    }

    /// The control image (an upload, or derived from the input) and a served ControlNet with its settings, as
    /// flags; gives the name the PNG records for an uploaded control image.
    fn control_args(&self, dir: &Path, limits: &Limits, argv: &mut Vec<String>) -> Result<Option<String>, Refusal> {
        if let Some(net) = &self.controlnet {
            if !limits.controlnets.contains(net) {
                return Err(bad(format!(
                    "ControlNet {net:?} is not served here; use one of {:?} (the server's --controlnet values)",
                    limits.controlnets
                )));
            }
            argv.push(format!("--controlnet={net}"));
        }
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                argv.push(format!("--{flag}={v}"));
            }
        };
        push("control-mode", self.control_mode.clone());
        push("control-scale", self.control_scale.map(|v| v.to_string()));
        push("control-start", self.control_start.map(|v| v.to_string()));
        push("control-end", self.control_end.map(|v| v.to_string()));
        push("canny-low", self.canny_low.map(|v| v.to_string()));
        push("canny-high", self.canny_high.map(|v| v.to_string()));
        match self.control.as_deref() {
            None => Ok(None),
            Some("canny") => {
                argv.push("--control-from=canny".into());
                Ok(None)
            }
            Some("depth") => {
                argv.push("--control-from=depth".into());
                if let Some(m) = &limits.depth_model {
                    argv.push(format!("--depth-model={m}"));
                }
                Ok(None)
            }
            Some(b64) => {
                let path = upload(b64, dir, "control", "control image", limits.max_pixels)?;
                argv.push(format!("--control={}", path.display()));
                Ok(Some(base_name(self.control_name.as_deref(), &path)?))
            }
        }
    }

    fn model(&self, limits: &Limits) -> Result<String, Refusal> {
        match &self.model {
            None => Ok(limits.models[0].clone()),
            Some(m) if limits.models.contains(m) => Ok(m.clone()),
            Some(m) => Err(bad(format!(
                "model {m:?} is not served here; use one of {:?} (GET /sdapi/v1/sd-models lists them)",
                limits.models
            ))),
        }
    }

    /// The numeric and switch fields as flags (`--flag=value`, so no value is read as a flag).
    fn scalars(&self, argv: &mut Vec<String>) {
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                argv.push(format!("--{flag}={v}"));
            }
        };
        push("negative-prompt", self.negative_prompt.clone());
        push("true-cfg", self.true_cfg.map(|v| v.to_string()));
        push("strength", self.strength.map(|v| v.to_string()));
        push("seed", self.seed.map(|v| v.to_string()));
        push("steps", self.steps.map(|v| v.to_string()));
        push("guidance", self.guidance.map(|v| v.to_string()));
        push("width", self.width.map(|v| v.to_string()));
        push("height", self.height.map(|v| v.to_string()));
        push("mask-blur", self.mask_blur.map(|v| v.to_string()));
        if self.invert_mask {
            argv.push("--invert-mask".into());
        }
        if self.keep_size {
            argv.push("--keep-size".into());
        }
    }
}

/// clap's message without its usage block.
fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).trim_start_matches("error: ").to_string()
}

/// A LoRA name from `--lora-dir` (no separators, no `..`): its file there.
fn lora_path(spec: &str, limits: &Limits) -> Result<String, Refusal> {
    let Some(dir) = &limits.lora_dir else {
        return Err(bad("this server has no --lora-dir: LoRAs cannot be asked for"));
    };
    let (name, weight) = match spec.rsplit_once(':') {
        Some((n, w)) if w.parse::<f64>().is_ok() => (n, Some(w)),
        _ => (spec, None),
    };
    if !safe_name(name) {
        return Err(bad(format!("LoRA {name:?}: give a file name from the server's LoRA folder, not a path")));
    }
    let file = dir.join(name);
    if !file.is_file() {
        return Err(bad(format!("LoRA {name:?} is not in the server's LoRA folder")));
    }
    Ok(match weight {
        Some(w) => format!("{}:{w}", file.display()),
        None => file.display().to_string(),
    })
}

/// A plain file name: no folder part, no `..`, nothing hidden.
pub fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0', ':'])
        && Path::new(name).file_name().is_some_and(|f| f == name)
}

/// The name recorded for an upload: the client's base name, or the file's own.
fn base_name(given: Option<&str>, path: &Path) -> Result<String, Refusal> {
    match given {
        Some(n) if safe_name(n) => Ok(n.to_string()),
        Some(n) => Err(bad(format!("{n:?}: upload names are plain file names, never paths"))),
        None => Ok(path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()),
    }
}

/// Decodes a base64 upload, checks it is an image within the pixel limit, writes it as `stem.<format>`.
fn upload(b64: &str, dir: &Path, stem: &str, field: &str, max_pixels: u64) -> Result<PathBuf, Refusal> {
    let bytes = decode_b64(b64).map_err(|e| bad(format!("`{field}`: not base64 ({e}); send the file's bytes")))?;
    check_image(&bytes, field, max_pixels)?;
    let ext = image::guess_format(&bytes).ok().and_then(|f| f.extensions_str().first().copied()).unwrap_or("png");
    let path = dir.join(format!("{stem}.{ext}"));
    std::fs::write(&path, &bytes).map_err(|e| Refusal { status: 500, msg: format!("cannot store the upload: {e}") })?;
    Ok(path)
}

/// Base64 (standard alphabet), with or without a `data:...;base64,` prefix.
pub fn decode_b64(s: &str) -> Result<Vec<u8>, base64::DecodeError> {
    let s = s.split_once(";base64,").map_or(s, |(_, b)| b);
    let s: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::engine::general_purpose::STANDARD.decode(s)
}

/// An image whose header says it has at most `max_pixels` (checked before decoding anything).
pub fn check_image(bytes: &[u8], field: &str, max_pixels: u64) -> Result<(), Refusal> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| bad(format!("`{field}`: {e}")))?;
    if reader.format().is_none() {
        return Err(bad(format!("`{field}`: not an image (PNG, JPEG, WebP, BMP, TIFF or GIF)")));
    }
    let (w, h) = reader.into_dimensions().map_err(|e| bad(format!("`{field}`: cannot read its header ({e})")))?;
    if w as u64 * h as u64 > max_pixels {
        return Err(Refusal {
            status: 413,
            msg: format!("`{field}` is {w}x{h}, over this server's {max_pixels}-pixel limit (--max-pixels)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_paths_are_refused() {
        for n in ["../x.png", "/etc/passwd", "a/b.png", "..", ".hidden", "a\\b", "", "c:x"] {
            assert!(!safe_name(n), "{n:?} accepted");
        }
        assert!(safe_name("cat photo.png"));
    }

    #[test]
    fn data_urls_decode() {
        assert_eq!(decode_b64("data:image/png;base64,aGk=").unwrap(), b"hi");
        assert_eq!(decode_b64("aG\nk=").unwrap(), b"hi");
    }
}
