//! Flags (plus a manifest or a PNG's stored parameters) → the ordered list of edits this run performs.
//!
//! Order: rows (inputs sorted as given, or manifest lines) × strengths × seeds; item k of that list gets seed
//! base + k when one base seed is given, so the list, its seeds and its output names are the same on every
//! machine — which is what makes `--shard I/N` (items with k mod N = I) safe to spread over a cluster.

use super::{manifest, parse_device, Args, DTypeArg};
use crate::error::{Error, Result};
use crate::image_io::ResizeMode;
use crate::pipeline::Request;
use crate::rng::RngKind;
use candle_core::DType;
use clap::ValueEnum;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One edit and its position in the whole (unsharded) batch.
#[derive(Debug, Clone)]
pub struct Item {
    pub index: usize,
    pub request: Request,
}

#[derive(Debug, Clone)]
pub struct Batch {
    /// The items this process runs (its shard).
    pub items: Vec<Item>,
    /// Items in the whole batch, all shards.
    pub total: usize,
    pub dry_run: bool,
    pub json: bool,
    pub skip_existing: bool,
    pub quiet: bool,
    /// `--output-dir`: created (with sub-folders a manifest names) when missing.
    pub output_dir: Option<PathBuf>,
    /// `--grid`: contact sheet of the images written.
    pub grid: Option<PathBuf>,
    /// `-o -`: the single image goes to standard output (written here first).
    pub stdout_png: Option<PathBuf>,
    /// Downloaded and standard-input images, kept until the batch is done.
    pub fetched: Arc<Fetched>,
}

const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];
const DEFAULT_STRENGTH: f64 = 0.6;

/// Inputs that are not files: `-` (standard input) and http(s) URLs are saved into a temporary folder that
/// lives as long as the batch, under a name taken from the URL so output names still make sense.
#[derive(Debug, Default)]
pub struct Fetched {
    dir: Option<tempfile::TempDir>,
    /// Inputs that could not be fetched, with the reason; their items fail with it.
    failed: HashMap<PathBuf, String>,
}

impl Fetched {
    fn dir(&mut self) -> Result<&Path> {
        if self.dir.is_none() {
            let d = tempfile::Builder::new()
                .prefix("flux-img2img-inputs-")
                .tempdir()
                .map_err(|e| Error::Usage(format!("cannot create a temporary folder for downloaded inputs: {e}")))?;
            self.dir = Some(d);
        }
        Ok(self.dir.as_ref().expect("created above").path())
    }

    /// Whether `p` is one of ours (its default output then goes to the current folder, not the temp one).
    pub fn owns(&self, p: &Path) -> bool {
        self.dir.as_ref().is_some_and(|d| p.starts_with(d.path()))
    }

    /// Why the input `p` could not be fetched, if it could not.
    pub fn failure(&self, p: &Path) -> Option<&str> {
        self.failed.get(p).map(String::as_str)
    }

    /// `spec` as a local path, recording a failed fetch instead of failing the whole batch.
    fn resolve_or_record(&mut self, spec: &str) -> PathBuf {
        match self.resolve(spec) {
            Ok(p) => p,
            Err(e) => {
                self.failed.insert(PathBuf::from(spec), e.to_string());
                PathBuf::from(spec)
            }
        }
    }

    /// `spec` as a local path: files as they are, `-` and URLs fetched first.
    pub fn resolve(&mut self, spec: &str) -> Result<PathBuf> {
        let is_url = spec.starts_with("http://") || spec.starts_with("https://");
        if spec != "-" && !is_url {
            return Ok(PathBuf::from(spec));
        }
        let err = |msg: String| Error::Image { path: PathBuf::from(spec), msg };
        let (name, bytes) = if spec == "-" {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| err(format!("cannot read standard input: {e}")))?;
            ("stdin".to_string(), buf)
        } else {
            let name = spec
                .split(['?', '#'])
                .next()
                .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
                .map(|n| n.rsplit_once('.').map_or(n, |(stem, _)| stem))
                .filter(|n| !n.is_empty() && !n.contains(':'))
                .unwrap_or("download")
                .to_string();
            let resp = ureq::get(spec).call().map_err(|e| err(format!("cannot download: {e}")))?;
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::Read::take(resp.into_reader(), 512 << 20), &mut bytes)
                .map_err(|e| err(format!("cannot download: {e}")))?;
            (name, bytes)
        };
        if bytes.is_empty() {
            return Err(err("empty".into()));
        }
        let dir = self.dir()?.to_path_buf();
        let mut path = dir.join(format!("{name}.img"));
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{name}-{n}.img"));
            n += 1;
        }
        std::fs::write(&path, bytes).map_err(|e| err(format!("cannot store the download: {e}")))?;
        Ok(path)
    }
}

