//! Manifest file → rows (one edit each): CSV with a header line, or JSON lines (`.jsonl`, `.ndjson`, `.json`).
//! Columns/keys: image (empty: text-to-image), prompt, strength, seed, steps, guidance, output, mask, lora,
//! reference (FLUX.2); empty CSV cells mean "use
//! the flag's value". Unknown columns are an error, so a typo cannot silently drop a setting.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

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
}

pub fn read(path: &Path) -> Result<Vec<Row>> {
    let err = |msg: String| Error::Usage(format!("--manifest {}: {msg}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let rows = match ext.as_str() {
        "csv" => {
            let mut r = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
            r.deserialize::<Row>()
                .enumerate()
                .map(|(i, row)| row.map_err(|e| err(format!("line {}: {e}", i + 2))))
                .collect::<Result<Vec<_>>>()?
        }
        "jsonl" | "ndjson" | "json" => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str::<Row>(l).map_err(|e| err(format!("line {}: {e}", i + 1))))
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(err("unknown format; name it .csv (with a header line) or .jsonl (one object per line)".into()))
        }
    };
    if rows.is_empty() {
        return Err(err("no items".into()));
    }
    Ok(rows)
}
