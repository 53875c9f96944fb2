//! `LMSDiscreteScheduler`: linear multistep on the sigma scale with up to four past derivatives. Each coefficient
//! is the integral over [σ_i, σ_{i+1}] of a Lagrange basis polynomial through the last sigmas, which diffusers
//! computes with scipy's `quad`: for a polynomial of degree ≤ 3 that is one 21-point Gauss–Kronrod rule (exact up
//! to rounding, accepted at once), evaluated here the same way, the integrand in float32 as diffusers' torch
//! scalars compute it.

use super::euler::{sigma_schedule, SigmaSchedule};
use super::{div, f32, mul, Scheduler, Settings, StepNoise};
use candle_core::{Result, Tensor};

/// QUADPACK's 21-point Kronrod nodes on [0, 1] (the positive half; the centre last) and weights, as published.
#[allow(clippy::excessive_precision)]
const XGK: [f64; 11] = [
    0.995657163025808080735527280689003,
    0.973906528517171720077964012084452,
    0.930157491355708226001207180059508,
    0.865063366688984510732096688423493,
    0.780817726586416897063717578345042,
    0.679409568299024406234327365114874,
    0.562757134668604683339000099272694,
    0.433395394129247190799265943165784,
    0.294392862701460198131126603103866,
    0.148874338981631210884826001129720,
    0.000000000000000000000000000000000,
];
#[allow(clippy::excessive_precision)]
const WGK: [f64; 11] = [
    0.011694638867371874278064396062192,
    0.032558162307964727478818972459390,
    0.054755896574351996031381300244580,
    0.075039674810919952767043140916190,
    0.093125454583697605535065465083366,
    0.109387158802297641899210590325805,
    0.123491976262065851077600525478575,
    0.134709217311473325928054001771707,
    0.142775938577060080797094273138717,
    0.147739104901338491374841515972068,
    0.149445554002916905664936468389821,
];

/// `quad(f, a, b)` for a polynomial integrand: QUADPACK's qk21 result.
fn qk21(f: impl Fn(f64) -> f64, a: f64, b: f64) -> f64 {
    let (centr, hlgth) = (0.5 * (a + b), 0.5 * (b - a));
    let mut resk = WGK[10] * f(centr);
    for j in 0..10 {
        let dx = hlgth * XGK[j];
        resk += WGK[j] * (f(centr - dx) + f(centr + dx));
    }
    resk * hlgth
}

pub struct Lms {
    sched: SigmaSchedule,
    derivatives: Vec<Tensor>,
    v_prediction: bool,
}

impl Lms {
    pub fn new(s: &Settings, steps: usize) -> std::result::Result<Self, String> {
        Ok(Self { sched: sigma_schedule(s, steps)?, derivatives: Vec::new(), v_prediction: s.v_prediction() })
    }

    /// `get_lms_coefficient(order, t, current_order)`.
    pub(crate) fn coefficient(&self, order: usize, t: usize, current: usize) -> f64 {
        let s = &self.sched.sigmas;
        let basis = |tau: f64| {
            let mut prod = 1f32;
            for k in (0..order).filter(|&k| k != current) {
                prod *= (tau as f32 - s[t - k]) / (s[t - current] - s[t - k]);
            }
            prod as f64
        };
        qk21(basis, s[t] as f64, s[t + 1] as f64)
    }
}

impl Scheduler for Lms {
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

    fn step(&mut self, out: &Tensor, index: usize, sample: &Tensor, _: StepNoise) -> Result<Tensor> {
        let sigma = self.sched.sigmas[index];
        let (out, sample) = (f32(out)?, f32(sample)?);
        let x0 = if self.v_prediction {
            let c = -sigma / (sigma * sigma + 1.0).sqrt();
            (mul(&out, c)? + div(&sample, sigma * sigma + 1.0)?)?
        } else {
            (&sample - mul(&out, sigma)?)?
        };
        self.derivatives.push(div(&(&sample - x0)?, sigma)?);
        if self.derivatives.len() > 4 {
            self.derivatives.remove(0);
        }
        // diffusers zips `order` coefficients with the derivatives there are (fewer in a run that starts late) and
        // sums them before adding the sample.
        let order = (index + 1).min(4);
        let mut sum: Option<Tensor> = None;
        for (k, d) in self.derivatives.iter().rev().enumerate().take(order) {
            let term = mul(d, self.coefficient(order, index, k) as f32)?;
            sum = Some(match sum {
                Some(s) => (s + term)?,
                None => term,
            });
        }
        match sum {
            Some(s) => sample + s,
            None => Ok(sample),
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        self.sched.add_noise(original, noise, index)
    }
}
