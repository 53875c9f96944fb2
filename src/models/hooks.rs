//! Where a step cache reaches into a transformer's forward, as diffusers' block hooks do: after the first block
//! (First-Block Cache may end the pass there), after the last, and around each block's attention module
//! (TaylorSeer may forecast its outputs instead of running it). The models call these and keep no state; the
//! caches themselves live in `engine::cache`.

use crate::kernels::Angles;
use candle_core::{Result, Tensor};

/// What a step cache sees of one transformer pass. Every method's default does nothing, as without a cache.
pub trait BlockCache {
    /// After the first (double) block, given its image input and its (image, text) outputs: the image stream the
    /// last block would give, when the remaining blocks may be skipped this pass.
    fn after_first(&mut self, _x_in: &Tensor, _x: &Tensor, _ctx: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// After the last block ran, with its image and text streams.
    fn after_last(&mut self, _x: &Tensor, _ctx: &Tensor) -> Result<()> {
        Ok(())
    }

    /// The outputs of block `id`'s attention module (double blocks first, then single blocks), forecast for this
    /// pass; None when the module runs (and its outputs then go to [`BlockCache::record`]).
    fn forecast(&mut self, _id: usize) -> Result<Option<Vec<Tensor>>> {
        Ok(None)
    }

    /// The outputs block `id`'s attention module computed this pass.
    fn record(&mut self, _id: usize, _outputs: &[Tensor]) -> Result<()> {
        Ok(())
    }
}

/// No cache: every block runs.
pub struct NoCache;

impl BlockCache for NoCache {}

/// What every block of one pass reads, and the step cache deciding what runs.
pub(crate) struct Pass<'a> {
    pub heads: usize,
    pub rope: &'a Angles,
    pub cache: &'a mut dyn BlockCache,
    /// ControlNet residuals added to the image stream after the blocks (FLUX.1 only).
    pub control: Option<&'a Residuals>,
}

/// What a ControlNet gives the main transformer: one image-stream residual per ControlNet double block and one per
/// single block, already × the conditioning scale. Main block `i` of `n` reads sample `i / ceil(n / len)`, as
/// diffusers' `interval_control` does (or `i % len` with `repeat`, its `controlnet_blocks_repeat`).
pub struct Residuals {
    pub double: Vec<Tensor>,
    pub single: Vec<Tensor>,
    pub repeat: bool,
}

impl Residuals {
    /// The sample for main block `i` of `n` from `samples` (None when there are none).
    fn pick(samples: &[Tensor], i: usize, n: usize, repeat: bool) -> Option<&Tensor> {
        if samples.is_empty() {
            return None;
        }
        let interval = n.div_ceil(samples.len()).max(1);
        samples.get(if repeat { i % samples.len() } else { i / interval })
    }

    /// The sum of several ControlNets' residuals (diffusers' `FluxMultiControlNetModel` adds them sample-wise).
    pub fn plus(self, other: &Residuals) -> Result<Self> {
        let sum = |a: Vec<Tensor>, b: &[Tensor]| -> Result<Vec<Tensor>> {
            if b.is_empty() {
                return Ok(a);
            }
            a.iter().zip(b).map(|(x, y)| x + y).collect()
        };
        Ok(Self {
            double: sum(self.double, &other.double)?,
            single: sum(self.single, &other.single)?,
            repeat: self.repeat,
        })
    }
}

/// `x` plus the residual of double block `i` of `n`, when there is one.
fn add_double(run: &Pass, x: Tensor, i: usize, n: usize) -> Result<Tensor> {
    match run.control.and_then(|c| Residuals::pick(&c.double, i, n, c.repeat)) {
        // The residuals are the prompt's alone: with true CFG they serve both passes of the batch.
        Some(r) => x.broadcast_add(r),
        None => Ok(x),
    }
}

/// `h` = [text; image] with the residual of single block `i` of `n` added to its image part.
fn add_single(run: &Pass, h: Tensor, st: usize, i: usize, n: usize) -> Result<Tensor> {
    match run.control.and_then(|c| Residuals::pick(&c.single, i, n, false)) {
        Some(r) => {
            let img = h.narrow(1, st, h.dim(1)? - st)?.broadcast_add(r)?;
            Tensor::cat(&[&h.narrow(1, 0, st)?, &img], 1)
        }
        None => Ok(h),
    }
}

/// The two outputs (image, text) of a double block's attention module, as a cache forecast them.
pub(crate) fn forecast_pair(f: Vec<Tensor>) -> Result<[Tensor; 2]> {
    <[Tensor; 2]>::try_from(f).map_err(|f| candle_core::Error::Msg(format!("a forecast of {} tensors, not 2", f.len())))
}

/// The blocks of an MM-DiT in order, as the model's forward runs them: double blocks on (image, text), then single
/// blocks on [text; image]; gives the image stream after the last block. The cache is asked after the first block
/// (First-Block Cache may end the pass there) and told after the last.
pub(crate) fn walk<D, S>(
    blocks: (&[D], &[S]),
    (mut x, mut ctx): (Tensor, Tensor),
    run: &mut Pass,
    double: impl Fn(&D, &Tensor, &Tensor, &mut Pass, usize) -> Result<(Tensor, Tensor)>,
    single: impl Fn(&S, &Tensor, &mut Pass, usize) -> Result<Tensor>,
) -> Result<Tensor> {
    let n = blocks.0.len();
    for (id, block) in blocks.0.iter().enumerate() {
        let (x1, ctx1) = double(block, &x, &ctx, run, id)?;
        let x1 = add_double(run, x1, id, n)?;
        if id == 0 {
            if let Some(out) = run.cache.after_first(&x, &x1, &ctx1)? {
                return Ok(out);
            }
        }
        (x, ctx) = (x1, ctx1);
    }
    let st = ctx.dim(1)?;
    let mut h = Tensor::cat(&[&ctx, &x], 1)?;
    for (i, block) in blocks.1.iter().enumerate() {
        h = single(block, &h, run, n + i)?;
        h = add_single(run, h, st, i, blocks.1.len())?;
    }
    let x = h.narrow(1, st, h.dim(1)? - st)?;
    run.cache.after_last(&x, &h.narrow(1, 0, st)?)?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::Residuals;
    use candle_core::{Device, Tensor};

    /// diffusers' transformer: block i of n reads sample `i // ceil(n / len)`, or `i % len` with
    /// `controlnet_blocks_repeat` (XLabs' two double blocks over FLUX.1-dev's 19).
    #[test]
    fn samples_are_picked_as_diffusers_does() {
        let samples: Vec<Tensor> = (0..2).map(|k| Tensor::new(&[k as f32], &Device::Cpu).unwrap()).collect();
        let pick =
            |i, n, repeat| Residuals::pick(&samples, i, n, repeat).map(|t| t.to_vec1::<f32>().unwrap()[0] as usize);
        let interval: Vec<_> = (0..5).map(|i| pick(i, 5, false)).collect();
        assert_eq!(interval, [Some(0), Some(0), Some(0), Some(1), Some(1)]);
        let repeat: Vec<_> = (0..5).map(|i| pick(i, 5, true)).collect();
        assert_eq!(repeat, [Some(0), Some(1), Some(0), Some(1), Some(0)]);
        assert_eq!(Residuals::pick(&[], 0, 5, false).map(|_| ()), None);
    }
}
