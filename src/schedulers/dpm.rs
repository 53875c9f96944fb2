//! `DPMSolverMultistepScheduler` as DPM-Solver++ 2M (`algorithm_type = dpmsolver++`, `solver_order = 2`,
//! midpoint): the model output is turned into x̂₀, the first step (and the last with a zero final sigma, or every
//! step of a run under 15 steps' final one) is first order, the others second order over the last two x̂₀.
//! Integer timesteps; with `use_karras_sigmas` the sigmas are Karras' and the timesteps their rounded inverses.

use super::{div, f32, mul, train, Scheduler, Settings, StepNoise};
use candle_core::{Result, Tensor};

pub struct Dpm {
    timesteps: Vec<f64>,
    sigmas: Vec<f32>,
    v_prediction: bool,
    /// The last two x̂₀ (oldest first) and how many steps ran.
    outputs: Vec<Tensor>,
    lower_order_nums: usize,
    lower_order_final: bool,
    euler_at_final: bool,
    zero_final: bool,
}

/// (α_t, σ_t) of a variance-exploding sigma: `1/sqrt(σ² + 1)` and `σ·α_t`, in float32.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let a = 1.0 / (sigma * sigma + 1.0).sqrt();
    (a, sigma * a)
}

fn lambda(sigma: f32) -> f32 {
    let (a, s) = alpha_sigma(sigma);
    a.ln() - s.ln()
}

impl Dpm {
    pub fn new(s: &Settings, steps: usize) -> std::result::Result<Self, String> {
        let ac = train::alphas_cumprod(s)?;
        let n = s.num_train_timesteps;
        let train_sigmas = train::train_sigmas(&ac);
        let mut timesteps: Vec<f64> = match s.timestep_spacing.as_str() {
            "linspace" => train::linspace(0.0, (n - 1) as f64, steps + 1)
                .into_iter()
                .rev()
                .take(steps)
                .map(f64::round_ties_even)
                .collect(),
            "leading" => {
                let ratio = n / (steps + 1);
                (1..=steps).rev().map(|i| (i * ratio + s.steps_offset) as f64).collect()
            }
            _ => train::ddim_timesteps(s, steps),
        };
        let sigmas: Vec<f64> = if s.use_karras_sigmas {
            let log_sigmas: Vec<f32> = train_sigmas.iter().map(|x| x.ln()).collect();
            let k = train::karras(train_sigmas[0] as f64, train_sigmas[n - 1] as f64, steps);
            // Rounded, except for the cosine schedule, whose fractional timesteps the int64 cast truncates.
            let round = s.beta_schedule != "squaredcos_cap_v2";
            timesteps = k
                .iter()
                .map(|&x| train::sigma_to_t(x, &log_sigmas))
                .map(|t| if round { t.round_ties_even() } else { t.trunc() })
                .collect();
            k
        } else {
            timesteps.iter().map(|&t| train::interp(t, &train_sigmas)).collect()
        };
        let zero_final = !matches!(s.final_sigmas_type.as_deref(), Some("sigma_min"));
        let last = if zero_final { 0.0 } else { train_sigmas[0] as f64 };
        Ok(Self {
            timesteps,
            sigmas: sigmas.into_iter().chain([last]).map(|x| x as f32).collect(),
            v_prediction: s.v_prediction(),
            outputs: Vec::new(),
            lower_order_nums: 0,
            lower_order_final: s.lower_order_final,
            euler_at_final: s.euler_at_final,
            zero_final,
        })
    }

    /// `convert_model_output` for dpmsolver++: x̂₀ at the sigma of `index`.
    fn x0(&self, out: &Tensor, sample: &Tensor, index: usize) -> Result<Tensor> {
        let (a, s) = alpha_sigma(self.sigmas[index]);
        if self.v_prediction {
            mul(sample, a)? - mul(out, s)?
        } else {
            div(&(sample - mul(out, s)?)?, a)
        }
    }

    fn first_order(&self, m0: &Tensor, index: usize, sample: &Tensor) -> Result<Tensor> {
        let (s_t, s_s) = (self.sigmas[index + 1], self.sigmas[index]);
        let (a_t, sig_t) = alpha_sigma(s_t);
        let (_, sig_s) = alpha_sigma(s_s);
        let h = lambda(s_t) - lambda(s_s);
        mul(sample, sig_t / sig_s)? - mul(m0, a_t * ((-h).exp() - 1.0))?
    }

    fn second_order(&self, index: usize, sample: &Tensor) -> Result<Tensor> {
        let (s_t, s0, s1) = (self.sigmas[index + 1], self.sigmas[index], self.sigmas[index - 1]);
        let (a_t, sig_t) = alpha_sigma(s_t);
        let (_, sig_s0) = alpha_sigma(s0);
        let (l_t, l_s0, l_s1) = (lambda(s_t), lambda(s0), lambda(s1));
        let (m0, m1) = (&self.outputs[1], &self.outputs[0]);
        let (h, h0) = (l_t - l_s0, l_s0 - l_s1);
        let r0 = h0 / h;
        let d1 = mul(&(m0 - m1)?, 1.0 / r0)?;
        let c = a_t * ((-h).exp() - 1.0);
        (mul(sample, sig_t / sig_s0)? - mul(m0, c)?)? - mul(&d1, 0.5 * c)?
    }
}

impl Scheduler for Dpm {
    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn sigma_at(&self, index: usize) -> f64 {
        self.sigmas[index] as f64
    }

    fn scale_input(&self, sample: &Tensor, _: usize) -> Result<Tensor> {
        Ok(sample.clone())
    }

    fn step(&mut self, out: &Tensor, index: usize, sample: &Tensor, _: StepNoise) -> Result<Tensor> {
        let n = self.timesteps.len();
        let lower_final =
            index == n - 1 && (self.euler_at_final || (self.lower_order_final && n < 15) || self.zero_final);
        let x0 = self.x0(out, sample, index)?;
        if self.outputs.len() == 2 {
            self.outputs.remove(0);
        }
        self.outputs.push(x0.clone());
        let sample32 = f32(sample)?;
        let prev = if self.lower_order_nums < 1 || lower_final {
            self.first_order(&f32(&x0)?, index, &sample32)?
        } else {
            // Order 2 is this port's only multistep order: diffusers' `lower_order_second` changes nothing.
            self.second_order(index, &sample32)?
        };
        if self.lower_order_nums < 2 {
            self.lower_order_nums += 1;
        }
        prev.to_dtype(out.dtype())
    }

    /// `α_t·x + σ_t·noise` at the sigma of `index`.
    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        let (a, s) = alpha_sigma(self.sigmas[index]);
        mul(original, a)? + mul(noise, s)?
    }
}
