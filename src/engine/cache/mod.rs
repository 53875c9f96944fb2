//! Step caches (`--cache`): skip transformer work between denoising steps whose outputs barely change, as
//! diffusers' hooks do. Takes a [`CacheSpec`] and the model's block counts; gives the per-pass state the
//! transformer's forward consults ([`crate::models::hooks::BlockCache`]) and a [`CacheReport`] of what was skipped.
//!
//! - [`fbcache`]: First-Block Cache (`fbcache[:THRESHOLD]`);
//! - [`taylorseer`]: TaylorSeer (`taylorseer[:ORDER,INTERVAL]`).
//!
//! With CFG the prompt and the negative prompt run as separate passes, each with its own state (diffusers'
//! `cache_context("cond")` and `("uncond")`). The state lives here, per edit, never in the model.

pub mod fbcache;
pub mod taylorseer;

use crate::engine::edit::Guided;
use crate::models::hooks::BlockCache;
use crate::models::transformer::Inputs;
use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// diffusers' `FirstBlockCacheConfig.threshold` default.
pub const DEFAULT_THRESHOLD: f64 = 0.05;
/// diffusers' `TaylorSeerCacheConfig` defaults: `max_order`, `cache_interval`.
pub const DEFAULT_ORDER: usize = 1;
pub const DEFAULT_INTERVAL: usize = 5;

/// Which cache runs, and its setting.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum CacheSpec {
    FirstBlock { threshold: f64 },
    TaylorSeer { order: usize, interval: usize },
}

impl std::fmt::Display for CacheSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheSpec::FirstBlock { threshold } => write!(f, "fbcache:{threshold}"),
            CacheSpec::TaylorSeer { order, interval } => write!(f, "taylorseer:{order},{interval}"),
        }
    }
}

impl std::str::FromStr for CacheSpec {
    type Err = String;

    /// `fbcache[:THRESHOLD]` or `taylorseer[:ORDER,INTERVAL]`; the message says what is wrong and what is expected.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (kind, arg) = match s.trim().split_once(':') {
            Some((k, a)) => (k, Some(a.trim())),
            None => (s.trim(), None),
        };
        match kind.to_ascii_lowercase().as_str() {
            "fbcache" => {
                let threshold = match arg {
                    None => DEFAULT_THRESHOLD,
                    Some(a) => a.parse::<f64>().map_err(|_| format!("fbcache threshold {a:?} is not a number"))?,
                };
                if !threshold.is_finite() || threshold < 0.0 {
                    return Err(format!("fbcache threshold {threshold} must be a number ≥ 0 (e.g. fbcache:0.1)"));
                }
                Ok(CacheSpec::FirstBlock { threshold })
            }
            "taylorseer" => {
                let (order, interval) = match arg {
                    None => (DEFAULT_ORDER, DEFAULT_INTERVAL),
                    Some(a) => taylor_args(a)?,
                };
                Ok(CacheSpec::TaylorSeer { order, interval })
            }
            other => {
                Err(format!("unknown cache {other:?}; expected fbcache[:THRESHOLD] or taylorseer[:ORDER,INTERVAL]"))
            }
        }
    }
}

/// `ORDER,INTERVAL` (or `ORDER` alone), both at least 1.
fn taylor_args(a: &str) -> std::result::Result<(usize, usize), String> {
    let (o, i) = a.split_once(',').unwrap_or((a, ""));
    let num = |v: &str, what: &str, default: usize| -> std::result::Result<usize, String> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(default);
        }
        match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n),
            _ => Err(format!("taylorseer {what} {v:?} must be a whole number ≥ 1 (e.g. taylorseer:1,5)")),
        }
    };
    Ok((num(o, "order", DEFAULT_ORDER)?, num(i, "interval", DEFAULT_INTERVAL)?))
}

