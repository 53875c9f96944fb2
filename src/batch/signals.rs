//! Ctrl-C and SIGTERM during a batch: the first lets the current image finish, then the batch stops and prints
//! its summary (exit 130, or 143 for SIGTERM); a second one removes the temporary files still open (the `.part`
//! image, cache and download temporaries) and exits at once. Takes the UI for the alert line; gives a [`Stop`]
//! the runner polls between items.

use crate::ui::Ui;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

/// The signal that asked the batch to stop (0: none yet).
#[derive(Default)]
pub struct Stop(AtomicI32);

impl Stop {
    /// The signal number, once one arrived.
    pub fn signal(&self) -> Option<i32> {
        Some(self.0.load(Ordering::SeqCst)).filter(|s| *s != 0)
    }

    /// Records `sig`; true when a signal had already arrived (the second one abandons the run).
    fn arrive(&self, sig: i32) -> bool {
        self.0.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_err()
    }
}

/// Installs the handlers for this process (once); signals before that keep their default action.
pub fn watch(ui: &Arc<Ui>) -> Arc<Stop> {
    let stop = Arc::new(Stop::default());
    install(stop.clone(), ui.clone());
    stop
}

fn on_signal(stop: &Stop, ui: &Ui, sig: i32) {
    if stop.arrive(sig) {
        crate::cleanup::remove_all();
        std::process::exit(128 + sig);
    }
    let name = if sig == 15 { "terminated (SIGTERM)" } else { "interrupted" };
    ui.alert(&format!("\n{name}: finishing the current image, then stopping (signal again to abandon it)"));
}

#[cfg(unix)]
fn install(stop: Arc<Stop>, ui: Arc<Ui>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else { return };
    std::thread::spawn(move || {
        for sig in signals.forever() {
            on_signal(&stop, &ui, sig);
        }
    });
}

#[cfg(not(unix))]
fn install(stop: Arc<Stop>, ui: Arc<Ui>) {
    let _ = ctrlc::set_handler(move || on_signal(&stop, &ui, 2));
}
