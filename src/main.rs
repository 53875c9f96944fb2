//! The `flux-img2img` binary: flags → a batch of edits → results on stdout, progress and errors on stderr.
//! Exit codes: 0 every item written, 1 some items failed (the rest were written), 2 bad usage or a fatal error
//! (and a one-item run that fails), 3 everything written but stdout was closed or full, 130 interrupted (143 on
//! SIGTERM).

use clap::Parser;
use flux_img2img::cli::{Args, Command};
use flux_img2img::{batch, smoke, ui::stdout, ui::Ui};
use std::process::ExitCode;
use std::sync::Arc;

fn main() -> ExitCode {
    tune_allocator();
    let args = Args::parse();
    let ui = Arc::new(Ui::new(args.quiet, args.verbose));
    let code = match &args.command {
        Some(Command::Smoke(s)) => smoke::command(s, &ui),
        Some(Command::Serve(s)) => flux_img2img::server::command(s, &ui),
        Some(Command::Cache { action, dry_run }) => cache_command(action, *dry_run, &ui),
        None => edit_command(args, &ui),
    };
    ExitCode::from(with_stdout_status(code, &ui))
}

/// The edits the flags ask for; the exit code.
fn edit_command(args: Args, ui: &Arc<Ui>) -> u8 {
    if args.server.is_some() {
        return flux_img2img::client::run(args, ui);
    }
    let dry_run = args.dry_run;
    let batch = match args.into_batch() {
        Ok(b) => b,
        Err(e) => {
            ui.error(&e);
            return 2;
        }
    };
    batch.warnings.iter().for_each(|w| ui.warn(w));
    if let (Some(base), false) = (batch.random_seed, dry_run) {
        ui.info(&format!("seed: {base} (random; item k uses {base} + k)"));
    }
    match batch::run(&batch, ui) {
        Err(e) => {
            ui.error(&e);
            2
        }
        Ok(s) => {
            if batch.total > 1 || s.interrupted {
                ui.alert(&s.line(dry_run, batch.items.len(), batch.total));
                for (i, msg) in &s.failed {
                    ui.info(&format!("  failed item {i}: {msg}"));
                }
            }
            s.exit_code(batch.total)
        }
    }
}

/// Exit code 3 when the work succeeded but its results did not all reach stdout (closed or full): the images are
/// written, what would have said so is lost. A failure already reported keeps its own code.
fn with_stdout_status(code: u8, ui: &Ui) -> u8 {
    let Some((err, lost)) = stdout::failure() else { return code };
    ui.warn(&format!(
        "standard output failed ({err}); {lost} result line(s) were not printed, though the work went on and every \
         file was written"
    ));
    if code == 0 {
        3
    } else {
        code
    }
}

/// `cache`: the quantization cache's own files on stdout (path and size), or `cache clear [--dry-run]`.
fn cache_command(action: &str, dry_run: bool, ui: &Ui) -> u8 {
    use flux_img2img::weights::gguf_cache;
    let mib = |b: u64| b as f64 / 1048576.0;
    let listing = if action == "clear" {
        match gguf_cache::clear(dry_run) {
            Ok(l) => l,
            Err(e) => {
                ui.error(&e);
                return 2;
            }
        }
    } else {
        gguf_cache::list()
    };
    let total: u64 = listing.ours.iter().map(|(_, b)| b).sum();
    let verb = match (action, dry_run) {
        ("clear", true) => "would remove",
        ("clear", false) => "removed",
        _ => "holds",
    };
    ui.info(&format!(
        "quantization cache {}: {verb} {} files ({:.1} MiB)",
        gguf_cache::dir_shown(),
        listing.ours.len(),
        mib(total)
    ));
    for (path, size) in &listing.ours {
        stdout::line(&format!("{}\t{:.1} MiB", path.display(), mib(*size)));
    }
    if !listing.others.is_empty() {
        ui.note(&format!(
            "{} other file(s) in that folder are not the cache's and are left alone (e.g. {})",
            listing.others.len(),
            listing.others[0].display()
        ));
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
