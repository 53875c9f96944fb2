//! Weight files → the bytes their tensors take once loaded: at the run's dtype, quantized as `--quantize` does it,
//! or as a GGUF file stores them. Reads only the headers (for the memory estimate before a run).

use crate::error::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use candle_core::DType;
use std::io::Read;
use std::path::Path;

/// How the tensors of a component are loaded.
#[derive(Debug, Clone, Copy)]
pub struct LoadAs {
    pub dtype: DType,
    /// Matrices quantized at load (`--quantize`), as the transformer and T5 do it.
    pub quantize: Option<GgmlDType>,
}

/// One tensor as its file header describes it.
struct Entry {
    name: String,
    shape: Vec<usize>,
    /// Set for GGUF tensors stored in a block format.
    stored: Option<GgmlDType>,
}

/// Loaded bytes of every tensor in `paths` (safetensors shards or one GGUF) that `keep` accepts.
pub fn loaded_bytes(paths: &[impl AsRef<Path>], how: LoadAs, keep: impl Fn(&str) -> bool) -> Result<u64> {
    let mut total = 0;
    for p in paths {
        let p = p.as_ref();
        let entries = if is_gguf(p) { gguf_entries(p)? } else { safetensors_entries(p)? };
        total += entries.iter().filter(|e| keep(&e.name)).map(|e| bytes(e, how)).sum::<u64>();
    }
    Ok(total)
}

fn is_gguf(p: &Path) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

fn bytes(e: &Entry, how: LoadAs) -> u64 {
    let n: usize = e.shape.iter().product();
    let block = |q: GgmlDType| (n / q.block_size() * q.type_size()) as u64;
    if let Some(q) = e.stored {
        return block(q);
    }
    match (how.quantize, e.shape.as_slice()) {
        (Some(q), [_, i]) if e.name.ends_with("weight") => match quantized_format(q, *i) {
            Some(f) => block(f),
            None => (n * how.dtype.size_in_bytes()) as u64,
        },
        _ => (n * how.dtype.size_in_bytes()) as u64,
    }
}

/// The format a row of `i` values is quantized to: `q`, or its fallback when the row is not whole blocks.
fn quantized_format(q: GgmlDType, i: usize) -> Option<GgmlDType> {
    [q, crate::models::linear::fallback(q)].into_iter().find(|f| i % f.block_size() == 0)
}

fn gguf_entries(p: &Path) -> Result<Vec<Entry>> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::model_from(p, "cannot open", e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::model_from(p, "unreadable GGUF", e))?;
    let float = |t: GgmlDType| matches!(t, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
    Ok(content
        .tensor_infos
        .into_iter()
        .map(|(name, t)| {
            let stored = (!float(t.ggml_dtype)).then_some(t.ggml_dtype);
            Entry { name, shape: t.shape.dims().to_vec(), stored }
        })
        .collect())
}

/// The JSON header of a safetensors file: names and shapes, without mapping the data.
fn safetensors_entries(p: &Path) -> Result<Vec<Entry>> {
    let mut f = std::fs::File::open(p).map_err(|e| Error::model_from(p, "cannot open", e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|_| Error::model(p, "not a safetensors file (too short)"))?;
    let len = u64::from_le_bytes(len);
    let size = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > size.saturating_sub(8) {
        return Err(Error::model(p, "not a safetensors file (its header length is past the end)"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::model_from(p, "cannot read", e))?;
    let json: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| Error::model_from(p, "not a safetensors file", e))?;
    Ok(json
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, v)| {
            let shape =
                v["shape"].as_array().map(|a| a.iter().filter_map(|d| d.as_u64()).map(|d| d as usize).collect());
            Entry { name, shape: shape.unwrap_or_default(), stored: None }
        })
        .collect())
}
