//! The CLI as a client of `flux-img2img serve` (`--server URL`): the command line → the batch the CLI would run
//! (same expansion, output names and file-safety checks) → one native job per item (POST /v1/jobs, the input and
//! mask uploaded as base64, never named as server paths) → progress from the job's events on stderr → the server's
//! PNG written locally, replacing nothing until it is complete. Server refusals and connection failures are one
//! `error:` line (exit 2); Ctrl-C cancels the remote job.

use crate::batch::{signals, Input, Item};
use crate::cli::Args;
use crate::engine::request::{ControlSource, MaskSource, Mode};
use crate::error::{Error, Result};
use crate::server::spec::JobSpec;
use crate::ui::{stdout, Ui};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Runs every item of `args` on the server; the exit code as the CLI gives it.
pub fn run(mut args: Args, ui: &Arc<Ui>) -> u8 {
    match prepare(&mut args).and_then(|(server, items)| send_all(&server, &items, args.json, ui)) {
        Ok(code) => code,
        Err(e) => {
            ui.error(&e);
            2
        }
    }
}

/// The server and the items, after refusing what a job cannot carry.
fn prepare(args: &mut Args) -> Result<(Server, Vec<Item>)> {
    if let Some(flag) = local_only(args) {
        return Err(Error::Usage(format!(
            "{flag} is not sent to a server: --server jobs take the prompt, --image, --mask (and its --invert-mask, \
             --mask-blur), --strength, --seed, --steps, --guidance, --width/--height, --keep-size, \
             --negative-prompt/--true-cfg, --lora NAME[:W] from the server's LoRA folder and --model NAME; run \
             without --server to use it here"
        )));
    }
    let url = args.server.clone().unwrap_or_default();
    let key = args.api_key_file.as_deref().map(crate::server::auth::read_key).transpose()?;
    let model = args.model.as_ref().map(|m| m.to_string_lossy().into_owned());
    // The expansion needs a model; the server's first stands in when none is named (its name is never sent).
    args.model.get_or_insert_with(|| "server-default".into());
    let loras = args.lora.clone();
    let batch = args.clone().into_batch()?;
    Ok((Server::new(&url, key, model, loras)?, batch.items))
}

/// A job's control image: the file inline, or what the server derives it from the input with.
fn set_control(spec: &mut JobSpec, source: &ControlSource) -> Result<()> {
    match source {
        ControlSource::File(p) => (spec.control, spec.control_name) = (Some(inline(p)?), Some(file_name(p))),
        ControlSource::Canny { low, high } => {
            (spec.control, spec.canny_low, spec.canny_high) = (Some("canny".into()), Some(*low), Some(*high))
        }
        ControlSource::Depth => spec.control = Some("depth".into()),
    }
    Ok(())
}

/// The first flag given that a job cannot carry.
fn local_only(a: &Args) -> Option<&'static str> {
    let set = [
        (a.transformer.is_some(), "--transformer"),
        (a.vae.is_some(), "--vae"),
        (a.text_encoder.is_some(), "--text-encoder"),
        (a.revision.is_some(), "--revision"),
        (a.lora_scale.is_some(), "--lora-scale"),
        (a.quantize.is_some(), "--quantize"),
        (a.memory_budget.is_some(), "--memory-budget"),
        (a.attention_chunk.is_some(), "--attention-chunk"),
        (a.vae_band.is_some(), "--vae-band"),
        (a.kernels.is_some(), "--kernels"),
        (a.cache.is_some(), "--cache"),
        (!a.reference.is_empty(), "--reference"),
        (a.mask_crop.is_some(), "--mask-crop"),
        (a.paste_back, "--paste-back"),
        (a.control.len() > 1 || a.controlnet.len() > 1, "several --control/--controlnet"),
        (a.depth_model.is_some(), "--depth-model"),
        (!a.redux.is_empty(), "--redux"),
        (a.outpaint.is_some() || a.outpaint_to.is_some(), "--outpaint"),
        (a.kontext, "--kontext"),
        (a.reference_size.is_some(), "--reference-size"),
        (a.scheduler.is_some(), "--scheduler"),
        (a.clip_skip.is_some(), "--clip-skip"),
        (a.start_step.is_some(), "--start-step"),
        (a.rng.is_some() || a.rng_gpu.is_some() || a.torch_noise.is_some(), "--rng"),
        (a.resize.is_some(), "--resize"),
        (a.max_megapixels.is_some(), "--max-megapixels"),
        (a.max_sequence_length.is_some(), "--max-sequence-length"),
        (a.dtype.is_some(), "--dtype"),
        (a.grid.is_some(), "--grid"),
        (a.shard.is_some(), "--shard"),
        (a.dry_run, "--dry-run"),
    ];
    set.into_iter().find(|(given, _)| *given).map(|(_, flag)| flag)
}

