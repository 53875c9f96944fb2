//! The numerics of an edit, as pure functions: preprocessed pixels → posterior → noised, packed latents →
//! Euler steps of the flow → latents for the VAE decoder. No I/O: the session hands in the models, the
//! conditioning, the schedule and the noise generator.
//!
//! As diffusers' `FluxImg2ImgPipeline`: `z = (mean + σ_post·ε − shift)·scale`, `x = σ·noise + (1−σ)·z`
//! (`scale_noise`), `x ← x + (σ_next − σ)·v` in f32, the transformer called with σ (diffusers' `t/1000`).

use super::Plan;
use crate::config::VaeConfig;
use crate::image_io::{self, ResizeMode};
use crate::models::transformer::Inputs;
use crate::models::Denoiser;
use crate::rng::{NoiseSource, Precision};
use crate::schedulers::flow_match::Schedule;
use candle_core::{DType, Device, Result, Tensor};
use image::RgbImage;

/// How VAE latents map into the transformer's latent space: `(z − shift)·scale`.
pub struct LatentSpace {
    pub shift: f64,
    pub scale: f64,
}

impl LatentSpace {
    pub fn of(vae: &VaeConfig) -> Self {
        Self { shift: vae.shift_factor.unwrap_or(0.0), scale: vae.latent_scale() }
    }
}

/// Packed start latents and the latent grid they came from.
pub struct Start {
    /// [B, (h/2)(w/2), 4C]
    pub packed: Tensor,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    /// The packed noise and clean input latents it was mixed from (modes that start from an input).
    pub noise: Option<Tensor>,
    pub clean: Option<Tensor>,
}

/// Kontext's reference image as transformer tokens: packed latents [1, M, 4C] and their position ids (1, row, col).
pub struct Reference {
    pub tokens: Tensor,
    pub ids: Tensor,
}

impl Reference {
    /// `(mean − shift)·scale` of the reference's posterior (its mode: no noise is drawn), packed.
    pub fn from_latents(mean: &Tensor, space: &LatentSpace) -> Result<Self> {
        let tokens = pack(&((mean - space.shift)? * space.scale)?)?;
        let (_, _, h, w) = mean.dims4()?;
        let ids = image_ids(h / 2, w / 2, DType::F32, mean.device())?;
        // First id column 1: the reference's own "time" slot, no offset in rows or columns.
        let ones = Tensor::ones(((h / 2) * (w / 2), 1), DType::F32, mean.device())?;
        let ids = Tensor::cat(&[&ones.unsqueeze(0)?, &ids.narrow(2, 1, 2)?], 2)?.to_dtype(mean.dtype())?;
        Ok(Self { tokens, ids })
    }
}

/// The input brought to the plan's size: centre-crop or pad first if the plan says so, then Lanczos.
pub fn fit_to_plan(input: RgbImage, plan: &Plan) -> RgbImage {
    let mut img = input;
    if plan.crop {
        img = image_io::center_crop_to_aspect(&img, plan.width, plan.height);
    }
    if plan.resize == ResizeMode::Pad && img.dimensions() != (plan.width, plan.height) {
        img = image_io::pad_to(&img, plan.width, plan.height);
    }
    if img.dimensions() != (plan.width, plan.height) {
        img = image_io::resize_lanczos(&img, plan.width, plan.height);
    }
    img
}

/// A hash of an image's size and pixels (sweeps edit the same pixels again and reuse their posterior).
pub fn pixel_key(img: &RgbImage) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (img.dimensions(), img.as_raw()).hash(&mut h);
    h.finish()
}

/// Noise of `shape` from the generator's next draws, in `dtype` on `dev`; diffusers asks the generator for the
/// pipeline's dtype, so reduced precision is drawn as such.
pub fn draw_shape(gen: &mut dyn NoiseSource, shape: &candle_core::Shape, dtype: DType, dev: &Device) -> Result<Tensor> {
    let noise = gen.randn(shape.elem_count(), Precision::of(dtype));
    Tensor::from_vec(noise, shape, dev)?.to_dtype(dtype)
}

/// Noise shaped and placed like `like`.
pub fn draw(gen: &mut dyn NoiseSource, like: &Tensor) -> Result<Tensor> {
    draw_shape(gen, like.shape(), like.dtype(), like.device())
}

/// Text-to-image start (`FluxPipeline.prepare_latents`): one draw of [1, C, h, w] noise, packed.
pub fn pure_noise(gen: &mut dyn NoiseSource, grid: (usize, usize, usize), dtype: DType, dev: &Device) -> Result<Start> {
    let (channels, height, width) = grid;
    let noise = draw_shape(gen, &(1, channels, height, width).into(), dtype, dev)?;
    Ok(Start { packed: pack(&noise)?, channels, height, width, noise: None, clean: None })
}

