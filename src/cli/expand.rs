//! Flags (plus a manifest, or a PNG's stored record) → the ordered list of edits this run performs.
//!
//! Order: rows (inputs as given, folders sorted, or manifest lines) × strengths × seeds; item k of that list gets
//! seed base + k when one base seed is given, so the list, its seeds and its output names are the same on every
//! machine — which is what makes `--shard I/N` (items with k mod N = I) safe to spread over a cluster. Nothing
//! here downloads or reads standard input: remote inputs are fetched when the batch runs.

use super::{manifest, Args, DTypeArg};
use crate::batch::{inputs, safety, Batch, Input, Item, Options};
use crate::engine::request::{ControlNetSpec, ControlSource, Mask, MaskSource, ReduxImage, SdOptions, TrueCfg};
use crate::engine::{EditRecord, Mode, Request};
use crate::error::{Error, Result};
use crate::image_io::outpaint::{self, Grow, Outpaint};
use crate::rng::RngSettings;
use crate::source::Overrides;
use crate::weights::lora::LoraSpec;
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

const DEFAULT_STRENGTH: f64 = 0.6;
const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;
/// Scheduler steps a run may ask for: diffusers' schedulers have 1000 training timesteps, and no useful edit
/// runs more (a typo's 10⁹ would allocate the schedule and never finish).
pub const MAX_STEPS: usize = 1000;
/// Images per input, and items per batch: beyond these no run finishes; split the work (`--shard`, manifests).
pub const MAX_IMAGES_PER_INPUT: usize = 10_000;
pub const MAX_ITEMS: usize = 1_000_000;
/// Guidance, true-CFG and LoRA scales beyond this are typos (FLUX uses 1–10): they only produce inf/NaN.
pub const MAX_SCALE: f64 = 1000.0;

/// One row of the batch before sweeps: an input (none for text-to-image) and what a manifest line sets for it.
struct Row {
    input: Option<Input>,
    prompt: Option<String>,
    strength: Option<f64>,
    seed: Option<u64>,
    steps: Option<usize>,
    guidance: Option<f64>,
    output: Option<PathBuf>,
    /// A manifest row's mask file.
    mask: Option<PathBuf>,
    /// A manifest row's LoRAs (replacing --lora).
    loras: Option<Vec<LoraSpec>>,
    /// A manifest row's FLUX.2 references (replacing --reference).
    references: Option<Vec<PathBuf>>,
    /// A manifest row's step cache, or none (`off`), replacing --cache.
    cache: Option<Option<crate::engine::cache::CacheSpec>>,
    /// A manifest row's control image or `canny` (replacing --control/--control-from, or the one ControlNet's).
    control: Option<ControlSource>,
    /// A manifest row's ControlNet scale (replacing --control-scale for every ControlNet).
    control_scale: Option<f64>,
    /// A manifest row's Redux images (replacing --redux).
    redux: Option<Vec<ReduxImage>>,
    /// The manifest line the row comes from, for messages.
    line: Option<usize>,
}

/// A row's control image (for the Control transformer, or the one ControlNet) and ControlNet scale.
fn row_control(request: &mut Request, row: &Row) -> Result<()> {
    let at = |msg: String| match row.line {
        Some(l) => Error::Usage(format!("manifest line {l}: {msg}")),
        None => Error::Usage(msg),
    };
    if let Some(c) = &row.control {
        match request.controlnets.as_mut_slice() {
            [] => request.control = Some(c.clone()),
            [one] => one.image = c.clone(),
            many => {
                let n = many.len();
                return Err(at(format!("a control cell sets one ControlNet's image; this run has {n} --controlnet")));
            }
        }
    }
    if let Some(s) = row.control_scale {
        if request.controlnets.is_empty() || !s.is_finite() {
            return Err(at(format!("control_scale {s}: a finite ControlNet scale, with --controlnet MODEL")));
        }
        request.controlnets.iter_mut().for_each(|c| c.scale = s);
    }
    Ok(())
}

/// A per-ControlNet flag's values for `n` ControlNets: none (the default for each), one (for each), or one each.
fn per_controlnet<T: Clone>(flag: &str, values: &[T], n: usize, default: T) -> Result<Vec<T>> {
    match values.len() {
        0 => Ok(vec![default; n]),
        1 => Ok(vec![values[0].clone(); n]),
        k if k == n => Ok(values.to_vec()),
        k => Err(Error::Usage(format!("{k} {flag} values for {n} --controlnet: give one for all, or one each"))),
    }
}

/// Seeds of a row: one base (item k gets base + k) or an explicit list rendered for every row.
enum Seeds {
    Base(u64),
    List(Vec<u64>),
}

impl Args {
    /// Checks the flags that need no model file and builds the batch.
    pub fn into_batch(mut self) -> Result<Batch> {
        let mut record_input = false;
        if let Some(png) = self.from_metadata.clone() {
            record_input = self.apply_record(&read_record(&png)?, &png)?;
        }
        self.check_scalars()?;
        let (seeds, random_seed) = self.seeds()?;
        let per_row = match &seeds {
            Seeds::List(l) => l.len(),
            Seeds::Base(_) => self.num_images.unwrap_or(1),
        };
        let strengths = match &self.strength {
            Some(s) => parse_list("--strength", s, check_strength)?,
            None => vec![DEFAULT_STRENGTH],
        };
        let lora_scales = match &self.lora_scale {
            Some(s) => parse_list("--lora-scale", s, check_scale)?,
            None => vec![1.0],
        };
        // None: no sweep, each ControlNet keeps its own scale.
        let control_scales: Vec<Option<f64>> = match self.control_scale_sweep()? {
            Some(sweep) => sweep.into_iter().map(Some).collect(),
            None => vec![None],
        };
        let template = Template::new(&self, strengths.len(), per_row, lora_scales.len(), control_scales.len());
        let base = self.base_request()?;
        let rows = self.rows()?;
        let planned = [rows.len(), strengths.len(), per_row, lora_scales.len(), control_scales.len()]
            .iter()
            .try_fold(1usize, |a, n| a.checked_mul(*n));
        if planned.is_none_or(|n| n > MAX_ITEMS) {
            return Err(Error::Usage(format!(
                "this batch has {} items ({} rows × {} strengths × {per_row} seeds × {} LoRA scales × {} ControlNet \
                 scales), over {MAX_ITEMS}; split it into several runs",
                planned.map_or("too many".into(), |n| n.to_string()),
                rows.len(),
                strengths.len(),
                lora_scales.len(),
                control_scales.len()
            )));
        }
        let mut items = Vec::new();
        for row in &rows {
            let ctx = RowCtx {
                base: &base,
                lora_scales: &lora_scales,
                control_scales: &control_scales,
                template: &template,
                seeds: &seeds,
                per_row,
                rows: rows.len(),
                record_input,
            };
            self.row_items(row, &strengths, &ctx, &mut items)?;
        }
        // Every shard checks the whole batch: one shard's output must not be another shard's input.
        safety::check_outputs(&items, &self.safety_extra())?;
        let warnings = self.mode_warnings(&items)?;
        let total = items.len();
        if let Some(spec) = &self.shard {
            let (i, n) = parse_shard(spec, &|k| std::env::var(k).ok())?;
            items.retain(|it| it.index % n == i);
        }
        Ok(Batch { items, total, options: self.options(), random_seed, warnings })
    }