/// The items one after another; stops at the first failure (exit 2 for a single item, 1 once some were written)
/// or at Ctrl-C (130/143).
fn send_all(server: &Server, items: &[Item], json_out: bool, ui: &Arc<Ui>) -> Result<u8> {
    server.probe()?;
    let stop = signals::watch(ui);
    for (k, item) in items.iter().enumerate() {
        if let Some(sig) = stop.signal() {
            return Ok(128 + sig as u8);
        }
        match server.edit(item, ui, &|| stop.signal().is_some()) {
            Ok(seed) => report(item, seed, json_out, server),
            Err(e) if stop.signal().is_some() => {
                ui.alert(&e.one_line());
                return Ok(128 + stop.signal().unwrap_or(2) as u8);
            }
            Err(e) if k == 0 => return Err(e),
            Err(e) => {
                ui.error(&e);
                return Ok(1);
            }
        }
    }
    Ok(stop.signal().map_or(0, |s| 128 + s as u8))
}

/// The output path on stdout, or one JSON object with `--json`.
fn report(item: &Item, seed: Option<u64>, json_out: bool, server: &Server) {
    let out = item.request.output.display().to_string();
    if json_out {
        // The CLI's object: the edit's record (as the written PNG carries it) plus index, output and status.
        let mut v = crate::output::read_text_chunk(&item.request.output, crate::engine::record::PNG_KEY)
            .ok()
            .flatten()
            .and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .filter(Value::is_object)
            .unwrap_or_else(|| json!({}));
        v["index"] = json!(item.index);
        v["output"] = json!(out);
        v["status"] = json!("written");
        v["seed"] = json!(seed);
        v["server"] = json!(server.base);
        stdout::line(&v.to_string());
    } else {
        stdout::line(&out);
    }
}

/// A running server: its base URL, key, model name and the LoRA names to send.
struct Server {
    base: String,
    agent: ureq::Agent,
    key: Option<String>,
    model: Option<String>,
    loras: Vec<String>,
}

