//! The quantization cache: what `--quantize` made of a checkpoint, written once as a GGUF file and loaded directly
//! afterwards (seconds instead of minutes of quantizing). Files live in `FLUX_IMG2IMG_CACHE`, else beside the
//! Hugging Face cache in `$HF_HOME/flux-img2img/quantized`, named by a key of the source files (path, size,
//! modification time), the component and the format. `flux-img2img cache` lists them, `cache clear` removes them.
//!
//! The writer streams: each tensor's bytes go to a temporary data file as the model is built (one dense tensor in
//! memory at a time); the header is written when the tensor list is complete, then the data is appended and the
//! file renamed into place. Without a cache folder (no `HOME`, `HF_HOME` or `FLUX_IMG2IMG_CACHE`) or where it
//! cannot be written, the same writer works in memory: nothing is ever written into the current folder.
//!
//! Every file the cache writes carries its marker (`general.quantized_by = flux-img2img …` in the GGUF header, or
//! the `.flux-img2img-` prefix of a temporary file): `cache clear` removes those and nothing else, so a cache
//! folder pointed at a models folder never loses a user's file. An entry that fails its check on load is removed
//! and rebuilt.

use super::gguf;
use crate::error::{Error, Result};
use candle_core::quantized::{GgmlDType, QTensor};
use std::io::{BufWriter, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Bump when what is cached for the same inputs changes (quantization rules, tensor set).
const CACHE_VERSION: u32 = 1;
const ALIGNMENT: u64 = 32;
/// The metadata key and value prefix that mark a file as the cache's own.
const MARKER_KEY: &str = "general.quantized_by";
const MARKER: &str = "flux-img2img";
/// Prefix of the cache's temporary files (leftovers of interrupted writes).
const TEMP_PREFIX: &str = ".flux-img2img-";

/// The cache folder: `FLUX_IMG2IMG_CACHE`, else beside the Hugging Face cache; None when neither can be placed
/// (no HOME): the cache is then skipped rather than written into the current folder.
pub fn dir() -> Option<PathBuf> {
    match std::env::var_os("FLUX_IMG2IMG_CACHE").filter(|v| !v.is_empty()) {
        Some(d) => Some(PathBuf::from(d)),
        None => crate::source::hub::hf_home().map(|h| h.join("flux-img2img").join("quantized")),
    }
}

/// The cache folder for messages.
pub fn dir_shown() -> String {
    dir().map_or_else(|| "(none: set HOME or FLUX_IMG2IMG_CACHE)".into(), |d| d.display().to_string())
}

/// The cache file for `component` quantized to `format` from `sources` (None without a cache folder).
pub fn path_for(component: &str, sources: &[PathBuf], format: &str) -> Option<PathBuf> {
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
    Some(dir()?.join(format!("{component}-{stem}-{format}-{:016x}.gguf", fnv1a(key.as_bytes()))))
}

/// What the cache holds for a key.
#[derive(Debug)]
pub enum Lookup {
    /// A checked entry.
    Hit(PathBuf),
    /// Nothing there (or no cache folder).
    Miss,
    /// There was an entry, but it failed its check; it was removed and will be rebuilt (the note says so).
    Damaged(String),
}

/// The entry at `path`, checked: a readable GGUF whose tensor table matches its data and that carries the marker.
pub fn lookup(path: Option<&Path>) -> Lookup {
    let Some(path) = path.filter(|p| p.exists()) else { return Lookup::Miss };
    let problem = match gguf::header(path) {
        Ok(h) if is_marked(&h) => return Lookup::Hit(path.to_path_buf()),
        Ok(_) => "it lacks the cache's marker".to_string(),
        Err(e) => e.one_line(),
    };
    let _ = std::fs::remove_file(path);
    Lookup::Damaged(format!("the quantization cache entry {} was damaged ({problem}); rebuilding it", path.display()))
}

fn is_marked(h: &gguf::Header) -> bool {
    h.strings.get(MARKER_KEY).is_some_and(|v| v.starts_with(MARKER))
}

/// FNV-1a, 64 bits: a hash that stays the same across Rust versions (file names must).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

struct Entry {
    name: String,
    dims: Vec<usize>,
    dtype: GgmlDType,
    offset: u64,
}

/// Where the tensor data goes until the header can be written.
enum Data {
    File(BufWriter<tempfile::NamedTempFile>),
    Memory(Vec<u8>),
}

/// A GGUF file being written tensor by tensor, into the cache folder or into memory.
pub struct Writer {
    /// None: in memory.
    target: Option<PathBuf>,
    data: Data,
    entries: Vec<Entry>,
    offset: u64,
    /// The temporary data file stays registered for removal if the process is stopped.
    _live: Option<crate::cleanup::Guard>,
}

/// An I/O failure on `path` while doing `what` (the cause, e.g. a full disk, stays in the message).
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
            .prefix(&format!("{TEMP_PREFIX}data-"))
            .tempfile_in(folder)
            .map_err(io(folder, "cannot write in the cache folder"))?;
        let live = Some(crate::cleanup::register(data.path()));
        Ok(Self {
            target: Some(target.to_path_buf()),
            data: Data::File(BufWriter::new(data)),
            entries: Vec::new(),
            offset: 0,
            _live: live,
        })
    }

    /// A writer whose file stays in memory ([`Writer::finish_bytes`]).
    pub fn memory() -> Self {
        Self { target: None, data: Data::Memory(Vec::new()), entries: Vec::new(), offset: 0, _live: None }
    }

    /// A writer for `target` when there is one and its folder takes files, else in memory; the reason it is in
    /// memory, if it is.
    pub fn create_or_memory(target: Option<&Path>) -> (Self, Option<String>) {
        match target.map(Self::create) {
            Some(Ok(w)) => (w, None),
            Some(Err(e)) => (Self::memory(), Some(e.one_line())),
            None => (Self::memory(), Some(format!("no cache folder {}", dir_shown()))),
        }
    }

    fn shown(&self) -> PathBuf {
        self.target.clone().unwrap_or_else(|| PathBuf::from("(memory)"))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let shown = self.shown();
        match &mut self.data {
            Data::File(f) => f.write_all(bytes).map_err(io(&shown, "cannot write")),
            Data::Memory(v) => {
                v.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    /// Appends one tensor (quantized, or dense as F32).
    pub fn add(&mut self, name: &str, t: &QTensor) -> Result<()> {
        let bytes = t.data()?;
        let pad = (ALIGNMENT - self.offset % ALIGNMENT) % ALIGNMENT;
        self.write(&vec![0u8; pad as usize])?;
        self.offset += pad;
        self.entries.push(Entry {
            name: name.to_string(),
            dims: t.shape().dims().to_vec(),
            dtype: t.dtype(),
            offset: self.offset,
        });
        self.write(&bytes)?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Writes the header and the data into the target file, atomically (the data is copied, not held in memory).
    pub fn finish(self) -> Result<PathBuf> {
        let (Some(t), Data::File(data)) = (self.target, self.data) else {
            return Err(Error::Usage("an in-memory cache writer has no file; use finish_bytes".into()));
        };
        let mut data = data.into_inner().map_err(|e| Error::output_from(&t, "cannot write", e.into_error()))?;
        let folder = t.parent().unwrap_or(Path::new("."));
        let mut out = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}gguf-"))
            .tempfile_in(folder)
            .map_err(io(folder, "cannot write in the cache folder"))?;
        let _out_live = crate::cleanup::register(out.path());
        let mut w = BufWriter::new(out.as_file_mut());
        write_header(&mut w, &self.entries).map_err(io(&t, "cannot write"))?;
        data.as_file_mut().seek(std::io::SeekFrom::Start(0)).map_err(io(&t, "cannot read back"))?;
        std::io::copy(data.as_file_mut(), &mut w).map_err(io(&t, "cannot write"))?;
        w.flush().map_err(io(&t, "cannot write"))?;
        drop(w);
        out.persist(&t).map_err(|e| Error::output_from(&t, "cannot rename into place", e.error))?;
        Ok(t)
    }

    /// The whole GGUF file as bytes (an in-memory writer; a file writer's data is read back).
    pub fn finish_bytes(self) -> Result<Vec<u8>> {
        let shown = self.shown();
        let data = match self.data {
            Data::Memory(v) => v,
            Data::File(f) => {
                let mut f = f.into_inner().map_err(|e| Error::output_from(&shown, "cannot write", e.into_error()))?;
                let mut v = Vec::new();
                f.as_file_mut().seek(std::io::SeekFrom::Start(0)).map_err(io(&shown, "cannot read back"))?;
                std::io::Read::read_to_end(f.as_file_mut(), &mut v).map_err(io(&shown, "cannot read back"))?;
                v
            }
        };
        let mut out = Vec::with_capacity(data.len() + 4096);
        write_header(&mut out, &self.entries).map_err(io(&shown, "cannot write"))?;
        out.extend_from_slice(&data);
        Ok(out)
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
        header.extend(super::gguf::type_id(e.dtype).to_le_bytes());
        header.extend(e.offset.to_le_bytes());
    }
    let pad = (ALIGNMENT - header.len() as u64 % ALIGNMENT) % ALIGNMENT;
    header.extend(vec![0u8; pad as usize]);
    w.write_all(&header)
}

/// A writer several model layers add to while the model is built.
pub type Sink = std::sync::Arc<Mutex<Option<Writer>>>;

/// The cache's own files (marked GGUF entries and its temporary leftovers) with their sizes, and the other
/// files found in the folder, which the cache never touches.
#[derive(Debug, Default)]
pub struct Listing {
    pub ours: Vec<(PathBuf, u64)>,
    pub others: Vec<PathBuf>,
}

/// The cache folder's files, sorted into the cache's own and the others.
pub fn list() -> Listing {
    let mut out = Listing::default();
    let Some(Ok(entries)) = dir().map(std::fs::read_dir) else { return out };
    for p in entries.filter_map(|e| e.ok()).map(|e| e.path()) {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() && is_ours(&p) => out.ours.push((p, m.len())),
            _ => out.others.push(p),
        }
    }
    out.ours.sort();
    out.others.sort();
    out
}

/// A cache entry (a `.gguf` whose header carries the marker) or a temporary file of its writer.
fn is_ours(p: &Path) -> bool {
    let name = p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    if name.starts_with(TEMP_PREFIX) {
        return true;
    }
    name.ends_with(".gguf") && gguf::header(p).is_ok_and(|h| is_marked(&h))
}

/// Removes the cache's own files (nothing when `dry_run`); gives what was (or would be) removed and what was
/// left alone.
pub fn clear(dry_run: bool) -> Result<Listing> {
    let listing = list();
    if !dry_run {
        for (p, _) in &listing.ours {
            std::fs::remove_file(p).map_err(io(p, "cannot remove"))?;
        }
    }
    Ok(listing)
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
        std::env::set_var("FLUX_IMG2IMG_CACHE", "/nonexistent-cache");
        assert_ne!(path_for("transformer", std::slice::from_ref(&p), "q8_0"), path_for("transformer", &[p], "q4_k"));
    }
}