/// The transformer with its conditioning: one prompt, or (true CFG) the prompt and the negative prompt as a
/// batch of two whose velocities are combined `neg + scale·(pos − neg)`, as diffusers does with its two passes.
pub struct Guided<'a> {
    pub model: &'a Denoiser,
    /// Conditioning for a batch of one, or of two (prompt first, negative second) with `cfg_scale`; `img_ids`
    /// cover the latents and then any reference tokens.
    pub inputs: Inputs<'a>,
    pub cfg_scale: Option<f64>,
    /// Kontext: reference tokens appended after the latents, their velocity dropped.
    pub reference: Option<&'a Tensor>,
    /// Fill: channels appended to every latent token (masked-input latents and the mask).
    pub channels: Option<&'a Tensor>,
    /// ControlNets and this step's place in their windows.
    pub control: Option<super::controlnet::ControlStep<'a>>,
}

impl Guided<'_> {
    /// The transformer's image tokens for latents `x`: Fill/Control channels appended to each, then any reference
    /// tokens after them.
    pub fn tokens(&self, x: &Tensor) -> Result<Tensor> {
        let x = match self.channels {
            Some(c) => Tensor::cat(&[x, c], 2)?,
            None => x.clone(),
        };
        match self.reference {
            Some(r) => Tensor::cat(&[&x, r], 1),
            None => Ok(x),
        }
    }

    /// Velocity at `t` for latents `x` [1, S, C].
    pub fn velocity(&self, x: &Tensor, t: &Tensor) -> Result<Tensor> {
        let n = x.dim(1)?;
        let residuals = self.control.as_ref().map(|c| c.residuals(x, t)).transpose()?.flatten();
        let x = self.tokens(x)?;
        let (x, t) = match self.cfg_scale {
            Some(_) => (Tensor::cat(&[&x, &x], 0)?, Tensor::cat(&[t, t], 0)?),
            None => (x, t.clone()),
        };
        let v = self.model.forward_controlled(&x, &t, &self.inputs, residuals.as_ref())?.narrow(1, 0, n)?;
        let Some(scale) = self.cfg_scale else { return Ok(v) };
        let (pos, neg) = (v.narrow(0, 0, 1)?, v.narrow(0, 1, 1)?);
        &neg + ((pos - &neg)? * scale)?
    }
}

/// A posterior sample (the generator's next draw) in latent space: `(z - shift) * scale`.
pub fn sample_with(mean: &Tensor, logvar: &Tensor, gen: &mut dyn NoiseSource, space: &LatentSpace) -> Result<Tensor> {
    let eps = draw(gen, mean)?;
    sample_latents(mean, logvar, &eps, space.shift, space.scale)
}

/// Posterior sample (draw #1), initial noise (draw #2), both mixed at `sigma` and packed.
pub fn start_latents(
    mean: &Tensor,
    logvar: &Tensor,
    gen: &mut dyn NoiseSource,
    space: &LatentSpace,
    sigma: f32,
) -> Result<Start> {
    let z = sample_with(mean, logvar, gen, space)?;
    let noise = draw(gen, mean)?;
    let (_, channels, height, width) = mean.dims4()?;
    Ok(Start {
        packed: pack(&noise_to(&z, &noise, sigma)?)?,
        channels,
        height,
        width,
        noise: Some(pack(&noise)?),
        clean: Some(pack(&z)?),
    })
}

/// Denoised packed latents of a (channels, height, width) latent grid → the VAE's latent space `z/scale + shift`,
/// unpacked to [B, C, h, w].
pub fn unpack_for_decode(latents: &Tensor, grid: (usize, usize, usize), space: &LatentSpace) -> Result<Tensor> {
    let (c, h, w) = grid;
    (unpack(latents, c, h, w)? / space.scale)? + space.shift
}

/// `_pack_latents`: [B,C,h,w] → [B,(h/2)(w/2),4C], each token one 2×2 patch (channel index c·4 + dy·2 + dx).
pub fn pack(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    // [B,C,h/2,2,w/2,2] → [B,h/2,w/2,C,2,2]
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 2, 4, 1, 3, 5))?.reshape((b, (h / 2) * (w / 2), c * 4))
}

/// `_unpack_latents`: the inverse of [`pack`] for a latent grid of `h`×`w` with `c` channels.
pub fn unpack(x: &Tensor, c: usize, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, _) = x.dims3()?;
    // [B,h/2,w/2,C,2,2] → [B,C,h/2,2,w/2,2]
    x.reshape((b, h / 2, w / 2, c, 2, 2))?.permute((0, 3, 1, 4, 2, 5))?.reshape((b, c, h, w))
}

