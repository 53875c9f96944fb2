//! Flow-matching schedule: steps, strength and the scheduler config → sigmas, timesteps and the first step.
//!
//! Mirrors `FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/N, N), mu)` and the img2img
//! pipeline's `get_timesteps` (docs/spec-flux1-img2img.md §4): the linspace in f64, cast to f32 *before* shifting, the exponential
//! shift in f32 arithmetic with `e = f32(exp(mu))`, a terminal 0 appended, and `t_start` truncated in f64.

use crate::config::SchedulerConfig;
use crate::error::{Error, Result};

/// The sigmas and timesteps of one run and where img2img starts in them.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// N + 1 values, the last one 0.
    pub sigmas: Vec<f32>,
    /// N values, `sigma · num_train_timesteps`.
    pub timesteps: Vec<f32>,
    /// Index of the first step that runs (`N − t_start` steps run).
    pub t_start: usize,
    /// The dynamic-shift parameter, when the config uses dynamic shifting.
    pub mu: Option<f64>,
}

impl Schedule {
    /// Steps that actually run.
    pub fn steps_to_run(&self) -> usize {
        self.timesteps.len() - self.t_start
    }
    /// The sigma the input latents are noised to.
    pub fn start_sigma(&self) -> f32 {
        self.sigmas[self.t_start]
    }
}

/// `np.linspace(1.0, 1/n, n)` in f64.
pub fn linspace_sigmas(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![1.0];
    }
    let end = 1.0 / n as f64;
    let step = (end - 1.0) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + 1.0).collect();
    v[n - 1] = end;
    v
}

/// `calculate_shift`: linear in the packed sequence length between the config's two anchor points.
pub fn calculate_shift(image_seq_len: usize, cfg: &SchedulerConfig) -> f64 {
    let m = (cfg.max_shift - cfg.base_shift) / (cfg.max_image_seq_len as f64 - cfg.base_image_seq_len as f64);
    let b = cfg.base_shift - m * cfg.base_image_seq_len as f64;
    image_seq_len as f64 * m + b
}

/// FLUX.2's `compute_empirical_mu`: a fit in the token count `image_seq_len` and the step count `steps`, in f64
/// (above 4300 tokens independent of the steps).
pub fn empirical_mu(image_seq_len: usize, steps: usize) -> f64 {
    let (a1, b1) = (8.73809524e-05, 1.89833333);
    let (a2, b2) = (0.00016927, 0.45666666);
    let seq = image_seq_len as f64;
    if image_seq_len > 4300 {
        return a2 * seq + b2;
    }
    let m200 = a2 * seq + b2;
    let m10 = a1 * seq + b1;
    let a = (m200 - m10) / 190.0;
    let b = m200 - 200.0 * a;
    a * steps as f64 + b
}

/// How the dynamic shift's `mu` is chosen: FLUX.1 pipelines use `calculate_shift` (the scheduler config's
/// anchors), FLUX.2 pipelines `compute_empirical_mu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuRule {
    Linear,
    Empirical,
}

/// `get_timesteps`: index of the first step for `strength`.
pub fn t_start(steps: usize, strength: f64) -> usize {
    let n = steps as f64;
    let init = (n * strength).min(n);
    (n - init).max(0.0) as usize
}

/// The full schedule for `steps` at `strength`; `image_seq_len` is the packed token count.
pub fn schedule(cfg: &SchedulerConfig, steps: usize, strength: f64, image_seq_len: usize) -> Result<Schedule> {
    schedule_with(cfg, steps, strength, image_seq_len, MuRule::Linear)
}

/// [`schedule`] with the family's rule for `mu`.
pub fn schedule_with(
    cfg: &SchedulerConfig,
    steps: usize,
    strength: f64,
    image_seq_len: usize,
    rule: MuRule,
) -> Result<Schedule> {
    if cfg.use_karras_sigmas || cfg.use_exponential_sigmas || cfg.use_beta_sigmas || cfg.invert_sigmas {
        return Err(Error::Usage(
            "scheduler_config.json enables karras/exponential/beta/inverted sigmas, which FLUX pipelines do not use"
                .into(),
        ));
    }
    let base: Vec<f32> = linspace_sigmas(steps).into_iter().map(|s| s as f32).collect();
    let (mut sigmas, mu) = if cfg.use_dynamic_shifting {
        let mu = match rule {
            MuRule::Linear => calculate_shift(image_seq_len, cfg),
            MuRule::Empirical => empirical_mu(image_seq_len, steps),
        };
        let e = mu.exp() as f32;
        let shifted = match cfg.time_shift_type.as_str() {
            // σ = e / (e + (1/s − 1)); every op rounded in f32 like numpy on a float32 array.
            "exponential" => base.iter().map(|&s| e / (e + (1.0f32 / s - 1.0))).collect(),
            "linear" => {
                let m = mu as f32;
                base.iter().map(|&s| m / (m + (1.0f32 / s - 1.0))).collect()
            }
            other => return Err(Error::Usage(format!("scheduler time_shift_type {other:?} is not supported"))),
        };
        (shifted, Some(mu))
    } else {
        let shift = cfg.shift as f32;
        let shift_m1 = (cfg.shift - 1.0) as f32;
        (base.iter().map(|&s| shift * s / (1.0 + shift_m1 * s)).collect::<Vec<f32>>(), None)
    };
    if let Some(terminal) = cfg.shift_terminal {
        // stretch_shift_to_terminal: 1 − (1 − σ)/scale with scale = (1 − σ_last)/(1 − terminal).
        let one_minus: Vec<f32> = sigmas.iter().map(|s| 1.0 - s).collect();
        let scale = one_minus[one_minus.len() - 1] / (1.0 - terminal as f32);
        sigmas = one_minus.iter().map(|z| 1.0 - z / scale).collect();
    }
    let t = cfg.num_train_timesteps as f32;
    let timesteps = sigmas.iter().map(|s| s * t).collect();
    sigmas.push(0.0);
    Ok(Schedule { sigmas, timesteps, t_start: t_start(steps, strength), mu })
}

