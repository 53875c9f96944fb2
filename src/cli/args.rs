//! The flags, as clap parses them: raw values and help texts only. `expand` turns them into a batch; checks
//! that need the model's configs (size multiples, steps left by strength) happen in `engine::plan`.

use super::values;
use crate::engine::request::ReferenceSize;
use crate::image_io::ResizeMode;
use crate::kernels::Kernels;
use crate::models::linear::Quant;
use crate::rng::{CpuNoise, CudaGeometry, RngKind};
use crate::schedulers::SchedulerKind;
use clap::Parser;
use std::path::PathBuf;

const AFTER_HELP: &str = "\
Defaults: steps and guidance follow the model: guidance-distilled (dev-like) transformers run 28 steps at guidance
3.5; schnell-like ones (no guidance embedding) run 4 steps without guidance. The output keeps the input's size,
floored to a multiple of 16 (for FLUX.1's VAE; 2 x the VAE's downscale in general). With --width or --height alone, the other side follows the input's aspect ratio;
with both and another aspect, the input is centre-cropped to that aspect, then resized (Lanczos).

Strength: the run starts at step int(steps - steps*strength) of the schedule, exactly as diffusers does, so
`--steps 28 --strength 0.6` runs 17 steps. The plan printed on stderr shows what will run.

Batches: --image takes several files, folders or globs, or --manifest gives one item per row; each model is
loaded once. Lists in --strength and --seed, and --num-images, render every combination. One base seed S gives
item k (in the order inputs x strengths x seeds) the seed S + k, so a batch is reproducible and --shard I/N
splits it without changing any item's seed.

Output: stdout prints the path of each written PNG (or one JSON object per item with --json); the plan and
progress go to stderr. Exit codes: 0 all items written, 1 some items failed (the others are written),
2 bad usage or a fatal error (nothing written). A batch of one item that fails exits 2.

Example:
  flux-img2img --model ./FLUX.1-schnell --image cat.jpg --prompt \"a cat, oil painting\" --strength 0.8 -o cat-oil.png";

