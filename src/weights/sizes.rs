//! Weight files → the bytes their tensors take once loaded: at the run's dtype, quantized as `--quantize` does it,
//! or as a GGUF file stores them. Reads only the headers (for the memory estimate before a run).

use crate::error::{Error, Result};
use candle_core::quantized::GgmlDType;
use candle_core::DType;
use std::io::Read;
use std::path::Path;

/// How the tensors of a component are loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadAs {
    pub dtype: DType,
    /// `--quantize`, for the components it applies to (see [`Rule`]).
    pub quantize: Option<GgmlDType>,
    pub rule: Rule,
}

/// Which tensors a component quantizes, and how the rest load.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Rule {
    /// Everything at the run dtype (VAE, CLIP).
    Plain,
    /// The transformer and Qwen3 (`models::linear`): block matrices quantized (rows not whole blocks of the format take its fallback format),
    /// embedders and the final projection dense (`Weights::dense_linear`); a GGUF's blocks as stored, its float
    /// tensors at the run dtype.
    Transformer,
    /// A UNet (`models::unet`): the spatial transformers' matrices quantized (rows not whole blocks of the format
    /// take its fallback format, or stay dense), convolutions, norms and embeddings at the run dtype.
    UNet,
    /// T5 through candle's quantized T5: matrices but the embedding quantized when their rows are whole blocks,
    /// everything else f32; a GGUF as stored.
    T5,
}

/// The transformer tensors `Weights::dense_linear` keeps dense, by the name's root (BFL and diffusers namings,
/// after any ComfyUI prefix). `proj_out.` is the final projection only: the single blocks' are under their block.
const DENSE_ROOTS: [&str; 11] = [
    "img_in.",
    "txt_in.",
    "time_in.",
    "vector_in.",
    "guidance_in.",
    "final_layer.linear.",
    "x_embedder.",
    "context_embedder.",
    "time_text_embed.",
    "time_guidance_embed.",
    "proj_out.",
];

/// A JSON header above this is not a real checkpoint's (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// One tensor as its file header describes it.
struct Entry {
    name: String,
    shape: Vec<usize>,
    /// GGUF: the stored type.
    stored: Option<GgmlDType>,
}

impl Entry {
    fn elements(&self) -> u64 {
        self.shape.iter().fold(1u64, |n, d| n.saturating_mul(*d as u64))
    }
}

/// Loaded bytes of every tensor in `paths` (safetensors shards or one GGUF) that `keep` accepts.
pub fn loaded_bytes(paths: &[impl AsRef<Path>], how: LoadAs, keep: impl Fn(&str) -> bool) -> Result<u64> {
    let mut total = 0u64;
    for p in paths {
        let p = p.as_ref();
        let entries = if is_gguf(p) { gguf_entries(p)? } else { safetensors_entries(p)? };
        total = entries.iter().filter(|e| keep(&e.name)).map(|e| bytes(e, how)).fold(total, u64::saturating_add);
    }
    Ok(total)
}

fn is_gguf(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn bytes(e: &Entry, how: LoadAs) -> u64 {
    let n = e.elements();
    let block = |q: GgmlDType| n / q.block_size() as u64 * q.type_size() as u64;
    let at = |dtype: DType| n.saturating_mul(dtype.size_in_bytes() as u64);
    match (e.stored, how.rule) {
        (Some(q), _) if !is_float(q) => block(q),
        // candle's quantized T5 keeps a GGUF's float tensors as stored.
        (Some(q), Rule::T5) => block(q),
        (Some(_), _) => at(how.dtype),
        (None, Rule::Plain) => at(how.dtype),
        (None, Rule::Transformer) => match (how.quantize, e.shape.as_slice()) {
            (Some(q), [_, i]) if e.name.ends_with("weight") && !kept_dense(&e.name) => {
                quantized_format(q, *i).map_or(at(how.dtype), block)
            }
            _ => at(how.dtype),
        },
        (None, Rule::UNet) => match (how.quantize, e.shape.as_slice()) {
            (Some(q), [_, i]) if unet_quantized(&e.name) => quantized_format(q, *i).map_or(at(how.dtype), block),
            _ => at(how.dtype),
        },
        (None, Rule::T5) => match (how.quantize, e.shape.as_slice()) {
            (Some(q), [_, i]) if e.name != "shared.weight" && i % q.block_size() == 0 => block(q),
            (Some(_), _) => at(DType::F32),
            (None, _) => at(how.dtype),
        },
    }
}

fn is_float(t: GgmlDType) -> bool {
    matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// Whether a transformer tensor stays dense under `--quantize`.
fn kept_dense(name: &str) -> bool {
    let root = ["model.diffusion_model.", "diffusion_model."].iter().find_map(|p| name.strip_prefix(p)).unwrap_or(name);
    // Qwen3's token embedding is a lookup table, read as a plain tensor.
    DENSE_ROOTS.iter().any(|r| root.starts_with(r)) || name.ends_with("embed_tokens.weight")
}

/// Whether a UNet tensor is one of the matrices `models::unet_attention` quantizes (diffusers' and the original
/// single-file names alike): the transformer blocks' and the linear projections in and out.
fn unet_quantized(name: &str) -> bool {
    name.ends_with(".weight")
        && (name.contains("transformer_blocks.")
            || name.ends_with("proj_in.weight")
            || name.ends_with("proj_out.weight"))
}

/// The format a row of `i` values is quantized to: `q`, or its fallback when the row is not whole blocks.
fn quantized_format(q: GgmlDType, i: usize) -> Option<GgmlDType> {
    [q, crate::models::linear::fallback(q)].into_iter().find(|f| i % f.block_size() == 0)
}

fn gguf_entries(p: &Path) -> Result<Vec<Entry>> {
    Ok(super::gguf::header(p)?
        .tensors
        .into_iter()
        .map(|t| Entry { name: t.name, shape: t.dims.iter().map(|d| *d as usize).collect(), stored: Some(t.dtype) })
        .collect())
}

/// A safetensors file's tensor names and shapes, from its header alone.
pub fn safetensors_shapes(p: &Path) -> Result<Vec<(String, Vec<usize>)>> {
    Ok(safetensors_entries(p)?.into_iter().map(|e| (e.name, e.shape)).collect())
}

/// The JSON header of a safetensors file: names and shapes, without mapping the data.
fn safetensors_entries(p: &Path) -> Result<Vec<Entry>> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::model_from(p, "cannot open", e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::model(p, "not a safetensors file (too short)"))?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > size.saturating_sub(8) || len > MAX_HEADER {
        return Err(Error::model(p, "not a safetensors file (its header length is out of range)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::model_from(p, "cannot read", e))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| Error::model_from(p, "not a safetensors file", e))?;
    json.into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let dims = v["shape"].as_array().map(|a| a.iter().map(|d| d.as_u64().map(|d| d as usize)).collect());
            match dims {
                Some(Some(shape)) => Ok(Entry { name, shape, stored: None }),
                _ => Err(Error::model(p, format!("not a safetensors file ({name} has no valid shape)"))),
            }
        })
        .collect()
}
