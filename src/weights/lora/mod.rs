//! LoRA adapters: `--lora FILE[:WEIGHT]` files → one combined low-rank pair per target layer, checked against the
//! model's shapes before anything loads. Dense layers get `W + s·B·A` merged in f32 at load; quantized or GGUF
//! layers (and scale sweeps) add `s·B(A·x)` as a side path at run time. Formats: `formats`.
//!
//! For a target, every pair of every adapter is stacked: A = [A₁; A₂; …] (Σr × in) and B = [w₁·c₁·B₁ | w₂·c₂·B₂ | …]
//! (out × Σr) with each Bᵢ at its rows (fused q/k/v parts), where wᵢ is the adapter's weight and cᵢ its alpha/rank;
//! the call's scale `s` (`--lora-scale`) multiplies the whole, as diffusers' `joint_attention_kwargs` scale does.

pub mod formats;
pub mod merged;
pub mod sd;
pub mod shapes;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use formats::{FileView, Parsed, RawPart, Target, Unsupported};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One `--lora` argument: a file and its weight (`set_adapters` weight in diffusers).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub weight: f64,
}

/// A LoRA's scale that can change between images without rebuilding the model (sweeps, side paths).
#[derive(Debug, Clone, Default)]
pub struct ScaleCell(Arc<AtomicU64>);

impl ScaleCell {
    pub fn new(v: f64) -> Self {
        Self(Arc::new(AtomicU64::new(v.to_bits())))
    }
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed)
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A target's combined pair, f32 on the CPU: `down` [R, in], `up` [out, R] (adapter weights and alpha/rank in),
/// and control LoRAs' `lora_B` bias [out] (weighted likewise).
#[derive(Debug, Clone)]
pub struct LowRank {
    pub down: Tensor,
    pub up: Tensor,
    pub bias: Option<Tensor>,
}

impl LowRank {
    /// `up · down`, the dense delta [out, in] (f32).
    pub fn delta(&self) -> candle_core::Result<Tensor> {
        self.up.matmul(&self.down)
    }
}

/// One file, read and mapped.
struct Adapter {
    spec: LoraSpec,
    /// Civitai's "AutoV2" hash: the first 10 hex digits of the file's SHA-256.
    hash: String,
    tensors: HashMap<String, Tensor>,
    parts: Vec<RawPart>,
}

/// The adapters of a run, checked against the model.
pub struct LoraSet {
    adapters: Vec<Adapter>,
    /// What loading found: format and counts per file.
    pub notes: Vec<String>,
    /// Parts left out (ignored as diffusers does, or matching nothing).
    pub warnings: Vec<String>,
    /// Whether any adapter changes CLIP (then prompt encodings depend on the LoRA).
    pub touches_clip: bool,
    /// Control LoRAs: the input width their `img_in` pair takes (twice the model's: noise, then control latents).
    pub input_channels: Option<usize>,
    /// Control LoRAs: norm scales replacing the model's, by BFL parameter name (f32, CPU; a later file wins).
    pub norms: HashMap<String, Tensor>,
}

/// The model's linear layers (and convolutions, as [out, in·kh·kw]) that LoRAs can target, with their shapes [out, in].
pub struct ModelShapes {
    /// The denoiser's: FLUX's transformer in BFL names, or SD's UNet in diffusers names.
    pub transformer: HashMap<String, (usize, usize)>,
    /// CLIP's, `encoder.layers.N.…`; SDXL's second encoder's under `text_encoder_2.`.
    pub clip: HashMap<String, (usize, usize)>,
    pub double: usize,
    pub single: usize,
    pub family: crate::config::Family,
    /// Other names of denoiser modules → their names in `transformer` (SD's original `input_blocks.…` layout).
    pub aliases: HashMap<String, String>,
}

