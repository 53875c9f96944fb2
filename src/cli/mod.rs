//! Command line: clap flags (raw values) → a validated [`Request`]. Range checks that need no file live here;
//! checks that need the model's configs (size multiples, steps left by strength) happen in `pipeline::plan`.

use crate::error::{Error, Result};
use crate::pipeline::Request;
use crate::rng::RngKind;
use candle_core::{DType, Device};
use clap::Parser;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Defaults: steps and guidance follow the model: guidance-distilled (dev-like) transformers run 28 steps at guidance
3.5; schnell-like ones (no guidance embedding) run 4 steps without guidance. The output keeps the input's size,
floored to a multiple of 16 (for FLUX.1's VAE; 2 x the VAE's downscale in general). With --width or --height alone, the other side follows the input's aspect ratio;
with both and another aspect, the input is centre-cropped to that aspect, then resized (Lanczos).

Strength: the run starts at step int(steps - steps*strength) of the schedule, exactly as diffusers does, so
`--steps 28 --strength 0.6` runs 17 steps. The plan printed on stderr shows what will run.

Output: stdout prints the path of the written PNG; progress and the plan go to stderr. Exit codes: 0 success,
2 bad input or failure (nothing written).

Example:
  flux-img2img --model ./FLUX.1-schnell --image cat.jpg --prompt \"a cat, oil painting\" --strength 0.8 -o cat-oil.png";

/// Edit an image with FLUX.1 (dev or schnell) by SDEdit, matching diffusers' FluxImg2ImgPipeline.
#[derive(Debug, Parser)]
#[command(name = "flux-img2img", version, about, after_help = AFTER_HELP, allow_negative_numbers = true)]
pub struct Args {
    /// FLUX.1 pipeline folder in diffusers layout (model_index.json, transformer/, vae/, text_encoder/, ...).
    #[arg(long, env = "FLUX_MODEL", value_name = "DIR")]
    pub model: PathBuf,
    /// Input image (PNG, JPEG, WebP, BMP, TIFF, GIF).
    #[arg(long, short = 'i', value_name = "PATH")]
    pub image: PathBuf,
    /// What the edited image should show.
    #[arg(long, short = 'p')]
    pub prompt: String,
    /// How much to change: 0 keeps the input, 1 ignores it. Range [0, 1].
    #[arg(long, default_value_t = 0.6)]
    pub strength: f64,
    /// Scheduler steps before strength is applied [default: 28 dev, 4 schnell].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance embedded in dev-like models [default: 3.5]; schnell ignores it.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Random seed [default: random, printed]. torch uses its low 32 bits.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Noise generator to reproduce.
    #[arg(long, value_enum, default_value_t = RngKind::TorchCpu)]
    pub rng: RngKind,
    /// Output width in pixels, a multiple of 16 [default: from the input].
    #[arg(long)]
    pub width: Option<u32>,
    /// Output height in pixels, a multiple of 16 [default: from the input].
    #[arg(long)]
    pub height: Option<u32>,
    /// T5 prompt length in tokens (1..=512), as diffusers' max_sequence_length.
    #[arg(long, default_value_t = 512)]
    pub max_sequence_length: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FLUX_DEVICE")]
    pub device: String,
    /// Compute precision [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Output PNG [default: <input stem>-edited.png beside the input].
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// No plan or progress on stderr (warnings and errors still print).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

/// `cpu`, `cuda`, `cuda:N` → a candle device, with a clear message when this build or machine has no CUDA.
pub fn parse_device(s: &str) -> Result<Device> {
    let s = s.trim().to_ascii_lowercase();
    if s == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match s.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| Error::Usage(format!("--device {s}: expected cpu, cuda or cuda:N")))?,
        None => return Err(Error::Usage(format!("--device {s}: expected cpu, cuda or cuda:N"))),
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(Error::Usage(format!(
            "--device {s}: this binary was built without CUDA; rebuild with `cargo build --release --features cuda` \
             or use --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| Error::Usage(format!("--device {s}: no usable CUDA GPU ({e})")))
}

impl Args {
    /// Checks the flags that need no file and builds the request.
    pub fn into_request(self) -> Result<Request> {
        if !(0.0..=1.0).contains(&self.strength) || self.strength.is_nan() {
            return Err(Error::Usage(format!("--strength {} is outside [0, 1]", self.strength)));
        }
        if self.steps == Some(0) {
            return Err(Error::Usage("--steps 0: at least one step is needed".into()));
        }
        if self.max_sequence_length == 0 || self.max_sequence_length > 512 {
            return Err(Error::Usage(format!(
                "--max-sequence-length {} is outside 1..=512 (FLUX's T5 limit)",
                self.max_sequence_length
            )));
        }
        if let Some(g) = self.guidance {
            if !g.is_finite() {
                return Err(Error::Usage(format!("--guidance {g} is not a number")));
            }
        }
        let device = parse_device(&self.device)?;
        let dtype = match self.dtype {
            Some(DTypeArg::F32) => DType::F32,
            Some(DTypeArg::Bf16) => DType::BF16,
            Some(DTypeArg::F16) => DType::F16,
            None if device.is_cpu() => DType::F32,
            None => DType::BF16,
        };
        let output = match self.output {
            Some(o) => o,
            None => {
                let stem = self.image.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or("image".into());
                self.image.with_file_name(format!("{stem}-edited.png"))
            }
        };
        Ok(Request {
            model: self.model,
            image: self.image,
            prompt: self.prompt,
            strength: self.strength,
            steps: self.steps,
            guidance: self.guidance,
            seed: self.seed,
            rng: self.rng,
            width: self.width,
            height: self.height,
            max_sequence_length: self.max_sequence_length,
            device,
            dtype,
            output,
            quiet: self.quiet,
        })
    }
}
