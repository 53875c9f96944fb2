//! Weights: memory-mapped safetensors → candle `VarBuilder`s, with every tensor checked against the config.
//!
//! Takes a component's weight files, gives a `VarBuilder` for the model constructor. The backend records each
//! tensor the constructor asks for; a missing or mis-shaped one is noted (a placeholder keeps construction going)
//! so that [`CheckedWeights::finish`] can name all of them in one message instead of failing on the first.
//! Name translation between checkpoint layouts lives in [`flux_keys`] as a table.

pub mod flux_keys;
pub mod gguf;
pub mod gguf_cache;
pub mod layers;
pub mod lora;
pub mod sizes;
pub mod t5_keys;
pub mod unet_keys;
pub mod vae_keys;

use crate::error::{Error, Result};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use flux_keys::Source;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// What went wrong with one requested tensor.
#[derive(Debug, Clone)]
enum Problem {
    Missing(String),
    Shape { name: String, expected: Vec<usize>, found: Vec<usize> },
}

/// Maps a name the model code asks for to the tensors that hold it in the file.
pub type NameMap = Arc<dyn Fn(&str) -> Source + Send + Sync>;

struct Backend {
    files: Arc<MmapedSafetensors>,
    map: Option<NameMap>,
    problems: Arc<Mutex<Vec<Problem>>>,
}

impl Backend {
    fn resolve(&self, name: &str) -> Source {
        match &self.map {
            Some(map) => map(name),
            None => Source::One(name.to_string()),
        }
    }

    fn load_one(&self, name: &str, dev: &Device) -> Option<Tensor> {
        self.files.get(name).ok()?;
        self.files.load(name, dev).ok()
    }

    /// Loads `name`, or returns None after recording why it could not be.
    fn fetch(&self, name: &str, dev: &Device) -> candle_core::Result<Option<Tensor>> {
        let source = self.resolve(name);
        let parts: Vec<&String> = match &source {
            Source::One(n) | Source::SwapHalves(n) | Source::Reshape(n) => vec![n],
            Source::Cat(ns) => ns.iter().collect(),
        };
        let mut tensors = Vec::with_capacity(parts.len());
        let mut missing = false;
        for p in &parts {
            match self.load_one(p, dev) {
                Some(t) => tensors.push(t),
                None => {
                    missing = true;
                    self.problems.lock().unwrap().push(Problem::Missing((*p).clone()));
                }
            }
        }
        if missing {
            return Ok(None);
        }
        let t = match source {
            Source::One(_) | Source::Reshape(_) => tensors.pop().unwrap(),
            Source::Cat(_) => Tensor::cat(&tensors, 0)?,
            Source::SwapHalves(_) => {
                let t = tensors.pop().unwrap();
                let half = t.dim(0)? / 2;
                Tensor::cat(&[t.narrow(0, half, half)?, t.narrow(0, 0, half)?], 0)?
            }
        };
        Ok(Some(t))
    }

    fn display_name(&self, name: &str) -> String {
        match self.resolve(name) {
            Source::One(n) | Source::SwapHalves(n) | Source::Reshape(n) => n,
            Source::Cat(ns) => ns.join(" + "),
        }
    }
}

fn placeholder(shape: &Shape, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    // A zero-stride broadcast: no memory for a tensor that will never be used.
    Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
}

impl SimpleBackend for Backend {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let Some(mut t) = self.fetch(name, dev)? else { return placeholder(&s, dtype, dev) };
        if matches!(self.resolve(name), Source::Reshape(_)) && t.elem_count() == s.elem_count() {
            t = t.reshape(&s)?;
        }
        if t.shape() != &s {
            self.problems.lock().unwrap().push(Problem::Shape {
                name: self.display_name(name),
                expected: s.dims().to_vec(),
                found: t.dims().to_vec(),
            });
            return placeholder(&s, dtype, dev);
        }
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.fetch(name, dev)? {
            Some(t) => t.to_dtype(dtype),
            None => candle_core::bail!("missing tensor {}", self.display_name(name)),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match self.resolve(name) {
            Source::One(n) | Source::SwapHalves(n) | Source::Reshape(n) => self.files.get(&n).is_ok(),
            Source::Cat(ns) => ns.iter().all(|n| self.files.get(n).is_ok()),
        }
    }
}