impl LoraSet {
    /// Reads `specs` and checks every pair against `shapes`.
    pub fn load(specs: &[LoraSpec], shapes: &ModelShapes) -> Result<Self> {
        let mut set = LoraSet {
            adapters: Vec::new(),
            notes: Vec::new(),
            warnings: Vec::new(),
            touches_clip: false,
            input_channels: None,
            norms: HashMap::new(),
        };
        for spec in specs {
            let (tensors, view) = read(&spec.path, shapes)?;
            let mut parsed = formats::parse(&view).map_err(|u| unsupported(&spec.path, u))?;
            drop_absent(&mut parsed, shapes);
            check(&spec.path, &parsed, &view, shapes)?;
            let (note, warning) = describe(&spec.path, &parsed, &view);
            set.notes.push(note);
            set.warnings.extend(warning);
            set.touches_clip |= parsed.parts.iter().any(|p| matches!(p.target, Target::Clip(_)));
            if let Some(p) = parsed.parts.iter().find(|p| p.target == Target::Transformer("img_in".into())) {
                set.input_channels = view.shapes[&p.down].get(1).copied();
            }
            for (key, name) in &parsed.norms {
                set.norms.insert(name.clone(), tensors[key].flatten_all()?);
            }
            set.adapters.push(Adapter { spec: spec.clone(), hash: autov2(&spec.path)?, tensors, parts: parsed.parts });
        }
        Ok(set)
    }

    /// The combined pair for `target` of shape `out`×`inp`, if any adapter has one.
    pub fn low_rank(&self, target: &Target, out: usize, inp: usize) -> candle_core::Result<Option<LowRank>> {
        let (mut downs, mut ups, mut bias) = (Vec::new(), Vec::new(), None::<Tensor>);
        for a in &self.adapters {
            for p in a.parts.iter().filter(|p| &p.target == target) {
                let (down, up) = (&a.tensors[&p.down], &a.tensors[&p.up]);
                let up = if p.place.swap { swap_halves(up)? } else { up.clone() };
                let (start, len) = p.place.rows(out, inp);
                let rank = down.dim(0)?;
                let w = a.spec.weight * p.scale;
                // The pair's rows inside the target; zeros elsewhere.
                let placed = up.pad_with_zeros(0, start, out - start - len)?;
                ups.push((placed * w)?);
                // A control LoRA's narrower input (img_in) is its leading columns: the rest are the control's.
                downs.push(down.pad_with_zeros(1, 0, inp.saturating_sub(down.dim(1)?))?);
                if let Some(b) = &p.bias {
                    let b = if p.place.swap { swap_halves(&a.tensors[b])? } else { a.tensors[b].clone() };
                    let b = (b.flatten_all()?.pad_with_zeros(0, start, out - start - len)? * w)?;
                    bias = Some(match bias {
                        Some(sum) => (sum + b)?,
                        None => b,
                    });
                }
                debug_assert_eq!(ups.last().map(|u| u.dim(1).ok()), Some(Some(rank)));
            }
        }
        if downs.is_empty() {
            return Ok(None);
        }
        Ok(Some(LowRank { down: Tensor::cat(&downs, 0)?, up: Tensor::cat(&ups, 1)?, bias }))
    }

    pub fn specs(&self) -> Vec<LoraSpec> {
        self.adapters.iter().map(|a| a.spec.clone()).collect()
    }

    /// Each adapter's AutoV2 hash, in order.
    pub fn hashes(&self) -> Vec<String> {
        self.adapters.iter().map(|a| a.hash.clone()).collect()
    }
}

/// The input width a control LoRA's `img_in` pair reads (`img_in.lora_A.weight` or
/// `transformer.x_embedder.lora_A.weight`), from the file's header alone; None for other LoRAs (or an unreadable
/// file, which loading reports).
pub fn img_in_width(path: &Path) -> Option<usize> {
    let shapes = crate::weights::sizes::safetensors_shapes(path).ok()?;
    let pair = ["img_in.lora_A.weight", "transformer.x_embedder.lora_A.weight"];
    shapes.into_iter().find(|(name, _)| pair.contains(&name.as_str())).and_then(|(_, shape)| shape.get(1).copied())
}

