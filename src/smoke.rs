//! `flux-img2img smoke`: proves an installation works on this machine. Runs the tiny pipeline embedded in the
//! binary (assets/smoke, made by scripts/make_smoke.py with diffusers) on the chosen device and dtype (and kernel
//! selection, `--kernels`), twice (the first run's extra time is start-up: CUDA context, kernel JIT from PTX,
//! cuBLAS), and compares the image with diffusers' own for that precision. Takes the device, dtype and kernels,
//! gives a report (text or JSON on stdout) and an exit code: 0 pass, 1 mismatch, 2 cannot run.

use crate::engine::{Mode, Request, Session, Silent};
use crate::error::{Error, Result};
use crate::image_io;
use crate::kernels::Kernels;
use crate::rng::RngSettings;
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

macro_rules! embedded {
    ($($path:literal),* $(,)?) => {
        &[$(($path, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/smoke/", $path)) as &[u8])),*]
    };
}

/// The embedded pipeline, its input, diffusers' outputs and the run's parameters.
const FILES: &[(&str, &[u8])] = embedded!(
    "scheduler/scheduler_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "input.png",
    "expected-f32.png",
    "expected-bf16.png",
    "case.json",
);

/// PSNR the f32 run must reach against diffusers' f32 image: the project's parity bar (measured on CPU: see the
/// README). A wrong prompt or seed moves the reference below 25 dB (case.json's sensitivity record).
pub const F32_MIN_DB: f64 = 45.0;
/// PSNR a bf16/f16 run must reach against diffusers' bf16 image: reduced precision differs in the last bits of
/// every layer (diffusers' own bf16 image is 32 dB from its f32 one) but stays far above a broken run.
pub const REDUCED_MIN_DB: f64 = 30.0;

#[derive(Deserialize)]
struct Case {
    prompt: String,
    width: u32,
    height: u32,
    strength: f64,
    steps: usize,
    guidance: f64,
    seed: u64,
    max_sequence_length: usize,
}

/// What the smoke test found.
#[derive(Debug, Serialize)]
pub struct SmokeReport {
    pub device: String,
    pub device_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    pub dtype: String,
    /// `--kernels`: which implementation ran the hot operations.
    pub kernels: Kernels,
    pub reference: String,
    pub psnr_db: f64,
    pub threshold_db: f64,
    pub passed: bool,
    /// Seconds of the first run (start-up included), the second, and their difference.
    pub first_run_s: f64,
    pub second_run_s: f64,
    pub startup_s: f64,
    pub tool: String,
}

/// Writes the embedded files into `dir`.
fn extract(dir: &Path) -> Result<()> {
    for (name, bytes) in FILES {
        let path = dir.join(name);
        let parent = path.parent().expect("embedded paths have a folder");
        std::fs::create_dir_all(parent).map_err(|e| Error::output_from(parent, "cannot create", e))?;
        std::fs::write(&path, bytes).map_err(|e| Error::output_from(&path, "cannot write", e))?;
    }
    Ok(())
}

fn request(dir: &Path, case: &Case, (device, dtype, kernels): (&Device, DType, Kernels), output: &str) -> Request {
    Request {
        references: Vec::new(),
        sd: Default::default(),
        control: None,
        controlnets: Vec::new(),
        redux: Vec::new(),
        redux_model: None,
        depth_model: None,
        attention_chunk: None,
        vae_band: None,
        cache: None,
        kernels,
        model: dir.to_path_buf(),
        mode: Mode::Img2Img { image: dir.join("input.png"), strength: case.strength },
        prompt: case.prompt.clone(),
        true_cfg: None,
        steps: Some(case.steps),
        guidance: Some(case.guidance),
        seed: Some(case.seed),
        rng: RngSettings::default(),
        width: Some(case.width),
        height: Some(case.height),
        max_sequence_length: case.max_sequence_length,
        device: device.clone(),
        dtype,
        output: dir.join(output),
        resize: Default::default(),
        max_megapixels: None,
        keep_size: false,
        overrides: Default::default(),
        quantize: None,
        loras: Vec::new(),
        lora_scale: 1.0,
    }
}

/// Runs the embedded edit twice on `device` in `dtype` with `kernels` and scores the second image.
pub fn run(device: &Device, dtype: DType, kernels: Kernels) -> Result<SmokeReport> {
    kernels.check(device).map_err(Error::Usage)?;
    let dir = tempfile::Builder::new()
        .prefix("flux-img2img-smoke-")
        .tempdir()
        .map_err(|e| Error::output_from(std::env::temp_dir(), "cannot create a temporary folder", e))?;
    extract(dir.path())?;
    let case: Case = crate::config::read_json(&dir.path().join("case.json"))?;
    let t0 = Instant::now();
    let mut session = Session::open(dir.path(), &Default::default(), device, dtype, Arc::new(Silent))?;
    session.run(&request(dir.path(), &case, (device, dtype, kernels), "first.png"))?;
    let first = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut again = Session::open(dir.path(), &Default::default(), device, dtype, Arc::new(Silent))?;
    let out = again.run(&request(dir.path(), &case, (device, dtype, kernels), "second.png"))?.output;
    let second = t1.elapsed().as_secs_f64();
    let (reference, threshold_db) = match dtype {
        DType::F32 => ("expected-f32.png", F32_MIN_DB),
        // f16 keeps 10 mantissa bits: its image is closer to f32's than to bf16's (7 bits).
        DType::F16 => ("expected-f32.png", REDUCED_MIN_DB),
        _ => ("expected-bf16.png", REDUCED_MIN_DB),
    };
    let psnr_db = image_io::psnr(&image_io::load_rgb(&out)?, &image_io::load_rgb(&dir.path().join(reference))?);
    let info = device_info(device);
    Ok(SmokeReport {
        device: if device.is_cpu() { "cpu".into() } else { "cuda".into() },
        device_name: info.0,
        driver: info.1,
        dtype: format!("{dtype:?}").to_lowercase(),
        kernels,
        reference: format!("diffusers 0.42.1 FluxImg2ImgPipeline, {reference}"),
        psnr_db,
        threshold_db,
        passed: psnr_db >= threshold_db,
        first_run_s: first,
        second_run_s: second,
        startup_s: (first - second).max(0.0),
        tool: concat!("flux-img2img ", env!("CARGO_PKG_VERSION")).into(),
    })
}

/// The device's name and, on CUDA, driver and compute capability.
fn device_info(device: &Device) -> (String, Option<String>) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        return cuda_info(d);
    }
    let _ = device;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|n| n.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    (format!("{cpu} ({} threads)", rayon::current_num_threads()), None)
}

#[cfg(feature = "cuda")]
fn cuda_info(d: &candle_core::CudaDevice) -> (String, Option<String>) {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let ctx = d.cuda_stream().context().clone();
    let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
    let cc = ctx.compute_capability().map(|(a, b)| format!(", sm_{a}{b}")).unwrap_or_default();
    let mem = ctx.total_mem().map(|m| format!(", {} MiB", m >> 20)).unwrap_or_default();
    let mut v: std::ffi::c_int = 0;
    // SAFETY: cuDriverGetVersion only writes the version into the integer it is given.
    let ok = unsafe { sys::cuDriverGetVersion(&mut v) } == sys::CUresult::CUDA_SUCCESS;
    let driver = ok.then(|| format!("CUDA driver API {}.{}", v / 1000, (v % 1000) / 10));
    (format!("{name}{cc}{mem}"), driver)
}

impl SmokeReport {
    /// The human-readable report.
    pub fn text(&self) -> String {
        format!(
            "device:   {} ({}){}\ndtype:    {}\nkernels:  {}\ntimings:  first run {:.2}s, second {:.2}s, start-up (context, kernel JIT, cuBLAS) {:.2}s\n\
             result:   {:.1} dB against {} (threshold {} dB)\nverdict:  {}",
            self.device,
            self.device_name,
            self.driver.as_ref().map(|d| format!(", {d}")).unwrap_or_default(),
            self.dtype,
            self.kernels,
            self.first_run_s,
            self.second_run_s,
            self.startup_s,
            self.psnr_db,
            self.reference,
            self.threshold_db,
            if self.passed { "PASS" } else { "MISMATCH" }
        )
    }
}

/// The `smoke` command: runs, prints the report (or why it could not run) and gives the exit code.
pub fn command(args: &crate::cli::SmokeArgs, ui: &crate::ui::Ui) -> u8 {
    let setup = crate::cli::parse_device(&args.device).and_then(|d| Ok((crate::cli::dtype_for(args.dtype, &d)?, d)));
    let result = setup.and_then(|(dtype, device)| {
        if !args.quiet {
            ui.alert(&format!("smoke: the embedded tiny pipeline on {}, {dtype:?}, twice", args.device));
        }
        run(&device, dtype, args.kernels.unwrap_or_default())
    });
    match result {
        Ok(r) => {
            crate::ui::stdout::line(
                &(if args.json { serde_json::to_string(&r).expect("a report serializes") } else { r.text() }),
            );
            if r.passed {
                0
            } else {
                1
            }
        }
        Err(e) => {
            ui.error(&e);
            if args.json {
                crate::ui::stdout::line(
                    &serde_json::json!({"passed": false, "cannot_run": true, "error": e.one_line()}).to_string(),
                );
            }
            2
        }
    }
}
