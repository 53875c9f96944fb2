//! FLUX.1 ControlNet as a mode (diffusers' `FluxControlNet*Pipeline`): the checks a ControlNet folder's config
//! must pass against the base transformer before any weight loads, the Union mode names, and which steps the
//! ControlNet acts on (`control_guidance_start`/`_end`); where a ControlNet is found; each step's summed
//! residuals ([`ControlStep`]). The model itself is [`crate::models::controlnet`].

use super::request::{Mode, Request};
use crate::config::{read_json, ControlNetConfig, TransformerConfig};
use crate::error::{Error, Result};
use crate::models::controlnet::{ControlInput, FluxControlNet};
use crate::models::hooks::Residuals;
use crate::models::transformer::Inputs;
use crate::source::hub;
use candle_core::Tensor;
use std::path::{Path, PathBuf};

/// What a ControlNet folder must hold (one safetensors file: the layout InstantX and Union checkpoints ship).
const HUB_FILES: [&str; 2] = ["config.json", "diffusion_pytorch_model.safetensors"];

/// A ControlNet the session loaded, by the folder it came from (several `--controlnet` of one Union folder share
/// it, as diffusers' multi-condition Union runs one model).
pub struct Loaded {
    pub dir: PathBuf,
    pub net: FluxControlNet,
}

/// One ControlNet's part in the edit in progress.
pub struct Active {
    /// The folder of its ControlNet among the loaded ones.
    pub dir: PathBuf,
    /// [1, S_img, C·4] its packed control latents; XLabs: [1, 3, H, W] the control image's pixels.
    pub cond: Tensor,
    /// An XLabs ControlNet (pixels in, residuals repeated over the main blocks).
    pub pixels: bool,
    /// Its block counts (double, single): several ControlNets' residuals sum over the shortest list.
    pub blocks: (usize, usize),
    pub mode: Option<usize>,
    pub scale: f64,
    pub start: f64,
    pub end: f64,
}

/// What the ControlNets of one step see: the prompt's conditioning only (with true CFG the negative pass reuses
/// the prompt's residuals, as diffusers does), the step's index among the `steps` that run.
pub struct ControlStep<'a> {
    pub nets: &'a [Loaded],
    pub active: &'a [Active],
    pub inputs: Inputs<'a>,
    pub k: usize,
    pub steps: usize,
}

impl ControlStep<'_> {
    /// The summed residuals of every ControlNet for latents `x` [1, S, C] at `t`; None when every one is outside
    /// its window this step (a zero residual: diffusers adds zeros).
    pub fn residuals(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Option<Residuals>> {
        let mut sum: Option<Residuals> = None;
        for a in self.active {
            let scale = a.scale * keep(self.k, self.steps, a.start, a.end);
            if scale == 0.0 {
                continue;
            }
            let net = self
                .nets
                .iter()
                .find(|l| l.dir == a.dir)
                .ok_or_else(|| candle_core::Error::Msg(format!("ControlNet {} was not loaded", a.dir.display())))?;
            let ctl = ControlInput { cond: &a.cond, mode: a.mode, scale };
            let r = net.net.forward(x, t, &self.inputs, &ctl)?;
            sum = Some(match sum {
                Some(s) => s.plus(&r)?,
                None => r,
            });
        }
        // Whether residuals repeat over the main blocks is the first ControlNet's way, as diffusers decides it.
        let repeat = self.active.first().is_some_and(|a| a.pixels);
        Ok(sum.map(|r| Residuals { repeat, ..self.shortest(r) }))
    }

    /// diffusers sums several ControlNets' lists pairwise (`zip`), so the sum is as long as the shortest.
    fn shortest(&self, mut r: Residuals) -> Residuals {
        if self.active.len() > 1 {
            let double = self.active.iter().map(|a| a.blocks.0).min().unwrap_or(0);
            let single = self.active.iter().map(|a| a.blocks.1).min().unwrap_or(0);
            r.double.truncate(double);
            r.single.truncate(single);
        }
        r
    }
}