#[cfg(test)]
#[allow(clippy::excessive_precision)] // reference values are quoted from the spec as printed
mod tests {
    use super::*;

    fn dev() -> SchedulerConfig {
        serde_json::from_str(
            r#"{"shift":3.0,"use_dynamic_shifting":true,"base_shift":0.5,"max_shift":1.15,
                "base_image_seq_len":256,"max_image_seq_len":4096}"#,
        )
        .unwrap()
    }

    fn schnell() -> SchedulerConfig {
        serde_json::from_str(r#"{"shift":1.0,"use_dynamic_shifting":false}"#).unwrap()
    }

    /// Values printed by diffusers 0.42.1's `compute_empirical_mu`.
    #[test]
    fn empirical_mu_matches_diffusers() {
        let cases = [
            (24, 2, 1.961049476346341),
            (4096, 4, 2.291179894115571),
            (4096, 50, 2.0233511571292637),
            (5000, 4, 1.30301666),
        ];
        for (seq, n, mu) in cases {
            assert!((empirical_mu(seq, n) - mu).abs() < 1e-12, "({seq}, {n}): {}", empirical_mu(seq, n));
        }
    }

    #[test]
    fn t_start_truncates_in_f64() {
        assert_eq!(t_start(28, 0.6), 11);
        assert_eq!(t_start(4, 0.95), 0); // 4 − 3.8 = 0.2000000000000002
        assert_eq!(t_start(3, 0.1), 2); // 3 − 0.30000000000000004 = 2.7
        assert_eq!(t_start(10, 0.3), 7);
        assert_eq!(t_start(8, 0.0), 8);
        assert_eq!(t_start(8, 1.0), 0);
        assert_eq!(t_start(28, 0.01), 27);
    }

    #[test]
    fn linspace_matches_numpy_endpoints() {
        assert_eq!(linspace_sigmas(1), vec![1.0]);
        let v = linspace_sigmas(4);
        assert_eq!(v, vec![1.0, 0.75, 0.5, 0.25]);
    }

    #[test]
    fn mu_examples() {
        assert_eq!(calculate_shift(4096, &dev()), 1.15);
        assert!((calculate_shift(1024, &dev()) - 0.63).abs() < 1e-12);
    }

    #[test]
    fn dev_1024_reference_sigmas() {
        let s = schedule(&dev(), 28, 0.6, 4096).unwrap();
        let want = [
            1.0, 0.98840863, 0.97622246, 0.9633944, 0.94987255, 0.93559891, 0.92050898, 0.90453076, 0.88758343,
            0.86957592, 0.85040569, 0.82995641, 0.80809551, 0.7846716, 0.75951093, 0.73241282, 0.70314473, 0.67143482,
            0.6369645, 0.59935671, 0.55816287, 0.51284415, 0.46274841, 0.40707842, 0.34484893, 0.27482799, 0.1954546,
            0.1047209, 0.0,
        ];
        assert_eq!(s.sigmas.len(), 29);
        for (g, w) in s.sigmas.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 5e-8, "{g} vs {w}");
        }
        assert_eq!(s.t_start, 11);
        assert_eq!(s.steps_to_run(), 17);
        assert!((s.start_sigma() - 0.82995641).abs() < 5e-8);
        assert!((s.timesteps[11] - 829.95642).abs() < 1e-3);
    }

    #[test]
    fn dev_512_reference_sigmas() {
        let s = schedule(&dev(), 28, 1.0, 1024).unwrap();
        assert!((s.sigmas[1] - 0.98065597).abs() < 5e-8);
        assert!((s.sigmas[2] - 0.96064377).abs() < 5e-8);
        assert!((s.sigmas[26] - 0.12620378).abs() < 5e-8);
        assert!((s.sigmas[27] - 0.0650196).abs() < 5e-8);
    }

    #[test]
    fn schnell_four_steps() {
        let s = schedule(&schnell(), 4, 1.0, 4096).unwrap();
        assert_eq!(s.sigmas, vec![1.0, 0.75, 0.5, 0.25, 0.0]);
        assert_eq!(s.timesteps, vec![1000.0, 750.0, 500.0, 250.0]);
        assert_eq!(s.mu, None);
    }

    #[test]
    fn static_shift_formula() {
        let cfg: SchedulerConfig = serde_json::from_str(r#"{"shift":3.0}"#).unwrap();
        let s = schedule(&cfg, 2, 1.0, 0).unwrap();
        // linspace(1, 0.5, 2) → 3·0.5/(1 + 2·0.5) = 0.75
        assert_eq!(s.sigmas, vec![1.0, 0.75, 0.0]);
    }
}
