//! GGUF files, checked before candle reads them: takes a path (or any reader and its length), gives the header —
//! metadata strings, tensor names, shapes, types and offsets — or one message saying what is wrong.
//!
//! candle's reader trusts every count and length in the header and does not compare the tensor table with the
//! data: a flipped byte could allocate without bound, or load a tensor whose type changed (F32 read as F16) or
//! whose offset moved. Here every length is bounded by the file's size, every tensor must be aligned, typed
//! with a known GGML type, sized exactly `elements / block × bytes per block`, lie inside the data section
//! without overlapping another, and the data section must end where the last tensor (padded) ends.

use crate::error::{Error, Result};
use candle_core::quantized::{gguf_file, GgmlDType};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const MAGIC: u32 = 0x4655_4747;
const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a tensor may have (ggml's limit).
const MAX_DIMS: u32 = 4;

/// One tensor of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Outermost first (as candle and safetensors list them; the file lists innermost first).
    pub dims: Vec<u64>,
    pub dtype: GgmlDType,
    /// From the start of the data section.
    pub offset: u64,
    pub bytes: u64,
}

/// What the header says.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub version: u32,
    /// String-valued metadata (`general.quantized_by`, ...).
    pub strings: HashMap<String, String>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Where the data section starts in the file.
    pub data_start: u64,
}

/// Reads the header of `path` and checks it against the file.
pub fn header(path: &Path) -> Result<Header> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::model_from(path, "cannot open", e))?;
    let len = f.metadata().map_err(|e| Error::model_from(path, "cannot read", e))?.len();
    parse(&mut std::io::BufReader::new(&mut f), len)
        .map_err(|msg| Error::model(path, format!("not a valid GGUF file: {msg}")))
}

/// The file checked, then read by candle (which the loaders use): the open file and candle's view of it.
pub fn read(path: &Path) -> Result<(std::fs::File, gguf_file::Content)> {
    header(path)?;
    let mut f = std::fs::File::open(path).map_err(|e| Error::model_from(path, "cannot open", e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::model_from(path, "unreadable GGUF", e))?;
    Ok((f, content))
}

/// Parses and checks a GGUF header from `r`, a file of `len` bytes.
pub fn parse<R: Read + Seek>(r: &mut R, len: u64) -> std::result::Result<Header, String> {
    let mut p = Parser { r, len };
    if p.u32()? != MAGIC {
        return Err("it does not start with GGUF".into());
    }
    let version = p.u32()?;
    if !(2..=3).contains(&version) {
        return Err(format!("version {version} (this reads 2 and 3)"));
    }
    let (n_tensors, n_kv) = (p.count(24)?, p.count(13)?);
    let mut h = Header { version, alignment: DEFAULT_ALIGNMENT, ..Header::default() };
    for _ in 0..n_kv {
        p.kv(&mut h)?;
    }
    for _ in 0..n_tensors {
        h.tensors.push(p.tensor()?);
    }
    let pos = p.pos()?;
    h.data_start = pos.div_ceil(h.alignment) * h.alignment;
    check_layout(&h, len)?;
    Ok(h)
}

/// Tensors aligned, inside the data section, not overlapping, and the section ending with the last of them.
fn check_layout(h: &Header, len: u64) -> std::result::Result<(), String> {
    let data = len.checked_sub(h.data_start).ok_or("the header runs past the end of the file")?;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(h.tensors.len());
    for t in &h.tensors {
        if t.offset % h.alignment != 0 {
            return Err(format!(
                "tensor {} starts at {}, not a multiple of the alignment {}",
                t.name, t.offset, h.alignment
            ));
        }
        let end = t.offset.checked_add(t.bytes).filter(|e| *e <= data).ok_or_else(|| {
            format!(
                "tensor {} ({:?} {:?}, {} bytes at {}) runs past the end of the file",
                t.name, t.dtype, t.dims, t.bytes, t.offset
            )
        })?;
        spans.push((t.offset, end, &t.name));
    }
    spans.sort();
    // Writers (gguf-py, llama.cpp, ours) lay tensors end to end, each padded to the alignment: any other start
    // means an entry's type, shape or offset was changed.
    let mut expected = 0;
    for (start, end, name) in &spans {
        if *start != expected {
            let what = if *start < expected { "overlaps the tensor before it" } else { "leaves a gap before it" };
            return Err(format!("tensor {name} starts at {start} but the table implies {expected}: it {what}"));
        }
        expected = end.div_ceil(h.alignment) * h.alignment;
    }
    let used = spans.last().map_or(0, |s| s.1);
    // The data ends with the last tensor, or with its padding (gguf-py pads the last one too).
    if data != used && data != expected {
        return Err(format!(
            "{} bytes of data follow the last tensor: the tensor table does not describe the data (a changed type or \
             size?)",
            data - used
        ));
    }
    Ok(())
}

struct Parser<'a, R> {
    r: &'a mut R,
    len: u64,
}

