//! Progress bars on a terminal: a batch bar above each image's denoising bar, drawn by one indicatif
//! `MultiProgress` so they never overwrite each other; lines printed meanwhile go above them.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Default)]
pub struct Bars {
    multi: Option<MultiProgress>,
    batch: Option<ProgressBar>,
    denoise: Option<ProgressBar>,
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template).expect("valid template")
}

impl Bars {
    /// Prints `line` above the bars (or plainly when none is drawn).
    pub fn println(&self, line: &str) {
        match &self.multi {
            Some(mp) => {
                let _ = mp.println(line);
            }
            None => super::stdout::err_line(line),
        }
    }

    pub fn start_batch(&mut self, n: usize) {
        let mp = self.multi.get_or_insert_with(MultiProgress::new);
        let bar = mp.add(ProgressBar::new(n as u64));
        bar.set_style(style("batch   {bar:30} {pos}/{len} images  eta {eta}  {msg}"));
        self.batch = Some(bar);
    }

    /// Moves the batch bar to item `k`; false when there is no batch bar.
    pub fn batch_item(&mut self, k: usize, name: &str) -> bool {
        let Some(bar) = &self.batch else { return false };
        bar.set_position(k as u64);
        bar.set_message(name.to_string());
        true
    }

    pub fn finish_batch(&mut self) {
        if let Some(bar) = self.batch.take() {
            bar.finish_and_clear();
        }
    }

    /// The denoising bar at `done` of `total` steps: created at 0, cleared at the end.
    pub fn denoise(&mut self, done: usize, total: usize) {
        if done == 0 {
            let bar = ProgressBar::new(total as u64);
            let bar = match &self.multi {
                Some(mp) => mp.add(bar),
                None => bar,
            };
            bar.set_style(style("denoise {bar:30} {pos}/{len} steps  {per_sec}  eta {eta}"));
            self.denoise = Some(bar);
        } else if let Some(bar) = &self.denoise {
            bar.set_position(done as u64);
        }
        if done == total {
            if let Some(bar) = self.denoise.take() {
                bar.finish_and_clear();
            }
        }
    }
}
