//! The only owner of stderr: plan and progress lines, progress bars on a terminal, warnings, notes, errors and
//! the batch summary, with `--quiet` and `-v` handled here alone. Implements the engine's [`Progress`], so the
//! engine reports events and never prints.
//!
//! - `lines`: the text of each line (one plan formatter for the stderr plan and the dry-run listing);
//! - `bars`: indicatif bars (batch above the current image's denoising steps);
//! - `stdout`: result lines and bytes on stdout, which a closed or full stdout never turns into a crash.

mod bars;
pub mod lines;
pub mod stdout;

use crate::engine::{Event, Progress};
use crate::error::Error;
use bars::Bars;
use std::io::IsTerminal;
use std::sync::Mutex;

/// How much goes to stderr, and whether it is a terminal (bars) or a log (plain lines).
pub struct Ui {
    quiet: bool,
    verbose: bool,
    terminal: bool,
    bars: Mutex<Bars>,
}

impl Ui {
    /// `quiet`: no plan or progress (warnings, notes and errors still print); `verbose`: errors with their
    /// whole chain and backtrace (also when `RUST_BACKTRACE` is set).
    pub fn new(quiet: bool, verbose: bool) -> Self {
        let verbose = verbose || std::env::var_os("RUST_BACKTRACE").is_some_and(|v| !v.is_empty() && v != "0");
        Self { quiet, verbose, terminal: std::io::stderr().is_terminal(), bars: Mutex::new(Bars::default()) }
    }

    /// Whether progress is drawn as bars (a terminal, not quiet); downloads draw theirs then too.
    pub fn bars(&self) -> bool {
        !self.quiet && self.terminal
    }

    /// A line on stderr, above any bars.
    fn print(&self, line: &str) {
        self.bars.lock().expect("ui lock").println(line);
    }

    /// Plan and progress text, silenced by `--quiet`.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            self.print(msg);
        }
    }

    /// A line that prints even under `--quiet` (an interruption).
    pub fn alert(&self, msg: &str) {
        self.print(msg);
    }

    pub fn warn(&self, msg: &str) {
        self.print(&format!("warning: {msg}"));
    }

    pub fn note(&self, msg: &str) {
        self.print(&format!("note: {msg}"));
    }

    /// One `error:` line (the whole chain and backtrace with `-v`).
    pub fn error(&self, e: &Error) {
        let text = if self.verbose { e.report() } else { e.one_line() };
        self.print(&format!("error: {text}"));
    }

    /// An item of a batch failed with `msg`.
    pub fn item_failed(&self, total: usize, index: usize, input: &str, msg: &str) {
        if total == 1 {
            self.print(&format!("error: {msg}"));
        } else {
            self.print(&format!("error: item {index} ({input}): {msg}"));
        }
    }

    /// A batch of `n` items starts: a bar on a terminal.
    pub fn batch_started(&self, n: usize) {
        if n > 1 && self.bars() {
            self.bars.lock().expect("ui lock").start_batch(n);
        }
    }

    /// Item `k` (0-based) of `n` starts.
    pub fn batch_item(&self, k: usize, n: usize, input: &str, output: &str, name: &str) {
        let mut bars = self.bars.lock().expect("ui lock");
        if bars.batch_item(k, name) {
            return;
        }
        drop(bars);
        if n > 1 {
            self.info(&format!("[{}/{n}] {input} -> {output}", k + 1));
        }
    }

    pub fn batch_finished(&self) {
        self.bars.lock().expect("ui lock").finish_batch();
    }

    fn step(&self, done: usize, total: usize, elapsed: std::time::Duration) {
        if self.quiet {
            return;
        }
        if self.terminal {
            self.bars.lock().expect("ui lock").denoise(done, total);
        } else if done > 0 {
            self.print(&format!("denoise: step {done}/{total} ({:.2}s/step)", elapsed.as_secs_f64() / done as f64));
        }
    }
}

impl Progress for Ui {
    fn event(&self, event: Event<'_>) {
        match event {
            Event::Warning(w) => self.warn(w),
            Event::Note(n) => self.note(n),
            Event::Plan { request, plan } => self.info(&format!("plan: {}", lines::plan(request, plan))),
            Event::Step { done, total, elapsed } => self.step(done, total, elapsed),
            Event::Done(report) => self.info(&lines::done(&report.timings)),
            Event::Preview { .. } => {}
        }
    }
}
