//! The quantization cache: what `--quantize` made of a checkpoint, written once as a GGUF file and loaded directly
//! afterwards (seconds instead of minutes of quantizing). Files live in `FLUX_IMG2IMG_CACHE`, else beside the
//! Hugging Face cache in `$HF_HOME/flux-img2img/quantized`, named by a key of the source files (path, size,
//! modification time), the component and the format. `flux-img2img cache` lists them, `cache clear` removes them.
//!
//! The writer streams: each tensor's bytes go to a temporary data file as the model is built (one dense tensor in
//! memory at a time); the header is written when the tensor list is complete, then the data is appended and the
//! file renamed into place.

use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use std::io::{BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bump when what is cached for the same inputs changes (quantization rules, tensor set).
const CACHE_VERSION: u32 = 1;
const ALIGNMENT: u64 = 32;

/// The cache folder.
pub fn dir() -> PathBuf {
    match std::env::var_os("FLUX_IMG2IMG_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::source::hub::hf_home().join("flux-img2img").join("quantized"),
    }
}

/// The cache file for `component` quantized to `format` from `sources`.
pub fn path_for(component: &str, sources: &[PathBuf], format: &str) -> PathBuf {
    let mut key = format!("v{CACHE_VERSION}|{component}|{format}");
    for s in sources {
        let canonical = s.canonicalize().unwrap_or_else(|_| s.clone());
        let meta = std::fs::metadata(s).ok();
        let mtime =
            meta.as_ref().and_then(|m| m.modified().ok()).and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
        key.push_str(&format!(
            "|{}|{}|{}",
            canonical.display(),
            meta.map_or(0, |m| m.len()),
            mtime.map_or(0, |d| d.as_nanos())
        ));
    }
    let stem =
        sources.first().and_then(|s| s.file_stem()).map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    dir().join(format!("{component}-{stem}-{format}-{:016x}.gguf", fnv1a(key.as_bytes())))
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions (file names must).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// GGML's type ids (the GGUF file format's numbering).
fn type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

struct Entry {
    name: String,
    dims: Vec<usize>,
    dtype: GgmlDType,
    offset: u64,
}

/// A GGUF file being written tensor by tensor.
pub struct Writer {
    target: PathBuf,
    data: BufWriter<tempfile::NamedTempFile>,
    entries: Vec<Entry>,
    offset: u64,
}

/// An I/O failure on `path` while doing `what`.
fn io(path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |e| Error::output_from(&path, what, e)
}

impl Writer {
    /// Starts the file `target` (its folder is created).
    pub fn create(target: &Path) -> Result<Self> {
        let folder = target.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(folder).map_err(io(folder, "cannot create the cache folder"))?;
        let data = tempfile::Builder::new()
            .prefix(".data-")
            .tempfile_in(folder)
            .map_err(io(folder, "cannot write in the cache folder"))?;
        Ok(Self { target: target.to_path_buf(), data: BufWriter::new(data), entries: Vec::new(), offset: 0 })
    }

    /// Appends one tensor (quantized, or dense as F32).
    pub fn add(&mut self, name: &str, t: &QTensor) -> Result<()> {
        let bytes = t.data()?;
        let pad = (ALIGNMENT - self.offset % ALIGNMENT) % ALIGNMENT;
        let target = self.target.clone();
        self.data.write_all(&vec![0u8; pad as usize]).map_err(io(&target, "cannot write"))?;
        self.offset += pad;
        self.entries.push(Entry {
            name: name.to_string(),
            dims: t.shape().dims().to_vec(),
            dtype: t.dtype(),
            offset: self.offset,
        });
        self.data.write_all(&bytes).map_err(io(&target, "cannot write"))?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes the header and the data into the target file, atomically.
    pub fn finish(self) -> Result<PathBuf> {
        let t = &self.target;
        let mut data = self.data.into_inner().map_err(|e| Error::output_from(t, "cannot write", e.into_error()))?;
        let folder = t.parent().unwrap_or(Path::new("."));
        let mut out = tempfile::Builder::new()
            .prefix(".gguf-")
            .tempfile_in(folder)
            .map_err(io(folder, "cannot write in the cache folder"))?;
        let mut w = BufWriter::new(out.as_file_mut());
        write_header(&mut w, &self.entries).map_err(io(t, "cannot write"))?;
        data.as_file_mut().seek(std::io::SeekFrom::Start(0)).map_err(io(t, "cannot read back"))?;
        let mut buf = Vec::new();
        data.as_file_mut().read_to_end(&mut buf).map_err(io(t, "cannot read back"))?;
        w.write_all(&buf).map_err(io(t, "cannot write"))?;
        w.flush().map_err(io(t, "cannot write"))?;
        drop(w);
        out.persist(t).map_err(|e| Error::output_from(t, "cannot rename into place", e.error))?;
        Ok(self.target)
    }
}

fn write_string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
    w.write_all(&(s.len() as u64).to_le_bytes())?;
    w.write_all(s.as_bytes())
}

/// Magic, version 3, counts, one metadata string (the writer), tensor descriptions, padding to the alignment.
fn write_header(w: &mut impl Write, entries: &[Entry]) -> std::io::Result<()> {
    let mut header = Vec::new();
    header.extend(0x4655_4747u32.to_le_bytes());
    header.extend(3u32.to_le_bytes());
    header.extend((entries.len() as u64).to_le_bytes());
    header.extend(1u64.to_le_bytes());
    write_string(&mut header, "general.quantized_by")?;
    header.extend(8u32.to_le_bytes()); // string value
    write_string(&mut header, concat!("flux-img2img ", env!("CARGO_PKG_VERSION")))?;
    for e in entries {
        write_string(&mut header, &e.name)?;
        header.extend((e.dims.len() as u32).to_le_bytes());
        // GGUF lists dimensions innermost first.
        for &d in e.dims.iter().rev() {
            header.extend((d as u64).to_le_bytes());
        }
        header.extend(type_id(e.dtype).to_le_bytes());
        header.extend(e.offset.to_le_bytes());
    }
    let pad = (ALIGNMENT - header.len() as u64 % ALIGNMENT) % ALIGNMENT;
    header.extend(vec![0u8; pad as usize]);
    w.write_all(&header)
}

/// A writer several model layers add to while the model is built.
pub type Sink = std::sync::Arc<Mutex<Option<Writer>>>;

/// The cached files and their sizes.
pub fn list() -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(dir()) else { return Vec::new() };
    let mut out: Vec<(PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .map(|p| {
            let size = std::fs::metadata(&p).map_or(0, |m| m.len());
            (p, size)
        })
        .collect();
    out.sort();
    out
}

/// Removes every cached file (and leftovers of interrupted writes); gives how many files and bytes.
pub fn clear() -> Result<(usize, u64)> {
    let d = dir();
    let Ok(entries) = std::fs::read_dir(&d) else { return Ok((0, 0)) };
    let (mut n, mut bytes) = (0, 0);
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".gguf") || name.starts_with(".data-") || name.starts_with(".gguf-") {
            bytes += std::fs::metadata(&p).map_or(0, |m| m.len());
            std::fs::remove_file(&p).map_err(io(&p, "cannot remove"))?;
            n += 1;
        }
    }
    Ok((n, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// A file from the streaming writer reads back through candle's GGUF reader with the same tensors.
    #[test]
    fn written_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let a = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap().reshape((2, 32)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut w = Writer::create(&path).unwrap();
        w.add("x.weight", &QTensor::quantize(&a, GgmlDType::Q8_0).unwrap()).unwrap();
        w.add("x.bias", &QTensor::quantize(&b, GgmlDType::F32).unwrap()).unwrap();
        w.finish().unwrap();
        let mut f = std::fs::File::open(&path).unwrap();
        let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
        let qa = c.tensor(&mut f, "x.weight", &Device::Cpu).unwrap();
        assert_eq!(qa.dtype(), GgmlDType::Q8_0);
        assert_eq!(qa.shape().dims(), &[2, 32]);
        let back = c.tensor(&mut f, "x.bias", &Device::Cpu).unwrap().dequantize(&Device::Cpu).unwrap();
        assert_eq!(back.to_vec1::<f32>().unwrap(), vec![1.5, -2.0, 3.0]);
        let da = qa.dequantize(&Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((da[63] - 63.0).abs() < 0.3);
    }

    #[test]
    fn keys_are_stable_and_distinct() {
        assert_eq!(fnv1a(b"abc"), 0xe71fa2190541574b);
        let p = PathBuf::from("/nonexistent/flux1-dev.safetensors");
        assert_ne!(path_for("transformer", std::slice::from_ref(&p), "q8_0"), path_for("transformer", &[p], "q4_k"));
    }
}
