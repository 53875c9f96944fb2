//! `DDIMScheduler` with η = 0 (deterministic, as the pipelines call it): from the model output the clean sample
//! x̂₀ and the noise ε̂ (by prediction type), x̂₀ clipped when the config says so, then
//! `x_prev = sqrt(ᾱ_prev)·x̂₀ + sqrt(1 − ᾱ_prev)·ε̂` with ᾱ_prev at `t − num_train_timesteps/steps` (or
//! `final_alpha_cumprod` below 0).

use super::{div, mul, train, Scheduler, Settings, StepNoise};
use candle_core::{Result, Tensor};

pub struct Ddim {
    ac: Vec<f32>,
    final_ac: f32,
    timesteps: Vec<f64>,
    /// Training timesteps between two steps (`num_train_timesteps // steps`).
    stride: i64,
    v_prediction: bool,
    clip: Option<f32>,
}

impl Ddim {
    pub fn new(s: &Settings, steps: usize) -> std::result::Result<Self, String> {
        if steps > s.num_train_timesteps {
            return Err(format!("{steps} steps are more than the {} training timesteps", s.num_train_timesteps));
        }
        let ac = train::alphas_cumprod(s)?;
        let final_ac = if s.set_alpha_to_one { 1.0 } else { ac[0] };
        Ok(Self {
            final_ac,
            timesteps: train::ddim_timesteps(s, steps),
            stride: (s.num_train_timesteps / steps) as i64,
            v_prediction: s.v_prediction(),
            clip: s.clip_sample.then_some(s.clip_sample_range as f32),
            ac,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.ac[t as usize]
        } else {
            self.final_ac
        }
    }
}

/// x̂₀ and ε̂ from the model output at ᾱ_t, for ε- or v-prediction (float32 coefficients, as torch's 0-d tensors).
pub(crate) fn predictions(out: &Tensor, sample: &Tensor, a_t: f32, v: bool) -> Result<(Tensor, Tensor)> {
    let b_t = 1.0 - a_t;
    if v {
        let x0 = (mul(sample, a_t.sqrt())? - mul(out, b_t.sqrt())?)?;
        let eps = (mul(out, a_t.sqrt())? + mul(sample, b_t.sqrt())?)?;
        Ok((x0, eps))
    } else {
        let x0 = div(&(sample - mul(out, b_t.sqrt())?)?, a_t.sqrt())?;
        Ok((x0, out.clone()))
    }
}

/// `sqrt(ᾱ)·x + sqrt(1 − ᾱ)·noise` (DDPM-style `add_noise`, DDIM's and PNDM's), with ᾱ in the tensors' float32.
pub(crate) fn add_noise_vp(original: &Tensor, noise: &Tensor, a: f32) -> Result<Tensor> {
    mul(original, a.sqrt())? + mul(noise, (1.0 - a).sqrt())?
}

impl Scheduler for Ddim {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sigma_at(&self, index: usize) -> f64 {
        let a = self.alpha(self.timesteps[index] as i64) as f64;
        ((1.0 - a) / a).sqrt()
    }

    fn scale_input(&self, sample: &Tensor, _: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(&mut self, out: &Tensor, index: usize, sample: &Tensor, _: StepNoise) -> Result<Tensor> {
        let t = self.timesteps[index] as i64;
        let (a_t, a_prev) = (self.alpha(t), self.alpha(t - self.stride));
        let (mut x0, eps) = predictions(out, sample, a_t, self.v_prediction)?;
        if let Some(r) = self.clip {
            x0 = x0.clamp(-r, r)?;
        }
        // η = 0: no variance term, the direction keeps all of 1 − ᾱ_prev.
        mul(&x0, a_prev.sqrt())? + mul(&eps, (1.0 - a_prev).sqrt())?
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        add_noise_vp(original, noise, self.alpha(self.timesteps[index] as i64))
    }
}