/// Position ids of the image tokens: (0, row, column) for each token of an `hp`×`wp` grid, [1, hp·wp, 3].
pub fn image_ids(hp: usize, wp: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(hp * wp * 3);
    for r in 0..hp {
        for c in 0..wp {
            v.extend_from_slice(&[0f32, r as f32, c as f32]);
        }
    }
    Tensor::from_vec(v, (1, hp * wp, 3), dev)?.to_dtype(dtype)
}

/// A posterior sample `mean + exp(logvar/2)·ε`, then `(z − shift)·scale` into the transformer's latent space.
pub fn sample_latents(mean: &Tensor, logvar: &Tensor, eps: &Tensor, shift: f64, scale: f64) -> Result<Tensor> {
    let std = (logvar * 0.5)?.exp()?;
    let z = (mean + (std * eps)?)?;
    (z - shift)? * scale
}

/// `scale_noise`: the flow-matching forward process at `sigma`.
pub fn noise_to(z: &Tensor, noise: &Tensor, sigma: f32) -> Result<Tensor> {
    (noise * sigma as f64)? + (z * (1.0 - sigma as f64))?
}

/// Whether every value of `t` is finite: one sum, in f32 (NaN and ±inf survive a sum; a finite sum of finite
/// latents cannot overflow f32 at any size this tool runs). One reduction and one scalar copy per call.
pub fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(t.to_dtype(DType::F32)?.sum_all()?.to_scalar::<f32>()?.is_finite())
}

/// An error unless `t` is all finite: `stage` names where, `cause` the likely reason.
pub fn ensure_finite(t: &Tensor, stage: &str, cause: &str) -> crate::Result<()> {
    if all_finite(t)? {
        return Ok(());
    }
    Err(crate::Error::NonFinite { stage: stage.to_string(), cause: cause.to_string() })
}

/// Why a denoising step goes non-finite.
pub const DENOISE_CAUSE: &str = "the transformer weights may hold NaN/inf values, or --guidance, --true-cfg or a \
                                 LoRA weight is far too large";

/// Euler step `i` of the schedule with `velocity(x, t)`: `x + (σ_{i+1} − σ_i)·v`, taken in f32 and cast back, as
/// the scheduler does.
pub fn euler_step(
    x: Tensor,
    schedule: &Schedule,
    i: usize,
    velocity: impl FnOnce(&Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (dev, dtype, b) = (x.device().clone(), x.dtype(), x.dim(0)?);
    // diffusers passes t/1000 in the latents' dtype; the model multiplies by 1000 again.
    let t = (Tensor::full(schedule.timesteps[i], b, &dev)?.to_dtype(dtype)? / 1000.0)?;
    let v = velocity(&x, &t)?;
    let dt = schedule.sigmas[i + 1] - schedule.sigmas[i];
    (x.to_dtype(DType::F32)? + (v * dt as f64)?.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_layout_and_round_trip() {
        let dev = Device::Cpu;
        let (c, h, w) = (3, 4, 6);
        let x = Tensor::arange(0f32, (c * h * w) as f32, &dev).unwrap().reshape((1, c, h, w)).unwrap();
        let p = pack(&x).unwrap();
        assert_eq!(p.dims(), &[1, 6, 12]);
        let pv = p.to_vec3::<f32>().unwrap();
        // token (y//2)·(w/2) + x//2, channel c·4 + (y%2)·2 + x%2, for pixel (c=2, y=3, x=5)
        let (cc, y, xx) = (2usize, 3usize, 5usize);
        let value = (cc * h * w + y * w + xx) as f32;
        assert_eq!(pv[0][(y / 2) * (w / 2) + xx / 2][cc * 4 + (y % 2) * 2 + xx % 2], value);
        let back = unpack(&p, c, h, w).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn ids_grid() {
        let ids = image_ids(2, 3, DType::F32, &Device::Cpu).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(ids[0][4], vec![0.0, 1.0, 1.0]);
        assert_eq!(ids[0].len(), 6);
    }

    #[test]
    fn noising_endpoints() {
        let dev = Device::Cpu;
        let z = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let n = Tensor::new(&[-1f32, 5.0], &dev).unwrap();
        assert_eq!(noise_to(&z, &n, 1.0).unwrap().to_vec1::<f32>().unwrap(), vec![-1.0, 5.0]);
        assert_eq!(noise_to(&z, &n, 0.0).unwrap().to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    }
}
