//! What the engine tells the outside world while it works: events through a small trait, so the engine never
//! touches stderr or a progress bar (the `ui` module turns events into lines and bars; library users may ignore
//! them with [`Silent`]).

use super::{Plan, Report, Request};
use std::time::Duration;

/// One thing worth reporting.
pub enum Event<'a> {
    /// Something the user should know that does not stop the run (`warning: ...`).
    Warning(&'a str),
    /// A decision the engine took on its own (dev/schnell detected from the weights, quantization counts).
    Note(&'a str),
    /// An edit is about to start with this plan.
    Plan { request: &'a Request, plan: &'a Plan },
    /// `done` of `total` denoising steps finished (0 when the loop starts), `elapsed` since it started.
    Step { done: usize, total: usize, elapsed: Duration },
    /// The picture so far (the current latents through the VAE) after step `done` of `total`, when
    /// [`Progress::preview_every`] asks for it.
    Preview { done: usize, total: usize, image: &'a image::RgbImage },
    /// An edit was written.
    Done(&'a Report),
}

/// Receives the engine's events.
pub trait Progress: Send + Sync {
    fn event(&self, event: Event<'_>);
    /// Asked between denoising steps: true stops the edit there with [`crate::Error::Cancelled`] (a server's
    /// cancelled job). The CLI never stops mid-image.
    fn cancelled(&self) -> bool {
        false
    }
    /// Decode a preview every N denoising steps (one VAE decode each, so not free); None: never (the CLI).
    fn preview_every(&self) -> Option<usize> {
        None
    }
}

/// Ignores every event.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event<'_>) {}
}
