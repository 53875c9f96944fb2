//! Schedulers: pure numerics, no I/O. [`flow_match`] is FLUX's flow-matching Euler schedule; the others are the
//! discrete-time schedulers of Stable Diffusion, each a port of its diffusers class step for step:
//! [`pndm`] (PNDM/PLMS), [`ddim`], [`lms`] (LMS, coefficients integrated as scipy's `quad` does), [`euler`] (Euler
//! and Euler ancestral) and [`dpm`] (DPM-Solver++ 2M, optionally on Karras sigmas).
//!
//! Takes a scheduler config (the checkpoint's `scheduler_config.json` as diffusers reads it, see [`config`]) and a
//! step count; gives a [`Scheduler`]: the timesteps the denoiser sees, the input scaling, one step from a model
//! output, and `add_noise` for img2img starts and inpainting blends. Scalar coefficients are computed in the
//! precision diffusers computes them (float32 for torch tensors, float64 for numpy), tensor arithmetic in f32.

pub mod config;
pub mod ddim;
pub mod dpm;
pub mod euler;
pub mod flow_match;
pub mod lms;
pub mod pndm;
mod train;

pub use config::{SchedulerKind, Settings};

use candle_core::{DType, Result, Tensor};

/// Noise for a stochastic step, shaped like the sample (drawn from the edit's generator, as diffusers passes it).
pub type StepNoise<'a> = &'a mut dyn FnMut(&Tensor) -> Result<Tensor>;

/// One discrete-time scheduler set up for a number of steps. Indices are positions in [`Scheduler::timesteps`].
pub trait Scheduler: Send {
    /// The timesteps the denoiser is called at, in order (integers for DDIM, PNDM and DPM-Solver; fractional
    /// for Euler and LMS with linspace spacing).
    fn timesteps(&self) -> &[f64];

    /// The standard deviation pure noise starts with (`init_noise_sigma`).
    fn init_noise_sigma(&self) -> f64;

    /// The noise level at `index` as a sigma of the variance-exploding form, `sqrt((1 − ᾱ)/ᾱ)`: what a plan reports
    /// as the start sigma.
    fn sigma_at(&self, index: usize) -> f64;

    /// `scale_model_input` for the step at `index`.
    fn scale_input(&self, sample: &Tensor, index: usize) -> Result<Tensor>;

    /// One step at `index` from the model output (its prediction type per the config); steps are taken in order
    /// from the first that runs.
    fn step(&mut self, model_output: &Tensor, index: usize, sample: &Tensor, noise: StepNoise) -> Result<Tensor>;

    /// `add_noise`: clean latents at the noise level of `index`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor>;
}

/// The scheduler `kind` with `settings` (the checkpoint's config as `kind` reads it) for `steps` steps.
pub fn build(
    kind: SchedulerKind,
    settings: &Settings,
    steps: usize,
) -> std::result::Result<Box<dyn Scheduler>, String> {
    settings.check(kind)?;
    Ok(match kind {
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(settings, steps)?),
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(settings, steps)?),
        SchedulerKind::Lms => Box::new(lms::Lms::new(settings, steps)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(settings, steps, false)?),
        SchedulerKind::EulerA => Box::new(euler::Euler::new(settings, steps, true)?),
        SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras => Box::new(dpm::Dpm::new(settings, steps)?),
    })
}

/// `t · c` with `c` a float32 scalar, computed in f32 (candle multiplies by the scalar cast to the tensor's type).
pub(crate) fn mul(t: &Tensor, c: f32) -> Result<Tensor> {
    t.affine(c as f64, 0.0)
}

/// `t / c` with `c` a float32 scalar: a true division, as torch divides by a 0-dimensional tensor.
pub(crate) fn div(t: &Tensor, c: f32) -> Result<Tensor> {
    t.broadcast_div(&Tensor::new(c, t.device())?.to_dtype(t.dtype())?)
}

/// Casts to f32 for a step's arithmetic (diffusers upcasts samples in its Euler and DPM steps).
pub(crate) fn f32(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F32)
}

#[cfg(test)]
mod tests;