    /// Fills every flag not given on the command line from a stored record (its paths through
    /// [`Self::record_path`]); gives whether the input came from the record.
    /// The outpainting flags a PNG record names (its mask field holds them).
    fn restore_outpaint(&mut self, text: &str) -> Result<()> {
        let o: Outpaint = text.parse().map_err(|e| Error::Usage(format!("the PNG's outpaint record: {e}")))?;
        match o.grow {
            Grow::Margins([l, t, r, b]) => self.outpaint = Some(format!("{l},{t},{r},{b}")),
            Grow::To { width, height, align } => {
                self.outpaint_to = Some(format!("{width}x{height}"));
                self.align = self.align.take().or(Some(align.to_string()));
            }
        }
        self.outpaint_feather = self.outpaint_feather.or(Some(o.feather));
        Ok(())
    }

    fn apply_record(&mut self, r: &EditRecord, png: &Path) -> Result<bool> {
        let paths = RecordPaths { png, allow: self.allow_metadata_paths };
        if self.prompt.is_none() && !r.prompt.is_empty() {
            self.prompt = Some(r.prompt.clone());
        }
        let mut record_input = false;
        if let (true, None, Some(input)) = (self.image.is_empty(), &self.manifest, &r.input) {
            let spec = input.to_string_lossy();
            let input = if inputs::is_url(&spec) { input.clone() } else { paths.resolve(input, "input")? };
            self.image.push(input.to_string_lossy().into_owned());
            record_input = true;
        }
        if r.input.is_none() {
            // A generated image: the size makes it text-to-image again.
            (self.width, self.height) = (self.width.or(Some(r.width)), self.height.or(Some(r.height)));
        }
        if self.model.is_none() && !r.model.as_os_str().is_empty() {
            self.model = Some(r.model.clone());
        }
        // A record's --start-step stands in for its strength, unless a flag says where to start.
        if self.strength.is_none() && self.start_step.is_none() {
            self.start_step = r.start_step;
        }
        if self.start_step.is_none() {
            self.strength = self.strength.take().or(r.strength.map(|v| v.to_string()));
        }
        self.scheduler = self.scheduler.or(r.scheduler);
        self.clip_skip = self.clip_skip.or(r.clip_skip);
        self.seed = self.seed.take().or(Some(r.seed.to_string()));
        self.steps = self.steps.or(Some(r.steps).filter(|s| *s > 0));
        self.guidance = self.guidance.or(r.guidance);
        self.width = self.width.or(Some(r.width).filter(|w| *w > 0));
        self.height = self.height.or(Some(r.height).filter(|h| *h > 0));
        self.max_sequence_length = self.max_sequence_length.or(Some(r.max_sequence_length).filter(|m| *m > 0));
        self.max_megapixels = self.max_megapixels.or(r.max_megapixels);
        self.quantize = self.quantize.or(r.quantize);
        self.resize = self.resize.or(Some(r.resize));
        self.keep_size |= r.keep_size;
        self.rng = self.rng.or(Some(r.rng));
        self.kernels = self.kernels.or(Some(r.kernels));
        if self.cache.is_none() {
            self.cache = r.cache.map(|c| super::args::CacheArg(Some(c)));
        }
        let outpainted = r.mask.as_deref().filter(|m| m.starts_with("--outpaint"));
        if let (Some(m), None, None) = (outpainted, &self.outpaint, &self.outpaint_to) {
            self.restore_outpaint(m)?;
        }
        if self.mask.is_none() && self.manifest.is_none() && outpainted.is_none() {
            self.mask = match r.mask.as_deref() {
                Some(m @ ("alpha" | "auto")) => Some(m.to_string()),
                Some(m) => Some(paths.resolve(Path::new(m), "mask")?.to_string_lossy().into_owned()),
                None => None,
            };
            self.invert_mask |= r.invert_mask;
            self.mask_blur = self.mask_blur.or(r.mask_blur);
            self.mask_crop = self.mask_crop.or(r.mask_crop);
            self.paste_back |= r.paste_back;
        }
        if r.mode.as_deref() == Some("kontext") {
            self.kontext = true;
            self.reference_size = self.reference_size.or(r.reference_size);
        }
        let own_control = !self.control.is_empty() || self.control_from.is_some();
        if self.depth_model.is_none() {
            self.depth_model = r.depth_model.as_deref().map(|m| paths.model(m, "depth model")).transpose()?;
        }
        if let (false, Some(c)) = (own_control, &r.control) {
            self.record_control(c, &paths)?;
        }
        // A record's ControlNets come back whole, unless the command line gives its own control.
        if !own_control && self.controlnet.is_empty() {
            for c in &r.controlnets {
                self.controlnet.push(paths.model(&c.model, "ControlNet")?);
                self.record_control(&c.control, &paths)?;
                self.control_mode.push(c.mode.clone().unwrap_or_else(|| "none".into()));
                self.control_scale.push(c.scale.to_string());
                self.control_start.push(c.start);
                self.control_end.push(c.end);
            }
        }
        if self.reference.is_empty() && self.manifest.is_none() {
            self.reference = r.references.iter().map(|p| paths.resolve(p, "reference")).collect::<Result<_>>()?;
        }
        if self.redux.is_empty() && !r.redux.is_empty() {
            let one = |x: &crate::engine::record::LoraRecord| -> Result<String> {
                Ok(format!("{}:{}", paths.resolve(&x.path, "Redux image")?.display(), x.weight))
            };
            self.redux = r.redux.iter().map(one).collect::<Result<_>>()?;
            self.redux_model = self.redux_model.take().or(r.redux_model.clone());
        }
        if self.lora.is_empty() && !r.loras.is_empty() {
            let lora = |l: &crate::engine::record::LoraRecord| -> Result<String> {
                Ok(format!("{}:{}", paths.lora(&l.path)?.display(), l.weight))
            };
            self.lora = r.loras.iter().map(lora).collect::<Result<_>>()?;
            self.lora_scale = self.lora_scale.take().or(r.lora_scale.map(|s| s.to_string()));
        }
        if self.negative_prompt.is_none() && self.true_cfg.is_none() {
            (self.negative_prompt, self.true_cfg) = (r.negative_prompt.clone(), r.true_cfg);
        }
        self.rng_gpu = self.rng_gpu.or(r.rng_gpu.as_deref().and_then(|g| g.parse().ok()));
        self.torch_noise = self.torch_noise.or(r.torch_noise);
        Ok(record_input)
    }

    /// What the run reads besides the items' own files, and what it writes besides their outputs.
    fn safety_extra(&self) -> safety::Extra {
        let reads = [(&self.manifest, "the --manifest"), (&self.from_metadata, "the --from-metadata PNG")]
            .into_iter()
            .filter_map(|(p, what)| p.as_ref().map(|p| (p.clone(), what.to_string())))
            .collect();
        safety::Extra { reads, grid: self.grid.clone(), stdout: self.output.as_deref() == Some(Path::new("-")) }
    }

