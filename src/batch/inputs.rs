//! Input images as the user names them → local files. `--image` takes files, folders (their images, sorted),
//! quoted globs, http(s) URLs and `-` (standard input). Listing folders and globs happens when the batch is
//! built; downloads and standard input are read only when the batch runs, into a temporary folder that lives
//! as long as the run, under a name taken from the URL so output names still make sense.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Image extensions a folder scan picks up.
pub const IMAGE_EXTENSIONS: &[&str] = &["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif"];
/// Largest download accepted, in bytes.
const MAX_DOWNLOAD: u64 = 512 << 20;

/// One input image.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    File(PathBuf),
    Url(String),
    Stdin,
}

/// Whether `spec` is an http(s) URL.
pub fn is_url(spec: &str) -> bool {
    spec.starts_with("http://") || spec.starts_with("https://")
}

impl Input {
    /// `-`, a URL, or a path.
    pub fn parse(spec: &str) -> Self {
        if spec == "-" {
            Input::Stdin
        } else if is_url(spec) {
            Input::Url(spec.to_string())
        } else {
            Input::File(PathBuf::from(spec))
        }
    }

    /// Downloaded or piped: its default output goes to the current folder.
    pub fn is_remote(&self) -> bool {
        !matches!(self, Input::File(_))
    }

    /// The name outputs are derived from: the file's stem, the URL's file name, or `stdin`.
    pub fn stem(&self) -> String {
        match self {
            Input::File(p) => p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "image".into()),
            Input::Url(u) => url_stem(u),
            Input::Stdin => "stdin".into(),
        }
    }

    /// How the input is shown and recorded until it is fetched.
    pub fn display_path(&self) -> PathBuf {
        match self {
            Input::File(p) => p.clone(),
            Input::Url(u) => PathBuf::from(u),
            Input::Stdin => PathBuf::from("-"),
        }
    }
}

/// `https://host/pics/cat.png?x=1` → `cat`.
fn url_stem(url: &str) -> String {
    url.split(['?', '#'])
        .next()
        .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
        .map(|n| n.rsplit_once('.').map_or(n, |(stem, _)| stem))
        .filter(|n| !n.is_empty() && !n.contains(':'))
        .unwrap_or("download")
        .to_string()
}

/// `--image` values → inputs in the order given: folders and globs expanded (sorted), the rest as they are
/// (a missing file fails later as its own item).
pub fn expand(specs: &[String]) -> Result<Vec<Input>> {
    let mut out = Vec::new();
    for spec in specs {
        let p = Path::new(spec);
        if Input::parse(spec).is_remote() {
            out.push(Input::parse(spec));
        } else if p.is_dir() {
            out.extend(folder_images(spec, p)?.into_iter().map(Input::File));
        } else if !p.exists() && spec.contains(['*', '?', '[']) {
            out.extend(glob_files(spec)?.into_iter().map(Input::File));
        } else {
            out.push(Input::File(p.to_path_buf()));
        }
    }
    Ok(out)
}

fn folder_images(spec: &str, dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::Usage(format!("--image {spec}: cannot list the folder: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|f| f.is_file() && has_image_extension(f))
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::Usage(format!(
            "--image {spec}: the folder has no images ({})",
            IMAGE_EXTENSIONS.join(", ")
        )));
    }
    Ok(found)
}

fn glob_files(spec: &str) -> Result<Vec<PathBuf>> {
    let mut found: Vec<PathBuf> = glob::glob(spec)
        .map_err(|e| Error::Usage(format!("--image {spec}: bad pattern: {e}")))?
        .filter_map(|r| r.ok())
        .filter(|f| f.is_file())
        .collect();
    found.sort();
    if found.is_empty() {
        return Err(Error::Usage(format!("--image {spec}: no file matches")));
    }
    Ok(found)
}

