//! Weight access for the transformer and Qwen3: dense safetensors (optionally quantised at load, `--quantize`) or a
//! GGUF file's already-quantised tensors. Takes tensor names, gives [`LinearLayer`] layers and plain tensors.
//!
//! Quantisation is per weight matrix, on the CPU, straight from the checkpoint (one dense tensor alive at a
//! time), then moved to the device. A matrix whose input width is not a multiple of the format's block (256
//! for k-quants, 32 otherwise) keeps the nearest 32-block format; real FLUX.1 widths (3072, 12288, 15360) are
//! all multiples of 256, so only toy models hit that.

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Result, Shape, Tensor};
use candle_nn::{Linear, VarBuilder};
use candle_transformers::quantized_var_builder::VarBuilder as GgufVarBuilder;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::weights::gguf_cache::Sink;
use crate::weights::lora::formats::Target;
use crate::weights::lora::{LoraSet, LowRank, ScaleCell};

/// A linear layer, dense or quantised, with an optional LoRA side path.
pub struct LinearLayer {
    base: Base,
    lora: Option<SidePath>,
}

enum Base {
    Dense(Linear),
    Quant { w: QMatMul, b: Option<Tensor> },
}

/// `s·up(down(x))` added to the layer's output; `s` can change between images.
pub struct SidePath {
    down: Linear,
    up: Linear,
    scale: ScaleCell,
}

impl SidePath {
    /// The pair in `dtype` on `device`.
    pub fn new(pair: LowRank, scale: ScaleCell, dtype: DType, device: &candle_core::Device) -> Result<Self> {
        let put = |t: Tensor| t.to_device(device)?.to_dtype(dtype);
        // A control LoRA's lora_B bias rides on `up`: s·(B·A·x + b), as PEFT runs it.
        let bias = pair.bias.map(put).transpose()?;
        Ok(Self { down: Linear::new(put(pair.down)?, None), up: Linear::new(put(pair.up)?, bias), scale })
    }
}

impl LinearLayer {
    pub fn dense(l: Linear) -> Self {
        Self { base: Base::Dense(l), lora: None }
    }

    fn quant(w: QMatMul, b: Option<Tensor>) -> Self {
        Self { base: Base::Quant { w, b }, lora: None }
    }

    pub fn with_lora(mut self, lora: Option<SidePath>) -> Self {
        self.lora = lora;
        self
    }

    /// Output features `start..start + len` only: one smaller GEMM for dense weights (a step cache that forecasts
    /// attention still needs the MLP half of FLUX.1's fused single-block projection); quantised weights compute
    /// every feature and keep those.
    pub fn forward_rows(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let Base::Dense(l) = &self.base else {
            return self.forward(x)?.narrow(candle_core::D::Minus1, start, len);
        };
        let bias = l.bias().map(|b| b.narrow(0, start, len)).transpose()?;
        let y = Linear::new(l.weight().narrow(0, start, len)?, bias).forward(x)?;
        match &self.lora {
            Some(p) => {
                let side = p.up.forward(&p.down.forward(x)?)?.narrow(candle_core::D::Minus1, start, len)?;
                y + (side * p.scale.get())?
            }
            None => Ok(y),
        }
    }
}

impl Module for LinearLayer {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = match &self.base {
            Base::Dense(l) => crate::kernels::linear(x, l)?,
            Base::Quant { w, b } => {
                // Quantised kernels take and give f32.
                let y = w.forward(&x.to_dtype(DType::F32)?)?.to_dtype(x.dtype())?;
                match b {
                    Some(b) => y.broadcast_add(b)?,
                    None => y,
                }
            }
        };
        match &self.lora {
            Some(p) => y + (p.up.forward(&p.down.forward(x)?)? * p.scale.get())?,
            None => Ok(y),
        }
    }
}

/// LoRA adapters for a model being built: merged into dense layers (`merge`, at the scale in `scale` now) or
/// added as side paths reading `scale` at run time.
pub struct LoraApply {
    pub set: Arc<LoraSet>,
    pub merge: bool,
    pub scale: ScaleCell,
}

impl LoraApply {
    /// The target's pair, if any adapter has one.
    fn pair(&self, target: &str, out: usize, inp: usize) -> Result<Option<LowRank>> {
        self.set.low_rank(&Target::Transformer(target.to_string()), out, inp)
    }

