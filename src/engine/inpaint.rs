//! Inpainting, as `FluxInpaintPipeline`: the mask file → a binary mask at the working size and on the latent grid;
//! after every Euler step the unmasked latents are put back (noised to the next sigma); at the end the result is
//! composed over the input where asked (diffusers' `padding_mask_crop` overlay, or our feathered paste-back).
//! Outpainting's mask is made here from its geometry; its result always comes back over the canvas.

use super::request::{Mask, MaskSource};
use super::{edit, Plan};
use crate::error::{Error, Result};
use crate::image_io::outpaint::{self, Outpaint};
use crate::image_io::{self, mask, mask::Region, ResizeMode};
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};
use std::path::Path;

/// Radius (px) of the seam `--paste-back` feathers inside the mask.
const FEATHER: f32 = 4.0;

/// A mask made ready for one edit.
pub struct PreparedMask {
    /// Binary at the working size: 255 = repaint.
    pub working: GrayImage,
    /// At the input's size, after inverting and blurring (what the overlay and paste-back use).
    pub original: GrayImage,
    /// `--mask-crop`: the input region that is edited.
    pub region: Option<Region>,
}

/// Loads, checks and prepares the mask for an input of `input`'s size; remarks go to `warnings`.
pub fn prepare(
    spec: &Mask,
    image: &Path,
    input: &RgbImage,
    plan: &Plan,
    warnings: &mut Vec<String>,
) -> Result<PreparedMask> {
    let (path, mut m) = match &spec.source {
        MaskSource::File(p) => (p.as_path(), mask::load(p, false)?),
        MaskSource::Alpha => (image, mask::load(image, true)?),
        MaskSource::Outpaint(o) => return outpaint_mask(o, image, input, plan),
    };
    m = fit_mask_size(m, input.dimensions(), path, warnings)?;
    if spec.invert {
        mask::invert(&mut m);
    }
    // Emptiness is the user's mask's, before any blur: a wide blur can thin it below the threshold everywhere,
    // which is a different problem with a different fix.
    if !mask::any(&mask::binarize(&mask::luma(&m))) {
        return Err(empty(path));
    }
    if spec.blur > 0.0 {
        m = mask::gaussian_blur(&m, spec.blur);
    }
    let original = mask::luma(&m);
    let region = match spec.crop_padding {
        Some(pad) => {
            Some(mask::crop_region(&original, plan.width, plan.height, pad).ok_or_else(|| blurred_away(path, spec))?)
        }
        None => None,
    };
    let working = match region {
        Some(r) => mask::binarize(&mask::luma(&mask::resize_and_fill(&mask::crop(&m, r), plan.width, plan.height))),
        None => mask::binarize(&mask::luma(&edit::fit_to_plan(m, plan))),
    };
    if !mask::any(&working) {
        return Err(if spec.blur > 0.0 { blurred_away(path, spec) } else { empty(path) });
    }
    Ok(PreparedMask { working, original, region })
}

/// Outpainting's mask over the canvas `input` (the picture at `image` grown): soft at the seam for the result's
/// composition, binarized at the working size for the model like any mask.
fn outpaint_mask(o: &Outpaint, image: &Path, input: &RgbImage, plan: &Plan) -> Result<PreparedMask> {
    let size = image_io::dimensions(image)?;
    let original = outpaint::mask(size, &o.placement_on(size, input.dimensions()), o.feather);
    let working = mask::binarize(&mask::luma(&edit::fit_to_plan(mask::grey_to_rgb(&original), plan)));
    Ok(PreparedMask { working, original, region: None })
}

fn empty(path: &Path) -> Error {
    Error::image_as(
        crate::image_io::Role::Mask,
        path,
        "the mask is empty (black everywhere at the working size): nothing would change; white marks what to repaint \
         (--invert-mask swaps)",
    )
}

fn blurred_away(path: &Path, spec: &Mask) -> Error {
    Error::image_as(
        crate::image_io::Role::Mask,
        path,
        format!(
            "--mask-blur {} spreads the mask so thin that no pixel stays white (≥ 128) at the working size: nothing \
             would be repainted; use a smaller --mask-blur",
            spec.blur
        ),
    )
}

/// A mask of another size is resized to the input's (with a warning) if it has the same aspect ratio.
fn fit_mask_size(m: RgbImage, size: (u32, u32), path: &Path, warnings: &mut Vec<String>) -> Result<RgbImage> {
    let (mw, mh) = m.dimensions();
    if (mw, mh) == size {
        return Ok(m);
    }
    if mw as u64 * size.1 as u64 != mh as u64 * size.0 as u64 {
        return Err(Error::image_as(
            crate::image_io::Role::Mask,
            path,
            format!(
                "the mask is {mw}x{mh} but the input is {}x{} (another aspect ratio); give a mask of the input's size",
                size.0, size.1
            ),
        ));
    }
    warnings.push(format!("mask {} is {mw}x{mh}, the input {}x{}: resized to fit", path.display(), size.0, size.1));
    Ok(image_io::resize_lanczos(&m, size.0, size.1))
}