fn has_image_extension(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Seconds a URL input may take to connect, and then between received bytes, unless `--download-timeout` says.
pub const DEFAULT_TIMEOUT: u64 = 30;

/// Remote inputs fetched into a temporary folder, once each, for the length of a run.
#[derive(Default)]
pub struct Downloads {
    dir: Option<tempfile::TempDir>,
    fetched: HashMap<Input, std::result::Result<PathBuf, String>>,
    /// Connect and read timeout in seconds (0: the default).
    timeout: u64,
    /// The temporary folder stays registered for removal if the process is stopped.
    live: Option<crate::cleanup::Guard>,
}

impl Downloads {
    /// Downloads that give up on a server silent for `secs` seconds (None: [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(secs: Option<u64>) -> Self {
        Self { timeout: secs.unwrap_or(DEFAULT_TIMEOUT), ..Self::default() }
    }

    /// A server that accepts and never answers must not hold the batch forever.
    fn agent(&self) -> ureq::Agent {
        let t = std::time::Duration::from_secs(if self.timeout == 0 { DEFAULT_TIMEOUT } else { self.timeout });
        ureq::AgentBuilder::new().timeout_connect(t).timeout_read(t).build()
    }

    /// The temporary folder (created on first use).
    fn dir(&mut self) -> Result<PathBuf> {
        if self.dir.is_none() {
            let d = tempfile::Builder::new()
                .prefix("flux-img2img-inputs-")
                .tempdir()
                .map_err(|e| Error::Usage(format!("cannot create a temporary folder for downloaded inputs: {e}")))?;
            self.live = Some(crate::cleanup::register(d.path()));
            self.dir = Some(d);
        }
        Ok(self.dir.as_ref().expect("created above").path().to_path_buf())
    }

    /// A fresh path in the temporary folder named `name`.
    pub fn temp_path(&mut self, name: &str) -> Result<PathBuf> {
        let dir = self.dir()?;
        let (stem, ext) = name.rsplit_once('.').unwrap_or((name, "img"));
        let mut path = dir.join(name);
        let mut n = 1;
        while path.exists() {
            path = dir.join(format!("{stem}-{n}.{ext}"));
            n += 1;
        }
        Ok(path)
    }

    /// The input as a local file: files as they are, remote ones fetched (once; a failure is remembered).
    pub fn local(&mut self, input: &Input) -> Result<PathBuf> {
        if let Input::File(p) = input {
            return Ok(p.clone());
        }
        if !self.fetched.contains_key(input) {
            let got = self.fetch(input).map_err(|e| e.one_line());
            self.fetched.insert(input.clone(), got);
        }
        self.fetched[input].clone().map_err(|msg| Error::image(input.display_path(), strip_prefix(&msg, input)))
    }

    fn fetch(&mut self, input: &Input) -> Result<PathBuf> {
        let src = input.display_path();
        let bytes = match input {
            Input::Stdin => {
                read_all(std::io::stdin()).map_err(|e| Error::image_from(&src, "cannot read standard input", e))?
            }
            Input::Url(url) => {
                let resp = self.agent().get(url).call().map_err(|e| Error::image_from(&src, "cannot download", e))?;
                read_all(std::io::Read::take(resp.into_reader(), MAX_DOWNLOAD))
                    .map_err(|e| Error::image_from(&src, "cannot download", e))?
            }
            Input::File(p) => return Ok(p.clone()),
        };
        if bytes.is_empty() {
            return Err(Error::image(&src, "empty"));
        }
        let path = self.temp_path(&format!("{}.img", input.stem()))?;
        std::fs::write(&path, bytes).map_err(|e| Error::image_from(&src, "cannot store the download", e))?;
        Ok(path)
    }
}

fn read_all(mut r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)?;
    Ok(buf)
}

/// A remembered failure's text without its `input image <src>: ` head (the error adds it again).
fn strip_prefix(msg: &str, input: &Input) -> String {
    let head = format!("input image {}: ", input.display_path().display());
    msg.strip_prefix(&head).unwrap_or(msg).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_and_kinds() {
        assert_eq!(Input::parse("http://h/pics/cat.png?x=1").stem(), "cat");
        assert_eq!(Input::parse("https://h/").stem(), "h");
        assert_eq!(Input::parse("-"), Input::Stdin);
        assert_eq!(Input::parse("a/b.jpg").stem(), "b");
        assert!(!Input::parse("a/b.jpg").is_remote());
    }
}
