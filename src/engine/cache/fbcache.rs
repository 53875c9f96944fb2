//! First-Block Cache, as diffusers' `FirstBlockCacheConfig` / `apply_first_block_cache` run it: the first block
//! always runs; when its residual (output − input, image stream) moved by at most `threshold` in relative L1 from
//! the residual of the last pass that ran every block, the remaining blocks are skipped and their cached residual
//! (last block's image output − first block's, from that pass) is added to the first block's output.
//! Takes the first and last blocks' streams of one pass; gives the skipped pass's image stream.

use crate::models::hooks::BlockCache;
use candle_core::{DType, Result, Tensor};

/// The state of one pass (the prompt's, or the negative prompt's under CFG) across the steps of an edit.
pub struct FirstBlock {
    threshold: f64,
    /// Blocks in the model (double + single).
    blocks: usize,
    /// From the last pass that ran every block: the first block's residual and image output, and the remaining
    /// blocks' image residual.
    head_residual: Option<Tensor>,
    head_output: Option<Tensor>,
    tail_residual: Option<Tensor>,
    pub skipped: usize,
    pub evaluations: usize,
}

impl FirstBlock {
    pub fn new(threshold: f64, blocks: usize) -> Self {
        Self {
            threshold,
            blocks,
            head_residual: None,
            head_output: None,
            tail_residual: None,
            skipped: 0,
            evaluations: 0,
        }
    }

    /// Whether the remaining blocks must run: diffusers' `diff > threshold`, with diff = mean|r − r₀| / mean|r₀|
    /// (each mean in f32, as torch gives them; summed here in f64, closer to torch's pairwise sums than a running
    /// f32 sum).
    fn must_run(&self, residual: &Tensor) -> Result<bool> {
        let (Some(prev), Some(_)) = (&self.head_residual, &self.tail_residual) else { return Ok(true) };
        let mean_abs =
            |t: &Tensor| -> Result<f32> { Ok(t.to_dtype(DType::F64)?.abs()?.mean_all()?.to_scalar::<f64>()? as f32) };
        let diff = mean_abs(&(residual - prev)?)? / mean_abs(prev)?;
        Ok(diff as f64 > self.threshold)
    }
}

impl BlockCache for FirstBlock {
    fn after_first(&mut self, x_in: &Tensor, x: &Tensor, _ctx: &Tensor) -> Result<Option<Tensor>> {
        self.evaluations += self.blocks;
        let residual = (x - x_in)?;
        if self.must_run(&residual)? {
            self.head_residual = Some(residual);
            self.head_output = Some(x.clone());
            return Ok(None);
        }
        self.skipped += self.blocks - 1;
        let tail = self.tail_residual.as_ref().expect("checked by must_run");
        Ok(Some((tail + x)?))
    }

    fn after_last(&mut self, x: &Tensor, _ctx: &Tensor) -> Result<()> {
        if let Some(head) = &self.head_output {
            self.tail_residual = Some((x - head)?);
        }
        Ok(())
    }
}
