//! Library use: one edit with explicit parameters.
//!   cargo run --release --example edit -- MODEL_DIR INPUT.png OUTPUT.png "a prompt"
use flux_img2img::rng::{RngKind, RngSettings};
use flux_img2img::{engine, Mode, Request};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    anyhow::ensure!(a.len() == 4, "usage: edit MODEL_DIR INPUT OUTPUT PROMPT");
    let req = Request {
        model: a[0].clone().into(),
        mode: Mode::Img2Img { image: a[1].clone().into(), strength: 0.75 },
        output: a[2].clone().into(),
        prompt: a[3].clone(),
        true_cfg: None,
        steps: None,
        guidance: None,
        seed: Some(42),
        rng: RngSettings { kind: RngKind::TorchCpu, ..Default::default() },
        width: None,
        height: None,
        max_sequence_length: 512,
        device: candle_core::Device::Cpu,
        dtype: candle_core::DType::F32,
        resize: flux_img2img::image_io::ResizeMode::Crop,
        max_megapixels: None,
        keep_size: false,
        overrides: Default::default(),
        quantize: None,
        loras: Vec::new(),
        lora_scale: 1.0,
        references: Vec::new(),
        control: None,
        controlnets: Vec::new(),
        depth_model: None,
        redux: Vec::new(),
        redux_model: None,
        sd: Default::default(),
        attention_chunk: None,
        vae_band: None,
        cache: None,
        kernels: Default::default(),
    };
    // Progress lines and bars on stderr, as the CLI draws them; `engine::Silent` shows nothing.
    let ui = Arc::new(flux_img2img::ui::Ui::new(false, false));
    let report = engine::run(&req, ui)?;
    println!(
        "{} ({} steps run, {:.1}s)",
        report.output.display(),
        report.plan.schedule.steps_to_run(),
        report.timings.total
    );
    Ok(())
}
