//! Runs a [`Batch`] of edits with one model [`Session`]: cheap checks of every item first, then all prompts
//! encoded with one load of the text encoders, then each item (VAE and transformer loaded once). An item that
//! fails is reported and the batch goes on; model problems stop it. Results go to stdout (a path, or one JSON
//! object per item with `--json`); plans, progress and the summary go to stderr.

use crate::cli::jobs::{Batch, Item};
use crate::error::{Error, Result};
use crate::grid;
use crate::image_io;
use crate::output;
use crate::source;
use crate::pipeline::{self, Plan, Report, Session};
use serde_json::json;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
pub struct Summary {
    /// Items a dry run planned.
    pub planned: usize,
    pub written: usize,
    pub skipped: usize,
    /// (item index, message)
    pub failed: Vec<(usize, String)>,
    /// Stopped by Ctrl-C before every item ran.
    pub interrupted: bool,
}

/// Problems that would hit every item (the model itself) end the batch; the rest belong to one item.
fn is_fatal(e: &Error) -> bool {
    matches!(e, Error::Model { .. } | Error::Tensors { .. } | Error::Tokenizer { .. })
}

fn plan_json(item: &Item, plan: &Plan) -> serde_json::Value {
    let mut v = pipeline::record(&item.request, plan);
    v["index"] = json!(item.index);
    v["output"] = json!(item.request.output);
    v
}

fn report_json(item: &Item, rep: &Report) -> serde_json::Value {
    let mut v = plan_json(item, &rep.plan);
    v["status"] = json!("written");
    v["timings"] = json!(rep.timings);
    v["peak_rss_mib"] = json!(rep.peak_rss_mib);
    v
}

fn failure_json(item: &Item, msg: &str) -> serde_json::Value {
    json!({"index": item.index, "input": item.request.image, "output": item.request.output, "status": "failed", "error": msg})
}