/// Edit images with FLUX.1 (dev, schnell, Kontext, Fill) and FLUX.2 [klein]: SDEdit, inpainting, outpainting, instruction and
/// reference editing, text-to-image, true CFG and LoRAs, matching diffusers' pipelines.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "flux-img2img",
    version,
    about,
    after_help = AFTER_HELP,
    allow_negative_numbers = true,
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The pipeline: a local folder in diffusers layout, a Hub repo id (org/name), or an alias: dev, schnell,
    /// kontext, fill (FLUX.1), klein-4b, klein-9b, klein-base-4b, klein-base-9b (FLUX.2), sd14, sd15, sd21 (Stable
    /// Diffusion 1.x/2.x), sdxl (SDXL base). Also read from FLUX_MODEL or MODEL_PATH.
    #[arg(long, env = "FLUX_MODEL", value_name = "DIR|REPO")]
    pub model: Option<PathBuf>,
    /// Hub revision (branch, tag or commit) for a repo --model.
    #[arg(long)]
    pub revision: Option<String>,
    /// Transformer weights replacing the model folder's: diffusers or original Black Forest Labs names
    /// (flux1-dev.safetensors, ComfyUI's model.diffusion_model. prefix), or GGUF (FLUX.1-dev-Q8_0.gguf); dev or
    /// schnell is read from the tensors.
    #[arg(long, value_name = "FILE")]
    pub transformer: Option<PathBuf>,
    /// VAE weights replacing the folder's: diffusers names or Black Forest Labs' ae.safetensors.
    #[arg(long, value_name = "FILE")]
    pub vae: Option<PathBuf>,
    /// CLIP text encoder weights replacing the folder's (e.g. clip_l.safetensors).
    #[arg(long, value_name = "FILE")]
    pub text_encoder: Option<PathBuf>,
    /// T5 encoder weights replacing the folder's (e.g. t5xxl_fp16.safetensors).
    #[arg(long, value_name = "FILE")]
    pub text_encoder_2: Option<PathBuf>,
    /// LoRA adapter FILE[:WEIGHT] (default weight 1), repeatable; local .safetensors or a Hub org/name[/file]. Formats:
    /// diffusers/PEFT, kohya/sd-scripts, ComfyUI, XLabs, BFL names.
    #[arg(long, value_name = "FILE[:W]")]
    pub lora: Vec<String>,
    /// Scale of all LoRAs together (diffusers' joint_attention_kwargs scale), or a list (0.5,0.8,1) rendering each.
    /// [default: 1]
    #[arg(long, value_name = "F[,F...]")]
    pub lora_scale: Option<String>,
    /// Quantize the transformer's block matrices and T5's matrices at load (less memory; small quality cost).
    #[arg(long, value_parser = values::named(Quant::NAMES))]
    pub quantize: Option<Quant>,
    /// Refuse edits whose expected peak memory (shown by --dry-run) is above this many GB, or above what the
    /// device has free (`auto`), before anything loads; the message names a flag that would fit.
    #[arg(long, value_name = "GB|auto", value_parser = parse_budget)]
    pub memory_budget: Option<crate::engine::memory::Budget>,
    /// Compute attention ROWS query rows at a time: the same result with score buffers of ROWS × sequence instead
    /// of sequence² (CUDA and f16; the CPU's f32 kernel is banded already). Not yet run on a GPU.
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u32).range(1..))]
    pub attention_chunk: Option<u32>,
    /// Run the VAE's convolutions ROWS output rows at a time and its group norms a few groups at a time: the same
    /// result with smaller buffers (CUDA and f16; the CPU's f32 kernels need none). Not yet run on a GPU.
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u32).range(1..))]
    pub vae_band: Option<u32>,
    /// Implementation of the hot operations (norms, RoPE, attention, GELU, residuals, biased linear layers, the
    /// VAE's convolutions): auto (the CPU's own f32 kernels on the CPU, the fused kernels on CUDA, candle's
    /// composition for f16 on the CPU), composed (candle's cast-free composition everywhere) or fused (the compiled
    /// Triton kernels and cuBLASLt bias epilogues on CUDA, the composition where none fits; refused on the CPU;
    /// verified on an H200). [default: auto]
    #[arg(long, value_parser = values::named(Kernels::NAMES))]
    pub kernels: Option<Kernels>,
    /// Skip transformer work between steps whose output barely changes, as diffusers' hooks: fbcache[:THRESHOLD]
    /// (First-Block Cache: when the first block's residual moved less than THRESHOLD, relative L1, from the last
    /// full step, reuse the other blocks' residual; default 0.05) or taylorseer[:ORDER,INTERVAL] (run every
    /// block's attention on 3 warm-up steps and then every INTERVAL steps, forecast it from finite differences of
    /// ORDER in between; default 1,5). Faster, slightly different images; the plan, --json and the PNG say what it
    /// skipped. `off` runs every block (overriding a --from-metadata record's cache). [default: off]
    #[arg(long, value_name = "KIND[:SETTING]|off", value_parser = parse_cache)]
    pub cache: Option<CacheArg>,
    /// Input image(s): files, folders (their images, sorted) or quoted globs ("photos/*.jpg").
    #[arg(long, short = 'i', value_name = "PATH", num_args = 1..)]
    pub image: Vec<String>,
    /// What the edited image should show.
    #[arg(long, short = 'p')]
    pub prompt: Option<String>,
    /// What the image should not show, through true classifier-free guidance (FLUX.1: needs --true-cfg; FLUX.2
    /// base models: with --guidance).
    #[arg(long, value_name = "TEXT")]
    pub negative_prompt: Option<String>,
    /// FLUX.2: a reference image for every edit (repeatable), after the input's own: "the person from image 1 in
    /// the outfit of image 2". Without --image, the first reference sets the size.
    #[arg(long, value_name = "FILE")]
    pub reference: Vec<PathBuf>,
    /// Inpainting mask: white (after grey conversion, ≥ 128) is repainted, black kept. A PNG of the input's size,
    /// `alpha` (the input's transparency: transparent = repaint) or `auto` ({stem}.mask.png beside each input).
    #[arg(long, value_name = "PNG|alpha|auto")]
    pub mask: Option<String>,
    /// Repaint the black part of the mask instead of the white.
    #[arg(long)]
    pub invert_mask: bool,
    /// Gaussian blur radius (px) applied to the mask first, as diffusers' mask_processor.blur; moves its edge.
    #[arg(long, value_name = "PX")]
    pub mask_blur: Option<f32>,
    /// Edit only the mask's bounding box grown by PAD pixels (at --width x --height) and paste the result over the
    /// input, as diffusers' padding_mask_crop: small masks on large images get full resolution.
    #[arg(long, value_name = "PAD")]
    pub mask_crop: Option<u32>,
    /// Put the result back over the input with a feathered seam inside the mask: pixels outside the mask stay the
    /// input's exactly (the output has the input's size).
    #[arg(long)]
    pub paste_back: bool,
    /// FLUX.1 Control (Canny-dev, Depth-dev) or a ControlNet: the control image (edges, a depth map); of the
    /// input's aspect, or of --width x --height for text-to-image. With several --controlnet, one each, in order.
    #[arg(long, value_name = "IMAGE")]
    pub control: Vec<PathBuf>,
    /// FLUX.1 Control or ControlNet: derive the control image from the input: canny (OpenCV's Canny,
    /// --canny-low/--canny-high) or depth (Depth Anything, --depth-model). With several --controlnet it is the
    /// last one's.
    #[arg(long, value_name = "canny|depth")]
    pub control_from: Option<String>,
    /// A FLUX.1 ControlNet steering a dev/schnell model (text-to-image, img2img, inpainting): a diffusers
    /// FluxControlNetModel folder or Hub repo id (InstantX, Union, Union Pro 2.0). Repeatable; their residuals add.
    #[arg(long, value_name = "DIR|REPO")]
    pub controlnet: Vec<PathBuf>,
    /// Union ControlNets: the control mode (canny, tile, depth, blur, pose, gray, lq); one for every ControlNet or
    /// one each (`none` for a ControlNet that is not a Union one).
    #[arg(long, value_name = "MODE")]
    pub control_mode: Vec<String>,
    /// How strongly a ControlNet steers (diffusers' controlnet_conditioning_scale) [default: 1]; one for every
    /// ControlNet or one each; a list (0.4,0.7,1) renders each, every ControlNet at that scale.
    #[arg(long, value_name = "F[,F...]")]
    pub control_scale: Vec<String>,
    /// The fraction of the steps that run at which a ControlNet starts acting [default: 0]; one or one each.
    #[arg(long, value_name = "F")]
    pub control_start: Vec<f64>,
    /// The fraction of the steps that run after which a ControlNet stops acting [default: 1]; one or one each.
    #[arg(long, value_name = "F")]
    pub control_end: Vec<f64>,
    /// --control-from depth: the Depth Anything model, a folder or Hub repo id in transformers' layout [default:
    /// depth-anything/Depth-Anything-V2-Large-hf].
    #[arg(long, value_name = "DIR|REPO")]
    pub depth_model: Option<PathBuf>,
    /// --control-from canny: the hysteresis thresholds on the L1 Sobel magnitude [default: 100 and 200].
    #[arg(long, value_name = "T")]
    pub canny_low: Option<f32>,
    #[arg(long, value_name = "T")]
    pub canny_high: Option<f32>,
    /// FLUX.1 Redux: an image (FILE[:WEIGHT], repeatable; weight 1 by default) whose SigLIP tokens join the
    /// prompt's, so the result takes on its content and style; with text-to-image, img2img, inpainting and Fill.
    #[arg(long, value_name = "FILE[:W]")]
    pub redux: Vec<String>,
    /// Where Redux's SigLIP encoder and embedder are: a folder or Hub id in FLUX.1-Redux-dev's layout [default:
    /// black-forest-labs/FLUX.1-Redux-dev].
    #[arg(long, value_name = "DIR|REPO")]
    pub redux_model: Option<PathBuf>,
    /// Outpaint: grow the canvas by L,T,R,B pixels (or one value for every side) and paint the new area; FLUX.1
    /// Fill (--model fill) is made for it, other models inpaint. The canvas grows right/bottom to the model's size
    /// multiple; the input's pixels come back unchanged beyond the feathered seam.
    #[arg(long, value_name = "L,T,R,B", conflicts_with = "outpaint_to")]
    pub outpaint: Option<String>,
    /// Outpaint to a WIDTHxHEIGHT canvas, the input placed by --align.
    #[arg(long, value_name = "WxH")]
    pub outpaint_to: Option<String>,
    /// Where the input sits on an --outpaint-to canvas: center, top, bottom, left, right, top-left, top-right,
    /// bottom-left, bottom-right [default: center].
    #[arg(long, value_name = "WHERE")]
    pub align: Option<String>,
    /// Outpaint: how far (px) the repainted seam reaches into the input, fading out; 0 keeps every input pixel
    /// [default: 8].
    #[arg(long, value_name = "PX")]
    pub outpaint_feather: Option<u32>,
    /// Edit by instruction with FLUX.1 Kontext: the input is a reference, not a starting point (automatic for Kontext
    /// checkpoints, e.g. --model kontext); --strength does not apply.
    #[arg(long)]
    pub kontext: bool,
    /// Kontext: the size the reference image is brought to: auto (Kontext's preferred ~1 MP resolution of the
    /// nearest aspect, as diffusers) or input (its own size floored to the grid; faster).
    #[arg(long, value_parser = values::named(ReferenceSize::NAMES))]
    pub reference_size: Option<ReferenceSize>,
    /// True CFG scale (> 1, e.g. 4): each step runs the transformer on the prompt and on the negative prompt (one
    /// batch of two) and moves away from the latter, as diffusers' true_cfg_scale.
    #[arg(long, value_name = "F")]
    pub true_cfg: Option<f64>,
    /// How much to change: 0 keeps the input, 1 ignores it. Range [0, 1]. A list (0.5,0.7,0.9) renders each.
    /// [default: 0.6]
    #[arg(long, value_name = "F[,F...]")]
    pub strength: Option<String>,
    /// Scheduler steps before strength is applied [default: 28 dev, 4 schnell].
    #[arg(long)]
    pub steps: Option<usize>,
    /// Guidance embedded in dev-like models [default: 3.5]; schnell ignores it.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Stable Diffusion: the sampler: pndm, ddim, lms, euler, euler-a, dpmpp-2m, dpmpp-2m-karras [default: the
    /// checkpoint's own].
    #[arg(long, value_parser = values::named(SchedulerKind::NAMES))]
    pub scheduler: Option<SchedulerKind>,
    /// Stable Diffusion: take the prompt's text states N CLIP layers before the last (diffusers' clip_skip;
    /// A1111's "Clip skip" is N + 1).
    #[arg(long, value_name = "N")]
    pub clip_skip: Option<usize>,
    /// Stable Diffusion img2img/inpainting: start at step N of the --steps schedule (noising the input to that
    /// step) instead of where --strength puts it; N < --steps.
    #[arg(long, value_name = "N")]
    pub start_step: Option<usize>,
    /// Seed, or a list (1,2,3) rendering each. One seed is a base: item k of the batch gets seed + k.
    /// [default: random, printed]
    #[arg(long, value_name = "N[,N...]")]
    pub seed: Option<String>,
    /// Images per input with consecutive seeds (seed + k).
    #[arg(long, value_name = "N")]
    pub num_images: Option<usize>,
    /// Noise generator to reproduce: torch-cpu (torch.Generator("cpu"), diffusers' CPU examples) or torch-cuda
    /// (torch.Generator("cuda"), its GPU examples), on any device.
    #[arg(long, value_parser = values::named(RngKind::NAMES))]
    pub rng: Option<RngKind>,
    /// GPU whose torch-cuda noise to reproduce: SMSxTHREADS (132x2048) or h100, h200, h100-pcie, a100, l40s, 4090,
    /// 3090, l4, a10. Matters for latents above SMs x threads elements (about 1.1 MP on an H100).
    /// [default: the CUDA device's, else 132x2048]
    #[arg(long, value_name = "GPU")]
    pub rng_gpu: Option<CudaGeometry>,
    /// How torch-cpu draws bf16/f16 noise, by the torch version that made the image: current (2.13 and later), 2.12,
    /// or legacy (2.11 and earlier).
    #[arg(long, value_parser = values::named(CpuNoise::NAMES))]
    pub torch_noise: Option<CpuNoise>,
    /// Output width in pixels, a multiple of 16 [default: from the input].
    #[arg(long)]
    pub width: Option<u32>,
    /// Output height in pixels, a multiple of 16 [default: from the input].
    #[arg(long)]
    pub height: Option<u32>,
    /// With both --width and --height and another aspect: crop (centre-crop, then resize), fit (whole input,
    /// largest size inside), pad (whole input on black bars) or stretch. [default: crop]
    #[arg(long, value_enum)]
    pub resize: Option<ResizeMode>,
    /// Scale the working size down (keeping the aspect) to at most this many megapixels.
    #[arg(long, value_name = "MP")]
    pub max_megapixels: Option<f64>,
    /// Give the result back at exactly the input's size (resized after decoding).
    #[arg(long)]
    pub keep_size: bool,
    /// T5 prompt length in tokens (1..=512), as diffusers' max_sequence_length. [default: 512]
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FLUX_DEVICE")]
    pub device: String,
    /// Compute precision [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Output PNG for a single edit [default: <input stem>-edited.png beside the input].
    #[arg(long, short = 'o', value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Folder for the outputs of a batch (created if missing).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Output file name template: {stem} {seed} {strength} {steps} {lora} {control} {index} [default: {stem},
    /// plus -{strength}, -{seed}, -l{lora} and -c{control} when those vary, .png].
    #[arg(long, value_name = "TEMPLATE")]
    pub name: Option<String>,
    /// CSV (with header) or JSON-lines file of items: image (empty: text-to-image), prompt, strength, seed, steps,
    /// guidance, output, mask, lora (FILE[:W] separated by ;), reference, cache. Missing fields take the flags'
    /// values; paths are relative to the manifest.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Also write a contact sheet of this run's images: a row per input, a column per strength/seed, labelled.
    #[arg(long, value_name = "PNG")]
    pub grid: Option<PathBuf>,
    /// Skip items whose output file already exists as a complete PNG (resume an interrupted batch); empty or
    /// truncated files are made again.
    #[arg(long)]
    pub skip_existing: bool,
    /// Let a manifest's output column write outside --output-dir (or the manifest's folder).
    #[arg(long)]
    pub allow_outside: bool,
    /// With --from-metadata: use the absolute input, mask, reference and LoRA paths the PNG's record names (by
    /// default only paths relative to the PNG's folder are taken from it).
    #[arg(long)]
    pub allow_metadata_paths: bool,
    /// Refuse damaged input images (a JPEG cut short, ...) instead of editing them with a warning.
    #[arg(long)]
    pub strict_images: bool,
    /// Seconds to wait for a URL input to connect, and then between received bytes. [default: 30]
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub download_timeout: Option<u64>,
    /// Run only shard I of N (0-based, items k with k mod N = I). `auto` reads I (and N) from
    /// SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_MIN/SLURM_ARRAY_TASK_COUNT or JOB_COMPLETION_INDEX.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Print what would run (size, shift, start sigma, steps) for each item; needs only the model's configs.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON object per item on stdout (instead of the output path).
    #[arg(long)]
    pub json: bool,
    /// Take prompt, strength, steps, guidance, seed, size, RNG and input from a PNG this tool wrote;
    /// flags given explicitly win.
    #[arg(long, value_name = "PNG")]
    pub from_metadata: Option<PathBuf>,
    /// Send the edit to a running `flux-img2img serve` at this URL (e.g. http://127.0.0.1:7860) instead of loading
    /// the model here; the result is written locally under the same rules. `--model` names one of the server's.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// With --server: the file holding the server's API key (sent as a bearer token).
    #[arg(long, value_name = "FILE", requires = "server")]
    pub api_key_file: Option<PathBuf>,
    /// No plan or progress on stderr (warnings and errors still print).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Errors with their whole chain of causes and any backtrace (also with RUST_BACKTRACE=1).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DTypeArg {
    F32,
    Bf16,
    F16,
}

