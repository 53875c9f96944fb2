//! The start of a Stable Diffusion edit, as the pipelines' `prepare_latents` and `prepare_mask_latents` make it,
//! in their generator order: text-to-image noise scaled by `init_noise_sigma`; img2img's posterior sample
//! (first draw) noised to the first step (second draw); inpainting's image latents, noise and the masked image's
//! latents (a draw each, whether or not the UNet takes them), with the mask on the latent grid.

use crate::engine::edit::{self, draw};
use crate::engine::inpaint::PreparedMask;
use crate::models::vae::AutoencoderKl;
use crate::rng::NoiseSource;
use crate::schedulers::{mul, Scheduler};
use candle_core::{DType, Device, Result, Tensor};
use image::GrayImage;

/// What inpainting keeps for the steps.
pub struct InpaintState {
    /// The mask on the latent grid [1,1,h,w], 1 = repaint.
    pub mask: Tensor,
    /// 9-channel UNets: the masked image's latents [1,C,h,w].
    pub masked: Option<Tensor>,
    /// 4-channel UNets: the input's latents and the start noise, to put the kept area back after each step.
    pub blend: Option<(Tensor, Tensor)>,
}

/// The VAE and latent scale a start is encoded with.
pub struct Encoder<'a> {
    pub vae: &'a AutoencoderKl,
    pub scale: f64,
    pub channels: usize,
}

impl Encoder<'_> {
    /// `retrieve_latents(vae.encode(x), generator) · scaling_factor`: one draw for the posterior sample.
    fn sample(&self, pixels: &Tensor, gen: &mut dyn NoiseSource) -> Result<Tensor> {
        let (mean, logvar) = self.vae.encode(pixels)?;
        let eps = draw(gen, &mean)?;
        edit::sample_latents(&mean, &logvar, &eps, 0.0, self.scale)
    }
}

/// Text-to-image: noise of the latent grid times `init_noise_sigma`.
pub fn txt2img(
    gen: &mut dyn NoiseSource,
    grid: (usize, usize, usize),
    sched: &dyn Scheduler,
    dt: DType,
    dev: &Device,
) -> Result<Tensor> {
    let (c, h, w) = grid;
    let noise = edit::draw_shape(gen, &(1, c, h, w).into(), dt, dev)?;
    mul(&noise, sched.init_noise_sigma() as f32)
}

/// img2img: the input's latents noised to step `t_start`.
pub fn img2img(
    enc: &Encoder,
    pixels: &Tensor,
    gen: &mut dyn NoiseSource,
    sched: &dyn Scheduler,
    t_start: usize,
) -> Result<Tensor> {
    let clean = enc.sample(pixels, gen)?;
    let noise = draw(gen, &clean)?;
    sched.add_noise(&clean, &noise, t_start)
}

/// The binary mask [1,1,H,W] (1 = repaint) from the prepared working mask.
fn mask_tensor(m: &GrayImage, dt: DType, dev: &Device) -> Result<Tensor> {
    let (w, h) = m.dimensions();
    let v: Vec<f32> = m.as_raw().iter().map(|&p| if p >= 128 { 1.0 } else { 0.0 }).collect();
    Tensor::from_vec(v, (1, 1, h as usize, w as usize), dev)?.to_dtype(dt)
}

/// torch's nearest interpolation by an exact factor: the top-left pixel of each `f`×`f` block.
fn downsample_nearest(m: &Tensor, f: usize) -> Result<Tensor> {
    let (b, c, h, w) = m.dims4()?;
    m.reshape((b, c, h / f, f, w / f, f))?.narrow(3, 0, 1)?.narrow(5, 0, 1)?.reshape((b, c, h / f, w / f))
}

/// Inpainting (`StableDiffusionInpaintPipeline`): the start latents and what the steps need. `nine`: the UNet
/// takes the mask and masked image; `full`: strength 1 (pure noise, the input not encoded for 9-channel UNets).
#[allow(clippy::too_many_arguments)]
pub fn inpaint(
    enc: &Encoder,
    pixels: &Tensor,
    m: &PreparedMask,
    gen: &mut dyn NoiseSource,
    sched: &dyn Scheduler,
    t_start: usize,
    nine: bool,
    f: usize,
) -> Result<(Tensor, InpaintState)> {
    let (dt, dev) = (pixels.dtype(), pixels.device());
    let image_latents = if !nine || t_start > 0 { Some(enc.sample(pixels, gen)?) } else { None };
    let (_, _, h, w) = pixels.dims4()?;
    let noise = edit::draw_shape(gen, &(1, enc.channels, h / f, w / f).into(), dt, dev)?;
    let latents = match &image_latents {
        Some(clean) if t_start > 0 => sched.add_noise(clean, &noise, t_start)?,
        _ => mul(&noise, sched.init_noise_sigma() as f32)?,
    };
    let full_mask = mask_tensor(&m.working, dt, dev)?;
    // masked_image = image · (mask < 0.5), encoded with its own draw even for 4-channel UNets.
    let keep = full_mask.affine(-1.0, 1.0)?;
    let masked = enc.sample(&pixels.broadcast_mul(&keep)?, gen)?;
    let state = InpaintState {
        mask: downsample_nearest(&full_mask, f)?,
        masked: nine.then_some(masked),
        blend: if nine { None } else { image_latents.map(|l| (l, noise)) },
    };
    Ok((latents, state))
}

impl InpaintState {
    /// The state in the edit's dtype.
    pub fn into_dtype(self, dt: DType) -> Result<Self> {
        let cast = |t: Tensor| t.to_dtype(dt);
        Ok(Self {
            mask: cast(self.mask)?,
            masked: self.masked.map(cast).transpose()?,
            blend: self.blend.map(|(a, b)| Ok::<_, candle_core::Error>((cast(a)?, cast(b)?))).transpose()?,
        })
    }

    /// 4-channel UNets after step `i`: the input's latents noised to the next step where the mask keeps them.
    pub fn blend(&self, x: &Tensor, sched: &dyn Scheduler, i: usize) -> Result<Tensor> {
        let Some((clean, noise)) = &self.blend else { return Ok(x.clone()) };
        let proper =
            if i + 1 < sched.timesteps().len() { sched.add_noise(clean, noise, i + 1)? } else { clean.clone() };
        let keep = self.mask.affine(-1.0, 1.0)?;
        proper.broadcast_mul(&keep)? + x.broadcast_mul(&self.mask)?
    }
}