impl<R: Read + Seek> Parser<'_, R> {
    fn bytes<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut b = [0u8; N];
        self.r.read_exact(&mut b).map_err(|_| "the file ends inside its header".to_string())?;
        Ok(b)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    fn pos(&mut self) -> std::result::Result<u64, String> {
        self.r.stream_position().map_err(|e| e.to_string())
    }

    /// A count of items of at least `min_bytes` each: no more than the rest of the file could hold.
    fn count(&mut self, min_bytes: u64) -> std::result::Result<u64, String> {
        let n = self.u64()?;
        let left = self.len.saturating_sub(self.pos()?);
        if n.saturating_mul(min_bytes) > left {
            return Err(format!("a count of {n} is more than the file could hold"));
        }
        Ok(n)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.count(1)?;
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|_| "the file ends inside a string".to_string())?;
        String::from_utf8(b).map_err(|_| "a name or string is not UTF-8".to_string())
    }

    /// Skips `n` bytes, which must be in the file.
    fn skip(&mut self, n: u64) -> std::result::Result<(), String> {
        let to = self.pos()?.checked_add(n).filter(|t| *t <= self.len).ok_or("the file ends inside its header")?;
        self.r.seek(SeekFrom::Start(to)).map(|_| ()).map_err(|e| e.to_string())
    }

    fn kv(&mut self, h: &mut Header) -> std::result::Result<(), String> {
        let key = self.string()?;
        match self.u32()? {
            8 => {
                let v = self.string()?;
                h.strings.insert(key, v);
            }
            t @ (4 | 10) if key == "general.alignment" => {
                let a = if t == 4 { self.u32()? as u64 } else { self.u64()? };
                if a == 0 || !a.is_power_of_two() || a > 1 << 16 {
                    return Err(format!("general.alignment {a} is not a power of two up to 65536"));
                }
                h.alignment = a;
            }
            t => self.skip_value(t, 0)?,
        }
        Ok(())
    }

    fn skip_value(&mut self, t: u32, depth: u32) -> std::result::Result<(), String> {
        match t {
            0 | 1 | 7 => self.skip(1),
            2 | 3 => self.skip(2),
            4..=6 => self.skip(4),
            10..=12 => self.skip(8),
            8 => self.string().map(|_| ()),
            9 if depth < 4 => {
                let inner = self.u32()?;
                let n = self.count(1)?;
                (0..n).try_for_each(|_| self.skip_value(inner, depth + 1))
            }
            _ => Err(format!("unknown metadata value type {t}")),
        }
    }

    fn tensor(&mut self) -> std::result::Result<TensorInfo, String> {
        let name = self.string()?;
        let n_dims = self.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!("tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})"));
        }
        let mut dims = (0..n_dims).map(|_| self.u64()).collect::<std::result::Result<Vec<_>, _>>()?;
        dims.reverse();
        let id = self.u32()?;
        let dtype = dtype_of(id).ok_or_else(|| format!("tensor {name} has an unknown type id {id}"))?;
        let offset = self.u64()?;
        let bytes = tensor_bytes(&dims, dtype)
            .ok_or_else(|| format!("tensor {name} has an impossible size {dims:?} for {dtype:?}"))?;
        Ok(TensorInfo { name, dims, dtype, offset, bytes })
    }
}