impl Server {
    fn new(url: &str, key: Option<Vec<u8>>, model: Option<String>, loras: Vec<String>) -> Result<Self> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::Usage(format!("--server {url}: give an http:// or https:// URL")));
        }
        let agent = ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(10)).build();
        let key = key.map(|k| String::from_utf8_lossy(&k).into_owned());
        Ok(Self { base, agent, key, model, loras })
    }

    fn with_key(&self, r: ureq::Request) -> ureq::Request {
        match &self.key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    /// Checks the server answers and takes the key before any upload: a server refuses a wrong key without
    /// reading the body, and a client still writing it then sees only a broken pipe ("cannot reach"), not the 401.
    fn probe(&self) -> Result<()> {
        self.with_key(self.agent.get(&format!("{}/metrics", self.base))).call().map(drop).map_err(|e| self.failed(e))
    }

    /// One item as a job: submitted, followed to its end, its PNG written; the seed the server used.
    fn edit(&self, item: &Item, ui: &Ui, stopped: &dyn Fn() -> bool) -> Result<Option<u64>> {
        let spec = self.job(item)?;
        let created = self.call(self.with_key(self.agent.post(&format!("{}/v1/jobs", self.base))), Some(&spec))?;
        let id = created["id"].as_str().ok_or_else(|| self.odd("a job without an id"))?.to_string();
        let ended = self.follow(&id, ui, stopped);
        if stopped() {
            // Ctrl-C: the server stops the job between steps; nothing is written here.
            let _ = self.call(self.with_key(self.agent.delete(&format!("{}/v1/jobs/{id}", self.base))), None);
            return Err(Error::Usage(format!("interrupted: job {id} cancelled on the server; nothing was written")));
        }
        ended?;
        let job = self.call(self.with_key(self.agent.get(&format!("{}/v1/jobs/{id}", self.base))), None)?;
        match job["state"].as_str() {
            Some("done") => {}
            state => {
                let why = job["error"].as_str().unwrap_or("no reason given");
                return Err(Error::Usage(format!("the server's job ended {}: {why}", state.unwrap_or("oddly"))));
            }
        }
        let png = job["image"].as_str().ok_or_else(|| self.odd("a finished job without its image"))?;
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(png).map_err(|_| self.odd("an image not in base64"))?;
        crate::output::write_bytes(&item.request.output, &bytes)?;
        Ok(job["seed"].as_u64())
    }

    /// The job's JSON: the server's own [`JobSpec`] (its field names checked at compile time), the files inlined.
    fn job(&self, item: &Item) -> Result<Value> {
        let r = &item.request;
        let mut spec = JobSpec {
            prompt: Some(r.prompt.clone()),
            seed: r.seed,
            steps: r.steps,
            guidance: r.guidance,
            width: r.width,
            height: r.height,
            keep_size: r.keep_size,
            model: self.model.clone(),
            // LoRAs by the names given: the server looks them up in its own --lora-dir.
            lora: self.loras.clone(),
            true_cfg: r.true_cfg.as_ref().map(|c| c.scale),
            negative_prompt: r.true_cfg.as_ref().map(|c| c.negative_prompt.clone()),
            ..Default::default()
        };
        match &item.input {
            Some(Input::File(p)) => (spec.image, spec.image_name) = (Some(inline(p)?), Some(file_name(p))),
            Some(_) => {
                return Err(Error::Usage("--server sends image files; download a URL or stdin input first".into()))
            }
            None => {}
        }
        match &r.mode {
            Mode::Img2Img { strength, .. } => spec.strength = Some(*strength),
            Mode::Inpaint { strength, mask, .. } => {
                (spec.strength, spec.invert_mask, spec.mask_blur) = (Some(*strength), mask.invert, Some(mask.blur));
                match &mask.source {
                    MaskSource::Alpha => spec.mask = Some("alpha".into()),
                    MaskSource::File(p) => (spec.mask, spec.mask_name) = (Some(inline(p)?), Some(file_name(p))),
                    MaskSource::Outpaint(_) => return Err(Error::Usage("--outpaint is not sent to a server".into())),
                }
            }
            _ => {}
        }
        if let Some(c) = &r.control {
            set_control(&mut spec, c)?;
        }
        // One ControlNet, by the name the server serves it under (the --controlnet value given here).
        if let Some(n) = r.controlnets.first() {
            spec.controlnet = Some(n.model.to_string_lossy().into_owned());
            (spec.control_mode, spec.control_scale) = (n.mode.clone(), Some(n.scale));
            (spec.control_start, spec.control_end) = (Some(n.start), Some(n.end));
            set_control(&mut spec, &n.image)?;
        }
        let mut v = serde_json::to_value(&spec).map_err(|e| self.odd(&e.to_string()))?;
        strip_nulls(&mut v);
        Ok(v)
    }

    /// Reads the job's events until its last, printing steps; Ok once it ended (or the user stopped).
    fn follow(&self, id: &str, ui: &Ui, stopped: &dyn Fn() -> bool) -> Result<()> {
        let url = format!("{}/v1/jobs/{id}/events", self.base);
        let res = self.with_key(self.agent.get(&url)).call().map_err(|e| self.failed(e))?;
        let mut event = String::new();
        for line in std::io::BufReader::new(res.into_reader()).lines() {
            if stopped() {
                return Ok(());
            }
            let line =
                line.map_err(|e| Error::Usage(format!("--server {}: the event stream broke ({e})", self.base)))?;
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let d: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                match (event.as_str(), d["stage"].as_str()) {
                    ("step", _) if d["step"].as_u64().unwrap_or(0) > 0 => {
                        ui.info(&format!("denoise: step {}/{} (server)", d["step"], d["total"]))
                    }
                    ("stage", Some("done" | "failed" | "cancelled")) => return Ok(()),
                    ("stage", Some(s)) => ui.info(&format!("server: {s}")),
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// One request; the JSON answer, or the server's `error` as one line.
    fn call(&self, req: ureq::Request, body: Option<&Value>) -> Result<Value> {
        let res = match body {
            Some(b) => req.set("Content-Type", "application/json").send_string(&b.to_string()),
            None => req.call(),
        };
        let text = res.map_err(|e| self.failed(e))?.into_string().map_err(|e| self.odd(&e.to_string()))?;
        serde_json::from_str(&text).map_err(|_| self.odd("an answer that is not JSON"))
    }

    /// A transport failure or an error status as one line.
    fn failed(&self, e: ureq::Error) -> Error {
        match e {
            ureq::Error::Status(code, res) => {
                let text = res.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&text)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(text);
                Error::Usage(format!("the server at {} refused the job ({code}): {msg}", self.base))
            }
            ureq::Error::Transport(t) => Error::Usage(format!(
                "cannot reach a server at {} ({}); start one with `flux-img2img serve --model …` or fix --server",
                self.base,
                t.message().unwrap_or(&t.kind().to_string())
            )),
        }
    }

    fn odd(&self, what: &str) -> Error {
        Error::Usage(format!("the server at {} sent {what}; is it a flux-img2img server?", self.base))
    }
}

/// A file's bytes as base64.
fn inline(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).map_err(|e| Error::image_from(p, "cannot read", e))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Drops null fields: the server's defaults apply to what the command line left out.
fn strip_nulls(v: &mut Value) {
    if let Value::Object(m) = v {
        m.retain(|_, x| !x.is_null());
    }
}
