//! The one thread that owns the engine: takes jobs from the [`Hub`] in order, keeps the model of the last job
//! loaded (another model is opened when a job asks for it), runs each edit as the CLI's batch does and hands back
//! the PNG. Engine events become the job's progress events; a cancelled job stops between denoising steps.

use super::jobs::{push_event, Hub, Next, State};
use super::spec::Built;
use crate::engine::family::Adapt;
use crate::engine::memory::{self, Estimate};
use crate::engine::plan::Plan;
use crate::engine::progress::{Event, Progress};
use crate::engine::{EditRecord, Session};
use crate::error::{Error, Result};
use crate::ui::Ui;
use crate::{output, source};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Engine events of the job running now, routed to it (the session keeps one sink for its life).
struct Sink {
    hub: Arc<Hub>,
    ui: Arc<Ui>,
    current: Mutex<Option<(String, Arc<AtomicBool>)>>,
    /// The running job's `preview_every`.
    preview: Mutex<Option<usize>>,
}

impl Progress for Sink {
    fn event(&self, event: Event<'_>) {
        let Some((id, _)) = self.current.lock().unwrap().clone() else { return };
        let (name, data) = match event {
            Event::Warning(w) => ("warning", serde_json::json!({ "message": w })),
            Event::Note(n) => ("note", serde_json::json!({ "message": n })),
            Event::Plan { plan, .. } => {
                let d = serde_json::json!({"stage": "denoising", "width": plan.width, "height": plan.height,
                    "steps": plan.schedule.steps_to_run(), "seed": plan.seed});
                self.hub.update(&id, |j| j.seed = Some(plan.seed));
                ("stage", d)
            }
            Event::Step { done, total, elapsed } => {
                if done > 0 {
                    let m = &self.hub.metrics;
                    m.steps.fetch_add(1, Ordering::Relaxed);
                    let per = elapsed.as_micros() as u64 / done as u64;
                    m.step_micros.fetch_add(per, Ordering::Relaxed);
                }
                self.hub.update(&id, |j| j.step = (done, total));
                ("step", serde_json::json!({ "step": done, "total": total }))
            }
            Event::Preview { done, total, image } => {
                ("preview", serde_json::json!({ "step": done, "total": total, "image": preview_png(image) }))
            }
            Event::Done(rep) => {
                let kib = rep.peak_rss_mib.map_or(0, |m| (m * 1024.0) as u64);
                self.hub.metrics.peak_rss_kib.fetch_max(kib, Ordering::Relaxed);
                ("stage", serde_json::json!({ "stage": "encoding" }))
            }
        };
        if matches!(name, "warning" | "note") {
            self.ui.info(&format!("job {id}: {name}: {}", data["message"].as_str().unwrap_or("")));
        }
        self.hub.update(&id, |j| push_event(j, name, data));
    }

    fn cancelled(&self) -> bool {
        self.current.lock().unwrap().as_ref().is_some_and(|(_, c)| c.load(Ordering::SeqCst))
    }

    fn preview_every(&self) -> Option<usize> {
        *self.preview.lock().unwrap()
    }
}

/// Where results go besides the response.
pub struct Worker {
    hub: Arc<Hub>,
    ui: Arc<Ui>,
    sink: Arc<Sink>,
    output_dir: Option<PathBuf>,
    /// The loaded model: the name jobs give and its session.
    session: Option<(String, Session)>,
    /// `--memory-budget`.
    budget: Option<memory::Budget>,
}

impl Worker {
    pub fn new(hub: Arc<Hub>, ui: Arc<Ui>, output_dir: Option<PathBuf>, budget: Option<memory::Budget>) -> Self {
        let sink =
            Arc::new(Sink { hub: hub.clone(), ui: ui.clone(), current: Mutex::new(None), preview: Mutex::new(None) });
        Worker { hub, ui, sink, output_dir, session: None, budget }
    }

    /// Runs jobs until the hub closes and empties; a loaded model is dropped after `idle` without jobs.
    pub fn run(mut self, idle: Option<std::time::Duration>) {
        loop {
            let wait = if self.session.is_some() { idle } else { None };
            let (id, built, cancel) = match self.hub.next_job_within(wait) {
                Next::Job(id, built, cancel) => (id, built, cancel),
                Next::Closed => return,
                Next::Idle => {
                    self.unload_idle(wait.unwrap_or_default());
                    continue;
                }
            };
            *self.sink.current.lock().unwrap() = Some((id.clone(), cancel.clone()));
            *self.sink.preview.lock().unwrap() = built.preview_every;
            let t0 = std::time::Instant::now();
            let result = if cancel.load(Ordering::SeqCst) { Err(Error::Cancelled) } else { self.guarded(&id, &built) };
            *self.sink.current.lock().unwrap() = None;
            match result {
                Ok(png) => {
                    let ms = t0.elapsed().as_millis() as u64;
                    self.hub.metrics.job_millis.fetch_add(ms, Ordering::Relaxed);
                    self.ui.info(&format!("job {id}: done in {:.1} s", ms as f64 / 1000.0));
                    self.hub.finish(&id, State::Done, Some(png), None);
                }
                Err(Error::Cancelled) => {
                    self.hub.finish(&id, State::Cancelled, None, Some("cancelled".into()));
                }
                Err(e) => {
                    if e.is_fatal() {
                        // A broken model must not stay loaded half-built.
                        self.session = None;
                    }
                    self.ui.info(&format!("job {id}: failed: {}", e.one_line()));
                    self.hub.finish(&id, State::Failed, None, Some(e.one_line()));
                }
            }
        }
    }

