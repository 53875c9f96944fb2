//! What a batch prints on stdout, item by item: the written path, or with `--json` one object per item (the
//! edit's record plus index, output, status and, when written, timings and peak memory). Lines go through
//! `ui::stdout`, so a closed stdout never stops the batch.

use super::{Item, Options};
use crate::engine::memory::Estimate;
use crate::engine::{EditRecord, Plan, Report};
use crate::ui::stdout::line;
use serde_json::{json, Value};

fn record(item: &Item, plan: &Plan, status: &str) -> Value {
    with_status(item, EditRecord::new(&item.request, plan), status)
}

fn with_status(item: &Item, rec: EditRecord, status: &str) -> Value {
    let mut v = serde_json::to_value(rec).expect("a record always serializes");
    v["index"] = json!(item.index);
    v["output"] = json!(item.request.output);
    v["status"] = json!(status);
    v
}

fn bare(item: &Item, status: &str) -> Value {
    json!({"index": item.index, "input": item.request.image(), "output": item.request.output, "status": status})
}

/// A written item (nothing when the PNG itself goes to stdout).
pub fn written(opts: &Options, item: &Item, rep: &Report, memory: Option<&Estimate>) {
    if opts.stdout {
        return;
    }
    if opts.json {
        let mut v = with_status(item, rep.record.clone(), "written");
        v["timings"] = json!(rep.timings);
        v["peak_rss_mib"] = json!(rep.peak_rss_mib);
        v["peak_gpu_mib"] = json!(rep.peak_gpu_mib);
        if !rep.gpu_mib_by_stage.is_empty() {
            let stages: serde_json::Map<String, Value> =
                rep.gpu_mib_by_stage.iter().map(|(s, m)| (s.to_string(), json!(m.round()))).collect();
            v["gpu_mib_by_stage"] = Value::Object(stages);
        }
        v["memory_estimate"] = estimate(memory);
        line(&v.to_string());
    } else {
        line(&rep.output.display().to_string());
    }
}

/// A dry run's item: its record, or `input -> output: plan`.
pub fn planned(opts: &Options, item: &Item, plan: &Plan, memory: Option<&Estimate>) {
    if opts.json {
        let mut v = record(item, plan, "planned");
        v["memory_estimate"] = estimate(memory);
        line(&v.to_string());
    } else {
        let r = &item.request;
        let input = r.image().map(|p| p.display().to_string()).unwrap_or_default();
        line(&format!("{input} -> {}: {}", r.output.display(), crate::ui::lines::plan(r, plan)));
    }
}

/// The expected peak and its stages in bytes (null when the weights were not on disk to size).
fn estimate(memory: Option<&Estimate>) -> Value {
    memory.map_or(Value::Null, |m| {
        let mut v = json!(m);
        v["peak"] = json!(m.peak());
        v["peak_stage"] = json!(m.peak_stage().name);
        v
    })
}

pub fn skipped(opts: &Options, item: &Item) {
    if opts.json {
        line(&bare(item, "skipped").to_string());
    }
}

pub fn failed(opts: &Options, item: &Item, msg: &str) {
    if opts.json {
        let mut v = bare(item, "failed");
        v["error"] = json!(msg);
        line(&v.to_string());
    }
}

/// Copies the single written PNG to stdout (`-o -`).
pub fn png_to_stdout(png: &std::path::Path) -> std::io::Result<()> {
    let bytes = std::fs::read(png)?;
    crate::ui::stdout::bytes(&bytes).map_err(std::io::Error::other)
}