/// Files, folders (their images, sorted by name) and globs (matches, sorted) → paths, in the order given.
pub fn expand_inputs(specs: &[String], fetched: &mut Fetched) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for spec in specs {
        let p = Path::new(spec);
        if spec == "-" || spec.starts_with("http://") || spec.starts_with("https://") {
            // A failed download fails as its own item.
            out.push(fetched.resolve_or_record(spec));
        } else if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| Error::Usage(format!("--image {spec}: cannot list the folder: {e}")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && has_image_extension(f))
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Usage(format!("--image {spec}: the folder has no images ({})", IMAGE_EXTENSIONS.join(", "))));
            }
            out.extend(found);
        } else if !p.exists() && spec.contains(['*', '?', '[']) {
            let mut found: Vec<PathBuf> = glob::glob(spec)
                .map_err(|e| Error::Usage(format!("--image {spec}: bad pattern: {e}")))?
                .filter_map(|r| r.ok())
                .filter(|f| f.is_file())
                .collect();
            found.sort();
            if found.is_empty() {
                return Err(Error::Usage(format!("--image {spec}: no file matches")));
            }
            out.extend(found);
        } else {
            // A missing single file fails as its own item, with the image error.
            out.push(p.to_path_buf());
        }
    }
    Ok(out)
}

fn has_image_extension(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// "0.5,0.7" → values, each checked by `check`.
fn parse_list<T: std::str::FromStr>(flag: &str, s: &str, check: impl Fn(&T) -> Option<String>) -> Result<Vec<T>> {
    s.split(',')
        .map(|part| {
            let v: T = part.trim().parse().map_err(|_| Error::Usage(format!("{flag} {s}: {part:?} is not a number")))?;
            match check(&v) {
                Some(msg) => Err(Error::Usage(format!("{flag} {}: {msg}", part.trim()))),
                None => Ok(v),
            }
        })
        .collect()
}

fn check_strength(v: &f64) -> Option<String> {
    (!(0.0..=1.0).contains(v) || v.is_nan()).then(|| "is outside [0, 1]".to_string())
}

/// `I/N`, `auto/N` or `auto` → (I, N).
pub fn parse_shard(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize)> {
    let bad = |msg: &str| Error::Usage(format!("--shard {s}: {msg}"));
    let num = |v: &str, what: &str| v.trim().parse::<usize>().map_err(|_| bad(&format!("{what} {v:?} is not a number")));
    let (i_part, n_part) = match s.split_once('/') {
        Some((i, n)) => (i, Some(n)),
        None => (s, None),
    };
    let n = match n_part {
        Some(n) => num(n, "N")?,
        None if i_part == "auto" => num(
            &env("SLURM_ARRAY_TASK_COUNT").ok_or_else(|| bad("no SLURM_ARRAY_TASK_COUNT; give the count as auto/N"))?,
            "SLURM_ARRAY_TASK_COUNT",
        )?,
        None => return Err(bad("expected I/N (e.g. 0/4), auto/N or auto")),
    };
    let i = if i_part == "auto" {
        if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
            let min = env("SLURM_ARRAY_TASK_MIN").map(|m| num(&m, "SLURM_ARRAY_TASK_MIN")).transpose()?.unwrap_or(0);
            num(&id, "SLURM_ARRAY_TASK_ID")?
                .checked_sub(min)
                .ok_or_else(|| bad("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN"))?
        } else if let Some(id) = env("JOB_COMPLETION_INDEX").or_else(|| env("FLUX_SHARD_INDEX")) {
            num(&id, "JOB_COMPLETION_INDEX")?
        } else {
            return Err(bad("auto: none of SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, FLUX_SHARD_INDEX is set"));
        }
    } else {
        num(i_part, "I")?
    };
    if n == 0 || i >= n {
        return Err(bad(&format!("shard index {i} is not in 0..{n}")));
    }
    Ok((i, n))
}

