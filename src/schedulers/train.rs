//! What every discrete scheduler derives from the training schedule, computed as torch and numpy compute it: the
//! betas (torch.linspace in float32), ᾱ (torch.cumprod: float32 values, a float64 running product), the timesteps
//! of each spacing (numpy in float64, rounded half to even), the sigmas `sqrt((1 − ᾱ)/ᾱ)` (float32) interpolated
//! at fractional timesteps (np.interp in float64), Karras sigmas and the sigma → timestep inverse.

use super::Settings;

/// `torch.linspace(start, end, n, dtype=float32)`: the step in f32, the first half counted from the start and the
/// second from the end, each value one fused multiply-add (what torch's compiled CPU kernel computes: checked
/// against every beta of SD's schedule).
fn linspace_f32(start: f64, end: f64, n: usize) -> Vec<f32> {
    let (s, e) = (start as f32, end as f32);
    if n == 1 {
        return vec![s];
    }
    let step = (e - s) / (n - 1) as f32;
    let half = n / 2;
    (0..n).map(|i| if i < half { step.mul_add(i as f32, s) } else { (-step).mul_add((n - i - 1) as f32, e) }).collect()
}

/// `betas_for_alpha_bar` with the cosine ᾱ (`squaredcos_cap_v2`), in f64, stored as f32.
fn cosine_betas(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// ᾱ_t for t = 0..num_train_timesteps.
pub fn alphas_cumprod(s: &Settings) -> Result<Vec<f32>, String> {
    let n = s.num_train_timesteps;
    let betas: Vec<f32> = match (&s.trained_betas, s.beta_schedule.as_str()) {
        (Some(b), _) => b.iter().map(|&x| x as f32).collect(),
        (None, "linear") => linspace_f32(s.beta_start, s.beta_end, n),
        (None, "scaled_linear") => {
            linspace_f32(s.beta_start.sqrt(), s.beta_end.sqrt(), n).into_iter().map(|b| b * b).collect()
        }
        (None, "squaredcos_cap_v2") => cosine_betas(n),
        (None, other) => return Err(format!("beta_schedule {other:?} is not supported")),
    };
    let mut acc = 1f64;
    Ok(betas
        .iter()
        .map(|&b| {
            acc *= (1.0f32 - b) as f64;
            acc as f32
        })
        .collect())
}

/// `((1 − ᾱ)/ᾱ) ** 0.5` in float32, for every training timestep.
pub fn train_sigmas(ac: &[f32]) -> Vec<f32> {
    ac.iter().map(|&a| ((1.0 - a) / a).sqrt()).collect()
}

/// numpy's `np.arange(start, stop, step)` for a float step: ceil((stop − start)/step) values start + i·step.
fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let n = ((stop - start) / step).ceil().max(0.0) as usize;
    (0..n).map(|i| start + i as f64 * step).collect()
}

/// numpy's `np.linspace(start, stop, n)` in f64 (endpoint included).
pub fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    v[n - 1] = stop;
    v
}

/// The descending timesteps of `spacing` for `steps` steps, as the sigma-based schedulers (LMS, Euler) compute
/// them: float32 values (linspace keeps fractions).
pub fn float_timesteps(s: &Settings, steps: usize) -> Vec<f64> {
    let n = s.num_train_timesteps;
    let v: Vec<f64> = match s.timestep_spacing.as_str() {
        "linspace" => linspace(0.0, (n - 1) as f64, steps).into_iter().rev().map(|t| t as f32 as f64).collect(),
        "leading" => {
            let ratio = (n / steps) as f64;
            (0..steps).rev().map(|i| (i as f64 * ratio).round_ties_even() + s.steps_offset as f64).collect()
        }
        _ => arange(n as f64, 0.0, -(n as f64 / steps as f64)).into_iter().map(|t| t.round_ties_even() - 1.0).collect(),
    };
    v.into_iter().map(|t| t as f32 as f64).collect()
}

/// The descending integer timesteps DDIM computes for `spacing`.
pub fn ddim_timesteps(s: &Settings, steps: usize) -> Vec<f64> {
    let n = s.num_train_timesteps;
    match s.timestep_spacing.as_str() {
        "linspace" => linspace(0.0, (n - 1) as f64, steps).into_iter().rev().map(f64::round_ties_even).collect(),
        "leading" => (0..steps).rev().map(|i| (i * (n / steps) + s.steps_offset) as f64).collect(),
        _ => arange(n as f64, 0.0, -(n as f64 / steps as f64)).into_iter().map(|t| t.round_ties_even() - 1.0).collect(),
    }
}

/// `np.interp(x, arange(len(fp)), fp)` in f64.
pub fn interp(x: f64, fp: &[f32]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0] as f64;
    }
    if x >= last as f64 {
        return fp[last] as f64;
    }
    let j = x.floor() as usize;
    if j as f64 == x {
        return fp[j] as f64;
    }
    let slope = (fp[j + 1] as f64 - fp[j] as f64) / 1.0;
    slope * (x - j as f64) + fp[j] as f64
}

/// Karras et al.'s sigmas (ρ = 7) from `max` down to `min`, `n` of them, in f64.
pub fn karras(min: f64, max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (min.powf(1.0 / rho), max.powf(1.0 / rho));
    linspace(0.0, 1.0, n).into_iter().map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho)).collect()
}

/// `_sigma_to_t`: the fractional training timestep of `sigma`, interpolating log-sigmas (float32, as numpy takes
/// the log of a float32 array) linearly.
pub fn sigma_to_t(sigma: f64, log_sigmas: &[f32]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    // The last index whose log-sigma is at or below log σ (cumsum(dists >= 0).argmax()), at most len − 2.
    let count = log_sigmas.iter().filter(|&&l| log_sigma - l as f64 >= 0.0).count();
    let low_idx = count.saturating_sub(1).min(log_sigmas.len() - 2);
    let (low, high) = (log_sigmas[low_idx], log_sigmas[low_idx + 1]);
    let w = ((low as f64 - log_sigma) / (low - high) as f64).clamp(0.0, 1.0);
    (1.0 - w) * low_idx as f64 + w * (low_idx + 1) as f64
}
