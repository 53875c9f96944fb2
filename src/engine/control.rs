//! The control image of FLUX.1 Control transformers (`FluxControl*Pipeline`) and ControlNets: takes a control
//! source (a file, Canny edges or the depth map of the input) and gives it at the working size, prepared the way
//! the input is (cropped to the working aspect, resized with Lanczos), so edges stay where the input's edges are.

use super::depth::DepthMaps;
use super::family::Env;
use super::request::{ControlSource, Request};
use super::{edit, Plan};
use crate::error::{Error, Result};
use crate::image_io::{self, canny, Role};
use image::RgbImage;
use std::path::Path;

/// How far a control image's aspect may be from the input's (rounding of sizes) before it is refused.
const ASPECT_SLACK: f64 = 0.01;

/// Checks, before any weight loads, that a control file has the aspect of the input (or of the `working` size of
/// text-to-image), and that Canny has an input to find edges in.
pub fn check(source: &ControlSource, input: Option<(u32, u32)>, working: (u32, u32)) -> Result<()> {
    let path = match (source, input) {
        (ControlSource::File(path), _) => path,
        (ControlSource::Canny { .. } | ControlSource::Depth, Some(_)) => return Ok(()),
        (derived, None) => return Err(needs_input(derived)),
    };
    let target = input.unwrap_or(working);
    let (w, h) = image_io::dimensions_as(path, Role::Control)?;
    if !same_aspect((w, h), target) {
        return Err(Error::image_as(
            Role::Control,
            path,
            format!(
                "is {w}x{h}, another aspect than the {}x{} it controls; give a control image of that aspect (it is \
                 resized, not cropped)",
                target.0, target.1
            ),
        ));
    }
    Ok(())
}

/// A control image derived from an input that the edit does not have.
fn needs_input(source: &ControlSource) -> Error {
    let words = source.words();
    let name = words.split(':').next().unwrap_or_default();
    Error::Usage(format!("--control-from {name} needs an input image (--image)"))
}

fn same_aspect(a: (u32, u32), b: (u32, u32)) -> bool {
    let (ra, rb) = (a.0 as f64 / a.1 as f64, b.0 as f64 / b.1 as f64);
    (ra / rb - 1.0).abs() <= ASPECT_SLACK
}

/// The control image at the working size.
pub fn image(
    req: &Request,
    input: Option<&RgbImage>,
    plan: &Plan,
    env: &Env,
    depth: &mut DepthMaps,
) -> Result<RgbImage> {
    let source = req.control.as_ref().ok_or_else(|| {
        Error::Usage("this is a FLUX.1 Control model: give --control IMAGE or --control-from canny|depth".into())
    })?;
    image_of(source, req, input, plan, env, depth)
}

/// The control image `source` gives, at the working size (a FLUX.1 Control transformer's, or a ControlNet's).
pub fn image_of(
    source: &ControlSource,
    req: &Request,
    input: Option<&RgbImage>,
    plan: &Plan,
    env: &Env,
    depth: &mut DepthMaps,
) -> Result<RgbImage> {
    let input_of = || input.ok_or_else(|| needs_input(source));
    let img = match source {
        ControlSource::File(path) => load(path, input, plan, env)?,
        ControlSource::Canny { low, high } => canny::edges(input_of()?, *low, *high),
        ControlSource::Depth => depth.map(req, input_of()?, env)?,
    };
    Ok(match input {
        Some(_) => edit::fit_to_plan(img, plan),
        None if img.dimensions() != (plan.width, plan.height) => {
            image_io::resize_lanczos(&img, plan.width, plan.height)
        }
        None => img,
    })
}

/// A control file, with a warning when its size is not the input's (it is brought to the working size as the
/// input is).
fn load(path: &Path, input: Option<&RgbImage>, plan: &Plan, env: &Env) -> Result<RgbImage> {
    let img = image_io::load_rgb_as(path, Role::Control)?;
    let target = input.map(RgbImage::dimensions).unwrap_or((plan.width, plan.height));
    if img.dimensions() != target {
        let (w, h) = img.dimensions();
        env.warn(&format!("control image {} is {w}x{h}, not {}x{}: resized", path.display(), target.0, target.1));
    }
    Ok(img)
}