/// Expands an output-name template; unknown placeholders are an error.
fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| Error::Usage(format!("--name {template}: unclosed {{")))?;
        let key = &rest[open + 1..open + close];
        let v = vars.iter().find(|(k, _)| *k == key).ok_or_else(|| {
            Error::Usage(format!("--name {template}: unknown placeholder {{{key}}} (use stem, seed, strength, steps, index)"))
        })?;
        out.push_str(&v.1);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(if out.to_ascii_lowercase().ends_with(".png") { out } else { format!("{out}.png") })
}

/// The parameters stored by this tool in a PNG's `flux-img2img` text chunk.
pub fn read_metadata(png_path: &Path) -> Result<serde_json::Value> {
    let err = |msg: String| Error::Usage(format!("--from-metadata {}: {msg}", png_path.display()));
    let file = std::fs::File::open(png_path).map_err(|e| err(format!("cannot read: {e}")))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| err(format!("not a PNG: {e}")))?;
    let text = reader
        .info()
        .utf8_text
        .iter()
        .find(|c| c.keyword == "flux-img2img")
        .ok_or_else(|| err("no flux-img2img parameters in this PNG (was it written by flux-img2img?)".into()))?
        .get_text()
        .map_err(|e| err(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("unreadable parameters: {e}")))
}

impl Args {
    /// Fills every flag not given on the command line from a PNG's stored parameters.
    fn apply_metadata(&mut self, png_path: &Path) -> Result<()> {
        let m = read_metadata(png_path)?;
        let s = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let f = |k: &str| m.get(k).and_then(|v| v.as_f64());
        let u = |k: &str| m.get(k).and_then(|v| v.as_u64());
        if self.prompt.is_none() {
            self.prompt = s("prompt");
        }
        if self.image.is_empty() && self.manifest.is_none() {
            self.image.extend(s("input"));
        }
        if self.model.is_none() {
            self.model = s("model").map(PathBuf::from);
        }
        if self.strength.is_none() {
            self.strength = f("strength").map(|v| v.to_string());
        }
        if self.seed.is_none() {
            self.seed = u("seed").map(|v| v.to_string());
        }
        self.steps = self.steps.or(u("steps").map(|v| v as usize));
        self.guidance = self.guidance.or(f("guidance"));
        self.width = self.width.or(u("width").map(|v| v as u32));
        self.height = self.height.or(u("height").map(|v| v as u32));
        self.max_sequence_length = self.max_sequence_length.or(u("max_sequence_length").map(|v| v as usize));
        if self.max_megapixels.is_none() {
            self.max_megapixels = f("max_megapixels");
        }
        if self.quantize.is_none() {
            self.quantize = s("quantize").and_then(|q| crate::models::linear::Quant::from_str(&q, true).ok());
        }
        if self.resize.is_none() {
            self.resize = s("resize").and_then(|r| ResizeMode::from_str(&r, true).ok());
        }
        self.keep_size |= m.get("keep_size").and_then(|v| v.as_bool()).unwrap_or(false);
        if self.rng.is_none() {
            self.rng = s("rng").and_then(|r| RngKind::from_str(&r, true).ok());
        }
        Ok(())
    }