/// Checks, before any weight loads, that the request's ControlNets fit the edit (the plan has refused Fill and
/// Control transformers already): not Kontext, no step cache (it would skip the blocks the residuals go to), no
/// `--mask-crop` (diffusers' control image is not cropped with the input), and each control image of the input's
/// aspect.
pub fn check_request(req: &Request, input: Option<(u32, u32)>, working: (u32, u32)) -> Result<()> {
    if req.controlnets.is_empty() {
        return Ok(());
    }
    let refuse = |why: &str| Err(Error::Usage(format!("--controlnet {why}")));
    if matches!(req.mode, Mode::Kontext { .. }) {
        return refuse(
            "does not go with Kontext; diffusers' ControlNet pipelines are text-to-image, img2img and inpainting",
        );
    }
    if let Some(c) = &req.cache {
        return refuse(&format!("does not go with --cache {c}: the cache skips the blocks its residuals go to"));
    }
    if req.mask().is_some_and(|m| m.crop_padding.is_some()) {
        return refuse("does not go with --mask-crop: the control image covers the whole picture");
    }
    for spec in &req.controlnets {
        super::control::check(&spec.image, input, working)?;
    }
    Ok(())
}

/// Checks each ControlNet's config against the base transformer when it is on disk already (a folder, or a Hub
/// snapshot in the cache); one that must be fetched is checked when it loads.
pub fn check_models(req: &Request, base: &TransformerConfig) -> Result<()> {
    for spec in &req.controlnets {
        let dir = cached_dir(&spec.model);
        if spec.model.is_dir() && !spec.model.join("config.json").is_file() {
            return Err(Error::model(
                &spec.model,
                "--controlnet: no config.json (a diffusers FluxControlNetModel folder)",
            ));
        }
        if !spec.model.is_dir() && hub::repo_id(&spec.model.to_string_lossy()).is_none() {
            return Err(Error::model(&spec.model, "--controlnet: not a folder or a Hub repo id"));
        }
        if let Some(dir) = dir {
            let file = dir.join("config.json");
            check_config(&read_config(&file)?, base, spec.mode.as_deref(), &file)?;
        }
    }
    Ok(())
}

/// The local folder of `--controlnet MODEL`: a folder, or a Hub repo id fetched with its weights.
pub fn locate(model: &Path) -> Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    let id = hub::repo_id(&model.to_string_lossy()).ok_or_else(|| {
        Error::model(model, "--controlnet: not a folder or a Hub repo id (a diffusers FluxControlNetModel)")
    })?;
    hub::snapshot(&id, &HUB_FILES, true)
}

/// The folder of `--controlnet MODEL` if it is on disk already (a folder, or a Hub snapshot in the cache): what
/// checks and estimates read without fetching.
pub fn cached_dir(model: &Path) -> Option<PathBuf> {
    match model.is_dir() {
        true => Some(model.to_path_buf()),
        false => hub::cached_snapshot(&hub::repo_id(&model.to_string_lossy())?, "config.json"),
    }
}

/// InstantX Union's control modes in `controlnet_mode_embedder` row order, as diffusers' docs list them.
pub const UNION_MODES: &[(&str, usize)] =
    &[("canny", 0), ("tile", 1), ("depth", 2), ("blur", 3), ("pose", 4), ("gray", 5), ("lq", 6)];

/// The row of a Union mode name.
pub fn mode_index(name: &str) -> Result<usize> {
    UNION_MODES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|&(_, i)| i).ok_or_else(|| {
        let names: Vec<&str> = UNION_MODES.iter().map(|(n, _)| *n).collect();
        Error::Usage(format!("unknown --control-mode {name:?}; choose one of {}", names.join(", ")))
    })
}

