//! The weights a model constructor asks for, without reading any: takes a constructor, gives every requested
//! name with its shape. Each request is answered with a zero-stride placeholder (no memory), so this costs what
//! building the module tree costs. SD's UNet layer shapes for LoRA checks come from here, straight from the
//! model code and its config.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::sync::{Arc, Mutex};

type Seen = Arc<Mutex<Vec<(String, Vec<usize>)>>>;

struct Recorder(Seen);

impl SimpleBackend for Recorder {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.lock().expect("recorder lock").push((name.to_string(), s.dims().to_vec()));
        Tensor::zeros((), dtype, dev)?.broadcast_as(s)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: the shape recorder only answers requests with a shape")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        // Optional tensors are taken as present: the larger module tree.
        true
    }
}

/// Every (name, shape) `build` requests from its `VarBuilder`, in order.
pub fn requested<T>(
    build: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> candle_core::Result<Vec<(String, Vec<usize>)>> {
    let seen: Seen = Arc::default();
    let vb = VarBuilder::from_backend(Box::new(Recorder(seen.clone())), DType::F32, Device::Cpu);
    build(vb)?;
    let out = std::mem::take(&mut *seen.lock().expect("recorder lock"));
    Ok(out)
}

/// The modules among `requested` whose weights are [out, in] or convolution kernels [out, in, kh, kw]: what LoRA
/// pairs can target.
pub fn lora_targets(requested: &[(String, Vec<usize>)]) -> Vec<(String, (usize, usize))> {
    requested
        .iter()
        .filter_map(|(name, dims)| {
            let module = name.strip_suffix(".weight")?;
            match dims[..] {
                [o, i] => Some((module.to_string(), (o, i))),
                // Convolutions as their flattened kernels [out, in·kh·kw] (LoCon pairs read that way).
                [o, i, h, w] => Some((module.to_string(), (o, i * h * w))),
                _ => None,
            }
        })
        .collect()
}