/// The first 10 hex digits of the file's SHA-256 (what Civitai and A1111 call AutoV2).
fn autov2(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| Error::lora_from(path, "cannot read the LoRA file", e))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::lora_from(path, "cannot read the LoRA file", e))?;
    Ok(h.finalize().iter().take(5).map(|b| format!("{b:02x}")).collect())
}

/// Rows [n/2, n) then [0, n/2): diffusers' `norm_out` order → BFL's final modulation order.
fn swap_halves(t: &Tensor) -> candle_core::Result<Tensor> {
    let half = t.dim(0)? / 2;
    Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)
}

fn err(path: &Path, msg: impl Into<String>) -> Error {
    Error::lora(path, msg)
}

/// The file's tensors (f32, CPU) and what the parser needs to know about them.
fn read(path: &Path, shapes: &ModelShapes) -> Result<(HashMap<String, Tensor>, FileView)> {
    let bytes = std::fs::read(path).map_err(|e| Error::lora_from(path, "cannot read the LoRA file", e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::lora_from(path, "not a safetensors LoRA (unreadable header)", e))?;
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .map_err(|e| Error::lora_from(path, "unreadable LoRA tensors", e))?;
    let tensors: HashMap<String, Tensor> = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, as_matrix(t.to_dtype(DType::F32)?)?)))
        .collect::<candle_core::Result<_>>()?;
    let mut scalars = HashMap::new();
    for (k, t) in tensors.iter().filter(|(_, t)| t.elem_count() == 1) {
        scalars.insert(k.clone(), t.flatten_all()?.to_vec1::<f32>()?[0] as f64);
    }
    let first_alpha = meta
        .tensors()
        .into_iter()
        .filter(|(k, _)| k.ends_with(".alpha"))
        .min_by_key(|(_, info)| info.data_offsets.0)
        .and_then(|(k, _)| scalars.get(&k).copied());
    let metadata = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lora_adapter_metadata"))
        .and_then(|j| serde_json::from_str(j).ok());
    let view = FileView {
        shapes: tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect(),
        scalars,
        first_alpha,
        metadata,
        double: shapes.double,
        single: shapes.single,
        family: shapes.family,
        modules: shapes
            .transformer
            .keys()
            .cloned()
            .map(Target::Transformer)
            .chain(shapes.clip.keys().cloned().map(Target::Clip))
            .collect(),
        aliases: shapes.aliases.clone(),
    };
    Ok((tensors, view))
}

/// A convolution's pair as the linear pair it is on the flattened kernel: down [r, in, kh, kw] → [r, in·kh·kw]
/// (1×1: SD's `proj_in`/`proj_out`; wider: LoCon's resnet convolutions), up [out, r, 1, 1] → [out, r]. The merged
/// `up·down` reshapes back to the kernel [out, in, kh, kw] exactly: a k×k down then a 1×1 up is one k×k kernel.
fn as_matrix(t: Tensor) -> candle_core::Result<Tensor> {
    match *t.dims() {
        [a, b, h, w] => t.reshape((a, b * h * w)),
        _ => Ok(t),
    }
}

fn unsupported(path: &Path, u: Unsupported) -> Error {
    match u {
        Unsupported::OtherArchitecture(key) => err(
            path,
            format!("this LoRA is for Stable Diffusion (UNet keys such as {key}), not FLUX.1; use a FLUX.1 LoRA"),
        ),
        Unsupported::OtherFamily(family, key) => err(
            path,
            format!(
                "this LoRA is for {family} (keys such as {key}), but the model is {}; use a LoRA made for this model",
                if family == crate::config::Family::Flux1 { "FLUX.2" } else { "FLUX.1" }
            ),
        ),
        Unsupported::FluxOnSd(key) => err(
            path,
            format!("this LoRA is for FLUX (keys such as {key}), not Stable Diffusion; use a LoRA made for this model"),
        ),
    }
}

