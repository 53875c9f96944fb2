//! Weight access for the transformer: dense safetensors (optionally quantised at load, `--quantize`) or a
//! GGUF file's already-quantised tensors. Takes tensor names, gives [`LinearLayer`] layers and plain tensors.
//!
//! Quantisation is per weight matrix, on the CPU, straight from the checkpoint (one dense tensor alive at a
//! time), then moved to the device. A matrix whose input width is not a multiple of the format's block (256
//! for k-quants, 32 otherwise) keeps the nearest 32-block format; real FLUX.1 widths (3072, 12288, 15360) are
//! all multiples of 256, so only toy models hit that.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::quantized_var_builder::VarBuilder as GgufVarBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A linear layer, dense or quantised.
pub enum LinearLayer {
    Dense(Linear),
    Quant { w: QMatMul, b: Option<Tensor> },
}

impl Module for LinearLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            LinearLayer::Dense(l) => l.forward(x),
            LinearLayer::Quant { w, b } => {
                // Quantised kernels take and give f32.
                let y = w.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
                match b {
                    Some(b) => y.broadcast_add(b),
                    None => Ok(y),
                }
            }
        }
    }
}

/// How many matrices were quantised to the requested format, fell back to a 32-block one, or stayed dense.
#[derive(Debug, Default)]
pub struct QuantStats {
    pub requested: AtomicUsize,
    pub fallback: AtomicUsize,
}

/// The 32-block format closest to a k-quant, for matrices whose width is not a multiple of 256.
fn fallback(q: GgmlDType) -> GgmlDType {
    match q {
        GgmlDType::Q6K | GgmlDType::Q8K => GgmlDType::Q8_0,
        GgmlDType::Q5K => GgmlDType::Q5_0,
        GgmlDType::Q4K | GgmlDType::Q3K | GgmlDType::Q2K => GgmlDType::Q4_0,
        other => other,
    }
}

/// Whether candle's CPU kernel can multiply rows of `width` stored as `fmt`: its Q4_1, Q5_0 and Q5_1 dot products
/// work on pairs of 32-blocks and assert (panic) on an odd count. FLUX.1's widths are all even multiples; narrow
/// or odd matrices are run dense instead (dequantized: the same stored values).
fn cpu_kernel_handles(fmt: GgmlDType, width: usize, device: &candle_core::Device) -> bool {
    let paired = matches!(fmt, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1);
    !(device.is_cpu() && paired && (width / fmt.block_size()) % 2 == 1)
}

#[derive(Clone)]
pub enum Weights {
    /// safetensors through the checking VarBuilder; `cpu` reads the same names as f32 on the CPU, for
    /// quantising.
    Dense { vb: VarBuilder<'static>, cpu: VarBuilder<'static>, quant: Option<GgmlDType>, stats: Arc<QuantStats> },
    /// A GGUF file (BFL names). Non-matrix tensors are dequantised to `dtype`.
    Gguf { vb: GgufVarBuilder, dtype: DType },
}

impl Weights {
    pub fn pp(&self, s: impl ToString) -> Self {
        match self {
            Weights::Dense { vb, cpu, quant, stats } => Weights::Dense {
                vb: vb.pp(s.to_string()),
                cpu: cpu.pp(s.to_string()),
                quant: *quant,
                stats: stats.clone(),
            },
            Weights::Gguf { vb, dtype } => Weights::Gguf { vb: vb.pp(s), dtype: *dtype },
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Weights::Dense { vb, .. } => vb.dtype(),
            Weights::Gguf { dtype, .. } => *dtype,
        }
    }

    /// A plain tensor (biases, norm scales).
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        match self {
            Weights::Dense { vb, .. } => vb.get(shape, name),
            Weights::Gguf { vb, dtype } => vb.get(shape, name)?.dequantize(vb.device())?.to_dtype(*dtype),
        }
    }

    /// A linear layer `weight` [o, i] + `bias` [o], quantised if asked (or stored so).
    pub fn linear(&self, i: usize, o: usize) -> Result<LinearLayer> {
        match self {
            Weights::Dense { vb, cpu, quant: Some(q), stats } => {
                let mut fmt = if i % q.block_size() == 0 { *q } else { fallback(*q) };
                if !cpu_kernel_handles(fmt, i, vb.device()) {
                    fmt = GgmlDType::Q8_0;
                }
                if i % fmt.block_size() != 0 {
                    return self.dense_linear(i, o);
                }
                let w = cpu.get((o, i), "weight")?;
                let qt = QTensor::quantize_onto(&w, fmt, vb.device())?;
                let counter = if fmt == *q { &stats.requested } else { &stats.fallback };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok(LinearLayer::Quant { w: QMatMul::from_qtensor(qt)?, b: Some(vb.get(o, "bias")?) })
            }
            Weights::Dense { .. } => self.dense_linear(i, o),
            Weights::Gguf { vb, dtype } => {
                let w = vb.get((o, i), "weight")?;
                if !cpu_kernel_handles(w.dtype(), i, vb.device()) {
                    return self.dense_linear(i, o);
                }
                let b = vb.get(o, "bias")?.dequantize(vb.device())?.to_dtype(*dtype)?;
                Ok(LinearLayer::Quant { w: QMatMul::from_arc(w)?, b: Some(b) })
            }
        }
    }

    /// A linear layer that stays dense (embedders, the final projection: small and precision-sensitive).
    pub fn dense_linear(&self, i: usize, o: usize) -> Result<LinearLayer> {
        match self {
            Weights::Dense { vb, .. } => Ok(LinearLayer::Dense(candle_nn::linear(i, o, vb.clone())?)),
            Weights::Gguf { .. } => {
                let w = self.get((o, i), "weight")?;
                let b = self.get(o, "bias")?;
                Ok(LinearLayer::Dense(Linear::new(w, Some(b))))
            }
        }
    }
}

/// The tensor names of a GGUF file (to detect the layout and dev/schnell like a safetensors file).
pub fn gguf_names(path: &std::path::Path) -> crate::Result<Vec<String>> {
    let mut f = std::fs::File::open(path).map_err(|e| crate::Error::model_from(path, "cannot open", e))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)
        .map_err(|e| crate::Error::model_from(path, "unreadable GGUF", e))?;
    Ok(content.tensor_infos.keys().cloned().collect())
}

/// `--quantize` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Quant {
    Q8_0,
    Q6K,
    Q5K,
    Q4K,
    Q4_0,
}

crate::named_enum!(Quant, "quantization", [Q8_0 = "q8_0", Q6K = "q6_k", Q5K = "q5_k", Q4K = "q4_k", Q4_0 = "q4_0"]);

impl Quant {
    pub fn ggml(self) -> GgmlDType {
        match self {
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q6K => GgmlDType::Q6K,
            Quant::Q5K => GgmlDType::Q5K,
            Quant::Q4K => GgmlDType::Q4K,
            Quant::Q4_0 => GgmlDType::Q4_0,
        }
    }
}
