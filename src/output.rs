//! RGB image → PNG file, written atomically: a temporary file in the destination folder, renamed when complete,
//! so an interrupted or failed run never leaves a partial image. Generation parameters go into text chunks.

use crate::error::{Error, Result};
use image::RgbImage;
use std::io::Write;
use std::path::Path;

/// Checks before any heavy work that `output` can be written and is not the input file.
pub fn check_output(output: &Path, input: Option<&Path>) -> Result<()> {
    let err = |msg: &str| Error::output(output, msg);
    let ext = output.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    if ext.as_deref() != Some("png") {
        return Err(err("flux-img2img writes PNG; give the output a .png name"));
    }
    let parent = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::output(output, format!("folder {} does not exist; create it first", parent.display())));
    }
    if output.is_dir() {
        return Err(err("is a folder; give a file name ending in .png"));
    }
    if let (Ok(a), Some(Ok(b))) = (output.canonicalize(), input.map(Path::canonicalize)) {
        if a == b {
            return Err(err("is the input image; choose another --output so the input is never overwritten"));
        }
    }
    Ok(())
}

/// Whether `output`'s folder takes new files: a temporary file is made there and removed (permissions, read-only
/// mounts and full disks all show, which a look at the mode bits would not).
pub fn check_writable(output: &Path) -> Result<()> {
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match tempfile::Builder::new().prefix(".flux-img2img-probe-").tempfile_in(dir) {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::output_from(output, format!("cannot write in {}", dir.display()), e)),
    }
}

/// Whether `path` is a whole PNG: the signature first and the IEND chunk last (a file cut short by a crash or a
/// full disk has no IEND).
pub fn is_complete_png(path: &Path) -> bool {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    const IEND: [u8; 12] = [0, 0, 0, 0, b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82];
    let Ok(bytes) = std::fs::read(path) else { return false };
    bytes.len() >= 20 && bytes.starts_with(&SIGNATURE) && bytes.ends_with(&IEND)
}

/// Writes `img` as PNG with `text` chunks (keyword, value), replacing `path` only once the file is complete.
pub fn write_png(path: &Path, img: &RgbImage, text: &[(&str, String)]) -> Result<()> {
    let err = |msg: String| Error::output(path, msg);
    let mut tmp = part_file(path)?;
    let _live = crate::cleanup::register(tmp.path());
    {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(tmp.as_file_mut()), img.width(), img.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (k, v) in text {
            // iTXt carries UTF-8 (prompts are often not Latin-1).
            enc.add_itxt_chunk(k.to_string(), v.clone()).map_err(|e| err(e.to_string()))?;
        }
        let mut w = enc.write_header().map_err(|e| err(e.to_string()))?;
        w.write_image_data(img.as_raw()).map_err(|e| err(e.to_string()))?;
        w.finish().map_err(|e| err(e.to_string()))?;
    }
    finish(tmp, path)
}

/// Writes a finished file's bytes (a PNG a server made), replacing `path` only once they are all on disk.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = part_file(path)?;
    let _live = crate::cleanup::register(tmp.path());
    tmp.as_file_mut().write_all(bytes).map_err(|e| Error::output_from(path, "cannot write", e))?;
    finish(tmp, path)
}

fn finish(mut tmp: tempfile::NamedTempFile, path: &Path) -> Result<()> {
    tmp.as_file_mut().flush().map_err(|e| Error::output_from(path, "cannot write", e))?;
    tmp.persist(path).map_err(|e| Error::output_from(path, "cannot rename into place", e.error))?;
    Ok(())
}

/// A hidden `.png.part` file beside `path`, removed unless it is renamed into place.
fn part_file(path: &Path) -> Result<tempfile::NamedTempFile> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut builder = tempfile::Builder::new();
    builder.prefix(".flux-img2img-").suffix(".png.part");
    // Temporary files are private (0600) by default; the result should get the mode any new file gets (0666
    // less the umask, usually 0644), which the open call applies to this request.
    #[cfg(unix)]
    builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666));
    builder
        .tempfile_in(dir)
        .map_err(|e| Error::output_from(path, format!("cannot create a file in {}", dir.display()), e))
}

/// The text of the PNG chunk `key` (tEXt, zTXt or iTXt), if the file has one; Err with a reason when the file is
/// not a readable PNG.
pub fn read_text_chunk(path: &Path, key: &str) -> std::result::Result<Option<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let reader = png::Decoder::new(std::io::BufReader::new(file)).read_info().map_err(|e| format!("not a PNG: {e}"))?;
    let info = reader.info();
    if let Some(c) = info.utf8_text.iter().find(|c| c.keyword == key) {
        return c.get_text().map(Some).map_err(|e| e.to_string());
    }
    if let Some(c) = info.uncompressed_latin1_text.iter().find(|c| c.keyword == key) {
        return Ok(Some(c.text.clone()));
    }
    Ok(None)
}