    /// A control LoRA's replacement for the parameter `prefix.name` (a query/key norm scale), in `dtype` on `dev`.
    fn replacement(
        &self,
        prefix: &str,
        name: &str,
        shape: &Shape,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<Option<Tensor>> {
        let full = if prefix.is_empty() { name.to_string() } else { format!("{prefix}.{name}") };
        let Some(t) = self.set.norms.get(&full) else { return Ok(None) };
        if t.shape() != shape {
            candle_core::bail!("the control LoRA's {full} is {:?}, the model's {:?}", t.dims(), shape.dims());
        }
        t.to_device(dev)?.to_dtype(dtype).map(Some)
    }

    /// Whether a control LoRA widens `target` to `inp` inputs (img_in: the control latents join the noise).
    fn widens(&self, target: &str, inp: usize) -> bool {
        target == "img_in" && self.set.input_channels == Some(inp)
    }

    fn side_path(
        &self,
        target: &str,
        out: usize,
        inp: usize,
        dtype: DType,
        dev: &candle_core::Device,
    ) -> Result<Option<SidePath>> {
        self.pair(target, out, inp)?.map(|p| SidePath::new(p, self.scale.clone(), dtype, dev)).transpose()
    }
}

/// How many matrices were quantised to the requested format, fell back to a 32-block one, or stayed dense.
#[derive(Debug, Default)]
pub struct QuantStats {
    pub requested: AtomicUsize,
    pub fallback: AtomicUsize,
}

/// The 32-block format closest to a k-quant, for matrices whose width is not a multiple of 256.
pub(crate) fn fallback(q: GgmlDType) -> GgmlDType {
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

/// A matrix quantized on the host, on `device`. Not `QTensor::quantize_onto`: on CUDA it leaves the row padding
/// that candle's quantized matmul reads past a row not a multiple of 512 wide uninitialized, and garbage there
/// (times the activations' zero padding) turned a q8_0 SDXL UNet's first step into NaN on an H200.
/// `QStorage::from_data` zeroes that padding, as for GGUF files.
fn onto_device(host: QTensor, device: &candle_core::Device) -> Result<QTensor> {
    if device.is_cpu() {
        return Ok(host);
    }
    let storage = QStorage::from_data(host.data()?, device, host.dtype())?;
    QTensor::new(storage, host.shape())
}

/// Linear layers read from a plain VarBuilder (the UNet's, whose LoRAs the builder has already merged), their
/// weights quantized to `format` when `--quantize` asks; biases stay dense. Rows that no 32-block format fits stay
/// dense too.
#[derive(Clone, Default)]
pub struct Quantizer {
    pub format: Option<GgmlDType>,
    pub stats: Arc<QuantStats>,
}

impl Quantizer {
    pub fn new(format: Option<GgmlDType>) -> Self {
        Self { format, stats: Arc::default() }
    }

    /// `weight` [o, i] (and `bias` [o] when `bias`) under `vb`.
    pub fn linear(&self, i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<LinearLayer> {
        let b = if bias { Some(vb.get(o, "bias")?) } else { None };
        let device = vb.device().clone();
        let Some(fmt) = self.format.and_then(|q| Self::fitting(q, i, &device)) else {
            return Ok(LinearLayer::dense(Linear::new(vb.get((o, i), "weight")?, b)));
        };
        // Quantized from f32 on the CPU, as the transformer's matrices are (one dense matrix alive at a time).
        let w = vb.set_device(candle_core::Device::Cpu).set_dtype(DType::F32).get((o, i), "weight")?;
        let qt = onto_device(QTensor::quantize(&w, fmt)?, &device)?;
        let counter = if Some(fmt) == self.format { &self.stats.requested } else { &self.stats.fallback };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(LinearLayer::quant(QMatMul::from_qtensor(qt)?, b))
    }

    /// `q`, or the nearest 32-block format rows of `width` allow on `device`; None when none fits.
    fn fitting(q: GgmlDType, width: usize, device: &candle_core::Device) -> Option<GgmlDType> {
        let mut fmt = if width % q.block_size() == 0 { q } else { fallback(q) };
        if !cpu_kernel_handles(fmt, width, device) {
            fmt = GgmlDType::Q8_0;
        }
        (width % fmt.block_size() == 0).then_some(fmt)
    }
}

/// safetensors through the checking VarBuilder, quantized at load if asked.
#[derive(Clone)]
pub struct DenseWeights {
    /// LoRA adapters to merge or add.
    pub lora: Option<Arc<LoraApply>>,
    pub vb: VarBuilder<'static>,
    /// The same names as f32 on the CPU, for quantizing and for the cache.
    pub cpu: VarBuilder<'static>,
    pub quant: Option<GgmlDType>,
    pub stats: Arc<QuantStats>,
    /// The quantization cache being written while the model is built.
    pub sink: Option<Sink>,
    /// Whether linear layers have a `bias` (FLUX.1) or not (FLUX.2).
    pub bias: bool,
}

impl DenseWeights {
    fn pp(&self, s: &str) -> Self {
        Self {
            vb: self.vb.pp(s),
            cpu: self.cpu.pp(s),
            quant: self.quant,
            stats: self.stats.clone(),
            sink: self.sink.clone(),
            lora: self.lora.clone(),
            bias: self.bias,
        }
    }

    /// The layer's bias, when layers have one.
    fn bias(&self, o: usize) -> Result<Option<Tensor>> {
        if !self.bias {
            return Ok(None);
        }
        self.record_dense(o, "bias")?;
        self.vb.get(o, "bias").map(Some)
    }

    /// Adds a tensor the model takes to the cache being written; a failed write stops caching, not the load.
    fn record(&self, name: &str, t: &QTensor) {
        let Some(sink) = &self.sink else { return };
        let mut guard = sink.lock().expect("cache lock");
        let full = match self.vb.prefix() {
            p if p.is_empty() => name.to_string(),
            p => format!("{p}.{name}"),
        };
        if let Some(w) = guard.as_mut() {
            if w.add(&full, t).is_err() {
                *guard = None;
            }
        }
    }

    /// Adds a dense tensor (as f32) to the cache being written.
    fn record_dense(&self, shape: impl Into<Shape>, name: &str) -> Result<()> {
        if self.sink.is_some() {
            let t = self.cpu.get(shape, name)?;
            self.record(name, &QTensor::quantize(&t, GgmlDType::F32)?);
        }
        Ok(())
    }
}

#[derive(Clone)]
pub enum Weights {
    Dense(DenseWeights),
    /// A GGUF file (BFL names). Non-matrix tensors are dequantised to `dtype`; LoRAs run as side paths.
    Gguf {
        vb: GgufVarBuilder,
        dtype: DType,
        prefix: String,
        lora: Option<Arc<LoraApply>>,
        bias: bool,
    },
}

impl Weights {
    pub fn pp(&self, s: impl ToString) -> Self {
        match self {
            Weights::Dense(d) => Weights::Dense(d.pp(&s.to_string())),
            Weights::Gguf { vb, dtype, prefix, lora, bias } => {
                let s = s.to_string();
                let prefix = if prefix.is_empty() { s.clone() } else { format!("{prefix}.{s}") };
                Weights::Gguf { vb: vb.pp(s), dtype: *dtype, prefix, lora: lora.clone(), bias: *bias }
            }
        }
    }

    /// The same weights for layers that do (or do not) have a bias: Qwen3's attention may, its MLP never.
    pub fn with_bias(&self, bias: bool) -> Self {
        let mut w = self.clone();
        match &mut w {
            Weights::Dense(d) => d.bias = bias,
            Weights::Gguf { bias: b, .. } => *b = bias,
        }
        w
    }

    /// The GGUF layer's bias, when layers have one (dequantised to the model dtype).
    fn gguf_bias(vb: &GgufVarBuilder, o: usize, dtype: DType, bias: bool) -> Result<Option<Tensor>> {
        if !bias {
            return Ok(None);
        }
        vb.get(o, "bias")?.dequantize(vb.device())?.to_dtype(dtype).map(Some)
    }

    pub fn dtype(&self) -> DType {
        match self {
            Weights::Dense(d) => d.vb.dtype(),
            Weights::Gguf { dtype, .. } => *dtype,
        }
    }

    /// A plain tensor (biases, norm scales).
    pub fn get(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        match self {
            Weights::Dense(d) => {
                let shape = shape.into();
                if let Some(l) = &d.lora {
                    if let Some(t) = l.replacement(&d.vb.prefix(), name, &shape, d.vb.dtype(), d.vb.device())? {
                        return Ok(t);
                    }
                }
                d.record_dense(shape.clone(), name)?;
                d.vb.get(shape, name)
            }
            Weights::Gguf { vb, dtype, prefix, lora, .. } => {
                let shape = shape.into();
                if let Some(l) = lora {
                    if let Some(t) = l.replacement(prefix, name, &shape, *dtype, vb.device())? {
                        return Ok(t);
                    }
                }
                vb.get(shape, name)?.dequantize(vb.device())?.to_dtype(*dtype)
            }
        }
    }

    /// A linear layer `weight` [o, i] + `bias` [o], quantised if asked (or stored so), with its LoRA.
    pub fn linear(&self, i: usize, o: usize) -> Result<LinearLayer> {
        match self {
            Weights::Dense(d) => match d.quant {
                Some(q) => d.quantized_linear(q, i, o),
                None => self.dense_linear(i, o),
            },
            Weights::Gguf { vb, dtype, prefix, lora, bias } => {
                let w = vb.get((o, i), "weight")?;
                if !cpu_kernel_handles(w.dtype(), i, vb.device()) {
                    return self.dense_linear(i, o);
                }
                let b = Self::gguf_bias(vb, o, *dtype, *bias)?;
                let side = lora.as_ref().map(|l| l.side_path(prefix, o, i, *dtype, vb.device())).transpose()?.flatten();
                Ok(LinearLayer::quant(QMatMul::from_arc(w)?, b).with_lora(side))
            }
        }
    }

    /// A linear layer that stays dense (embedders, the final projection: small and precision-sensitive), with its
    /// LoRA merged (dense weights) or as a side path.
    pub fn dense_linear(&self, i: usize, o: usize) -> Result<LinearLayer> {
        match self {
            Weights::Dense(d) => {
                d.record_dense((o, i), "weight")?;
                d.dense_with_lora(i, o)
            }
            Weights::Gguf { vb, dtype, prefix, lora, bias } => {
                let w = self.get((o, i), "weight")?;
                let b = Self::gguf_bias(vb, o, *dtype, *bias)?;
                let side = lora.as_ref().map(|l| l.side_path(prefix, o, i, *dtype, vb.device())).transpose()?.flatten();
                Ok(LinearLayer::dense(Linear::new(w, b)).with_lora(side))
            }
        }
    }
}

impl DenseWeights {
    /// A dense layer whose LoRA is merged (`W + s·B·A` in f32, then the model dtype) or added as a side path.
    fn dense_with_lora(&self, i: usize, o: usize) -> Result<LinearLayer> {
        let target = self.vb.prefix();
        let lora = self.lora.as_ref();
        let pair = lora.map(|l| l.pair(&target, o, i)).transpose()?.flatten();
        let w = match lora.filter(|l| l.widens(&target, i)) {
            Some(_) => self.widened_weight(i, o)?,
            None => self.vb.get((o, i), "weight")?,
        };
        let b = self.bias(o)?;
        let (Some(l), Some(pair)) = (lora, pair) else {
            return Ok(LinearLayer::dense(Linear::new(w, b)));
        };
        if l.merge {
            let s = l.scale.get();
            let delta = (pair.delta()?.to_device(w.device())? * s)?;
            let merged = (w.to_dtype(DType::F32)? + delta)?.to_dtype(w.dtype())?;
            let b = match (b, &pair.bias) {
                (Some(b), Some(d)) => {
                    Some((b.to_dtype(DType::F32)? + (d.to_device(b.device())? * s)?)?.to_dtype(b.dtype())?)
                }
                (None, Some(d)) => Some((d.to_device(w.device())? * s)?.to_dtype(w.dtype())?),
                (b, None) => b,
            };
            return Ok(LinearLayer::dense(Linear::new(merged, b)));
        }
        let side = SidePath::new(pair, l.scale.clone(), w.dtype(), w.device())?;
        Ok(LinearLayer::dense(Linear::new(w, b)).with_lora(Some(side)))
    }

    /// The stored [o, i'] weight with zero columns up to `i`: a control LoRA's img_in reads the control latents after
    /// the noise, which the base model never saw (diffusers widens `x_embedder` the same way).
    fn widened_weight(&self, i: usize, o: usize) -> Result<Tensor> {
        let w = self.vb.get_unchecked("weight")?;
        let (wo, wi) = w.dims2()?;
        if wo != o || wi > i {
            candle_core::bail!("img_in is {wo}x{wi}; the control LoRA needs {o}x{i}");
        }
        w.pad_with_zeros(1, 0, i - wi)
    }

    /// `weight` quantized to `q` (or the nearest format the row width allows; dense if none), bias dense.
    fn quantized_linear(&self, q: GgmlDType, i: usize, o: usize) -> Result<LinearLayer> {
        let Some(fmt) = Quantizer::fitting(q, i, self.vb.device()) else {
            return self.dense_with_lora(i, o);
        };
        let host = QTensor::quantize(&self.cpu.get((o, i), "weight")?, fmt)?;
        self.record("weight", &host);
        let qt = onto_device(host, self.vb.device())?;
        let counter = if fmt == q { &self.stats.requested } else { &self.stats.fallback };
        counter.fetch_add(1, Ordering::Relaxed);
        let b = self.bias(o)?;
        // A quantized matrix keeps its LoRA as a side path: merging into it would add rounding to the delta.
        let side = match &self.lora {
            Some(l) => l.side_path(&self.vb.prefix(), o, i, self.vb.dtype(), self.vb.device())?,
            None => None,
        };
        Ok(LinearLayer::quant(QMatMul::from_qtensor(qt)?, b).with_lora(side))
    }
}

/// The tensor names of a GGUF file (to detect the layout and dev/schnell like a safetensors file).
pub fn gguf_names(path: &std::path::Path) -> crate::Result<Vec<String>> {
    Ok(crate::weights::gguf::header(path)?.tensors.into_iter().map(|t| t.name).collect())
}

/// `--quantize` formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