/// Pairs for layers this model lacks (a LoRA for a deeper model) join the unmatched tensors: a warning, as in
/// diffusers, unless nothing is left.
fn drop_absent(parsed: &mut Parsed, shapes: &ModelShapes) {
    let present = |t: &Target| match t {
        Target::Transformer(m) => shapes.transformer.contains_key(m),
        Target::Clip(m) => shapes.clip.contains_key(m),
    };
    let (kept, absent): (Vec<RawPart>, Vec<RawPart>) = parsed.parts.drain(..).partition(|p| present(&p.target));
    parsed.parts = kept;
    parsed.unmatched.extend(absent.into_iter().flat_map(|p| [p.down, p.up]));
}

/// Every pair must fit its target's shape; a file that matches nothing is an error.
fn check(path: &Path, parsed: &Parsed, view: &FileView, shapes: &ModelShapes) -> Result<()> {
    if parsed.parts.is_empty() && parsed.ignored.is_empty() {
        let mut keys: Vec<&String> = view.shapes.keys().collect();
        keys.sort();
        let few: Vec<&str> = keys.iter().take(4).map(|k| k.as_str()).collect();
        return Err(err(
            path,
            format!(
                "no tensor matches this {} model (format guessed: {}); keys look like {}",
                view.family,
                parsed.format.map_or("none recognised", |f| f.name()),
                few.join(", ")
            ),
        ));
    }
    for p in &parsed.parts {
        let shape = match &p.target {
            Target::Transformer(m) => shapes.transformer.get(m),
            Target::Clip(m) => shapes.clip.get(m),
        };
        // drop_absent left only present targets.
        let Some(&(out, inp)) = shape else { continue };
        let (d, u) = (&view.shapes[&p.down], &view.shapes[&p.up]);
        let (_, rows) = p.place.rows(out, inp);
        // A control LoRA's img_in pair reads a whole multiple of the model's input (the layer is widened for it).
        let widened =
            p.target == Target::Transformer("img_in".into()) && d.len() == 2 && (d[1] % inp == 0 || inp % d[1] == 0);
        let bias_ok = p.bias.as_ref().is_none_or(|b| view.shapes[b].iter().product::<usize>() == rows);
        let ok = d.len() == 2 && u.len() == 2 && (d[1] == inp || widened) && u[0] == rows && u[1] == d[0] && bias_ok;
        if !ok {
            return Err(err(
                path,
                format!(
                    "{} is {d:?} and {} is {u:?}, but the model's layer needs [rank, {inp}] and [{rows}, rank] (a LoRA \
                     for another model size or rank mismatch)",
                    p.down, p.up
                ),
            ));
        }
    }
    Ok(())
}

/// A note about a file (format, pairs), and a warning about what was left out, if anything was.
fn describe(path: &Path, parsed: &Parsed, view: &FileView) -> (String, Option<String>) {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let transformer = parsed.parts.iter().filter(|p| matches!(p.target, Target::Transformer(_))).count();
    let clip = parsed.parts.len() - transformer;
    let denoiser = if view.family.is_sd() { "UNet" } else { "transformer" };
    let note = format!(
        "LoRA {name}: {} format, {transformer} {denoiser} and {clip} CLIP pairs",
        parsed.format.map_or("?", |f| f.name())
    );
    let mut left = Vec::new();
    if let Some((_, why)) = parsed.ignored.first() {
        left.push(format!("{} pairs ignored: {why}", parsed.ignored.len()));
    }
    if let Some(first) = parsed.unmatched.first() {
        left.push(format!(
            "{} of {} tensors match nothing in this model (e.g. {first})",
            parsed.unmatched.len(),
            view.shapes.len()
        ));
    }
    (note, (!left.is_empty()).then(|| format!("LoRA {name}: {}", left.join("; "))))
}