/// The conditioning-scale factor at step `i` of `steps`: 0 outside [start, end], as diffusers' `controlnet_keep`
/// (`1 − (i/n < start or (i+1)/n > end)`).
pub fn keep(i: usize, steps: usize, start: f64, end: f64) -> f64 {
    let n = steps as f64;
    if (i as f64) / n < start || (i as f64 + 1.0) / n > end {
        0.0
    } else {
        1.0
    }
}

/// Checks `--control-start`/`--control-end`.
pub fn check_window(start: f64, end: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&start) || !(0.0..=1.0).contains(&end) || start >= end {
        return Err(Error::Usage(format!(
            "--control-start {start} and --control-end {end}: give 0 <= start < end <= 1"
        )));
    }
    Ok(())
}

/// A ControlNet folder's `config.json`, refused in one line when it is not a FLUX.1 ControlNet's (an SD
/// `ControlNetModel`'s lacks the transformer fields, so its class is read first).
pub fn read_config(file: &Path) -> Result<ControlNetConfig> {
    #[derive(serde::Deserialize)]
    struct Class {
        #[serde(rename = "_class_name", default)]
        class_name: Option<String>,
    }
    let class: Class = read_json(file)?;
    match class.class_name.as_deref() {
        Some("FluxControlNetModel") => read_json(file),
        Some(other) => Err(Error::model(file, format!("is a {other}, not a FLUX.1 ControlNet (FluxControlNetModel)"))),
        None => Err(Error::model(file, "has no _class_name: not a diffusers FLUX.1 ControlNet (FluxControlNetModel)")),
    }
}