    /// Range checks of single values.
    fn check_scalars(&self) -> Result<()> {
        if self.steps == Some(0) {
            return Err(Error::Usage("--steps 0: at least one step is needed".into()));
        }
        if let Some(n) = self.steps.filter(|n| *n > MAX_STEPS) {
            return Err(Error::Usage(format!("--steps {n}: at most {MAX_STEPS} (FLUX runs 4–50)")));
        }
        if let Some(n) = self.num_images.filter(|n| *n > MAX_IMAGES_PER_INPUT) {
            return Err(Error::Usage(format!(
                "--num-images {n}: at most {MAX_IMAGES_PER_INPUT} per input; split larger runs with --seed lists or \
                 several commands"
            )));
        }
        for (flag, v) in [("--guidance", self.guidance), ("--true-cfg", self.true_cfg)] {
            if let Some(v) = v.filter(|v| v.is_finite() && v.abs() > MAX_SCALE) {
                return Err(Error::Usage(format!("{flag} {v}: outside ±{MAX_SCALE}; FLUX uses values of about 1–10")));
            }
        }
        let msl = self.max_sequence_length.unwrap_or(DEFAULT_MAX_SEQUENCE_LENGTH);
        if msl == 0 || msl > DEFAULT_MAX_SEQUENCE_LENGTH {
            return Err(Error::Usage(format!("--max-sequence-length {msl} is outside 1..=512 (FLUX's T5 limit)")));
        }
        if let Some(g) = self.guidance.filter(|g| !g.is_finite()) {
            return Err(Error::Usage(format!("--guidance {g} is not a number")));
        }
        if self.num_images == Some(0) {
            return Err(Error::Usage("--num-images 0: at least one image is needed".into()));
        }
        Ok(())
    }

    /// The seeds, and the base seed when it had to be drawn at random.
    fn seeds(&self) -> Result<(Seeds, Option<u64>)> {
        match &self.seed {
            Some(s) if s.contains(',') => {
                if self.num_images.is_some() {
                    return Err(Error::Usage("give either a --seed list or --num-images, not both".into()));
                }
                Ok((Seeds::List(parse_list("--seed", s, |_: &u64| None)?), None))
            }
            Some(s) => Ok((Seeds::Base(parse_list("--seed", s, |_: &u64| None)?[0]), None)),
            None => {
                let base = crate::engine::random_seed();
                Ok((Seeds::Base(base), Some(base)))
            }
        }
    }

    /// The parameters every item shares (model, device, precision, sizes, ...); rows fill in the rest.
    fn base_request(&self) -> Result<Request> {
        let model = self.model.clone().or_else(|| std::env::var_os("MODEL_PATH").map(PathBuf::from)).ok_or_else(|| {
            Error::Usage(
                "no model: give --model with a diffusers-layout folder, a Hub repo id or dev / schnell (or set FLUX_MODEL)"
                    .into(),
            )
        })?;
        let device = parse_device(&self.device)?;
        let dtype = dtype_for(self.dtype, &device)?;
        let kernels = self.kernels.unwrap_or_default().check(&device).map_err(Error::Usage)?;
        if let Some(dir) = self.output_dir.as_ref().filter(|d| d.exists() && !d.is_dir()) {
            return Err(Error::Usage(format!("--output-dir {}: is a file, not a folder", dir.display())));
        }
        Ok(Request {
            model,
            mode: Mode::Img2Img { image: PathBuf::new(), strength: DEFAULT_STRENGTH },
            prompt: String::new(),
            steps: self.steps,
            guidance: self.guidance,
            seed: None,
            true_cfg: self.true_cfg_settings()?,
            rng: RngSettings {
                kind: self.rng.unwrap_or_default(),
                gpu: self.rng_gpu,
                cpu_noise: self.torch_noise.unwrap_or_default(),
            },
            width: self.width,
            height: self.height,
            max_sequence_length: self.max_sequence_length.unwrap_or(DEFAULT_MAX_SEQUENCE_LENGTH),
            device,
            dtype,
            output: PathBuf::new(),
            resize: self.resize.unwrap_or_default(),
            max_megapixels: self.max_megapixels,
            keep_size: self.keep_size,
            overrides: Overrides {
                transformer: self.transformer.clone(),
                vae: self.vae.clone(),
                text_encoder: self.text_encoder.clone(),
                text_encoder_2: self.text_encoder_2.clone(),
                revision: self.revision.clone(),
            },
            quantize: self.quantize,
            loras: self.lora_specs()?,
            lora_scale: 1.0,
            references: self.reference.clone(),
            sd: self.sd_options()?,
            control: self.control_source()?,
            controlnets: self.controlnet_specs()?,
            redux: self.redux.iter().map(|s| parse_redux(s)).collect::<Result<_>>()?,
            redux_model: self.redux_model.clone(),
            depth_model: self.depth_model.clone(),
            attention_chunk: self.attention_chunk.map(|r| r as usize),
            vae_band: self.vae_band.map(|r| r as usize),
            cache: self.cache.and_then(|c| c.0),
            kernels,
        })
    }

    /// How a row's item is made: text-to-image without an input; inpainting with a mask; Kontext when asked;
    /// img2img otherwise.
    fn mode_for(&self, row: &Row, image: &Path, strength: f64) -> Result<Mode> {
        let outpaint = self.outpaint_spec()?;
        let Some(input) = &row.input else {
            if row.mask.is_some() || self.mask.is_some() {
                return Err(Error::Usage("a mask needs an input image to repaint: give --image".into()));
            }
            if outpaint.is_some() {
                return Err(Error::Usage("outpainting grows an input image: give --image".into()));
            }
            return Ok(Mode::Txt2Img);
        };
        if let Some(o) = outpaint {
            return self.outpaint_mode(o, row, image, strength);
        }
        let mask = match (&row.mask, self.mask.as_deref()) {
            (Some(file), _) => Some(MaskSource::File(file.clone())),
            (None, Some("alpha")) => Some(MaskSource::Alpha),
            (None, Some("auto")) => Some(MaskSource::File(auto_mask(input)?)),
            (None, Some(file)) => Some(MaskSource::File(PathBuf::from(file))),
            (None, None) => None,
        };
        let image = image.to_path_buf();
        match (mask, self.kontext) {
            (Some(_), true) => Err(Error::Usage(
                "--kontext edits by instruction and takes no mask; drop --mask, or drop --kontext to inpaint".into(),
            )),
            (Some(source), false) => Ok(Mode::Inpaint { image, strength, mask: self.mask_options(source) }),
            (None, true) => Ok(Mode::Kontext { image, reference: self.reference_size.unwrap_or_default() }),
            (None, false) => Ok(Mode::Img2Img { image, strength }),
        }
    }

