//! The `flux-img2img` binary: flags → a batch of edits → results on stdout, progress and errors on stderr.
//! Exit codes: 0 every item written, 1 some items failed (the rest were written), 2 bad usage or a fatal error
//! (and a one-item run that fails), 130 interrupted.

use clap::Parser;
use flux_img2img::cli::{Args, Command};
use flux_img2img::{batch, smoke, ui::lines, ui::Ui};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    tune_allocator();
    let args = Args::parse();
    let ui = Arc::new(Ui::new(args.quiet, args.verbose));
    match &args.command {
        Some(Command::Smoke(s)) => return ExitCode::from(smoke::command(s, &ui)),
        Some(Command::Cache { action }) => return ExitCode::from(cache_command(action, &ui)),
        None => {}
    }
    let dry_run = args.dry_run;
    let batch = match args.into_batch() {
        Ok(b) => b,
        Err(e) => {
            ui.error(&e);
            return ExitCode::from(2);
        }
    };
    batch.warnings.iter().for_each(|w| ui.warn(w));
    if let (Some(base), false) = (batch.random_seed, dry_run) {
        ui.info(&format!("seed: {base} (random; item k uses {base} + k)"));
    }
    match batch::run(&batch, &ui) {
        Err(e) => {
            ui.error(&e);
            ExitCode::from(2)
        }
        Ok(s) => {
            if batch.total > 1 {
                ui.info(&lines::summary(&s, dry_run, batch.items.len(), batch.total));
                for (i, msg) in &s.failed {
                    ui.info(&format!("  failed item {i}: {msg}"));
                }
            }
            ExitCode::from(s.exit_code(batch.total))
        }
    }
}

/// `cache`: the quantization cache's files on stdout (path and size), or `cache clear`.
fn cache_command(action: &str, ui: &Ui) -> u8 {
    use flux_img2img::weights::gguf_cache;
    if action == "clear" {
        return match gguf_cache::clear() {
            Ok((n, bytes)) => {
                println!(
                    "removed {n} files ({:.1} MiB) from {}",
                    bytes as f64 / 1048576.0,
                    gguf_cache::dir().display()
                );
                0
            }
            Err(e) => {
                ui.error(&e);
                2
            }
        };
    }
    let files = gguf_cache::list();
    ui.info(&format!("quantization cache: {} ({} files)", gguf_cache::dir().display(), files.len()));
    for (path, size) in files {
        println!("{}\t{:.1} MiB", path.display(), size as f64 / 1048576.0);
    }
    0
}

/// candle allocates a fresh buffer for every intermediate tensor (10-35 MB each here). glibc hands such blocks back
/// to the kernel on free and faults them in again, zeroed, on the next allocation; on the CPU benchmark that cost
/// ~20% of the run (13.2 s -> 10.7 s, peak RSS unchanged at ~0.7 GB). A large top pad keeps the freed heap mapped.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    const TOP_PAD: libc::c_int = 1 << 30;
    // SAFETY: mallopt only adjusts allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