    /// Checks the flags that need no model file and builds the batch.
    pub fn into_batch(mut self) -> Result<Batch> {
        if let Some(png) = self.from_metadata.clone() {
            self.apply_metadata(&png)?;
        }
        if self.steps == Some(0) {
            return Err(Error::Usage("--steps 0: at least one step is needed".into()));
        }
        let max_sequence_length = self.max_sequence_length.unwrap_or(512);
        if max_sequence_length == 0 || max_sequence_length > 512 {
            return Err(Error::Usage(format!(
                "--max-sequence-length {max_sequence_length} is outside 1..=512 (FLUX's T5 limit)"
            )));
        }
        if let Some(g) = self.guidance {
            if !g.is_finite() {
                return Err(Error::Usage(format!("--guidance {g} is not a number")));
            }
        }
        if self.num_images == Some(0) {
            return Err(Error::Usage("--num-images 0: at least one image is needed".into()));
        }
        let model = self.model.clone().or_else(|| std::env::var_os("MODEL_PATH").map(PathBuf::from)).ok_or_else(|| {
            Error::Usage(
                "no model: give --model with a diffusers-layout folder, a Hub repo id or dev / schnell (or set FLUX_MODEL)"
                    .into(),
            )
        })?;
        let device = parse_device(&self.device)?;
        let dtype = match self.dtype {
            Some(DTypeArg::F32) => DType::F32,
            Some(DTypeArg::Bf16) => DType::BF16,
            Some(DTypeArg::F16) => DType::F16,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        };
        if device.is_cpu() && dtype == DType::BF16 {
            // candle's CPU matmul has no bf16 kernel; failing here beats failing after the models load.
            return Err(Error::Usage(
                "--dtype bf16 is not available on the CPU (candle has no bf16 CPU matmul); use f32 (default) or f16, \
                 or --device cuda"
                    .into(),
            ));
        }
        let strengths = match &self.strength {
            Some(s) => parse_list("--strength", s, check_strength)?,
            None => vec![DEFAULT_STRENGTH],
        };
        let seed_list: Option<Vec<u64>> = match &self.seed {
            Some(s) if s.contains(',') => Some(parse_list("--seed", s, |_: &u64| None)?),
            _ => None,
        };
        if seed_list.is_some() && self.num_images.is_some() {
            return Err(Error::Usage("give either a --seed list or --num-images, not both".into()));
        }
        let base_seed: Option<u64> = match (&self.seed, &seed_list) {
            (Some(s), None) => Some(parse_list("--seed", s, |_: &u64| None)?[0]),
            _ => None,
        };
        let per_row_seeds = seed_list.as_ref().map_or(self.num_images.unwrap_or(1), Vec::len);

        let overrides = crate::source::Overrides {
            transformer: self.transformer.clone(),
            vae: self.vae.clone(),
            text_encoder: self.text_encoder.clone(),
            text_encoder_2: self.text_encoder_2.clone(),
            revision: self.revision.clone(),
        };
        let mut fetched = Fetched::default();
        // `-o -`: one image to standard output, through a temporary file like every output.
        let stdout_png = if self.output.as_deref() == Some(Path::new("-")) {
            let dir = fetched.dir()?.to_path_buf();
            let p = dir.join("stdout.png");
            self.output = Some(p.clone());
            Some(p)
        } else {
            None
        };
        // Rows: manifest lines, or the expanded inputs.
        let (rows, rel_base): (Vec<manifest::Row>, Option<PathBuf>) = match &self.manifest {
            Some(m) => {
                if !self.image.is_empty() {
                    return Err(Error::Usage("give either --image or --manifest, not both".into()));
                }
                let base = m.parent().map(Path::to_path_buf).unwrap_or_default();
                (manifest::read(m)?, Some(base))
            }
            None => {
                if self.image.is_empty() {
                    return Err(Error::Usage("no input: give --image PATH (files, folders or globs) or --manifest FILE".into()));
                }
                let rows = expand_inputs(&self.image, &mut fetched)?
                    .into_iter()
                    .map(|p| manifest::Row { image: p.to_string_lossy().into_owned(), ..Default::default() })
                    .collect();
                (rows, None)
            }
        };
        let resolve = |p: &str| -> PathBuf {
            let p = PathBuf::from(p);
            match &rel_base {
                Some(b) if p.is_relative() => b.join(p),
                _ => p,
            }
        };
        let mut rows = rows;
        if rel_base.is_some() {
            for row in rows.iter_mut() {
                if row.image.starts_with("http://") || row.image.starts_with("https://") {
                    row.image = fetched.resolve_or_record(&row.image).to_string_lossy().into_owned();
                }
            }
        }
        if let Some(dir) = &self.output_dir {
            if dir.exists() && !dir.is_dir() {
                return Err(Error::Usage(format!("--output-dir {}: is a file, not a folder", dir.display())));
            }
        }
        let base = base_seed.unwrap_or_else(crate::pipeline::random_seed);
        if base_seed.is_none() && seed_list.is_none() && !self.quiet && !self.dry_run {
            eprintln!("seed: {base} (random; item k uses {base} + k)");
        }
        // Default names carry what varies, so a sweep never writes two items to one file.
        let template = self.name.clone().unwrap_or_else(|| {
            format!(
                "{{stem}}{}{}{}.png",
                if self.output_dir.is_none() { "-edited" } else { "" },
                if strengths.len() > 1 { "-s{strength}" } else { "" },
                if per_row_seeds > 1 { "-{seed}" } else { "" }
            )
        });
        let template = template.as_str();

        let mut items = Vec::new();
        for row in &rows {
            let image = resolve(&row.image);
            let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into());
            let prompt = row.prompt.clone().or_else(|| self.prompt.clone()).ok_or_else(|| {
                Error::Usage(format!("no prompt for {}: give --prompt (or a prompt column in the manifest)", image.display()))
            })?;
            let row_strengths = match row.strength {
                Some(s) => {
                    if let Some(msg) = check_strength(&s) {
                        return Err(Error::Usage(format!("manifest strength {s} for {}: {msg}", image.display())));
                    }
                    vec![s]
                }
                None => strengths.clone(),
            };
            for &strength in &row_strengths {
                for j in 0..per_row_seeds {
                    let index = items.len();
                    let seed = match (row.seed, &seed_list) {
                        (Some(s), _) => s + j as u64,
                        (None, Some(list)) => list[j],
                        (None, None) => base.wrapping_add(index as u64),
                    };
                    let steps = row.steps.or(self.steps);
                    let output = if let Some(o) = &row.output {
                        match &self.output_dir {
                            Some(d) if Path::new(o).is_relative() => d.join(o),
                            _ => resolve(o),
                        }
                    } else if let (Some(o), 1, 1, false) = (&self.output, rows.len(), row_strengths.len() * per_row_seeds, self.output_dir.is_some()) {
                        o.clone()
                    } else {
                        if self.output.is_some() {
                            return Err(Error::Usage(
                                "--output names one file but this run writes several; use --output-dir DIR (and --name)".into(),
                            ));
                        }
                        let dir = match &self.output_dir {
                            Some(d) => d.clone(),
                            // Downloads and stdin live in a temporary folder: their outputs go to the current one.
                            None if fetched.owns(&image) => PathBuf::new(),
                            None => image.parent().map(Path::to_path_buf).unwrap_or_default(),
                        };
                        let vars = [
                            ("stem", stem.clone()),
                            ("seed", seed.to_string()),
                            ("strength", strength.to_string()),
                            ("steps", steps.map(|s| s.to_string()).unwrap_or_else(|| "default".into())),
                            ("index", format!("{index:05}")),
                        ];
                        dir.join(render(template, &vars)?)
                    };
                    let request = Request {
                        model: model.clone(),
                        image: image.clone(),
                        prompt: prompt.clone(),
                        strength,
                        steps,
                        guidance: row.guidance.or(self.guidance),
                        seed: Some(seed),
                        rng: self.rng.unwrap_or(RngKind::TorchCpu),
                        width: self.width,
                        height: self.height,
                        max_sequence_length,
                        device: device.clone(),
                        dtype,
                        output,
                        quiet: self.quiet,
                        resize: self.resize.unwrap_or_default(),
                        max_megapixels: self.max_megapixels,
                        keep_size: self.keep_size,
                        overrides: overrides.clone(),
                        quantize: self.quantize,
                    };
                    items.push(Item { index, request });
                }
            }
        }

