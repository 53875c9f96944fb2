//! Batches: an ordered list of edits run with one model session.
//!
//! - `inputs`: what `--image` names (files, folders, globs, URLs, stdin) → local files;
//! - [`Batch`] / [`Item`]: the item list, in the order inputs × strengths × seeds (item k's seed is base + k, so
//!   names, seeds and shards are the same on every machine);
//! - `runner`: pre-check, dry run, prompt encoding, the edits, the contact sheet — each a short step;
//! - `results`: what goes to stdout (paths or JSON lines);
//! - `grid`: the labelled contact sheet;
//! - `fit`: for an edit over its memory budget, the flag that would fit.

mod fit;
pub mod grid;
pub mod inputs;
mod results;
mod runner;
pub mod safety;
pub(crate) mod signals;

pub use inputs::Input;
pub use runner::run;

use crate::engine::Request;
use std::path::PathBuf;

/// One edit and its position in the whole (unsharded) batch.
#[derive(Debug, Clone)]
pub struct Item {
    pub index: usize,
    /// Where the input image comes from (fetched when the batch runs if remote); none for text-to-image.
    pub input: Option<Input>,
    pub request: Request,
    /// A strength was asked for (flag or manifest column): on FLUX.2 the input is then noised (our SDEdit
    /// extension) rather than used as a reference.
    pub strength_given: bool,
}

/// How the batch reports and writes.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Plan every item, write nothing.
    pub dry_run: bool,
    /// One JSON object per item on stdout.
    pub json: bool,
    /// Items whose output exists are skipped.
    pub skip_existing: bool,
    /// `--output-dir`: created (with sub-folders a manifest names) when missing.
    pub output_dir: Option<PathBuf>,
    /// `--grid`: contact sheet of the images written.
    pub grid: Option<PathBuf>,
    /// `-o -`: the single image goes to standard output.
    pub stdout: bool,
    /// Kontext reference size, for items a Kontext checkpoint turns into Kontext edits.
    pub reference_size: crate::engine::request::ReferenceSize,
    /// `--strength` was given (Kontext ignores it, and says so).
    pub strength_given: bool,
    /// `--memory-budget`: items expected to need more are refused before anything loads.
    pub memory_budget: Option<crate::engine::memory::Budget>,
    /// `--strict-images`: damaged images (a JPEG cut short) fail their item instead of a warning.
    pub strict_images: bool,
    /// `--download-timeout`: seconds for URL inputs to connect and between received bytes.
    pub download_timeout: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Batch {
    /// The items this process runs (its shard).
    pub items: Vec<Item>,
    /// Items in the whole batch, all shards.
    pub total: usize,
    pub options: Options,
    /// The base seed, when it was drawn at random (reported so the batch can be repeated).
    pub random_seed: Option<u64>,
    /// Flags that some items ignore.
    pub warnings: Vec<String>,
}

/// How a batch went.
#[derive(Debug, Default)]
pub struct Summary {
    /// Items a dry run planned.
    pub planned: usize,
    pub written: usize,
    pub skipped: usize,
    /// (item index, message)
    pub failed: Vec<(usize, String)>,
    /// Stopped by Ctrl-C or SIGTERM before every item ran.
    pub interrupted: bool,
    /// The signal that stopped it (2 SIGINT, 15 SIGTERM).
    pub signal: Option<i32>,
}

impl Summary {
    /// The process exit code: 0 all written, 1 some failed, 2 a one-item batch failed, 130 interrupted (143 by
    /// SIGTERM).
    pub fn exit_code(&self, total: usize) -> u8 {
        if self.interrupted {
            128 + self.signal.unwrap_or(2) as u8
        } else if self.failed.is_empty() {
            0
        } else if total == 1 {
            2
        } else {
            1
        }
    }
}

impl Summary {
    /// The end-of-batch line: `in_run` items in this process, `total` in the whole batch.
    pub fn line(&self, dry_run: bool, in_run: usize, total: usize) -> String {
        format!(
            "summary: {}{} skipped, {} failed{} ({in_run} items in this run, {total} in the batch)",
            if dry_run { format!("{} planned, ", self.planned) } else { format!("{} written, ", self.written) },
            self.skipped,
            self.failed.len(),
            if self.interrupted { ", interrupted" } else { "" },
        )
    }
}