    /// Mode flags that apply to none of the items are errors; flags a mode ignores are warnings.
    fn mode_warnings(&self, items: &[Item]) -> Result<Vec<String>> {
        let inpaints = items.iter().any(|i| i.request.mask().is_some());
        let mask_flags = [
            ("--invert-mask", self.invert_mask),
            ("--mask-blur", self.mask_blur.is_some()),
            ("--mask-crop", self.mask_crop.is_some()),
            ("--paste-back", self.paste_back),
        ];
        if let Some((flag, _)) = mask_flags.iter().find(|(_, set)| *set && !inpaints) {
            return Err(Error::Usage(format!("{flag} applies to inpainting: give --mask as well")));
        }
        if let Some(b) = self.mask_blur.filter(|b| !b.is_finite() || *b < 0.0) {
            return Err(Error::Usage(format!("--mask-blur {b} must be a radius of 0 or more pixels")));
        }
        let mut warnings = Vec::new();
        if self.kontext && self.strength.is_some() {
            warnings.push("Kontext starts from noise and sees the input as a reference: --strength is ignored".into());
        }
        if self.reference_size.is_some() && !self.kontext {
            warnings.push("--reference-size applies to Kontext edits only".into());
        }
        Ok(warnings)
    }

    /// A record's control image: a file, or `canny:LOW,HIGH` (the thresholds unless the command line has them).
    fn record_control(&mut self, words: &str, paths: &RecordPaths) -> Result<()> {
        if words == "depth" {
            self.control_from = Some("depth".into());
            return Ok(());
        }
        match words.strip_prefix("canny:").and_then(|t| t.split_once(',')) {
            Some((low, high)) => {
                self.control_from = Some("canny".into());
                self.canny_low = self.canny_low.or(low.parse().ok());
                self.canny_high = self.canny_high.or(high.parse().ok());
            }
            None => self.control.push(paths.resolve(Path::new(words), "control image")?),
        }
        Ok(())
    }

    /// `--control` or `--control-from` with its thresholds, for a FLUX.1 Control transformer (ControlNets take
    /// theirs in [`Self::controlnet_specs`]).
    fn control_source(&self) -> Result<Option<ControlSource>> {
        if !self.controlnet.is_empty() {
            return Ok(None);
        }
        match (self.control.as_slice(), self.derived_control()?) {
            ([], derived) => Ok(derived),
            ([path], None) => Ok(Some(ControlSource::File(path.clone()))),
            ([_], Some(_)) => Err(Error::Usage("give --control or --control-from, not both".into())),
            (_, _) => Err(Error::Usage(
                "several --control images go with as many --controlnet models; a Control model takes one".into(),
            )),
        }
    }

    /// `--control-from` with its thresholds.
    fn derived_control(&self) -> Result<Option<ControlSource>> {
        let thresholds = self.canny_low.is_some() || self.canny_high.is_some();
        if self.depth_model.is_some() && self.control_from.as_deref() != Some("depth") {
            return Err(Error::Usage("--depth-model applies to --control-from depth".into()));
        }
        match self.control_from.as_deref() {
            Some("canny") => {
                let (low, high) = (self.canny_low.unwrap_or(100.0), self.canny_high.unwrap_or(200.0));
                if !(low.is_finite() && high.is_finite() && low >= 0.0 && high >= 0.0) {
                    return Err(Error::Usage(format!(
                        "--canny-low {low} / --canny-high {high}: give thresholds of 0 or more"
                    )));
                }
                Ok(Some(ControlSource::Canny { low, high }))
            }
            Some("depth") if thresholds => {
                Err(Error::Usage("--canny-low/--canny-high apply to --control-from canny, not depth".into()))
            }
            Some("depth") => Ok(Some(ControlSource::Depth)),
            Some(other) => Err(Error::Usage(format!("--control-from {other:?}: choose canny or depth"))),
            None if thresholds => Err(Error::Usage("--canny-low/--canny-high apply to --control-from canny".into())),
            None => Ok(None),
        }
    }

    /// A ControlNet scale sweep: one `--control-scale` with a list (several flags set one scale per ControlNet).
    fn control_scale_sweep(&self) -> Result<Option<Vec<f64>>> {
        match self.control_scale.as_slice() {
            [one] if one.contains(',') => Ok(Some(parse_list("--control-scale", one, check_scale)?)),
            many if many.len() > 1 && many.iter().any(|s| s.contains(',')) => Err(Error::Usage(
                "--control-scale: give one list to sweep (every ControlNet at each scale) or one value per \
                 --controlnet, not both"
                    .into(),
            )),
            _ => Ok(None),
        }
    }

    /// `--controlnet` with its control images (the files in order, then `--control-from`) and per-ControlNet
    /// settings, each given once for all or once each.
    fn controlnet_specs(&self) -> Result<Vec<ControlNetSpec>> {
        let n = self.controlnet.len();
        let settings = [
            ("--control-mode", !self.control_mode.is_empty()),
            ("--control-scale", !self.control_scale.is_empty()),
            ("--control-start", !self.control_start.is_empty()),
            ("--control-end", !self.control_end.is_empty()),
        ];
        if n == 0 {
            return match settings.iter().find(|(_, set)| *set) {
                Some((flag, _)) => Err(Error::Usage(format!("{flag} applies to ControlNets: give --controlnet MODEL"))),
                None => Ok(Vec::new()),
            };
        }
        let mut images: Vec<ControlSource> = self.control.iter().cloned().map(ControlSource::File).collect();
        images.extend(self.derived_control()?);
        if images.len() != n {
            return Err(Error::Usage(format!(
                "{n} --controlnet and {} control image(s): give one --control IMAGE (or --control-from canny) per \
                 ControlNet, in the same order",
                images.len()
            )));
        }
        let modes = per_controlnet("--control-mode", &self.control_mode, n, "none".to_string())?;
        let scales = match self.control_scale_sweep()? {
            // A sweep sets each item's scale; the specs carry its first value.
            Some(sweep) => vec![sweep[0]; n],
            None => {
                let given = self.control_scale.iter().map(|s| parse_scale(s)).collect::<Result<Vec<f64>>>()?;
                per_controlnet("--control-scale", &given, n, 1.0)?
            }
        };
        let starts = per_controlnet("--control-start", &self.control_start, n, 0.0)?;
        let ends = per_controlnet("--control-end", &self.control_end, n, 1.0)?;
        let mut specs = Vec::with_capacity(n);
        for (i, image) in images.into_iter().enumerate() {
            if !scales[i].is_finite() {
                return Err(Error::Usage(format!("--control-scale {}: give a finite number", scales[i])));
            }
            crate::engine::controlnet::check_window(starts[i], ends[i])?;
            let mode = Some(modes[i].clone()).filter(|m| !m.eq_ignore_ascii_case("none"));
            if let Some(m) = &mode {
                crate::engine::controlnet::mode_index(m)?;
            }
            specs.push(ControlNetSpec {
                model: self.controlnet[i].clone(),
                image,
                mode,
                scale: scales[i],
                start: starts[i],
                end: ends[i],
            });
        }
        Ok(specs)
    }