/// The input as the model sees it: the crop region fill-resized (`--mask-crop`), else as for img2img.
pub fn model_input(input: RgbImage, plan: &Plan, m: &PreparedMask) -> RgbImage {
    match m.region {
        Some(r) => mask::resize_and_fill(&mask::crop(&input, r), plan.width, plan.height),
        None => edit::fit_to_plan(input, plan),
    }
}

/// The mask on the packed latent grid [1, N, 4C]: the top-left pixel of each `scale`×`scale` block (torch's
/// nearest interpolation at an exact factor), the same for every channel.
pub fn latent_mask(
    m: &GrayImage,
    scale: u32,
    channels: usize,
    dtype: DType,
    dev: &Device,
) -> candle_core::Result<Tensor> {
    let (h, w) = ((m.height() / scale) as usize, (m.width() / scale) as usize);
    let grid: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| if m.get_pixel(x as u32 * scale, y as u32 * scale).0[0] >= 128 { 1.0 } else { 0.0 })
        .collect();
    let grid = Tensor::from_vec(grid, (1, 1, h, w), dev)?.repeat((1, channels, 1, 1))?;
    edit::pack(&grid)?.to_dtype(dtype)
}

/// The per-step blend: `(1 − m)·x₀(σ_next) + m·x`, where x₀(σ) is the clean input latents noised with the run's
/// noise (the clean latents themselves after the last step).
pub struct Blend {
    pub mask: Tensor,
    pub noise: Tensor,
    pub clean: Tensor,
}

impl Blend {
    pub fn apply(&self, x: &Tensor, next_sigma: Option<f32>) -> candle_core::Result<Tensor> {
        let kept = match next_sigma {
            Some(s) => edit::noise_to(&self.clean, &self.noise, s)?,
            None => self.clean.clone(),
        };
        let keep = self.mask.affine(-1.0, 1.0)?;
        (keep * kept)? + (&self.mask * x)?
    }
}

/// The result put back over the input: diffusers' overlay of the edited region (`--mask-crop`), our feathered
/// paste-back (pixels outside the mask are the input's), or the edit as it is.
pub fn compose(edited: RgbImage, input: &RgbImage, plan: &Plan, spec: &Mask, m: &PreparedMask) -> Result<RgbImage> {
    if let Some((x1, y1, x2, y2)) = m.region {
        let part = mask::resize_and_crop(&edited, x2 - x1, y2 - y1);
        let mut canvas = RgbImage::new(input.width(), input.height());
        image::imageops::replace(&mut canvas, &part, x1 as i64, y1 as i64);
        return Ok(mask::overlay(input, &canvas, &m.original));
    }
    if let MaskSource::Outpaint(_) = spec.source {
        // The canvas's input pixels come back exactly wherever the soft seam mask is 0.
        let (w, h) = input.dimensions();
        let edited = if edited.dimensions() == (w, h) { edited } else { image_io::resize_lanczos(&edited, w, h) };
        return Ok(mask::overlay(input, &edited, &m.original));
    }
    if !spec.paste_back {
        return Ok(edited);
    }
    let (x, y, w, h) = match plan.resize {
        ResizeMode::Crop => image_io::center_crop_box(input.width(), input.height(), plan.width, plan.height),
        ResizeMode::Pad => {
            return Err(Error::Usage("--paste-back does not work with --resize pad; use crop, fit or stretch".into()))
        }
        _ => (0, 0, input.width(), input.height()),
    };
    let mut canvas = input.clone();
    image::imageops::replace(&mut canvas, &image_io::resize_lanczos(&edited, w, h), x as i64, y as i64);
    Ok(mask::overlay(input, &canvas, &feathered(&m.original)))
}

/// The binary mask softened inward: zero wherever the mask is, so those pixels stay exactly the input's.
fn feathered(original: &GrayImage) -> GrayImage {
    let bin = mask::binarize(original);
    let soft = mask::luma(&mask::gaussian_blur(&mask::grey_to_rgb(&bin), FEATHER));
    GrayImage::from_fn(bin.width(), bin.height(), |x, y| {
        image::Luma([bin.get_pixel(x, y).0[0].min(soft.get_pixel(x, y).0[0])])
    })
}