/// Commands besides editing.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Check this installation: run the tiny pipeline embedded in the binary on a device and compare the image with
    /// diffusers' own (PSNR). Exit 0 pass, 1 mismatch, 2 cannot run (no CUDA in this build, no driver, out of memory).
    Smoke(SmokeArgs),
    /// Run a resident HTTP server that keeps models loaded: native job API, OpenAI and A1111 endpoints, a web page.
    Serve(Box<crate::server::ServeArgs>),
    /// The quantization cache (--quantize results kept for the next run): lists it, or `cache clear` empties it.
    Cache {
        /// `clear` removes the cache's own files (entries it wrote, and leftovers of interrupted writes); other
        /// files in the folder are never touched.
        #[arg(value_parser = ["list", "clear"], default_value = "list")]
        action: String,
        /// With `clear`: list what would be removed, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct SmokeArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FLUX_DEVICE")]
    pub device: String,
    /// Precision [default: f32 on CPU, bf16 on CUDA].
    #[arg(long, value_enum)]
    pub dtype: Option<DTypeArg>,
    /// Implementation of the hot operations, as for an edit: auto, composed or fused. [default: auto]
    #[arg(long, value_parser = values::named(Kernels::NAMES))]
    pub kernels: Option<Kernels>,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `--cache` through the library's parser.
/// `--cache`: a step cache, or `off` (none, even where a record names one).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheArg(pub Option<crate::engine::cache::CacheSpec>);

fn parse_cache(s: &str) -> Result<CacheArg, String> {
    parse_cache_choice(s).map(CacheArg)
}

/// A step cache's spelling, or `off`/`none` for none.
pub fn parse_cache_choice(s: &str) -> Result<Option<crate::engine::cache::CacheSpec>, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" => Ok(None),
        _ => s.parse().map(Some),
    }
}

/// `--memory-budget` through the library's parser.
pub fn parse_budget(s: &str) -> Result<crate::engine::memory::Budget, String> {
    crate::engine::memory::Budget::parse(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// `--help` stays current as aliases are added: `--model`'s text names every one.
    #[test]
    fn model_help_names_every_alias() {
        let cmd = Args::command();
        let model = cmd.get_arguments().find(|a| a.get_id() == "model").expect("--model exists");
        let help = model.get_help().map(|h| h.to_string()).unwrap_or_default();
        for (alias, _) in crate::source::hub::ALIASES {
            assert!(help.contains(alias), "--model help lacks the alias {alias}: {help}");
        }
    }
}