/// The weight files of one component, opened for checked loading.
pub struct CheckedWeights {
    component: String,
    paths: Vec<PathBuf>,
    files: Arc<MmapedSafetensors>,
    problems: Arc<Mutex<Vec<Problem>>>,
}

impl CheckedWeights {
    /// Memory-maps `paths` (all shards of one component).
    pub fn open(component: &str, paths: &[PathBuf]) -> Result<Self> {
        for p in paths {
            // Read the header ourselves first: candle's error for a broken file does not name it.
            let bytes = std::fs::File::open(p).map_err(|e| Error::model_from(p, "cannot open", e))?;
            let mut header = [0u8; 8];
            use std::io::Read;
            (&bytes).read_exact(&mut header).map_err(|_| Error::model(p, "not a safetensors file (too short)"))?;
        }
        // SAFETY: the files are mapped read-only and not modified while mapped.
        let files = unsafe { MmapedSafetensors::multi(paths) }
            .map_err(|e| Error::model_from(paths.first().cloned().unwrap_or_default(), "unreadable weights", e))?;
        Ok(Self {
            component: component.to_string(),
            paths: paths.to_vec(),
            files: Arc::new(files),
            problems: Default::default(),
        })
    }

    /// The weight files.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// The first weight file (named in errors about the component as a whole).
    pub fn first_file(&self) -> PathBuf {
        self.paths.first().cloned().unwrap_or_default()
    }

    /// A `VarBuilder` whose names are translated by `map` (or used as they are).
    pub fn var_builder(&self, dtype: DType, device: &Device, map: Option<NameMap>) -> VarBuilder<'static> {
        let backend = Backend { files: self.files.clone(), map, problems: self.problems.clone() };
        VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
    }

    /// Names of all tensors in the files.
    pub fn names(&self) -> Vec<String> {
        self.files.tensors().into_iter().map(|(n, _)| n).collect()
    }

    /// One stored tensor as f32 on the CPU (for quantizing).
    pub fn load_f32_cpu(&self, name: &str) -> Result<Tensor> {
        Ok(self.files.load(name, &Device::Cpu)?.to_dtype(DType::F32)?)
    }

    /// Shape of one tensor in the files, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.files.get(name).ok().map(|v| v.shape().to_vec())
    }

    /// Errors with every missing and mis-shaped tensor the model asked for, if any.
    pub fn finish(&self) -> Result<()> {
        let problems = std::mem::take(&mut *self.problems.lock().unwrap());
        if problems.is_empty() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut shapes = Vec::new();
        for p in &problems {
            match p {
                Problem::Missing(n) => missing.push(n.clone()),
                Problem::Shape { name, expected, found } => {
                    shapes.push(format!("{name} is {found:?}, config needs {expected:?}"))
                }
            }
        }
        let mut parts = Vec::new();
        if !missing.is_empty() {
            parts.push(format!("{} missing: {}", missing.len(), abbreviate(&missing)));
        }
        if !shapes.is_empty() {
            parts.push(format!("{} mis-shaped: {}", shapes.len(), abbreviate(&shapes)));
        }
        let file = match self.paths.as_slice() {
            [one] => one.clone(),
            many => PathBuf::from(format!("{} and {} more shards", self.first_file().display(), many.len() - 1)),
        };
        Err(Error::Tensors { component: self.component.clone(), detail: parts.join("; "), file: Some(file) })
    }
}

fn abbreviate(items: &[String]) -> String {
    // A wrong file misses hundreds of tensors: the count and the first few say enough on one line.
    const SHOWN: usize = 3;
    let mut s = items.iter().take(SHOWN).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", … and {} more", items.len() - SHOWN));
    }
    s
}