/// GGML's type ids (the GGUF format's numbering) for the types candle reads.
pub const TYPE_IDS: [(u32, GgmlDType); 15] = [
    (0, GgmlDType::F32),
    (1, GgmlDType::F16),
    (2, GgmlDType::Q4_0),
    (3, GgmlDType::Q4_1),
    (6, GgmlDType::Q5_0),
    (7, GgmlDType::Q5_1),
    (8, GgmlDType::Q8_0),
    (9, GgmlDType::Q8_1),
    (10, GgmlDType::Q2K),
    (11, GgmlDType::Q3K),
    (12, GgmlDType::Q4K),
    (13, GgmlDType::Q5K),
    (14, GgmlDType::Q6K),
    (15, GgmlDType::Q8K),
    (30, GgmlDType::BF16),
];

fn dtype_of(id: u32) -> Option<GgmlDType> {
    TYPE_IDS.iter().find(|(i, _)| *i == id).map(|(_, t)| *t)
}

/// The type id of `t`.
pub fn type_id(t: GgmlDType) -> u32 {
    TYPE_IDS.iter().find(|(_, d)| *d == t).map(|(i, _)| *i).expect("every GgmlDType has an id")
}

/// Bytes of a tensor of `dims` stored as `dtype`: whole blocks along the innermost dimension.
fn tensor_bytes(dims: &[u64], dtype: GgmlDType) -> Option<u64> {
    let inner = *dims.last()?;
    let block = dtype.block_size() as u64;
    if inner % block != 0 {
        return None;
    }
    let elements = dims.iter().try_fold(1u64, |a, d| a.checked_mul(*d))?;
    (elements / block).checked_mul(dtype.type_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// A small file from the cache's writer: header and data of two tensors.
    fn sample() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let a = Tensor::arange(0f32, 64.0, &Device::Cpu).unwrap().reshape((2, 32)).unwrap();
        let b = Tensor::new(&[1.5f32, -2.0, 3.0], &Device::Cpu).unwrap();
        let mut w = super::super::gguf_cache::Writer::create(&path).unwrap();
        w.add("x.weight", &QTensor::quantize(&a, GgmlDType::Q8_0).unwrap()).unwrap();
        w.add("x.bias", &QTensor::quantize(&b, GgmlDType::F32).unwrap()).unwrap();
        w.finish().unwrap();
        std::fs::read(&path).unwrap()
    }

    fn check(bytes: &[u8]) -> std::result::Result<Header, String> {
        parse(&mut std::io::Cursor::new(bytes), bytes.len() as u64)
    }

    #[test]
    fn a_written_file_reads_back() {
        let h = check(&sample()).unwrap();
        assert_eq!(h.tensors.len(), 2);
        assert_eq!(h.tensors[0].dims, vec![2, 32]);
        assert_eq!(h.tensors[0].bytes, 2 * 34);
        assert!(h.strings["general.quantized_by"].starts_with("flux-img2img"));
    }

    /// The position of the type id of the tensor named `name` in the header.
    fn type_at(bytes: &[u8], name: &str, dims: usize) -> usize {
        let at = bytes.windows(name.len()).position(|w| w == name.as_bytes()).unwrap();
        at + name.len() + 4 + 8 * dims
    }

    #[test]
    fn changed_types_and_offsets_are_refused() {
        let good = sample();
        for (id, what) in [(1u32, "F16"), (30, "BF16"), (2, "Q4_0"), (0, "F32")] {
            let mut b = good.clone();
            let at = type_at(&b, "x.weight", 2);
            b[at..at + 4].copy_from_slice(&id.to_le_bytes());
            assert!(check(&b).is_err(), "x.weight as {what} must not pass");
        }
        let mut b = good.clone();
        let at = type_at(&b, "x.bias", 1);
        b[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(check(&b).is_err(), "x.bias as F16 leaves data over");
        let mut b = good.clone();
        let at = type_at(&b, "x.bias", 1) + 4;
        let off = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
        b[at..at + 8].copy_from_slice(&(off + 4).to_le_bytes());
        assert!(check(&b).unwrap_err().contains("alignment"));
        assert!(check(&good[..good.len() - 4]).is_err(), "a cut-short file");
    }

    #[test]
    fn absurd_counts_do_not_allocate() {
        let mut b = sample();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(check(&b).unwrap_err().contains("count"));
        let mut b = sample();
        // The first key's length.
        b[24..32].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(check(&b).is_err());
    }
}
