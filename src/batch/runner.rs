//! Runs a [`Batch`] with one model [`Session`], in steps: open the model; pre-check every item (input, output,
//! plan, expected memory against `--memory-budget`: no weights needed, so bad input fails before any loading); a
//! dry run stops there; otherwise encode every prompt with one load of the text encoders, run each item (VAE
//! and transformer loaded once), and draw the contact sheet. An item that fails is reported and the batch goes
//! on; model problems stop it. Ctrl-C lets the current image finish, then stops with the summary.

use super::grid::{self, Cell};
use super::inputs::Downloads;
use super::{results, Batch, Item, Options, Summary};
use crate::engine::family::Adapt;
use crate::engine::memory::{self, Estimate};
use crate::engine::{Plan, Progress, Request, Session};
use crate::error::{Error, Result};
use crate::ui::Ui;
use crate::{image_io, output, source};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

/// An item that passed the checks: local input and output paths, its plan and expected memory.
struct Ready {
    item: Item,
    plan: Plan,
    memory: Option<Estimate>,
}

/// The state of one batch run.
struct Run<'a> {
    batch: &'a Batch,
    opts: &'a Options,
    ui: &'a Arc<Ui>,
    summary: Summary,
    downloads: Downloads,
    /// Plan warnings already shown (a sweep would repeat them item after item).
    warned: HashSet<String>,
    /// The memory limit items are checked against and whether exceeding it refuses them, read once per batch.
    memory_limit: Option<(Option<u64>, bool)>,
    /// Output folders already found writable.
    writable: HashSet<std::path::PathBuf>,
    /// Set by Ctrl-C / SIGTERM: no new item starts.
    stop: Arc<super::signals::Stop>,
}

/// Runs (or, with `--dry-run`, plans) every item. Err only for fatal problems: a bad model folder or weights.
pub fn run(batch: &Batch, ui: &Arc<Ui>) -> Result<Summary> {
    let Some(first) = batch.items.first() else {
        ui.info(&format!("nothing to do: this shard has no items (the batch has {})", batch.total));
        return Ok(Summary::default());
    };
    let mut run = Run {
        batch,
        opts: &batch.options,
        ui,
        summary: Summary::default(),
        downloads: Downloads::with_timeout(batch.options.download_timeout),
        warned: HashSet::new(),
        memory_limit: None,
        writable: HashSet::new(),
        stop: super::signals::watch(ui),
    };
    let mut session = run.open_session(first)?;
    // LoRAs are merged into the weights unless the batch changes their scale between images.
    let scales: Vec<f64> = batch.items.iter().map(|i| i.request.lora_scale).collect();
    session.allow_lora_merge(scales.windows(2).all(|w| w[0] == w[1]));
    let ready = run.precheck(&mut session)?;
    if let (Some(g), false) = (&run.opts.grid, run.opts.dry_run) {
        // After the items' checks: the grid may go into an --output-dir they just created.
        run.prepare_output(g, None)?;
    }
    if run.opts.dry_run {
        run.dry_run(&ready);
        return Ok(run.summary);
    }
    run.encode_prompts(&mut session, &ready)?;
    let cells = run.edit_all(&mut session, &ready)?;
    run.draw_grid(&cells)?;
    Ok(run.summary)
}

