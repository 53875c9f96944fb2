//! The FLUX.2 half of a session: conditioning images and the start latents of each klein mode, and the way back
//! from tokens to pixels. The numerics are [`crate::engine::flux2`]'s; this part loads pictures and runs the VAE.

use super::{Session, Staged};
use crate::config::Family;
use crate::engine::flux2::{self as f2, BnStats};
use crate::engine::request::{Mode, Request};
use crate::engine::{edit, inpaint, Event, Plan};
use crate::error::{Error, Result};
use crate::image_io::{self, Role};
use crate::rng;
use candle_core::Tensor;
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

impl Session {
    /// FLUX.2: the original sizes of `req`'s references (read from their headers), each checked as diffusers does,
    /// and the input's when the mode makes it a conditioning image. FLUX.1: none are read.
    pub(super) fn reference_sizes(&self, req: &Request, input: Option<(u32, u32)>) -> Result<Vec<(u32, u32)>> {
        if self.configs.family != Family::Flux2 {
            return Ok(Vec::new());
        }
        if let (Some(path), Some(size)) = (req.image(), input) {
            check_conditioning_size(path, size, Role::Input)?;
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
    fn bn(&mut self) -> Result<&BnStats> {
        self.vae()?;
        self.bn.as_ref().ok_or_else(|| Error::Usage("this VAE has no batch-norm statistics (not FLUX.2)".into()))
    }

    /// Normalised patchified latents of a prepared picture (its posterior mean: klein draws no noise here).
    fn latents(&mut self, img: &RgbImage) -> Result<Tensor> {
        let (mean, _) = self.posterior(img)?;
        Ok(f2::latents_of(&mean, self.bn()?)?)
    }

    /// Start latents, conditioning tokens and (inpainting) the mask, as the klein pipelines prepare them.
    pub(super) fn stage_flux2(&mut self, req: &Request, input: Option<RgbImage>, plan: &Plan) -> Result<Staged> {
        let mut gen = rng::generator(&req.rng, plan.seed, plan.rng_gpu.unwrap_or(rng::CudaGeometry::H100));
        let multiple = self.configs.vae.size_multiple();
        let c = 4 * self.configs.vae.latent_channels;
        let (h, w) = ((plan.height / multiple) as usize, (plan.width / multiple) as usize);
        let mut conditioning = Vec::new();
        let (start, mask, kept_input) = match (&req.mode, input) {
            (Mode::Inpaint { .. } | Mode::Img2Img { .. }, Some(input)) => {
                let clean = self.latents(&f2::prepare_source(input.clone(), multiple))?;
                let noise = f2::noise(gen.as_mut(), (c, h, w), self.dtype, &self.device)?;
                let x = edit::noise_to(&clean, &noise, plan.schedule.start_sigma())?;
                let mask = match (&req.mode, req.image()) {
                    (Mode::Inpaint { mask, .. }, Some(image)) => {
                        let mut warnings = Vec::new();
                        let m = inpaint::prepare(mask, image, &input, plan, &mut warnings)?;
                        warnings.iter().for_each(|w| self.progress.event(Event::Warning(w)));
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
                conditioning.push(self.latents(&f2::prepare_reference(input, multiple))?);
                (self.pure_noise(gen.as_mut(), (c, h, w))?, None, None)
            }
            (Mode::Txt2Img, _) => (self.pure_noise(gen.as_mut(), (c, h, w))?, None, None),
            (mode, _) => return Err(Error::Usage(format!("{} needs an input image", mode.name()))),
        };
        for path in &req.references {
            let img = f2::prepare_reference(image_io::load_rgb_as(path, Role::Reference)?, multiple);
            conditioning.push(self.latents(&img)?);
        }
        let reference = if conditioning.is_empty() {
            None
        } else {
            let (tokens, ids) = f2::reference_tokens(&conditioning)?;
            Some(edit::Reference { tokens, ids })
        };
        Ok(Staged { start, mask, input: kept_input, reference })
    }

    /// Text-to-image and reference editing start: the one noise draw, packed.
    fn pure_noise(&self, gen: &mut dyn rng::NoiseSource, grid: (usize, usize, usize)) -> Result<edit::Start> {
        let noise = f2::noise(gen, grid, self.dtype, &self.device)?;
        let (channels, height, width) = grid;
        Ok(edit::Start { packed: f2::pack(&noise)?, channels, height, width, noise: None, clean: None })
    }

    /// Position ids of the noise tokens (then any conditioning tokens) and of `txt_len` text tokens.
    pub(super) fn ids_flux2(&self, staged: &Staged, txt_len: usize) -> Result<(Tensor, Tensor)> {
        let (dtype, dev, start) = (self.dtype, &self.device, &staged.start);
        let mut img_ids = f2::grid_ids(0.0, start.height, start.width, dtype, dev)?;
        if let Some(r) = &staged.reference {
            img_ids = Tensor::cat(&[&img_ids, &r.ids], 1)?;
        }
        Ok((img_ids, f2::text_ids(txt_len, dtype, dev)?))
    }

    /// Denoised tokens → un-normalised, unpatchified latents → pixels.
    pub(super) fn decode_flux2(&mut self, latents: &Tensor, start: &edit::Start) -> Result<RgbImage> {
        let z = f2::unpack(latents, start.height, start.width)?;
        let z = f2::unpatchify(&self.bn()?.denormalise(&z)?)?;
        let decoded = self.vae()?.decode(&z)?;
        edit::ensure_finite(&decoded, "VAE decoding", super::VAE_CAUSE)?;
        image_io::from_tensor(&decoded)
    }
}