    /// `--outpaint`/`--outpaint-to` with `--align` and `--outpaint-feather`, checked together.
    fn outpaint_spec(&self) -> Result<Option<Outpaint>> {
        let grow = match (&self.outpaint, &self.outpaint_to) {
            (Some(m), None) => Grow::Margins(outpaint::parse_margins(m).map_err(Error::Usage)?),
            (None, Some(size)) => {
                let (width, height) = outpaint::parse_size(size).map_err(Error::Usage)?;
                let align = self.align.as_deref().map(str::parse).transpose().map_err(Error::Usage)?;
                Grow::To { width, height, align: align.unwrap_or_default() }
            }
            (Some(_), Some(_)) => return Err(Error::Usage("give --outpaint or --outpaint-to, not both".into())),
            (None, None) => {
                let stray =
                    [("--align", self.align.is_some()), ("--outpaint-feather", self.outpaint_feather.is_some())];
                return match stray.iter().find(|(_, set)| *set) {
                    Some((flag, _)) => {
                        Err(Error::Usage(format!("{flag} applies to outpainting: give --outpaint or --outpaint-to")))
                    }
                    None => Ok(None),
                };
            }
        };
        if self.align.is_some() && matches!(grow, Grow::Margins(_)) {
            return Err(Error::Usage(
                "--align places the input on an --outpaint-to canvas; --outpaint margins place it already".into(),
            ));
        }
        Ok(Some(Outpaint { grow, feather: self.outpaint_feather.unwrap_or(outpaint::DEFAULT_FEATHER) }))
    }

    /// Outpainting: inpainting of the grown canvas with its own mask, from pure noise unless --strength is given,
    /// always composed back over the canvas.
    fn outpaint_mode(&self, o: Outpaint, row: &Row, image: &Path, strength: f64) -> Result<Mode> {
        let clash = [
            ("--mask", row.mask.is_some() || self.mask.is_some()),
            ("--invert-mask", self.invert_mask),
            ("--mask-blur", self.mask_blur.is_some()),
            ("--mask-crop", self.mask_crop.is_some()),
            ("--kontext", self.kontext),
        ];
        if let Some((flag, _)) = clash.iter().find(|(_, set)| *set) {
            return Err(Error::Usage(format!(
                "{flag} does not go with outpainting, which makes its own mask (its seam: --outpaint-feather)"
            )));
        }
        let strength = if self.strength.is_some() { strength } else { 1.0 };
        let mask =
            Mask { source: MaskSource::Outpaint(o), invert: false, blur: 0.0, crop_padding: None, paste_back: true };
        Ok(Mode::Inpaint { image: image.to_path_buf(), strength, mask })
    }

    fn mask_options(&self, source: MaskSource) -> Mask {
        Mask {
            source,
            invert: self.invert_mask,
            blur: self.mask_blur.unwrap_or(0.0),
            crop_padding: self.mask_crop,
            paste_back: self.paste_back,
        }
    }

    /// `--lora FILE[:WEIGHT]` values.
    fn lora_specs(&self) -> Result<Vec<LoraSpec>> {
        self.lora.iter().map(|s| parse_lora(s, Path::new(""))).collect()
    }

    /// Stable Diffusion's flags; `--start-step` replaces `--strength`, so both together are refused.
    fn sd_options(&self) -> Result<SdOptions> {
        if let (Some(n), Some(s)) = (self.start_step, &self.strength) {
            return Err(Error::Usage(format!(
                "--start-step {n} and --strength {s} both say where img2img starts; give one of them"
            )));
        }
        Ok(SdOptions { scheduler: self.scheduler, clip_skip: self.clip_skip, start_step: self.start_step })
    }

    /// `--negative-prompt` with `--true-cfg`: both or neither, the scale above 1.
    fn true_cfg_settings(&self) -> Result<Option<TrueCfg>> {
        match (&self.negative_prompt, self.true_cfg) {
            (None, None) => Ok(None),
            // FLUX.2 base models use it with --guidance; FLUX.1 planning asks for --true-cfg (the scale stays 1).
            (Some(n), None) => Ok(Some(TrueCfg { negative_prompt: n.clone(), scale: 1.0 })),
            (None, Some(_)) => Err(Error::Usage(
                "--true-cfg needs --negative-prompt TEXT (an empty one is --negative-prompt '')".into(),
            )),
            (Some(_), Some(s)) if s.is_nan() || s <= 1.0 => {
                Err(Error::Usage(format!("--true-cfg {s} must be above 1 (at 1 the negative pass changes nothing)")))
            }
            (Some(n), Some(scale)) => Ok(Some(TrueCfg { negative_prompt: n.clone(), scale })),
        }
    }

