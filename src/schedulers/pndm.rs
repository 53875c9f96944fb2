//! `PNDMScheduler` (what SD 1.x checkpoints ship, with `skip_prk_steps`): linear multistep (PLMS) over the last
//! model outputs, one Runge–Kutta-free warm-up in which the first timestep's output is averaged with the next
//! one's. Without `skip_prk_steps` the first steps are pseudo Runge–Kutta (four half steps per step, as diffusers).
//! The schedule has one timestep more than steps (the second is repeated), as diffusers builds it.

use super::ddim::add_noise_vp;
use super::{div, mul, train, Scheduler, Settings, StepNoise};
use candle_core::{Result, Tensor};

pub struct Pndm {
    ac: Vec<f32>,
    final_ac: f32,
    timesteps: Vec<f64>,
    /// Pseudo Runge–Kutta timesteps at the start (empty with `skip_prk_steps`).
    prk: usize,
    stride: i64,
    v_prediction: bool,
    counter: usize,
    ets: Vec<Tensor>,
    cur_sample: Option<Tensor>,
    cur_output: Option<Tensor>,
}

impl Pndm {
    pub fn new(s: &Settings, steps: usize) -> std::result::Result<Self, String> {
        let n = s.num_train_timesteps;
        let base: Vec<i64> = match s.timestep_spacing.as_str() {
            "linspace" => {
                train::linspace(0.0, (n - 1) as f64, steps).iter().map(|t| t.round_ties_even() as i64).collect()
            }
            "leading" => (0..steps).map(|i| (i * (n / steps) + s.steps_offset) as i64).collect(),
            _ => train::ddim_timesteps(s, steps).iter().rev().map(|&t| t as i64).collect(),
        };
        let stride = (n / steps) as i64;
        let (timesteps, prk) = if s.skip_prk_steps {
            // _timesteps[:-1], _timesteps[-2:-1], _timesteps[-1:], reversed.
            let k = base.len();
            let mut v: Vec<i64> = base[..k - 1].to_vec();
            v.extend_from_slice(&base[k.saturating_sub(2)..k - 1]);
            v.push(base[k - 1]);
            v.reverse();
            (v, 0)
        } else {
            let half = stride / 2;
            let tail: Vec<i64> = base[base.len().saturating_sub(4)..].iter().flat_map(|&t| [t, t + half]).collect();
            let repeated: Vec<i64> = tail[..tail.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk: Vec<i64> = repeated[1..repeated.len() - 1].to_vec();
            prk.reverse();
            let mut plms: Vec<i64> = base[..base.len().saturating_sub(3)].to_vec();
            plms.reverse();
            let k = prk.len();
            (prk.into_iter().chain(plms).collect(), k)
        };
        let ac = train::alphas_cumprod(s)?;
        Ok(Self {
            final_ac: if s.set_alpha_to_one { 1.0 } else { ac[0] },
            ac,
            timesteps: timesteps.into_iter().map(|t| t as f64).collect(),
            prk,
            stride,
            v_prediction: s.v_prediction(),
            counter: 0,
            ets: Vec::new(),
            cur_sample: None,
            cur_output: None,
        })
    }

    fn alpha(&self, t: i64) -> f32 {
        if t >= 0 {
            self.ac[t as usize]
        } else {
            self.final_ac
        }
    }

    /// `_get_prev_sample`: PNDM's transfer from `t` to `prev` with ε̂ (formula (9) of the paper).
    fn prev_sample(&self, sample: &Tensor, t: i64, prev: i64, out: &Tensor) -> Result<Tensor> {
        let (a_t, a_prev) = (self.alpha(t), self.alpha(prev));
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let out = if self.v_prediction { (mul(out, a_t.sqrt())? + mul(sample, b_t.sqrt())?)? } else { out.clone() };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        mul(sample, sample_coeff)? - div(&mul(&out, a_prev - a_t)?, denom)?
    }

    fn step_plms(&mut self, out: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        let (mut t, mut prev) = (t, t - self.stride);
        if self.counter != 1 {
            if self.ets.len() > 3 {
                self.ets.remove(0);
            }
            self.ets.push(out.clone());
        } else {
            prev = t;
            t += self.stride;
        }
        let mut sample = sample.clone();
        let e = &self.ets;
        let n = e.len();
        let out = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            out.clone()
        } else if n == 1 && self.counter == 1 {
            sample = self.cur_sample.take().expect("kept by the first step");
            div(&(out + &e[0])?, 2.0)?
        } else if n == 2 {
            div(&(mul(&e[1], 3.0)? - &e[0])?, 2.0)?
        } else if n == 3 {
            div(&((mul(&e[2], 23.0)? - mul(&e[1], 16.0)?)? + mul(&e[0], 5.0)?)?, 12.0)?
        } else {
            let sum = (((mul(&e[3], 55.0)? - mul(&e[2], 59.0)?)? + mul(&e[1], 37.0)?)? - mul(&e[0], 9.0)?)?;
            mul(&sum, 1.0 / 24.0)?
        };
        let prev_sample = self.prev_sample(&sample, t, prev, &out)?;
        self.counter += 1;
        Ok(prev_sample)
    }

    fn step_prk(&mut self, out: &Tensor, t: i64, sample: &Tensor) -> Result<Tensor> {
        let diff = if self.counter % 2 == 1 { 0 } else { self.stride / 2 };
        let prev = t - diff;
        let t = self.timesteps[self.counter / 4 * 4] as i64;
        let acc = self.cur_output.take();
        let add = |acc: Option<Tensor>, x: Tensor| -> Result<Tensor> {
            match acc {
                Some(a) => a + x,
                None => Ok(x),
            }
        };
        let out = match self.counter % 4 {
            0 => {
                self.cur_output = Some(add(acc, mul(out, 1.0 / 6.0)?)?);
                self.ets.push(out.clone());
                self.cur_sample = Some(sample.clone());
                out.clone()
            }
            1 | 2 => {
                self.cur_output = Some(add(acc, mul(out, 1.0 / 3.0)?)?);
                out.clone()
            }
            _ => add(acc, mul(out, 1.0 / 6.0)?)?,
        };
        let cur = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev_sample = self.prev_sample(&cur, t, prev, &out)?;
        self.counter += 1;
        Ok(prev_sample)
    }
}

impl Scheduler for Pndm {
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

    /// PNDM keeps its own counter: it steps by position in its history, whatever `index` the run started at.
    fn step(&mut self, out: &Tensor, index: usize, sample: &Tensor, _: StepNoise) -> Result<Tensor> {
        let t = self.timesteps[index] as i64;
        if self.counter < self.prk {
            self.step_prk(out, t, sample)
        } else {
            self.step_plms(out, t, sample)
        }
    }

    fn add_noise(&self, original: &Tensor, noise: &Tensor, index: usize) -> Result<Tensor> {
        add_noise_vp(original, noise, self.alpha(self.timesteps[index] as i64))
    }
}
