//! TaylorSeer, as diffusers' `TaylorSeerCacheConfig` / `apply_taylorseer_cache` run it with its defaults: every
//! attention module of the double and single blocks (diffusers' `transformer_blocks.N.attn`,
//! `single_transformer_blocks.N.attn`) runs on the first 3 steps and then every `interval` steps (steps k with
//! (k − 4) mod interval = 0); each run updates divided differences of its outputs up to `order` (the Taylor
//! factors, kept in bf16); the other steps forecast the outputs as Σ fⱼ·Δʲ/j! with Δ the steps since the last run.
//! Takes the modules' outputs; gives the forecasts.

use crate::models::hooks::BlockCache;
use candle_core::{DType, Result, Tensor};
use std::collections::HashMap;

/// diffusers' `disable_cache_before_step`: steps that always run, to gather the factors.
const WARMUP: i64 = 3;
/// diffusers' `taylor_factors_dtype`.
const FACTORS: DType = DType::BF16;

/// One module's factors: per output, per order.
struct Factors {
    last: i64,
    dtype: DType,
    by_output: Vec<Vec<Tensor>>,
}

/// The state of one pass (the prompt's, or the negative prompt's under CFG) across the steps of an edit.
pub struct TaylorSeer {
    order: usize,
    interval: usize,
    /// The step of this pass (−1 before the first).
    step: i64,
    run: bool,
    modules: HashMap<usize, Factors>,
    pub skipped: usize,
    pub evaluations: usize,
}

impl TaylorSeer {
    pub fn new(order: usize, interval: usize) -> Self {
        Self { order, interval, step: -1, run: true, modules: HashMap::new(), skipped: 0, evaluations: 0 }
    }

    /// A new pass: whether its modules run (diffusers' `_measure_should_compute`, made once per pass since every
    /// module counts the same steps).
    pub fn begin(&mut self) {
        self.step += 1;
        let k = self.step;
        self.run = k < WARMUP || (k - WARMUP - 1).rem_euclid(self.interval as i64) == 0;
    }

    /// Factors of a new run's `outputs` from the previous ones: f₀ = y, fⱼ₊₁ = (fⱼ − f̃ⱼ)/Δ with f̃ⱼ the stored
    /// (bf16) factor; stopping where an order is missing (the first runs) or its shape changed.
    fn update(&self, prev: Option<&Factors>, outputs: &[Tensor]) -> Result<Vec<Vec<Tensor>>> {
        let mut all = Vec::with_capacity(outputs.len());
        for (i, y) in outputs.iter().enumerate() {
            let mut new = vec![y.clone()];
            if let Some(p) = prev {
                let delta = Tensor::new((self.step - p.last) as f32, y.device())?.to_dtype(y.dtype())?;
                for j in 0..self.order {
                    let Some(old) = p.by_output.get(i).and_then(|f| f.get(j)).filter(|o| o.dims() == new[j].dims())
                    else {
                        break;
                    };
                    let next = (&new[j] - old.to_dtype(y.dtype())?)?.broadcast_div(&delta)?;
                    new.push(next);
                }
            }
            all.push(new.iter().map(|f| f.to_dtype(FACTORS)).collect::<Result<_>>()?);
        }
        Ok(all)
    }
}

impl BlockCache for TaylorSeer {
    fn forecast(&mut self, id: usize) -> Result<Option<Vec<Tensor>>> {
        self.evaluations += 1;
        if self.run {
            return Ok(None);
        }
        let f = self.modules.get(&id).ok_or_else(|| candle_core::Error::Msg("TaylorSeer: no factors yet".into()))?;
        let offset = (self.step - f.last) as f64;
        self.skipped += 1;
        let forecast = |factors: &Vec<Tensor>| -> Result<Tensor> {
            let mut y = factors[0].to_dtype(f.dtype)?;
            for (j, fj) in factors.iter().enumerate().skip(1) {
                let factorial: f64 = (1..=j).map(|n| n as f64).product();
                y = (y + (fj.to_dtype(f.dtype)? * (offset.powi(j as i32) / factorial))?)?;
            }
            Ok(y)
        };
        f.by_output.iter().map(forecast).collect::<Result<_>>().map(Some)
    }

    fn record(&mut self, id: usize, outputs: &[Tensor]) -> Result<()> {
        let by_output = self.update(self.modules.get(&id), outputs)?;
        let dtype = outputs.first().map_or(DType::F32, Tensor::dtype);
        self.modules.insert(id, Factors { last: self.step, dtype, by_output });
        Ok(())
    }
}
