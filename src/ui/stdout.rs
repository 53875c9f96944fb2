//! Results on standard output, written so that a closed or full stdout never stops the work: a reader that goes
//! away (`… | head -1`) or a full device (`> /dev/full`) turns later writes into no-ops, the images keep being
//! made and written, and the binary reports the failure and exits with its own status at the end.

use std::io::Write;
use std::sync::Mutex;

/// The first write error, and how many results were lost because of it.
static FAILURE: Mutex<Option<(String, usize)>> = Mutex::new(None);

/// One result line.
pub fn line(text: &str) {
    write(|out| writeln!(out, "{text}").and_then(|_| out.flush()));
}

/// Raw bytes (a PNG for `-o -`); Err when they did not all reach stdout.
pub fn bytes(data: &[u8]) -> Result<(), String> {
    write(|out| out.write_all(data).and_then(|_| out.flush()));
    failure().map_or(Ok(()), |(e, _)| Err(e))
}

fn write(f: impl FnOnce(&mut std::io::StdoutLock<'static>) -> std::io::Result<()>) {
    let mut failed = FAILURE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, lost)) = failed.as_mut() {
        *lost += 1;
        return;
    }
    if let Err(e) = f(&mut std::io::stdout().lock()) {
        *failed = Some((e.to_string(), 1));
    }
}

/// The first error writing stdout and the number of results not delivered, if any write failed.
pub fn failure() -> Option<(String, usize)> {
    FAILURE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// A line on stderr that never fails the program (stderr may be closed too).
pub fn err_line(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}