impl From<CacheSpec> for String {
    fn from(c: CacheSpec) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for CacheSpec {
    type Error = String;
    fn try_from(s: String) -> std::result::Result<Self, String> {
        s.parse()
    }
}

/// What a cache skipped in one edit (the PNG record and `--json` carry it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheReport {
    /// Block evaluations (fbcache: whole blocks; taylorseer: blocks' attention modules) skipped or forecast.
    pub skipped: usize,
    /// Block evaluations an uncached run makes (all passes of all steps).
    pub evaluations: usize,
    /// What one evaluation is: `blocks` or `attention modules`.
    pub unit: String,
    /// Set when nothing was skipped: at this setting the cache only cost time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl CacheReport {
    /// The line the progress shows after denoising.
    pub fn summary(&self, spec: &CacheSpec) -> String {
        let mut s = format!("cache {spec}: skipped {} of {} {}", self.skipped, self.evaluations, self.unit);
        if let Some(n) = &self.note {
            s.push_str(&format!(" ({n})"));
        }
        s
    }
}

/// One pass's state.
enum PassCache {
    FirstBlock(fbcache::FirstBlock),
    TaylorSeer(taylorseer::TaylorSeer),
}

/// The cache of one edit: a state per pass (prompt, negative prompt).
pub struct StepCache {
    spec: CacheSpec,
    blocks: usize,
    passes: Vec<PassCache>,
}

impl StepCache {
    /// `blocks`: the model's (double, single) block counts. First-Block Cache needs a double block first and a
    /// block after it.
    pub fn new(spec: CacheSpec, (double, single): (usize, usize)) -> crate::error::Result<Self> {
        if matches!(spec, CacheSpec::FirstBlock { .. }) && (double == 0 || double + single < 2) {
            return Err(crate::error::Error::Usage(format!(
                "--cache {spec}: this transformer has {double} double and {single} single blocks; First-Block Cache \
                 needs a double block and a block after it (try --cache taylorseer)"
            )));
        }
        Ok(Self { spec, blocks: double + single, passes: Vec::new() })
    }

    pub fn spec(&self) -> CacheSpec {
        self.spec
    }

    /// The state of pass `i` (0: the prompt, 1: the negative prompt), at the start of a new forward.
    fn pass(&mut self, i: usize) -> &mut dyn BlockCache {
        while self.passes.len() <= i {
            self.passes.push(match self.spec {
                CacheSpec::FirstBlock { threshold } => {
                    PassCache::FirstBlock(fbcache::FirstBlock::new(threshold, self.blocks))
                }
                CacheSpec::TaylorSeer { order, interval } => {
                    PassCache::TaylorSeer(taylorseer::TaylorSeer::new(order, interval))
                }
            });
        }
        match &mut self.passes[i] {
            PassCache::FirstBlock(f) => f,
            PassCache::TaylorSeer(t) => {
                t.begin();
                t
            }
        }
    }

    /// What was skipped over every pass so far.
    pub fn report(&self) -> CacheReport {
        let (mut skipped, mut evaluations) = (0, 0);
        for p in &self.passes {
            let (s, e) = match p {
                PassCache::FirstBlock(f) => (f.skipped, f.evaluations),
                PassCache::TaylorSeer(t) => (t.skipped, t.evaluations),
            };
            (skipped, evaluations) = (skipped + s, evaluations + e);
        }
        let unit = match self.spec {
            CacheSpec::FirstBlock { .. } => "blocks",
            CacheSpec::TaylorSeer { .. } => "attention modules",
        };
        let note = (skipped == 0).then(|| match self.spec {
            CacheSpec::FirstBlock { .. } => "never skipped: the first block's residual always moved more than the \
                                             threshold; raise it to skip steps"
                .to_string(),
            CacheSpec::TaylorSeer { .. } => "never skipped: too few steps for its 3 warm-up steps and interval; \
                                             run more steps or a shorter interval"
                .to_string(),
        });
        CacheReport { skipped, evaluations, unit: unit.into(), note }
    }
}