    /// Manifest lines (paths relative to the manifest), the expanded `--image` inputs, or one text-to-image row.
    fn rows(&self) -> Result<Vec<Row>> {
        let Some(m) = &self.manifest else {
            if self.image.is_empty() {
                // FLUX.2: without --image the first --reference leads (it sets the size).
                if self.width.is_none() && self.height.is_none() && self.reference.is_empty() {
                    return Err(Error::Usage(
                        "no input: give --image PATH (files, folders, globs, URLs or -) or --manifest FILE to edit, \
                         --width and --height to make an image from the prompt alone, or (FLUX.2) --reference FILE"
                            .into(),
                    ));
                }
                return Ok(vec![Row::plain(None)]);
            }
            let inputs = inputs::expand(&self.image)?;
            return Ok(inputs.into_iter().map(|i| Row::plain(Some(i))).collect());
        };
        if !self.image.is_empty() {
            return Err(Error::Usage("give either --image or --manifest, not both".into()));
        }
        let base = m.parent().map(Path::to_path_buf).unwrap_or_default();
        let near = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                base.join(p)
            } else {
                p
            }
        };
        // Outputs stay inside this folder unless --allow-outside.
        let root = self.output_dir.clone().unwrap_or_else(|| base.clone());
        let output = |o: String, line: usize| -> Result<PathBuf> {
            let path = match &self.output_dir {
                Some(d) if Path::new(&o).is_relative() => d.join(o),
                _ => near(&o),
            };
            if !self.allow_outside {
                safety::check_inside(&path, &root, line)?;
            }
            Ok(path)
        };
        manifest::read(m)?
            .into_iter()
            .map(|r| {
                let at = |e: Error| match e {
                    Error::Usage(msg) => Error::Usage(format!("manifest line {}: {msg}", r.line)),
                    other => other,
                };
                Ok(Row {
                    input: r.image.as_deref().filter(|i| !i.trim().is_empty()).map(|i| match Input::parse(i) {
                        Input::File(p) => Input::File(near(&p.to_string_lossy())),
                        remote => remote,
                    }),
                    output: r.output.clone().map(|o| output(o, r.line)).transpose()?,
                    mask: r.mask.as_deref().filter(|m| !m.trim().is_empty()).map(near),
                    loras: match r.lora.as_deref().map(str::trim) {
                        Some(l) if !l.is_empty() => Some(
                            l.split(';')
                                .map(|s| parse_lora(s.trim(), &base).map_err(at))
                                .collect::<Result<Vec<_>>>()?,
                        ),
                        _ => None,
                    },
                    references: r
                        .reference
                        .as_deref()
                        .map(str::trim)
                        .filter(|l| !l.is_empty())
                        .map(|l| l.split(';').map(|p| near(p.trim())).collect()),
                    cache: match r.cache.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
                        Some(c) => Some(
                            super::args::parse_cache_choice(c)
                                .map_err(|e| at(Error::Usage(format!("cache {c}: {e}"))))?,
                        ),
                        None => None,
                    },
                    control: match r.control.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
                        Some("canny") => Some(ControlSource::Canny {
                            low: self.canny_low.unwrap_or(100.0),
                            high: self.canny_high.unwrap_or(200.0),
                        }),
                        Some("depth") => Some(ControlSource::Depth),
                        Some(c) => Some(ControlSource::File(near(c))),
                        None => None,
                    },
                    control_scale: r.control_scale,
                    redux: match r.redux.as_deref().map(str::trim).filter(|l| !l.is_empty()) {
                        Some(l) => Some(
                            l.split(';')
                                .map(|s| {
                                    let mut x = parse_redux(s.trim()).map_err(at)?;
                                    x.path = near(&x.path.to_string_lossy());
                                    Ok(x)
                                })
                                .collect::<Result<Vec<_>>>()?,
                        ),
                        None => None,
                    },
                    prompt: r.prompt,
                    strength: r.strength,
                    seed: r.seed,
                    steps: r.steps,
                    guidance: r.guidance,
                    line: Some(r.line),
                })
            })
            .collect()
    }

    /// The items of one row: its LoRA scales × strengths × seeds (no strengths without an input).
    fn row_items(&self, row: &Row, strengths: &[f64], ctx: &RowCtx, items: &mut Vec<Item>) -> Result<()> {
        self.row_items_unlabelled(row, strengths, ctx, items).map_err(|e| match (e, row.line) {
            (Error::Usage(msg), Some(line)) => Error::Usage(format!("manifest line {line}: {msg}")),
            (e, _) => e,
        })
    }

    fn row_items_unlabelled(&self, row: &Row, strengths: &[f64], ctx: &RowCtx, items: &mut Vec<Item>) -> Result<()> {
        if let Some(n) = row.steps.filter(|n| *n == 0 || *n > MAX_STEPS) {
            return Err(Error::Usage(format!("steps {n}: give 1 to {MAX_STEPS}")));
        }
        if let Some(g) = row.guidance.filter(|g| !g.is_finite() || g.abs() > MAX_SCALE) {
            return Err(Error::Usage(format!("guidance {g}: give a number within ±{MAX_SCALE}")));
        }
        let shown = row.input.as_ref().map(Input::display_path).unwrap_or_else(|| "text-to-image".into());
        let prompt = row.prompt.clone().or_else(|| self.prompt.clone()).ok_or_else(|| {
            Error::Usage(format!(
                "no prompt for {}: give --prompt (or a prompt column in the manifest)",
                shown.display()
            ))
        })?;
        let row_strengths = match (row.strength, &row.input) {
            // Text-to-image has no strength to sweep: one pass over the seeds.
            (_, None) => vec![f64::NAN],
            (Some(s), _) => match check_strength(&s) {
                Some(msg) => return Err(Error::Usage(format!("strength {s} for {}: {msg}", shown.display()))),
                None => vec![s],
            },
            (None, _) => strengths.to_vec(),
        };
        let combos: Vec<(f64, Option<f64>, f64, usize)> = ctx
            .lora_scales
            .iter()
            .flat_map(|&l| ctx.control_scales.iter().map(move |&c| (l, c)))
            .flat_map(|(l, c)| row_strengths.iter().flat_map(move |&s| (0..ctx.per_row).map(move |j| (l, c, s, j))))
            .collect();
        let single = ctx.rows == 1 && combos.len() == 1;
        let stem = row.input.as_ref().map(Input::stem).unwrap_or_else(|| slug(&prompt));
        for (lora_scale, control_scale, strength, j) in combos {
            let index = items.len();
            let seed = match (row.seed, ctx.seeds) {
                (Some(s), _) => s + j as u64,
                (None, Seeds::List(list)) => list[j],
                (None, Seeds::Base(b)) => b.wrapping_add(index as u64),
            };
            let mut request = ctx.base.clone();
            request.mode = self.mode_for(row, &shown, strength)?;
            request.prompt = prompt.clone();
            request.steps = row.steps.or(self.steps);
            request.guidance = row.guidance.or(self.guidance);
            request.seed = Some(seed);
            request.lora_scale = lora_scale;
            if let Some(c) = control_scale {
                request.controlnets.iter_mut().for_each(|n| n.scale = c);
            }
            if let Some(l) = &row.loras {
                request.loras = l.clone();
            }
            if let Some(r) = &row.references {
                request.references = r.clone();
            }
            if let Some(c) = row.cache {
                request.cache = c;
            }
            row_control(&mut request, row)?;
            if let Some(r) = &row.redux {
                request.redux = r.clone();
            }
            let vars = [
                ("stem", stem.clone()),
                ("seed", seed.to_string()),
                ("strength", request.strength().map(|s| s.to_string()).unwrap_or_else(|| "none".into())),
                ("steps", request.steps.map(|s| s.to_string()).unwrap_or_else(|| "default".into())),
                ("lora", lora_scale.to_string()),
                ("control", control_scale.map_or_else(|| "none".into(), |c| c.to_string())),
                ("index", format!("{index:05}")),
            ];
            request.output = self.output_for(row, single, ctx, &vars)?;
            let strength_given = row.strength.is_some() || self.strength.is_some();
            items.push(Item { index, input: row.input.clone(), request, strength_given });
        }
        Ok(())
    }

    /// Where one item is written: the manifest's output, `--output` for a single item, else the name template
    /// in `--output-dir` (or beside the input; downloads and stdin into the current folder).
    fn output_for(&self, row: &Row, single: bool, ctx: &RowCtx, vars: &[(&str, String)]) -> Result<PathBuf> {
        if let Some(o) = &row.output {
            return Ok(o.clone());
        }
        if ctx.record_input && self.output.is_none() && self.output_dir.is_none() {
            return record_output(ctx.template.render(vars, true)?);
        }
        if let (Some(o), true, None) = (&self.output, single, &self.output_dir) {
            return Ok(o.clone());
        }
        if self.output.is_some() {
            return Err(Error::Usage(
                "--output names one file but this run writes several; use --output-dir DIR (and --name)".into(),
            ));
        }
        let dir = match (&self.output_dir, &row.input) {
            (Some(d), _) => d.clone(),
            (None, Some(Input::File(p))) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            (None, _) => PathBuf::new(),
        };
        Ok(dir.join(ctx.template.render(vars, row.input.is_some())?))
    }

    fn options(&self) -> Options {
        Options {
            dry_run: self.dry_run,
            json: self.json,
            skip_existing: self.skip_existing,
            output_dir: self.output_dir.clone(),
            grid: self.grid.clone(),
            stdout: self.output.as_deref() == Some(Path::new("-")),
            reference_size: self.reference_size.unwrap_or_default(),
            strength_given: self.strength.is_some(),
            memory_budget: self.memory_budget,
            strict_images: self.strict_images,
            download_timeout: self.download_timeout,
        }
    }
}

