//! `EulerDiscreteScheduler` and `EulerAncestralDiscreteScheduler` (k-diffusion's samplers on the
//! variance-exploding sigma scale), and the sigma schedule they share with LMS: timesteps by spacing, the training
//! sigmas interpolated at them (or Karras sigmas and their timesteps), a final 0, inputs scaled by
//! `1/sqrt(σ² + 1)`. Euler ancestral draws one noise tensor per step from the edit's generator, as diffusers does
//! through the pipeline's `generator`.

use super::{div, f32, mul, train, Scheduler, Settings, StepNoise};
use candle_core::{Result, Tensor};

/// The sigma-scale schedule of LMS and the Euler samplers.
pub struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    /// N + 1 values, float32, the last the final sigma (0, or σ_min with `final_sigmas_type = sigma_min`).
    pub sigmas: Vec<f32>,
    /// Whether pure noise starts at σ_max (linspace and trailing spacing) or at sqrt(σ_max² + 1) (leading).
    pub leading: bool,
}

/// The schedule for `steps` steps; Karras sigmas when the config asks (LMS and Euler read `use_karras_sigmas`).
pub fn sigma_schedule(s: &Settings, steps: usize) -> std::result::Result<SigmaSchedule, String> {
    let ac = train::alphas_cumprod(s)?;
    let train_sigmas = train::train_sigmas(&ac);
    let mut timesteps = train::float_timesteps(s, steps);
    let mut sigmas: Vec<f64> = timesteps.iter().map(|&t| train::interp(t, &train_sigmas)).collect();
    if s.use_karras_sigmas {
        let log_sigmas: Vec<f32> = train_sigmas.iter().map(|x| x.ln()).collect();
        let min = s.sigma_min.unwrap_or(sigmas[sigmas.len() - 1]);
        let max = s.sigma_max.unwrap_or(sigmas[0]);
        sigmas = train::karras(min, max, steps);
        timesteps = sigmas.iter().map(|&x| train::sigma_to_t(x, &log_sigmas) as f32 as f64).collect();
    }
    let last = match s.final_sigmas_type.as_deref() {
        Some("sigma_min") => train_sigmas[0] as f64,
        None | Some("zero") => 0.0,
        Some(other) => return Err(format!("final_sigmas_type {other:?} is not supported")),
    };
    let sigmas = sigmas.into_iter().chain([last]).map(|x| x as f32).collect();
    Ok(SigmaSchedule { timesteps, sigmas, leading: s.timestep_spacing == "leading" })
}

impl SigmaSchedule {
    pub fn init_noise_sigma(&self) -> f64 {
        let max = self.sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if self.leading {
            (max * max + 1.0).sqrt() as f64
        } else {
            max as f64
        }
    }

    pub fn scale_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        let s = self.sigmas[index];
        div(sample, (s * s + 1.0).sqrt())
    }

    /// `original + noise·σ`.
    pub fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        original + mul(noise, self.sigmas[index])?
    }

    /// x̂₀ at σ for ε- or v-prediction (`sigma_hat` is σ without churn).
    pub fn x0(&self, out: &Tensor, sample: &Tensor, sigma: f32, v: bool) -> Result<Tensor> {
        if v {
            let c = -sigma / (sigma * sigma + 1.0).sqrt();
            mul(out, c)? + div(sample, sigma * sigma + 1.0)?
        } else {
            sample - mul(out, sigma)?
        }
    }
}

pub struct Euler {
    sched: SigmaSchedule,
    v_prediction: bool,
    ancestral: bool,
}

impl Euler {
    pub fn new(s: &Settings, steps: usize, ancestral: bool) -> std::result::Result<Self, String> {
        // Euler ancestral has no Karras option in diffusers: its config field is ignored.
        let mut s = s.clone();
        s.use_karras_sigmas &= !ancestral;
        Ok(Self { sched: sigma_schedule(&s, steps)?, v_prediction: s.v_prediction(), ancestral })
    }
}

impl Scheduler for Euler {
    fn timesteps(&self) -> &[f64] {
        &self.sched.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        self.sched.init_noise_sigma()
    }

    fn sigma_at(&self, index: usize) -> f64 {
        self.sched.sigmas[index] as f64
    }

    fn scale_input(&self, sample: &Tensor, index: usize) -> Result<Tensor> {
        self.sched.scale_input(sample, index)
    }

    fn step(&mut self, out: &Tensor, index: usize, sample: &Tensor, noise: StepNoise) -> Result<Tensor> {
        let dtype = out.dtype();
        let (out, sample) = (f32(out)?, f32(sample)?);
        let (sigma, next) = (self.sched.sigmas[index], self.sched.sigmas[index + 1]);
        let x0 = self.sched.x0(&out, &sample, sigma, self.v_prediction)?;
        let derivative = div(&(&sample - x0)?, sigma)?;
        let prev = if self.ancestral {
            let up = (next * next * (sigma * sigma - next * next) / (sigma * sigma)).sqrt();
            let down = (next * next - up * up).sqrt();
            let prev = (&sample + mul(&derivative, down - sigma)?)?;
            // Drawn in the model output's dtype, every step (also the last, where σ_up is 0).
            let n = noise(&out.to_dtype(dtype)?)?;
            (prev + mul(&f32(&n)?, up)?)?
        } else {
            (&sample + mul(&derivative, next - sigma)?)?
        };
        prev.to_dtype(dtype)
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        self.sched.add_noise(original, noise, index)
    }
}