impl Guided<'_> {
    /// [`Guided::velocity`] with a step cache: with CFG the prompt and the negative prompt run as two passes of
    /// batch one, each with its own cache state, as diffusers runs them.
    pub fn velocity_cached(&self, x: &Tensor, t: &Tensor, cache: &mut StepCache) -> Result<Tensor> {
        let n = x.dim(1)?;
        let x = self.tokens(x)?;
        let Some(scale) = self.cfg_scale else {
            return self.model.forward_cached(&x, t, &self.inputs, cache.pass(0))?.narrow(1, 0, n);
        };
        let mut v = Vec::with_capacity(2);
        for i in 0..2 {
            let txt = self.inputs.txt.narrow(0, i, 1)?;
            let pooled = self.inputs.pooled.map(|p| p.narrow(0, i, 1)).transpose()?;
            let inputs = Inputs { txt: &txt, pooled: pooled.as_ref(), ..self.inputs };
            v.push(self.model.forward_cached(&x, t, &inputs, cache.pass(i))?.narrow(1, 0, n)?);
        }
        &v[1] + ((&v[0] - &v[1])? * scale)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn specs_parse_and_print() {
        let p = |s: &str| s.parse::<CacheSpec>();
        assert_eq!(p("fbcache").unwrap(), CacheSpec::FirstBlock { threshold: DEFAULT_THRESHOLD });
        assert_eq!(p("FBCache:0.2").unwrap(), CacheSpec::FirstBlock { threshold: 0.2 });
        assert_eq!(p("taylorseer").unwrap(), CacheSpec::TaylorSeer { order: 1, interval: 5 });
        assert_eq!(p("taylorseer:2").unwrap(), CacheSpec::TaylorSeer { order: 2, interval: 5 });
        assert_eq!(p("taylorseer:2,3").unwrap(), CacheSpec::TaylorSeer { order: 2, interval: 3 });
        for s in ["fbcache:0.6", "taylorseer:1,5", "fbcache:0"] {
            assert_eq!(p(s).unwrap().to_string(), s);
        }
        for bad in ["fbcache:-1", "fbcache:nan", "fbcache:inf", "fbcache:", "taylorseer:0", "taylorseer:1,0", "x"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    /// Steps that run with diffusers' defaults: 0–2 (warm-up), then 4, 9, 14, … (`(k − 4) mod 5 = 0`).
    #[test]
    fn taylorseer_runs_diffusers_steps() {
        let mut t = taylorseer::TaylorSeer::new(1, 5);
        let x = Tensor::ones((1, 2, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let mut ran = vec![];
        for k in 0..12 {
            t.begin();
            match t.forecast(0).unwrap() {
                None => {
                    ran.push(k);
                    t.record(0, &[(&x * k as f64).unwrap()]).unwrap();
                }
                // A line through the recorded steps is forecast exactly (f₁ = 1 per step).
                Some(f) => assert_eq!(f[0].flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], k as f32),
            }
        }
        assert_eq!(ran, [0, 1, 2, 4, 9]);
    }

    /// The first pass runs in full; a pass whose first residual moved less than the threshold reuses the tail.
    #[test]
    fn first_block_skips_below_the_threshold() {
        let dev = Device::Cpu;
        let t = |v: f32| Tensor::full(v, (1, 2, 2), &dev).unwrap();
        let mut f = fbcache::FirstBlock::new(0.1, 3);
        assert!(f.after_first(&t(0.0), &t(1.0), &t(0.0)).unwrap().is_none());
        f.after_last(&t(5.0), &t(0.0)).unwrap(); // tail residual 4
        let out = f.after_first(&t(0.0), &t(1.0625), &t(0.0)).unwrap().expect("6 % moved: skipped");
        assert_eq!(out.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0], 5.0625);
        assert!(f.after_first(&t(0.0), &t(1.5), &t(0.0)).unwrap().is_none(), "50 % moved: runs");
        assert_eq!((f.skipped, f.evaluations), (2, 9));
    }
}