/// `FILE[:WEIGHT]` (a Hub `org/name[/file.safetensors]` too); the weight only when the text after the last `:`
/// is a number, so Windows paths keep their drive letter. Relative files resolve against `base`.
fn parse_lora(spec: &str, base: &Path) -> Result<LoraSpec> {
    let (path, weight) = match spec.rsplit_once(':').map(|(p, w)| (p, w.trim().parse::<f64>())) {
        Some((p, Ok(w))) => (p, w),
        Some((p, Err(_))) if !Path::new(spec).exists() && (Path::new(p).is_file() || base.join(p).is_file()) => {
            let w = &spec[p.len() + 1..];
            return Err(Error::Usage(format!(
                "--lora {spec}: the weight {w} is not a number (FILE[:WEIGHT], e.g. :0.8)"
            )));
        }
        _ => (spec, 1.0),
    };
    if path.trim().is_empty() || !weight.is_finite() {
        return Err(Error::Usage(format!("--lora {spec}: expected FILE[:WEIGHT], e.g. style.safetensors:0.8")));
    }
    if let Some(msg) = check_scale(&weight) {
        return Err(Error::Usage(format!("--lora {spec}: the weight {weight} {msg}")));
    }
    let p = PathBuf::from(path);
    let p = if p.is_relative() && !base.as_os_str().is_empty() && base.join(&p).exists() { base.join(p) } else { p };
    Ok(LoraSpec { path: p, weight })
}

/// `--redux FILE[:WEIGHT]`.
fn parse_redux(spec: &str) -> Result<ReduxImage> {
    let (path, weight) = match spec.rsplit_once(':').map(|(p, w)| (p, w.trim().parse::<f64>())) {
        Some((p, Ok(w))) if !Path::new(spec).exists() => (p, w),
        _ => (spec, 1.0),
    };
    if path.trim().is_empty() || !weight.is_finite() || weight.abs() > MAX_SCALE {
        return Err(Error::Usage(format!(
            "--redux {spec}: expected FILE[:WEIGHT] with a weight within ±{MAX_SCALE}, e.g. style.png:0.8"
        )));
    }
    Ok(ReduxImage { path: PathBuf::from(path), weight })
}

/// `--mask auto`: `{stem}.mask.png` beside the input.
fn auto_mask(input: &Input) -> Result<PathBuf> {
    match input {
        Input::File(p) => Ok(p.with_file_name(format!("{}.mask.png", input.stem()))),
        _ => Err(Error::Usage("--mask auto needs input files (the mask is {stem}.mask.png beside each)".into())),
    }
}

/// A file-name-safe stem from a prompt: its first words, lower case, joined by `-`.
fn slug(prompt: &str) -> String {
    let words: Vec<String> =
        prompt.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).take(6).map(str::to_lowercase).collect();
    let s: String = words.join("-").chars().take(48).collect();
    if s.is_empty() {
        "image".into()
    } else {
        s
    }
}

impl Row {
    fn plain(input: Option<Input>) -> Self {
        Row {
            input,
            prompt: None,
            strength: None,
            seed: None,
            steps: None,
            guidance: None,
            output: None,
            mask: None,
            loras: None,
            references: None,
            cache: None,
            control: None,
            control_scale: None,
            redux: None,
            line: None,
        }
    }
}

/// What every row's items share.
struct RowCtx<'a> {
    base: &'a Request,
    /// `--lora-scale` values (one, 1, without a sweep).
    lora_scales: &'a [f64],
    /// `--control-scale` sweep values (one None without a sweep).
    control_scales: &'a [Option<f64>],
    template: &'a Template,
    seeds: &'a Seeds,
    per_row: usize,
    rows: usize,
    /// The input came from a `--from-metadata` record: it does not choose where the output goes.
    record_input: bool,
}

/// The output-name template: `--name`, or `{stem}` plus what varies, so a sweep never writes two items to one file.
struct Template {
    given: Option<String>,
    /// Default suffixes for an edited input (`-edited` beside it, then what varies) and a generated image.
    edit: String,
    generate: String,
}

impl Template {
    fn new(args: &Args, strengths: usize, per_row: usize, lora_scales: usize, control_scales: usize) -> Self {
        let seed = if per_row > 1 { "-{seed}" } else { "" };
        let lora = if lora_scales > 1 { "-l{lora}" } else { "" };
        let lora = if control_scales > 1 { format!("{lora}-c{{control}}") } else { lora.to_string() };
        let edit = format!(
            "{{stem}}{}{lora}{}{seed}.png",
            if args.output_dir.is_none() { "-edited" } else { "" },
            if strengths > 1 { "-s{strength}" } else { "" },
        );
        Template { given: args.name.clone(), edit, generate: format!("{{stem}}{lora}{seed}.png") }
    }

    /// Expands the placeholders for an item with or without an input; unknown ones are an error.
    fn render(&self, vars: &[(&str, String)], has_input: bool) -> Result<String> {
        let default = if has_input { &self.edit } else { &self.generate };
        render(self.given.as_ref().unwrap_or(default), vars)
    }
}

/// Expands an output-name template; unknown placeholders are an error.
fn render(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').ok_or_else(|| Error::Usage(format!("--name {template}: unclosed {{")))?;
        let key = &rest[open + 1..open + close];
        let v = vars.iter().find(|(k, _)| *k == key).ok_or_else(|| {
            Error::Usage(format!(
                "--name {template}: unknown placeholder {{{key}}} (use stem, seed, strength, steps, lora, index)"
            ))
        })?;
        out.push_str(&v.1);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(if out.to_ascii_lowercase().ends_with(".png") { out } else { format!("{out}.png") })
}

/// A re-run from a record without `-o`: the current folder, never the record's folder, and never over a file.
fn record_output(name: String) -> Result<PathBuf> {
    let out = PathBuf::from(name);
    if out.exists() {
        return Err(Error::Usage(format!(
            "--from-metadata: {} exists in the current folder; give -o PATH to choose where the re-run goes",
            out.display()
        )));
    }
    Ok(out)
}

/// How paths stored in a record are taken: relative ones against the PNG's folder; absolute ones only when the
/// user confirms them (`--allow-metadata-paths`), since a received PNG's record is not the user's own choice.
struct RecordPaths<'a> {
    png: &'a Path,
    allow: bool,
}

impl RecordPaths<'_> {
    fn resolve(&self, p: &Path, what: &str) -> Result<PathBuf> {
        if p.is_relative() {
            return Ok(self.png.parent().unwrap_or(Path::new("")).join(p));
        }
        if self.allow {
            return Ok(p.to_path_buf());
        }
        Err(Error::Usage(format!(
            "--from-metadata {}: its record names the absolute {what} path {}; give the file yourself (--image, \
             --mask, --reference, --lora) or confirm the record's paths with --allow-metadata-paths",
            self.png.display(),
            p.display()
        )))
    }

    /// A LoRA: a file (as [`Self::resolve`]) or a Hub id, which is no path to resolve.
    fn lora(&self, p: &Path) -> Result<PathBuf> {
        self.model(p, "LoRA")
    }

    /// A file or folder (as [`Self::resolve`]) or a Hub id (`owner/name`, perhaps with a file in it), which is no
    /// path to resolve.
    fn model(&self, p: &Path, what: &str) -> Result<PathBuf> {
        let near = self.png.parent().unwrap_or(Path::new("")).join(p);
        let text = p.to_string_lossy();
        let repo = text.split('/').take(2).collect::<Vec<_>>().join("/");
        if p.is_relative() && !near.exists() && crate::source::hub::repo_id(&repo).is_some() {
            return Ok(p.to_path_buf());
        }
        self.resolve(p, what)
    }
}