/// Runs (or, with `dry_run`, plans) every item. Err only for fatal problems: a bad model folder or weights.
pub fn execute(batch: &Batch) -> Result<Summary> {
    let mut summary = Summary::default();
    let Some(first) = batch.items.first() else {
        if !batch.quiet {
            eprintln!("nothing to do: this shard has no items (the batch has {})", batch.total);
        }
        return Ok(summary);
    };
    let r0 = &first.request;
    // Configs (and, for a run, weights) from the folder or the Hub cache; a dry run downloads no weights.
    let model_dir = source::locate(&r0.model, &r0.overrides, !batch.dry_run, batch.quiet)?;
    let mut session = if batch.dry_run {
        Session::open_configs(&model_dir, &r0.overrides)?
    } else {
        Session::open(&model_dir, &r0.overrides, &r0.device, r0.dtype)?
    };
    let say = |msg: String| {
        if !batch.quiet {
            eprintln!("{msg}");
        }
    };
    let emit_failure = |summary: &mut Summary, item: &Item, msg: String| {
        if batch.total == 1 {
            eprintln!("error: {msg}");
        } else {
            eprintln!("error: item {} ({}): {msg}", item.index, item.request.image.display());
        }
        if batch.json {
            println!("{}", failure_json(item, &msg));
        }
        summary.failed.push((item.index, msg));
    };

    if let (Some(g), false) = (&batch.grid, batch.dry_run) {
        output::check_output(g, &r0.image)?;
    }
    let mut cells: Vec<grid::Cell> = Vec::new();

    // 1. Cheap checks and plans for every item: no weights needed.
    let mut ready: Vec<(&Item, Plan)> = Vec::new();
    for item in &batch.items {
        let r = &item.request;
        if batch.skip_existing && r.output.exists() {
            say(format!("skip: {} exists", r.output.display()));
            if batch.json {
                println!("{}", json!({"index": item.index, "input": r.image, "output": r.output, "status": "skipped"}));
            }
            summary.skipped += 1;
            continue;
        }
        if let Some(why) = batch.fetched.failure(&r.image) {
            emit_failure(&mut summary, item, why.to_string());
            continue;
        }
        // A real run decodes the whole file now, so a truncated image fails before any weight is loaded;
        // a dry run reads only the header.
        let dims = if batch.dry_run {
            image_io::dimensions(&r.image)
        } else {
            image_io::load_rgb(&r.image).map(|img| img.dimensions())
        };
        let checked = dims.and_then(|dims| {
            if !batch.dry_run {
                // Folders under --output-dir are ours to create; a missing folder in an explicit --output is an error.
                let ours = batch.output_dir.as_ref().is_some_and(|d| r.output.starts_with(d));
                if let Some(dir) = r.output.parent().filter(|d| ours && !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| Error::Output { path: r.output.clone(), msg: format!("cannot create its folder: {e}") })?;
                }
                output::check_output(&r.output, &r.image)?;
            }
            session.plan(r, dims)
        });
        match checked {
            Ok(plan) => ready.push((item, plan)),
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => emit_failure(&mut summary, item, e.to_string()),
        }
    }

    if batch.dry_run {
        // Strengths that land on the same first step give identical images: say so.
        let mut starts: HashMap<(String, usize, u64), Vec<f64>> = HashMap::new();
        for (item, plan) in &ready {
            let r = &item.request;
            if batch.json {
                let mut v = plan_json(item, plan);
                v["status"] = json!("planned");
                println!("{v}");
            } else {
                let s = &plan.schedule;
                println!(
                    "{} -> {}: {}x{}, {} of {} steps (t_start {}), start sigma {:.6}, shift {}, seed {}",
                    r.image.display(),
                    r.output.display(),
                    plan.width,
                    plan.height,
                    s.steps_to_run(),
                    plan.steps,
                    s.t_start,
                    s.start_sigma(),
                    s.mu.map(|m| format!("mu {m:.4} (dynamic)")).unwrap_or_else(|| "static".into()),
                    plan.seed
                );
            }
            // Same input, prompt and steps: the seed is left out, since what matters is that both strengths
            // run the very same denoising steps.
            let key = (format!("{}|{}", r.image.display(), r.prompt), plan.steps, plan.schedule.t_start as u64);
            starts.entry(key).or_default().push(r.strength);
        }
        summary.planned = ready.len();
        for ((img, steps, t_start), strengths) in starts {
            let mut distinct = strengths.clone();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup();
            if distinct.len() > 1 {
                eprintln!(
                    "warning: strengths {distinct:?} all start at step {t_start} of {steps} for {} and give the same image \
                     for the same seed; use more --steps to tell them apart",
                    img.split('|').next().unwrap_or("")
                );
            }
        }
        return Ok(summary);
    }

    // 2. Every prompt encoded with one load of the text encoders.
    if !ready.is_empty() {
        let mut prompts: Vec<&str> = ready.iter().map(|(i, _)| i.request.prompt.as_str()).collect();
        prompts.sort();
        prompts.dedup();
        let first = &ready[0].0.request;
        session.encode_prompts(&prompts, first.max_sequence_length, first.quantize)?;
    }

    // 3. The edits. Ctrl-C lets the current image finish, then stops with the summary.
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C exits at once; the output of the current image is then never renamed into place.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing the current image, then stopping (Ctrl-C again to abandon it)");
        });
    }
    let n = ready.len();
    // On a terminal a batch bar sits above each image's denoising bar; elsewhere "[k/n]" lines.
    let batch_bar = (n > 1 && !batch.quiet && std::io::stderr().is_terminal()).then(|| {
        let mp = indicatif::MultiProgress::new();
        let bar = mp.add(indicatif::ProgressBar::new(n as u64));
        bar.set_style(
            indicatif::ProgressStyle::with_template("batch   {bar:30} {pos}/{len} images  eta {eta}  {msg}")
                .expect("valid template"),
        );
        session.progress = Some(mp);
        bar
    });
    for (k, (item, plan)) in ready.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            summary.interrupted = true;
            break;
        }
        match &batch_bar {
            Some(bar) => {
                bar.set_position(k as u64);
                bar.set_message(item.request.image.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default());
            }
            None if n > 1 => {
                say(format!("[{}/{n}] {} -> {}", k + 1, item.request.image.display(), item.request.output.display()))
            }
            None => {}
        }
        // Decoded again rather than kept from the checks: a batch of large images would not fit in memory.
        let result = image_io::load_rgb(&item.request.image)
            .and_then(|input| session.run_planned(&item.request, input, plan.clone()));
        match result {
            Ok(rep) => {
                if batch.stdout_png.is_some() {
                    // Standard output carries the PNG itself (main copies it there).
                } else if batch.json {
                    println!("{}", report_json(item, &rep));
                } else {
                    println!("{}", rep.output.display());
                }
                summary.written += 1;
                let r = &item.request;
                cells.push(grid::Cell { input: r.image.clone(), output: r.output.clone(), strength: r.strength, seed: rep.plan.seed });
            }
            Err(e) if is_fatal(&e) => return Err(e),
            Err(e) => emit_failure(&mut summary, item, e.to_string()),
        }
    }
    if let Some(bar) = batch_bar {
        bar.finish_and_clear();
    }
    if stop.load(Ordering::SeqCst) {
        summary.interrupted = true;
    }
    if let (Some(g), false) = (&batch.grid, cells.is_empty()) {
        let (w, h) = grid::write(g, &cells)?;
        say(format!("grid: {} ({w}x{h}, {} images)", g.display(), cells.len()));
    }
    Ok(summary)
}