impl Run<'_> {
    /// Configs (and, for a real run, weights) from the folder or the Hub cache; a dry run downloads no weights.
    fn open_session(&self, first: &Item) -> Result<Session> {
        let r = &first.request;
        let dir = source::locate(&r.model, &r.overrides, !self.opts.dry_run, self.ui.bars())?;
        let progress: Arc<dyn Progress> = self.ui.clone();
        if self.opts.dry_run {
            Session::open_configs(&dir, &r.overrides, progress)
        } else {
            Session::open(&dir, &r.overrides, &r.device, r.dtype, progress)
        }
    }

    fn fail(&mut self, item: &Item, msg: String) {
        let input = item.request.image().map(|p| p.display().to_string()).unwrap_or_default();
        self.ui.item_failed(self.batch.total, item.index, &input, &msg);
        results::failed(self.opts, item, &msg);
        self.summary.failed.push((item.index, msg));
    }

    /// Cheap checks and a plan for every item; failed items are reported and left out.
    fn precheck(&mut self, session: &mut Session) -> Result<Vec<Ready>> {
        let mut ready = Vec::new();
        for item in &self.batch.items {
            if self.opts.skip_existing && self.already_written(&item.request.output) {
                self.ui.info(&format!("skip: {} exists", item.request.output.display()));
                results::skipped(self.opts, item);
                self.summary.skipped += 1;
                continue;
            }
            match self.check(session, item) {
                Ok(r) => ready.push(r),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.fail(item, e.one_line()),
            }
        }
        Ok(ready)
    }

    /// `--skip-existing`: only a complete PNG counts as done; an empty or cut-short file (a crash, a full disk) is
    /// made again.
    fn already_written(&self, out: &Path) -> bool {
        if !out.exists() {
            return false;
        }
        if output::is_complete_png(out) {
            return true;
        }
        self.ui.warn(&format!("{} exists but is not a complete PNG; making it again", out.display()));
        false
    }

    /// Damaged image files of an item (a JPEG cut short): a warning once per file, or with `--strict-images` the
    /// item's error.
    fn check_damage(&mut self, r: &Request) -> Result<()> {
        let mask = r.mask().and_then(|m| match &m.source {
            crate::engine::request::MaskSource::File(p) => Some((p.as_path(), image_io::Role::Mask)),
            _ => None,
        });
        let files = r.image().map(|p| (p, image_io::Role::Input)).into_iter().chain(mask);
        let files = files.chain(r.references.iter().map(|p| (p.as_path(), image_io::Role::Reference)));
        for (path, role) in files {
            let Some(msg) = image_io::damage(path) else { continue };
            if self.opts.strict_images {
                return Err(Error::image_as(role, path, format!("{msg}; refused (--strict-images)")));
            }
            if self.warned.insert(format!("damage:{}", path.display())) {
                self.ui.warn(&format!("{role} {}: {msg}; editing it anyway (--strict-images refuses)", path.display()));
            }
        }
        Ok(())
    }

    /// One item's input fetched and read, its output checked (folders under `--output-dir` created), its plan.
    fn check(&mut self, session: &mut Session, item: &Item) -> Result<Ready> {
        let mut item = item.clone();
        if let Some(input) = &item.input {
            let local = self.downloads.local(input)?;
            item.request.set_image(local);
        }
        if self.opts.stdout {
            item.request.output = self.downloads.temp_path("stdout.png")?;
        }
        // The model may edit another way than the flags say (Kontext by instruction, FLUX.2 by reference).
        let how = Adapt { strength_given: item.strength_given, reference_size: self.opts.reference_size };
        if let Some(w) = session.adapt(&mut item.request, &how) {
            if self.warned.insert(w.clone()) {
                self.ui.warn(&w);
            }
        }
        let r = &item.request;
        // A real run decodes the whole file now, so a truncated image fails before any weight is loaded; a dry
        // run reads only the header.
        let dims = match r.image() {
            Some(_) if self.opts.dry_run => session.input_size(r)?,
            Some(_) => session.load_input(r)?.map(|i| i.dimensions()),
            None => None,
        };
        if !self.opts.dry_run {
            self.check_damage(r)?;
        }
        let plan = session.plan(r, dims)?;
        for w in &plan.warnings {
            if self.warned.insert(w.clone()) {
                self.ui.warn(w);
            }
        }
        // Over budget is refused before any file is read or folder made for the item.
        let memory = session.memory(r, &plan)?;
        if let Some(est) = &memory {
            self.check_memory(session, r, &plan, est)?;
        }
        if !self.opts.dry_run {
            self.prepare_output(&r.output, r.image())?;
            session.prepare_loras(r)?;
        }
        Ok(Ready { item, plan, memory })
    }

    /// Over `--memory-budget` (or, without one, over what the host has available): an error naming a flag that
    /// fits, before anything loads. The CPU default refuses too: an edit the machine cannot hold only ends in the
    /// OOM killer or an allocation abort after minutes of loading.
    fn check_memory(&mut self, session: &mut Session, r: &Request, plan: &Plan, est: &Estimate) -> Result<()> {
        let (limit, explicit) = self.memory_limit(&r.device);
        let Some(limit) = limit.filter(|l| est.peak() > *l) else { return Ok(()) };
        let fix = super::fit::suggestion(session, r, plan, limit)?;
        let need = format!("{}x{} needs {}", plan.width, plan.height, est.describe());
        let limit = memory::gb(limit);
        if explicit {
            return Err(Error::Usage(format!("{need}, over the {limit} --memory-budget; {fix}")));
        }
        Err(Error::Usage(format!(
            "{need}, and this machine has {limit} available; {fix}, or give --memory-budget GB to run it anyway"
        )))
    }

    /// The limit items are checked against: `--memory-budget` in bytes, else what the device has free (`auto`;
    /// without a budget only on the CPU, where it is known); and whether the user set it. Read once per batch.
    fn memory_limit(&mut self, device: &candle_core::Device) -> (Option<u64>, bool) {
        *self.memory_limit.get_or_insert_with(|| match self.opts.memory_budget {
            Some(memory::Budget::Bytes(b)) => (Some(b), true),
            Some(memory::Budget::Available) => (crate::engine::available_memory(device), true),
            // The GPU's free memory is queried only when asked (`auto`): that query has not run on a GPU yet.
            None if device.is_cpu() => (crate::engine::available_memory(device), false),
            None => (None, false),
        })
    }

    /// Folders are probed for writing once each, so a read-only one fails here, before any model loads.
    fn prepare_output(&mut self, out: &Path, input: Option<&Path>) -> Result<()> {
        let ours = self.opts.output_dir.as_ref().is_some_and(|d| out.starts_with(d));
        if let Some(dir) = out.parent().filter(|d| ours && !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::output_from(out, "cannot create its folder", e))?;
        }
        output::check_output(out, input)?;
        let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        if !self.writable.contains(&dir) {
            output::check_writable(out)?;
            self.writable.insert(dir);
        }
        Ok(())
    }

    /// Lists each item's plan; strengths that land on the same first step give identical images: say so.
    fn dry_run(&mut self, ready: &[Ready]) {
        let mut starts: HashMap<(String, usize, usize), Vec<f64>> = HashMap::new();
        for Ready { item, plan, memory } in ready {
            results::planned(self.opts, item, plan, memory.as_ref());
            let r = &item.request;
            let input = r.image().map(|p| p.display().to_string()).unwrap_or_default();
            // Same input, prompt and steps; the seed is left out: both strengths run the very same steps.
            let key = (format!("{input}|{}", r.prompt), plan.steps, plan.schedule.t_start);
            starts.entry(key).or_default().extend(r.strength());
        }
        self.summary.planned = ready.len();
        if let Some(m) = ready.iter().filter_map(|r| r.memory.as_ref()).max_by_key(|m| m.peak()) {
            self.ui.info(&format!("memory: {}", m.describe()));
        }
        for ((key, steps, t_start), mut strengths) in starts {
            strengths.sort_by(f64::total_cmp);
            strengths.dedup();
            if strengths.len() > 1 {
                self.ui.warn(&format!(
                    "strengths {strengths:?} all start at step {t_start} of {steps} for {} and give the same image for \
                     the same seed; use more --steps to tell them apart",
                    key.split('|').next().unwrap_or("")
                ));
            }
        }
    }

    /// Every prompt encoded with one load of the text encoders.
    fn encode_prompts(&self, session: &mut Session, ready: &[Ready]) -> Result<()> {
        let reqs: Vec<&Request> = ready.iter().map(|r| &r.item.request).collect();
        session.encode_prompts(&reqs)
    }

    /// The edits, one after another, until done or interrupted.
    fn edit_all(&mut self, session: &mut Session, ready: &[Ready]) -> Result<Vec<Cell>> {
        let n = ready.len();
        let mut cells = Vec::new();
        self.ui.batch_started(n);
        for (k, Ready { item, plan, memory }) in ready.iter().enumerate() {
            if self.stop.signal().is_some() {
                break;
            }
            let r = &item.request;
            let shown = r.image().map(|p| p.display().to_string()).unwrap_or_else(|| r.mode.name().into());
            let name = r.output.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            self.ui.batch_item(k, n, &shown, &r.output.display().to_string(), &name);
            // Decoded again rather than kept from the checks: a batch of large images would not fit in memory.
            let input = session.load_input(r);
            match input.and_then(|img| session.run_planned(r, img, plan.clone())) {
                Ok(rep) => {
                    self.written(item, &rep, memory.as_ref())?;
                    cells.push(cell(r, rep.output, rep.plan.seed));
                }
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) => self.fail(item, e.one_line()),
            }
        }
        self.ui.batch_finished();
        self.summary.signal = self.stop.signal();
        self.summary.interrupted = self.summary.signal.is_some();
        Ok(cells)
    }

    fn written(&mut self, item: &Item, rep: &crate::engine::Report, memory: Option<&Estimate>) -> Result<()> {
        results::written(self.opts, item, rep, memory);
        if self.opts.stdout {
            results::png_to_stdout(&rep.output)
                .map_err(|e| Error::output_from("-", "cannot write the PNG to standard output", e))?;
        }
        self.summary.written += 1;
        Ok(())
    }

    fn draw_grid(&self, cells: &[Cell]) -> Result<()> {
        if let (Some(g), false) = (&self.opts.grid, cells.is_empty()) {
            let (w, h) = grid::write(g, cells)?;
            self.ui.info(&format!("grid: {} ({w}x{h}, {} images)", g.display(), cells.len()));
        }
        Ok(())
    }
}

/// A contact-sheet cell: a row per input (per prompt without one), labelled "strength #seed" (and "xS" for the
/// LoRA scale when there are LoRAs, "cS" for the first ControlNet's scale when there are ControlNets).
fn cell(r: &Request, output: std::path::PathBuf, seed: u64) -> Cell {
    let mut label = format!("{}#{seed}", r.strength().map(|s| format!("{s} ")).unwrap_or_default());
    if !r.loras.is_empty() {
        label.push_str(&format!(" x{}", r.lora_scale));
    }
    if let Some(c) = r.controlnets.first() {
        label.push_str(&format!(" c{}", c.scale));
    }
    let input = r.image().map(Path::to_path_buf).unwrap_or_else(|| r.prompt.clone().into());
    Cell { input, output, label }
}