/// The record a PNG written by this tool carries.
fn read_record(png: &Path) -> Result<EditRecord> {
    let err = |msg: String| Error::Usage(format!("--from-metadata {}: {msg}", png.display()));
    let text = crate::output::read_text_chunk(png, crate::engine::record::PNG_KEY)
        .map_err(err)?
        .ok_or_else(|| err("no flux-img2img parameters in this PNG (was it written by flux-img2img?)".into()))?;
    serde_json::from_str(&text).map_err(|e| err(format!("unreadable parameters: {e}")))
}

/// "0.5,0.7" → values, each checked by `check`.
fn parse_list<T: std::str::FromStr>(flag: &str, s: &str, check: impl Fn(&T) -> Option<String>) -> Result<Vec<T>> {
    s.split(',')
        .map(|part| {
            let v: T =
                part.trim().parse().map_err(|_| Error::Usage(format!("{flag} {s}: {part:?} is not a number")))?;
            match check(&v) {
                Some(msg) => Err(Error::Usage(format!("{flag} {}: {msg}", part.trim()))),
                None => Ok(v),
            }
        })
        .collect()
}

/// A multiplier of LoRA weights: finite and within ±[`MAX_SCALE`].
/// One `--control-scale` value.
fn parse_scale(s: &str) -> Result<f64> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() <= MAX_SCALE => Ok(v),
        _ => Err(Error::Usage(format!("--control-scale {s}: give a number within ±{MAX_SCALE}"))),
    }
}

fn check_scale(v: &f64) -> Option<String> {
    if !v.is_finite() {
        Some("is not a number".into())
    } else if v.abs() > MAX_SCALE {
        Some(format!("is outside ±{MAX_SCALE}; LoRA weights are about 0–2"))
    } else {
        None
    }
}

fn check_strength(v: &f64) -> Option<String> {
    (!(0.0..=1.0).contains(v) || v.is_nan()).then(|| "is outside [0, 1]".to_string())
}

/// The compute precision: asked for, or f32 on CPU and bf16 on CUDA.
pub fn dtype_for(asked: Option<DTypeArg>, device: &Device) -> Result<DType> {
    let dtype = match asked {
        Some(DTypeArg::F32) => DType::F32,
        Some(DTypeArg::Bf16) => DType::BF16,
        Some(DTypeArg::F16) => DType::F16,
        None if device.is_cpu() => DType::F32,
        None => DType::BF16,
    };
    if device.is_cpu() && dtype == DType::BF16 {
        // candle's CPU matmul has no bf16 kernel; failing here beats failing after the models load.
        return Err(Error::Usage(
            "--dtype bf16 is not available on the CPU (candle has no bf16 CPU matmul); use f32 (default) or f16, or \
             --device cuda"
                .into(),
        ));
    }
    Ok(dtype)
}

/// `cpu`, `cuda`, `cuda:N` → a candle device, with a clear message when this build or machine has no CUDA.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let bad = || Error::Usage(format!("--device {s}: expected cpu, cuda or cuda:N"));
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest.strip_prefix(':').and_then(|n| n.parse::<usize>().ok()).ok_or_else(bad)?,
        None => return Err(bad()),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Usage(format!(
            "--device {s}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda` \
             or use --device cpu"
        )));
    }
    Device::new_cuda(ordinal)
        .map_err(|e| Error::Usage(format!("--device {s}: no usable CUDA GPU ({})", crate::error::candle_message(&e))))
}

/// `I/N`, `auto/N` or `auto` → (I, N).
pub fn parse_shard(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<(usize, usize)> {
    let bad = |msg: &str| Error::Usage(format!("--shard {s}: {msg}"));
    let num =
        |v: &str, what: &str| v.trim().parse::<usize>().map_err(|_| bad(&format!("{what} {v:?} is not a number")));
    let (i_part, n_part) = match s.split_once('/') {
        Some((i, n)) => (i, Some(n)),
        None => (s, None),
    };
    let n = match n_part {
        Some(n) => num(n, "N")?,
        None if i_part == "auto" => num(
            &env("SLURM_ARRAY_TASK_COUNT").ok_or_else(|| bad("no SLURM_ARRAY_TASK_COUNT; give the count as auto/N"))?,
            "SLURM_ARRAY_TASK_COUNT",
        )?,
        None => return Err(bad("expected I/N (e.g. 0/4), auto/N or auto")),
    };
    let i = if i_part == "auto" { auto_shard_index(env, &bad, &num)? } else { num(i_part, "I")? };
    if n == 0 || i >= n {
        return Err(bad(&format!("shard index {i} is not in 0..{n}")));
    }
    Ok((i, n))
}

/// This task's index from SLURM (minus SLURM_ARRAY_TASK_MIN) or a Kubernetes indexed job.
fn auto_shard_index(
    env: &dyn Fn(&str) -> Option<String>,
    bad: &dyn Fn(&str) -> Error,
    num: &dyn Fn(&str, &str) -> Result<usize>,
) -> Result<usize> {
    if let Some(id) = env("SLURM_ARRAY_TASK_ID") {
        let min = env("SLURM_ARRAY_TASK_MIN").map(|m| num(&m, "SLURM_ARRAY_TASK_MIN")).transpose()?.unwrap_or(0);
        return num(&id, "SLURM_ARRAY_TASK_ID")?
            .checked_sub(min)
            .ok_or_else(|| bad("SLURM_ARRAY_TASK_ID is below SLURM_ARRAY_TASK_MIN"));
    }
    match env("JOB_COMPLETION_INDEX").or_else(|| env("FLUX_SHARD_INDEX")) {
        Some(id) => num(&id, "JOB_COMPLETION_INDEX"),
        None => Err(bad("auto: none of SLURM_ARRAY_TASK_ID, JOB_COMPLETION_INDEX, FLUX_SHARD_INDEX is set")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_specs() {
        let none = |_: &str| None;
        assert_eq!(parse_shard("1/4", &none).unwrap(), (1, 4));
        assert!(parse_shard("4/4", &none).is_err());
        assert!(parse_shard("x/4", &none).is_err());
        let slurm = |k: &str| match k {
            "SLURM_ARRAY_TASK_ID" => Some("7".to_string()),
            "SLURM_ARRAY_TASK_MIN" => Some("5".to_string()),
            "SLURM_ARRAY_TASK_COUNT" => Some("3".to_string()),
            _ => None,
        };
        assert_eq!(parse_shard("auto", &slurm).unwrap(), (2, 3));
        let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "1".to_string());
        assert_eq!(parse_shard("auto/2", &k8s).unwrap(), (1, 2));
        assert!(parse_shard("auto", &k8s).is_err()); // no count
    }

    #[test]
    fn templates() {
        let vars = [("stem", "cat".to_string()), ("seed", "7".to_string())];
        assert_eq!(render("{stem}-{seed}", &vars).unwrap(), "cat-7.png");
        assert_eq!(render("x/{stem}.png", &vars).unwrap(), "x/cat.png");
        assert!(render("{stem}-{nope}", &vars).is_err());
        assert!(render("{stem", &vars).is_err());
    }
}