        // Two items writing one file would silently lose one of them.
        let mut seen: HashMap<&Path, usize> = HashMap::new();
        for it in &items {
            if let Some(prev) = seen.insert(it.request.output.as_path(), it.index) {
                return Err(Error::Usage(format!(
                    "items {prev} and {} would both write {}; add {{index}} or {{seed}} to --name",
                    it.index,
                    it.request.output.display()
                )));
            }
        }
        let total = items.len();
        if let Some(spec) = &self.shard {
            let (i, n) = parse_shard(spec, &|k| std::env::var(k).ok())?;
            items.retain(|it| it.index % n == i);
        }
        Ok(Batch {
            items,
            total,
            dry_run: self.dry_run,
            json: self.json,
            skip_existing: self.skip_existing,
            quiet: self.quiet,
            output_dir: self.output_dir,
            grid: self.grid,
            stdout_png,
            fetched: Arc::new(fetched),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs() {
        let none = |_: &str| None;
        assert_eq!(parse_shard("1/4", &none).unwrap(), (1, 4));
        assert!(parse_shard("4/4", &none).is_err());
        assert!(parse_shard("x/4", &none).is_err());
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("7".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("5".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("3".to_string()),
            _ => None,
        };
        assert_eq!(parse_shard("auto", &slurm).unwrap(), (2, 3));
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
        assert_eq!(parse_shard("auto/2", &k8s).unwrap(), (1, 2));
        assert!(parse_shard("auto", &k8s).is_err()); // no count
    }

    #[test]
    fn templates() {
        let vars = [("stem", "cat".to_string()), ("seed", "7".to_string())];
        assert_eq!(render("{stem}-{seed}", &vars).unwrap(), "cat-7.png");
        assert_eq!(render("x/{stem}.png", &vars).unwrap(), "x/cat.png");
        assert!(render("{stem}-{nope}", &vars).is_err());
        assert!(render("{stem", &vars).is_err());
    }
}
