//! The FLUX.2 half of the FLUX family: conditioning images and the start latents of each klein mode, and the way
//! back from tokens to pixels. The numerics are [`crate::engine::flux2`]'s; this part loads pictures and runs the
//! VAE.

use super::{Edit, Flux, Staged};
use crate::config::Family;
use crate::engine::family::Env;
use crate::engine::flux2::{self as f2, BnStats};
use crate::engine::request::{Mode, Request};
use crate::engine::{edit, inpaint, Plan};
use crate::error::{Error, Result};
use crate::image_io::{self, Role};
use crate::rng;
use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use std::path::Path;

/// diffusers' `check_image_input`: conditioning images need a shortest side of 64 and an aspect ratio within 8:1.
fn check_conditioning_size(path: &Path, (w, h): (u32, u32), role: Role) -> Result<()> {
    if w.min(h) < 64 {
        return Err(Error::image_as(
            role,
            path,
            format!("is {w}x{h}; FLUX.2 reference images need both sides ≥ 64 pixels"),
        ));
    }
    if w.max(h) as f64 / w.min(h) as f64 > 8.0 {
        return Err(Error::image_as(
            role,
            path,
            format!("is {w}x{h}; FLUX.2 reference images need an aspect ratio within 8:1"),
        ));
    }
    Ok(())
}

impl Flux {
    /// FLUX.2: the original sizes of `req`'s references (read from their headers), each checked as diffusers does,
    /// and the input's when the mode makes it a conditioning image (reference editing). FLUX.1: none are read.
    pub(super) fn reference_sizes(&self, req: &Request, input: Option<(u32, u32)>) -> Result<Vec<(u32, u32)>> {
        if self.configs.family != Family::Flux2 {
            return Ok(Vec::new());
        }
        // Only reference editing makes the input a conditioning image: the inpainting pipeline (our img2img and
        // inpaint modes) takes any input its size multiple fits.
        if let (Mode::Reference { image }, Some(size)) = (&req.mode, input) {
            check_conditioning_size(image, size, Role::Input)?;
        }
        req.references
            .iter()
            .map(|p| {
                let size = image_io::dimensions_as(p, Role::Reference)?;
                check_conditioning_size(p, size, Role::Reference)?;
                Ok(size)
            })
            .collect()
    }

    /// The VAE's batch-norm statistics (FLUX.2), loaded with the VAE.
    fn bn(&mut self, env: &Env) -> Result<&BnStats> {
        self.vae(env)?;
        self.bn.as_ref().ok_or_else(|| Error::Usage("this VAE has no batch-norm statistics (not FLUX.2)".into()))
    }

    /// Normalised patchified latents of a prepared picture (its posterior mean: klein draws no noise here).
    fn latents(&mut self, env: &Env, img: &RgbImage) -> Result<Tensor> {
        let (mean, _) = self.posterior(env, img)?;
        Ok(f2::latents_of(&mean, self.bn(env)?)?)
    }

    /// Start latents, conditioning tokens and (inpainting) the mask, as the klein pipelines prepare them.
    pub(super) fn stage_flux2(
        &mut self,
        env: &Env,
        req: &Request,
        input: Option<RgbImage>,
        plan: &Plan,
    ) -> Result<Staged> {
        let (dtype, dev) = (env.dtype, env.device);
        let mut gen = rng::generator(&req.rng, plan.seed, plan.rng_gpu.unwrap_or(rng::CudaGeometry::H100));
        let multiple = self.configs.vae.size_multiple();
        let c = 4 * self.configs.vae.latent_channels;
        let (h, w) = ((plan.height / multiple) as usize, (plan.width / multiple) as usize);
        let mut conditioning = Vec::new();
        let (start, mask, kept_input) = match (&req.mode, input) {
            (Mode::Inpaint { .. } | Mode::Img2Img { .. }, Some(input)) => {
                let clean = self.latents(env, &f2::prepare_source(input.clone(), multiple))?;
                let noise = f2::noise(gen.as_mut(), (c, h, w), dtype, dev)?;
                let x = edit::noise_to(&clean, &noise, plan.schedule.start_sigma())?;
                let mask = match (&req.mode, req.image()) {
                    (Mode::Inpaint { mask, .. }, Some(image)) => {
                        let mut warnings = Vec::new();
                        let m = inpaint::prepare(mask, image, &input, plan, &mut warnings)?;
                        warnings.iter().for_each(|w| env.warn(w));
                        Some(m)
                    }
                    _ => None,
                };
                let packed = f2::pack(&x)?;
                let start = edit::Start {
                    packed,
                    channels: c,
                    height: h,
                    width: w,
                    noise: Some(f2::pack(&noise)?),
                    clean: Some(f2::pack(&clean)?),
                };
                // The source itself is the first conditioning image.
                conditioning.push(clean);
                (start, mask, Some(input))
            }
            (Mode::Reference { .. }, Some(input)) => {
                conditioning.push(self.latents(env, &f2::prepare_reference(input, multiple))?);
                (pure_noise(gen.as_mut(), (c, h, w), dtype, dev)?, None, None)
            }
            (Mode::Txt2Img, _) => (pure_noise(gen.as_mut(), (c, h, w), dtype, dev)?, None, None),
            (mode, _) => return Err(Error::Usage(format!("{} needs an input image", mode.name()))),
        };
        for path in &req.references {
            let img = f2::prepare_reference(image_io::load_rgb_as(path, Role::Reference)?, multiple);
            conditioning.push(self.latents(env, &img)?);
        }
        let reference = if conditioning.is_empty() {
            None
        } else {
            let (tokens, ids) = f2::reference_tokens(&conditioning)?;
            Some(edit::Reference { tokens, ids })
        };
        Ok(Staged { start, mask, input: kept_input, reference, channels: None, controls: Vec::new() })
    }

    /// Denoised tokens of an `height`×`width` token grid → un-normalised, unpatchified latents → pixels.
    pub(super) fn decode_flux2(
        &mut self,
        env: &Env,
        latents: &Tensor,
        height: usize,
        width: usize,
    ) -> Result<RgbImage> {
        let z = f2::unpack(latents, height, width)?;
        let z = f2::unpatchify(&self.bn(env)?.denormalise(&z)?)?;
        let decoded = self.vae(env)?.decode(&z)?;
        edit::ensure_finite(&decoded, "VAE decoding", super::VAE_CAUSE)?;
        image_io::from_tensor(&decoded)
    }
}

/// Text-to-image and reference editing start: the one noise draw, packed.
fn pure_noise(
    gen: &mut dyn rng::NoiseSource,
    grid: (usize, usize, usize),
    dtype: DType,
    dev: &Device,
) -> Result<edit::Start> {
    let noise = f2::noise(gen, grid, dtype, dev)?;
    let (channels, height, width) = grid;
    Ok(edit::Start { packed: f2::pack(&noise)?, channels, height, width, noise: None, clean: None })
}

/// Position ids of the noise tokens (then any conditioning tokens) and of `txt_len` text tokens.
pub(super) fn ids(edit: &Edit, txt_len: usize, dtype: DType, dev: &Device) -> Result<(Tensor, Tensor)> {
    let mut img_ids = f2::grid_ids(0.0, edit.height, edit.width, dtype, dev)?;
    if let Some(r) = &edit.reference {
        img_ids = Tensor::cat(&[&img_ids, &r.ids], 1)?;
    }
    Ok((img_ids, f2::text_ids(txt_len, dtype, dev)?))
}
