//! Manifest file → rows (one edit each): CSV with a header line, or JSON lines (`.jsonl`, `.ndjson`, `.json`).
//! Columns/keys: image (empty: text-to-image), prompt, strength, seed, steps, guidance, output, mask, lora,
//! reference (FLUX.2), cache, control (FLUX.1 Control, or the one ControlNet's image), control_scale
//! (ControlNets), redux (FLUX.1 Redux); empty CSV cells mean "use the flag's value". A manifest is untrusted data:
//! unknown columns, a quote that never closes and oversized files are errors, and every error names its line, so a
//! typo can neither drop a setting nor swallow the rows after it.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::io::Read;
use std::path::Path;

/// Largest manifest read (a million rows of a few hundred bytes).
const MAX_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Empty or absent: text-to-image (needs --width and --height).
    #[serde(default)]
    pub image: Option<String>,
    pub prompt: Option<String>,
    pub strength: Option<f64>,
    pub seed: Option<u64>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub output: Option<String>,
    /// Inpainting mask for this row (relative to the manifest).
    pub mask: Option<String>,
    /// LoRAs for this row, `FILE[:WEIGHT]` separated by `;` (replacing --lora).
    pub lora: Option<String>,
    /// FLUX.2 reference images for this row, separated by `;` (replacing --reference).
    pub reference: Option<String>,
    /// The step cache for this row, as `--cache` takes it (replacing --cache): `fbcache:0.1`, `taylorseer:1,5`.
    pub cache: Option<String>,
    /// FLUX.1 Control: this row's control image (relative to the manifest), or `canny` (replacing --control).
    pub control: Option<String>,
    /// FLUX.1 ControlNet: this row's conditioning scale for every --controlnet (replacing --control-scale).
    pub control_scale: Option<f64>,
    /// FLUX.1 Redux images for this row, `FILE[:WEIGHT]` separated by `;` (replacing --redux).
    pub redux: Option<String>,
    /// The line of the file the row starts on (1-based), for messages.
    #[serde(skip)]
    pub line: usize,
}

pub fn read(path: &Path) -> Result<Vec<Row>> {
    let err = |msg: String| Error::Usage(format!("--manifest {}: {msg}", path.display()));
    let text = read_text(path).map_err(err)?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows = match ext.as_str() {
        "csv" => parse_csv(&text).map_err(err)?,
        "jsonl" | "ndjson" | "json" => parse_jsonl(&text).map_err(err)?,
        _ => {
            return Err(err("unknown format; name it .csv (with a header line) or .jsonl (one object per line)".into()))
        }
    };
    if rows.is_empty() {
        return Err(err("no items".into()));
    }
    Ok(rows)
}

/// The file's text: regular files and pipes (`<(…)`), at most [`MAX_BYTES`], UTF-8.
fn read_text(path: &Path) -> std::result::Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_dir() {
        return Err("is a folder; give a .csv or .jsonl file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(format!("is larger than {} MiB; split it into several manifests", MAX_BYTES >> 20));
    }
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// CSV rows with the line each starts on; a quote left open is refused before parsing, since the CSV reader
/// would otherwise take every following line as part of that one cell.
pub fn parse_csv(text: &str) -> std::result::Result<Vec<Row>, String> {
    if let Some(line) = unclosed_quote(text) {
        return Err(format!(
            "line {line}: a quoted cell opens here and never closes (a \" is missing); every following line would \
             become part of it"
        ));
    }
    let mut r = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let headers = r.headers().map_err(|e| format!("line 1: {}", csv_message(&e)))?.clone();
    let mut rows = Vec::new();
    for rec in r.records() {
        let rec = rec.map_err(|e| format!("line {}: {}", csv_line(&e), csv_message(&e)))?;
        let line = rec.position().map_or(0, |p| p.line() as usize);
        let mut row: Row = rec.deserialize(Some(&headers)).map_err(|e| format!("line {line}: {}", csv_message(&e)))?;
        row.line = line;
        rows.push(row);
    }
    Ok(rows)
}

/// JSON lines: one object per non-empty line.
pub fn parse_jsonl(text: &str) -> std::result::Result<Vec<Row>, String> {
    let mut rows = Vec::new();
    for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut row: Row = serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1))?;
        row.line = i + 1;
        rows.push(row);
    }
    Ok(rows)
}

/// The line on which a quoted CSV cell opens without closing, as the CSV reader parses quotes: only at the start
/// of a cell, `""` inside one being a literal quote.
fn unclosed_quote(text: &str) -> Option<usize> {
    let (mut line, mut opened, mut at_start, mut quoted) = (1, 0, true, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                }
                '"' => quoted = false,
                '\n' => line += 1,
                _ => {}
            }
            continue;
        }
        match c {
            '"' if at_start => (quoted, opened) = (true, line),
            ',' => at_start = true,
            '\n' => (line, at_start) = (line + 1, true),
            '\r' => {}
            _ => at_start = false,
        }
    }
    quoted.then_some(opened)
}

fn csv_line(e: &csv::Error) -> u64 {
    e.position().map_or(0, |p| p.line())
}

/// A CSV error without the position the reader prefixes (the message names the line itself).
fn csv_message(e: &csv::Error) -> String {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("{len} cells where the header has {expected_len}")
        }
        csv::ErrorKind::Deserialize { err, .. } => match err.field() {
            Some(f) => format!("column {}: {}", f + 1, err.kind()),
            None => err.kind().to_string(),
        },
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_that_never_close_name_their_line() {
        let text = "image,prompt\na.png,\"a cat\nb.png,a dog\nc.png,a bird\n";
        let e = parse_csv(text).unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        // Doubled quotes and quotes inside unquoted cells are not openings; multi-line cells that close are fine.
        let ok = "image,prompt\na.png,\"say \"\"hi\"\"\"\nb.png,it's 5\" tall\nc.png,\"two\nlines\"\nd.png,x\n";
        let rows = parse_csv(ok).unwrap();
        assert_eq!(rows.len(), 4);
        assert_eq!(rows[0].prompt.as_deref(), Some("say \"hi\""));
        assert_eq!(rows[2].prompt.as_deref(), Some("two\nlines"));
        assert_eq!((rows[2].line, rows[3].line), (4, 6));
    }

    #[test]
    fn errors_name_the_line() {
        let e = parse_csv("image,prompt,strength\na.png,x,0.5\nb.png,y,lots\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse_csv("image,prompt\na.png,x\nb.png,y,z\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
        let e = parse_csv("image,prompt,colour\na.png,x,red\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse_jsonl("{\"image\":\"a.png\"}\n\n{\"image\":3}\n").unwrap_err();
        assert!(e.starts_with("line 3:"), "{e}");
    }
}