/// Checks a ControlNet's config (at `file`) against the base transformer's and the requested mode: a FLUX.1
/// InstantX-layout ControlNet of the base model's widths, with a mode exactly when it is a Union checkpoint.
pub fn check_config(cfg: &ControlNetConfig, base: &TransformerConfig, mode: Option<&str>, file: &Path) -> Result<()> {
    let class = cfg.base.class_name.as_deref().unwrap_or("");
    if class != "FluxControlNetModel" {
        let what = if class.is_empty() { "no _class_name".to_string() } else { format!("a {class}") };
        return Err(Error::model(file, format!("is {what}, not a FLUX.1 ControlNet (FluxControlNetModel)")));
    }
    if let Some(c) = cfg.conditioning_embedding_channels {
        let p = cfg.base.patch_size.max(1);
        if c * p * p != cfg.base.in_channels {
            return Err(Error::model(
                file,
                format!(
                    "embeds the control image in {c} channels in {p}x{p} patches, not the {} its controlnet_x_embedder \
                     takes",
                    cfg.base.in_channels
                ),
            ));
        }
    }
    let (c, b) = (&cfg.base, base);
    let widths = [
        ("inner width", c.inner_dim(), b.inner_dim()),
        ("attention_head_dim", c.attention_head_dim, b.attention_head_dim),
        ("in_channels", c.in_channels, b.in_channels),
        ("joint_attention_dim", c.joint_attention_dim, b.joint_attention_dim),
        ("pooled_projection_dim", c.pooled_projection_dim.unwrap_or(0), b.pooled_projection_dim.unwrap_or(0)),
    ];
    if let Some((what, got, want)) = widths.iter().find(|(_, got, want)| got != want) {
        return Err(Error::model(
            file,
            format!("has {what} {got}, the base model {want}: a ControlNet for another model"),
        ));
    }
    match (cfg.num_mode, mode) {
        (None, Some(m)) => {
            Err(Error::Usage(format!("--control-mode {m} needs a Union ControlNet; {} is not one", file.display())))
        }
        (Some(_), None) => Err(Error::Usage(format!(
            "{} is a Union ControlNet: give --control-mode (canny, tile, depth, blur, pose, gray or lq)",
            file.display()
        ))),
        (Some(n), Some(m)) if mode_index(m)? >= n => {
            Err(Error::Usage(format!("--control-mode {m} is beyond this Union ControlNet's {n} modes")))
        }
        _ => mode.map(mode_index).transpose().map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(p: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(p)
    }

    #[test]
    fn keep_matches_diffusers_window() {
        // diffusers with 10 steps, start 0.2, end 0.7: steps 2..=6 keep.
        let got: Vec<f64> = (0..10).map(|i| keep(i, 10, 0.2, 0.7)).collect();
        assert_eq!(got, [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]);
        assert!((0..7).all(|i| keep(i, 7, 0.0, 1.0) == 1.0));
        assert!(check_window(0.5, 0.5).is_err() && check_window(0.0, 1.0).is_ok());
    }

    #[test]
    fn mode_names() {
        assert_eq!(mode_index("depth").unwrap(), 2);
        assert_eq!(mode_index("LQ").unwrap(), 6);
        assert!(mode_index("seg").unwrap_err().one_line().contains("canny, tile"));
    }

    #[test]
    fn configs_checked_against_the_base_model() {
        let base: TransformerConfig = read_json(&fixture("tiny-dev/transformer/config.json")).unwrap();
        let plain = read_config(&fixture("tiny-controlnet/config.json")).unwrap();
        let union = read_config(&fixture("tiny-controlnet-union/config.json")).unwrap();
        // An SD ControlNet's config (or any other model's) is refused by its class.
        let sd_unet = read_config(&fixture("tiny-sd15/unet/config.json")).unwrap_err().one_line();
        assert!(sd_unet.contains("not a FLUX.1 ControlNet"), "{sd_unet}");
        let f = Path::new("config.json");
        assert!(check_config(&plain, &base, None, f).is_ok());
        assert!(check_config(&union, &base, Some("depth"), f).is_ok());
        let one_line = |r: Result<()>| r.unwrap_err().one_line();
        assert!(one_line(check_config(&plain, &base, Some("canny"), f)).contains("needs a Union ControlNet"));
        assert!(one_line(check_config(&union, &base, None, f)).contains("give --control-mode"));
        let mut sd = plain.clone();
        sd.base.class_name = Some("ControlNetModel".into());
        assert!(one_line(check_config(&sd, &base, None, f)).contains("not a FLUX.1 ControlNet"));
        let mut wide = plain.clone();
        wide.base.num_attention_heads *= 2;
        assert!(one_line(check_config(&wide, &base, None, f)).contains("another model"));
        let xlabs = read_config(&fixture("tiny-controlnet-xlabs/config.json")).unwrap();
        assert!(check_config(&xlabs, &base, None, f).is_ok());
        let mut narrow = xlabs.clone();
        narrow.conditioning_embedding_channels = Some(8);
        let e = one_line(check_config(&narrow, &base, None, f));
        assert!(
            e.contains(
                "embeds the control image in 8 channels in 2x2 patches, not the 64 its controlnet_x_embedder takes"
            ),
            "{e}"
        );
    }
}

#[cfg(test)]
mod load_tests {
    use crate::config::{read_json, TransformerConfig};
    use candle_core::{DType, Device};
    use std::path::Path;

    #[test]
    fn loads_fixture_controlnets_and_refuses_a_mismatched_base() {
        let fx = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let base: TransformerConfig = read_json(&fx.join("tiny-dev/transformer/config.json")).unwrap();
        let load = |name: &str, base: &TransformerConfig, mode| {
            crate::engine::load::controlnet(&fx.join(name), base, mode, DType::F32, &Device::Cpu)
        };
        assert!(!load("tiny-controlnet", &base, None).unwrap().is_union());
        assert!(load("tiny-controlnet-union", &base, Some("pose")).unwrap().is_union());
        assert!(load("tiny-controlnet-xlabs", &base, None).unwrap().takes_pixels());
        let mut other = base.clone();
        other.joint_attention_dim *= 2;
        let e = load("tiny-controlnet", &other, None).err().unwrap().one_line();
        assert!(e.contains("joint_attention_dim") && !e.contains('\n'), "{e}");
    }
}