    /// Drops the loaded model after `after` without jobs, returning its memory; the next job loads it again.
    fn unload_idle(&mut self, after: std::time::Duration) {
        if let Some((model, _)) = self.session.take() {
            self.hub.metrics.idle_unloads.fetch_add(1, Ordering::Relaxed);
            self.ui.info(&format!("unloaded {model} after {} s without jobs (--idle-unload)", after.as_secs()));
        }
        self.hub.metrics.loaded.store(0, Ordering::Relaxed);
    }

    /// [`Self::edit`], with a panic turned into the job's failure (and the session dropped): a bug must not leave
    /// the job unanswered or the thread gone, which would hang every later request and shutdown.
    fn guarded(&mut self, id: &str, built: &Built) -> Result<Vec<u8>> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.edit(id, built))) {
            Ok(r) => r,
            Err(_) => {
                self.session = None;
                Err(Error::Usage("internal error (a panic in the engine; see the server's log)".into()))
            }
        }
    }

    /// One job end to end, as the CLI's batch runs an item; the PNG's bytes.
    fn edit(&mut self, id: &str, built: &Built) -> Result<Vec<u8>> {
        let mut item = built.item.clone();
        let (sink, budget) = (self.sink.clone(), self.budget);
        let session = self.session_for(id, &built.model, &item.request)?;
        let how = Adapt { strength_given: item.strength_given, reference_size: Default::default() };
        if let Some(w) = session.adapt(&mut item.request, &how) {
            sink.event(Event::Warning(&w));
        }
        let r = &item.request;
        let input = session.load_input(r)?;
        let plan = session.plan(r, input.as_ref().map(|i| i.dimensions()))?;
        for w in &plan.warnings {
            sink.event(Event::Warning(w));
        }
        if let Some(est) = session.memory(r, &plan)? {
            check_memory(budget, &r.device, &plan, &est)?;
        }
        session.prepare_loras(r)?;
        let report = session.run_planned(r, input, plan)?;
        let png = relabel(&report.output, report.record, built)?;
        if let Some(dir) = &self.output_dir {
            std::fs::write(dir.join(format!("{id}.png")), &png)
                .map_err(|e| Error::output_from(dir.join(format!("{id}.png")), "cannot write", e))?;
        }
        Ok(png)
    }

    /// The session for `model`, opened now when another (or none) is loaded.
    fn session_for(&mut self, id: &str, model: &str, r: &crate::engine::Request) -> Result<&mut Session> {
        if self.session.as_ref().is_none_or(|(m, _)| m != model) {
            self.session = None;
            self.hub.update(id, |j| push_event(j, "stage", serde_json::json!({"stage": "loading", "model": model})));
            self.ui.info(&format!("loading model {model}"));
            let dir = source::locate(&r.model, &r.overrides, true, self.ui.bars())?;
            let progress: Arc<dyn Progress> = self.sink.clone();
            let session = Session::open(&dir, &r.overrides, &r.device, r.dtype, progress)?;
            self.session = Some((model.to_string(), session));
            self.hub.metrics.loaded.store(1, Ordering::Relaxed);
        }
        Ok(&mut self.session.as_mut().expect("opened above").1)
    }
}

/// A preview as a small PNG in base64: at most 256 pixels on its longer side (it travels in every event).
fn preview_png(img: &image::RgbImage) -> String {
    use base64::Engine as _;
    let (w, h) = img.dimensions();
    let scale = (256.0 / w.max(h) as f64).min(1.0);
    let (pw, ph) = (((w as f64 * scale).round() as u32).max(1), ((h as f64 * scale).round() as u32).max(1));
    let small = image::imageops::resize(img, pw, ph, image::imageops::FilterType::Triangle);
    let mut bytes = Vec::new();
    let _ = small.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png);
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A job over the server's memory limit — `--memory-budget`, or what the CPU has available — fails before its
/// denoiser loads, as the CLI refuses it; the server goes on with the next job.
fn check_memory(
    budget: Option<memory::Budget>,
    device: &candle_core::Device,
    plan: &Plan,
    est: &Estimate,
) -> Result<()> {
    let limit = match budget {
        Some(memory::Budget::Bytes(b)) => Some(b),
        Some(memory::Budget::Available) => crate::engine::available_memory(device),
        None if device.is_cpu() => crate::engine::available_memory(device),
        None => None,
    };
    match limit.filter(|l| est.peak() > *l) {
        Some(l) => Err(Error::Usage(format!(
            "{}x{} needs {}, over this server's {} memory limit (--memory-budget); ask for a smaller size",
            plan.width,
            plan.height,
            est.describe(),
            memory::gb(l)
        ))),
        None => Ok(()),
    }
}

/// The written PNG with the upload names recorded where the CLI records the paths it was given (the job's
/// private folder means nothing to the client); pixels untouched, so the bytes equal the CLI's for the same
/// names.
fn relabel(path: &Path, mut record: EditRecord, built: &Built) -> Result<Vec<u8>> {
    if let (Some(_), Some(name)) = (&record.input, &built.image_name) {
        record.input = Some(PathBuf::from(name));
    }
    if let (Some(m), Some(name)) = (&record.mask, &built.mask_name) {
        if m != "alpha" {
            record.mask = Some(name.clone());
        }
    }
    if let Some(name) = &built.control_name {
        // The one uploaded control image: a Control model's, or the job's ControlNet's.
        match record.controlnets.first_mut() {
            Some(c) => c.control = name.clone(),
            None => record.control = Some(name.clone()),
        }
    }
    let img = image::open(path).map_err(|e| Error::output_from(path, "cannot read back", e))?.to_rgb8();
    output::write_png(path, &img, &record.png_chunks())?;
    std::fs::read(path).map_err(|e| Error::output_from(path, "cannot read back", e))
}
