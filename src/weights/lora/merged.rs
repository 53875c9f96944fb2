//! LoRAs merged at load into models built straight from a `VarBuilder` (SD's UNet): takes the model's weights and a
//! [`LoraSet`], gives a `VarBuilder` whose `…weight` tensors of targeted modules are `W + s·B·A`, computed in f32
//! and cast back. Linear weights [out, in] and convolution kernels [out, in, kh, kw] (as [out, in·kh·kw]) are
//! targets; other tensors pass through unchanged.

use super::formats::Target;
use super::LoraSet;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::sync::Arc;

struct Merging {
    inner: VarBuilder<'static>,
    set: Arc<LoraSet>,
    scale: f64,
}

/// `inner`'s weights with `set`'s pairs merged at `scale` (the run's `--lora-scale`).
pub fn var_builder(inner: VarBuilder<'static>, set: Arc<LoraSet>, scale: f64) -> VarBuilder<'static> {
    let (dtype, device) = (inner.dtype(), inner.device().clone());
    VarBuilder::from_backend(Box::new(Merging { inner, set, scale }), dtype, device)
}

impl SimpleBackend for Merging {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let w = self.inner.get_with_hints_dtype(s.clone(), name, h, dtype)?;
        let (out, inp) = match *s.dims() {
            [o, i] => (o, i),
            [o, i, h, k] => (o, i * h * k),
            _ => return Ok(w),
        };
        let Some(module) = name.strip_suffix(".weight") else { return Ok(w) };
        let Some(pair) = self.set.low_rank(&Target::Transformer(module.to_string()), out, inp)? else {
            return Ok(w);
        };
        let delta = (pair.delta()?.to_device(dev)? * self.scale)?.reshape(s)?;
        (w.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _: &Device) -> candle_core::Result<Tensor> {
        self.inner.get_unchecked_dtype(name, dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.inner.contains_tensor(name)
    }
}
