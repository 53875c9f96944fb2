//! Stable Diffusion against diffusers: the models on tests/fixtures/sd-vectors.safetensors (each UNet, text
//! encoder and VAE of the tiny SD 1.x, SD 2.x, SDXL and 9-channel inpainting pipelines on fixed inputs), and the
//! pipelines on tests/fixtures/cases-sd.json. Both are written by scripts/make_sd_fixtures.py.

use crate::common::*;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use flux_img2img::config::unet::UNetConfig;
use flux_img2img::config::{read_json, ClipConfig, VaeConfig};
use flux_img2img::models::clip::ClipText;
use flux_img2img::models::linear::Quantizer;
use flux_img2img::models::unet::{Added, UNet};
use flux_img2img::models::vae::AutoencoderKl;
use std::collections::HashMap;
use std::path::Path;

/// Worst |a − b| relative to the largest |b|.
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    diff / scale.max(1e-12)
}

fn weights(dir: &Path, file: &str) -> VarBuilder<'static> {
    unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join(file)], DType::F32, &Device::Cpu).unwrap() }
}

fn vectors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join("sd-vectors.safetensors"), &Device::Cpu).unwrap()
}

const PIPES: [&str; 4] = ["tiny-sd15", "tiny-sd2", "tiny-sdxl", "tiny-sd15-inpaint"];
/// f32 on both sides; what differs is the order of sums (GEMM blocking, softmax, group norm).
const MODEL_TOL: f64 = 1e-4;

#[test]
fn unets_match_diffusers() {
    let v = vectors();
    let mut worst = vec![];
    for name in PIPES {
        let dir = fixtures().join(name).join("unet");
        let cfg: UNetConfig = read_json(&dir.join("config.json")).unwrap();
        cfg.validate(&dir.join("config.json")).unwrap();
        let unet =
            UNet::new(&cfg, &Quantizer::default(), weights(&dir, "diffusion_pytorch_model.safetensors")).unwrap();
        let t = |k: &str| v[&format!("{name}.unet.{k}")].clone();
        let (text_embeds, time_ids);
        let added = if cfg.text_time() {
            (text_embeds, time_ids) = (t("text_embeds"), t("time_ids"));
            Some(Added { text_embeds: &text_embeds, time_ids: &time_ids })
        } else {
            None
        };
        let out = unet.forward(&t("sample"), &t("timestep"), &t("context"), added.as_ref()).unwrap();
        let e = rel_err(&out, &t("out"));
        worst.push(format!("{name}: {e:.2e}"));
        assert!(e < MODEL_TOL, "{name}: UNet output off by {e:.2e} (relative)");
    }
    eprintln!("UNet relative errors: {}", worst.join(", "));
}

#[test]
fn text_encoders_match_transformers() {
    let v = vectors();
    for name in ["tiny-sd15", "tiny-sd2", "tiny-sdxl"] {
        let ids = v[&format!("{name}.text.ids")].to_dtype(DType::U32).unwrap();
        for enc in ["text_encoder", "text_encoder_2"] {
            let dir = fixtures().join(name).join(enc);
            if !dir.is_dir() {
                continue;
            }
            let cfg: ClipConfig = read_json(&dir.join("config.json")).unwrap();
            let act = flux_img2img::config::Act::from_name(&cfg.hidden_act).unwrap();
            let clip = ClipText::new(&cfg, act, weights(&dir, "model.safetensors"), None).unwrap();
            let t = |k: &str| v[&format!("{name}.{enc}.{k}")].clone();
            let last = clip.final_norm(&clip.hidden(&ids, clip.depth()).unwrap()).unwrap();
            let pen = clip.hidden(&ids, clip.depth() - 1).unwrap();
            assert!(rel_err(&last, &t("last")) < MODEL_TOL, "{name}/{enc}: last hidden state");
            assert!(rel_err(&pen, &t("penultimate")) < MODEL_TOL, "{name}/{enc}: penultimate hidden state");
            if let Some(p) = clip.project(&clip.pool(&ids, &last).unwrap()).unwrap() {
                assert!(rel_err(&p, &t("text_embeds")) < MODEL_TOL, "{name}/{enc}: text_embeds");
            }
        }
    }
}

#[test]
fn vaes_match_diffusers() {
    let v = vectors();
    for name in ["tiny-sd15", "tiny-sd2", "tiny-sdxl"] {
        let dir = fixtures().join(name).join("vae");
        let cfg: VaeConfig = read_json(&dir.join("config.json")).unwrap();
        let vae =
            AutoencoderKl::new(&cfg, cfg.activation(), weights(&dir, "diffusion_pytorch_model.safetensors")).unwrap();
        let t = |k: &str| v[&format!("{name}.vae.{k}")].clone();
        let (mean, logvar) = vae.encode(&t("image")).unwrap();
        assert!(rel_err(&mean, &t("mean")) < MODEL_TOL, "{name}: posterior mean");
        assert!(rel_err(&logvar, &t("logvar")) < MODEL_TOL, "{name}: posterior logvar");
        let decoded = vae.decode(&t("mean")).unwrap();
        assert!(rel_err(&decoded, &t("decoded")) < MODEL_TOL, "{name}: decoded");
    }
}

/// Parity bar for every case, and for DDIM cases (DDIM and Euler outputs are only 52–57 dB apart on such
/// pipelines, so a DDIM case must be held closer than that to tell them apart).
const MIN_PSNR_DB: f64 = 45.0;
const MIN_PSNR_DDIM_DB: f64 = 60.0;
/// Another prompt, negative prompt, seed, scheduler or mask must move diffusers' own output below this.
const MAX_SENSITIVITY_DB: f64 = 30.0;

fn sd_cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(fixtures().join("cases-sd.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// Whether a case runs DDIM (named, or the checkpoint's own).
fn ddim(case: &serde_json::Value) -> bool {
    let own = std::fs::read_to_string(
        fixtures().join(case["model"].as_str().unwrap()).join("scheduler/scheduler_config.json"),
    )
    .unwrap()
    .contains("\"DDIMScheduler\"");
    case["scheduler"] == "ddim" || (case["scheduler"].is_null() && own)
}

/// The flags that reproduce one case.
fn sd_args(case: &serde_json::Value, prompt: &str, out: &Path) -> Vec<String> {
    let f = fixtures();
    let s = |k: &str| case[k].to_string().trim_matches('"').to_string();
    let mut a: Vec<String> =
        vec!["--model".into(), f.join(s("model")).to_string_lossy().into(), "--prompt".into(), prompt.into()];
    for (flag, key) in [
        ("--width", "width"),
        ("--height", "height"),
        ("--steps", "steps"),
        ("--seed", "seed"),
        ("--guidance", "guidance"),
        ("--strength", "strength"),
        ("--start-step", "start_step"),
        ("--negative-prompt", "negative_prompt"),
        ("--scheduler", "scheduler"),
        ("--clip-skip", "clip_skip"),
    ] {
        if !case[key].is_null() {
            a.extend([flag.to_string(), s(key)]);
        }
    }
    if let Some(image) = case["image"].as_str() {
        a.extend(["--image".into(), f.join("images").join(image).to_string_lossy().into()]);
    }
    if let Some(mask) = case["mask"].as_str() {
        a.extend(["--mask".into(), f.join("masks").join(mask).to_string_lossy().into()]);
    }
    a.extend(["--rng", "torch-cpu", "--dtype", "f32", "-q", "-o"].map(String::from));
    a.push(out.to_string_lossy().into());
    a
}

/// Every case of cases-sd.json against diffusers' output: SD 1.x with each scheduler, clip skip and a negative
/// prompt, img2img by --strength and by --start-step, both kinds of inpainting, SD 2.x v-prediction and SDXL.
#[test]
fn sd_pipelines_match_diffusers() {
    let prompt = {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixtures().join("cases-sd.json")).unwrap()).unwrap();
        v["prompt"].as_str().unwrap().to_string()
    };
    let bar = |case: &serde_json::Value| if ddim(case) { MIN_PSNR_DDIM_DB } else { MIN_PSNR_DB };
    crate::modes::run_cases_with("cases-sd.json", |c, out| sd_args(c, &prompt, out), |_| MAX_SENSITIVITY_DB, bar);
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Runs the binary on an SD fixture with `extra` flags and checks the failure contract: exit 2, one `error:`
/// line containing `needle`, no output file.
fn sd_fails(model: &str, extra: &[&str], needle: &str) {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out.png");
    let f = fixtures();
    let mut args =
        vec!["--model".into(), s(&f.join(model)), "--prompt".into(), "a cat".into(), "--steps".into(), "4".into()];
    args.extend(extra.iter().map(|a| a.replace("{img}", &s(&f.join("images/sd-photo-64x48.png")))));
    args.extend(["-o".into(), s(&out)]);
    let o = bin().args(&args).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit code for {extra:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "one error line: {err}");
    assert!(!out.exists(), "no output after a failure");
}

#[test]
fn sd_refuses_flux_flags_and_bad_steps() {
    let size = ["--width", "64", "--height", "48"];
    let with = |more: &[&'static str]| -> Vec<&'static str> { size.iter().chain(more).copied().collect() };
    sd_fails("tiny-sd15", &with(&["--true-cfg", "4", "--negative-prompt", "x"]), "--true-cfg 4 is for FLUX models");
    sd_fails("tiny-sd15", &["--image", "{img}", "--kontext"], "--kontext is for FLUX.1 Kontext models");
    sd_fails("tiny-sdxl", &with(&["--reference", "{img}"]), "--reference is for FLUX.2 models");
    sd_fails("tiny-sd15", &with(&["--scheduler", "heun"]), "invalid value 'heun' for '--scheduler");
    sd_fails("tiny-sd15", &["--image", "{img}", "--start-step", "4"], "--start-step 4 must be below --steps 4");
    sd_fails("tiny-sd15", &["--image", "{img}", "--start-step", "1", "--strength", "0.5"], "give one of them");
    sd_fails("tiny-sd15", &with(&["--start-step", "1"]), "--start-step 1 needs an input image");
    sd_fails("tiny-sd15", &["--image", "{img}", "--control", "{img}"], "need a FLUX.1 Control model");
    sd_fails("tiny-sd15-inpaint", &["--image", "{img}"], "inpainting UNet (9 input channels)");
    sd_fails("tiny-sd2", &with(&["--clip-skip", "2"]), "--clip-skip 2 is more than");
    // And the reverse: SD's flags on a FLUX model.
    sd_fails(
        "tiny-dev",
        &["--image", "{img}", "--scheduler", "ddim"],
        "--scheduler ddim is for Stable Diffusion models",
    );
}

/// The PNG's `parameters` text chunk.
fn parameters(png_file: &Path) -> String {
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png_file).unwrap()));
    let reader = dec.read_info().unwrap();
    let chunk = reader.info().utf8_text.iter().find(|t| t.keyword == "parameters").expect("parameters chunk");
    chunk.get_text().unwrap()
}

/// A1111's words in the PNG (sampler, CFG scale, clip skip counted from 1, the negative prompt on its own line),
/// and `--from-metadata` reproducing the image from them.
#[test]
fn sd_metadata_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let (first, again) = (t.path().join("first.png"), t.path().join("again.png"));
    let f = fixtures();
    let args = [
        "--model",
        &s(&f.join("tiny-sd15")),
        "--image",
        &s(&f.join("images/sd-photo-64x48.png")),
        "--prompt",
        "a cat",
        "--negative-prompt",
        "blurry",
        "--steps",
        "6",
        "--start-step",
        "2",
        "--scheduler",
        "dpmpp-2m-karras",
        "--clip-skip",
        "1",
        "--seed",
        "2",
        "-q",
        "-o",
        &s(&first),
    ];
    let o = bin().args(args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = parameters(&first);
    for words in
        ["a cat\nNegative prompt: blurry\n", "Sampler: DPM++ 2M Karras", "CFG scale: 7.5", "Clip skip: 2", "Steps: 6"]
    {
        assert!(p.contains(words), "{words:?} missing from {p:?}");
    }
    let o =
        bin().args(["--from-metadata", &s(&first), "-o", &s(&again), "-q", "--allow-metadata-paths"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let (a, b) = (image::open(&first).unwrap().to_rgb8(), image::open(&again).unwrap().to_rgb8());
    assert!(a == b, "the record's parameters give the same image");
    // Without the record's clip skip (or scheduler) the image differs: they were read back, not defaulted.
    let other = t.path().join("other.png");
    let o = bin()
        .args(["--from-metadata", &s(&first), "-o", &s(&other), "-q", "--allow-metadata-paths", "--scheduler", "ddim"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(psnr(&first, &other) < 40.0, "an explicit --scheduler wins over the record");
}

/// `--dry-run` plans an SD edit from the configs alone and gives a memory estimate.
#[test]
fn sd_dry_run_estimates_memory() {
    let f = fixtures();
    let o = bin()
        .args([
            "--model",
            &s(&f.join("tiny-sdxl")),
            "--prompt",
            "a cat",
            "--width",
            "64",
            "--height",
            "48",
            "--dry-run",
        ])
        .output()
        .unwrap();
    let err = format!("{}{}", String::from_utf8_lossy(&o.stdout), stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.contains("Euler (euler), CFG 5 (2 UNet passes per step, batched)"), "{err}");
    assert!(err.contains("50 of 50 steps"), "{err}");
    assert!(err.contains("memory: about"), "{err}");
}

/// Each tiny pipeline as one checkpoint in the original layout (UNet, VAE and text encoders under
/// model.diffusion_model., first_stage_model. and cond_stage_model.transformer. (SD 1.x) /
/// cond_stage_model.model. (SD 2.x, OpenCLIP) / conditioner.embedders.0.transformer. and .1.model. (SDXL);
/// names checked against diffusers' single-file tables by the fixture script): every tensor is read from it
/// through the tables (the file has no diffusers names, so a missing row fails the load), and the image is
/// byte-identical to the diffusers folder's and within the bar of diffusers' reference for the case (measured:
/// SD 1.x and SDXL bit-identical, SD 2.x 83.4 dB; sensitivity: q and v exchanged in the OpenCLIP split, 11.7 dB).
#[test]
fn sd_single_file_checkpoints_load_to_the_same_image() {
    let t = tempfile::tempdir().unwrap();
    let f = fixtures();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(f.join("cases-sd.json")).unwrap()).unwrap();
    for (file, name) in [
        ("tiny-sd15-original.safetensors", "sd15-t2i-default"),
        ("tiny-sd2-original.safetensors", "sd2-t2i-vpred-ddim"),
        ("tiny-sdxl-original.safetensors", "sdxl-t2i-euler"),
    ] {
        let case = sd_cases().into_iter().find(|c| c["name"] == name).unwrap();
        let (folder, single) = (t.path().join(format!("{name}-folder.png")), t.path().join(format!("{name}.png")));
        let o = bin().args(sd_args(&case, v["prompt"].as_str().unwrap(), &folder)).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let mut args = sd_args(&case, v["prompt"].as_str().unwrap(), &single);
        args.extend(["--transformer".into(), s(&f.join(file))]);
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{file}: {}", stderr(&o));
        let db = psnr(&single, &f.join(case["expected"].as_str().unwrap()));
        eprintln!("{file}: {db:.2} dB against diffusers' {name}");
        assert!(db >= MIN_PSNR_DB, "{file}: {db:.1} dB");
        assert!(
            std::fs::read(&single).unwrap() == std::fs::read(&folder).unwrap(),
            "{file}: differs from the folder's"
        );
    }
}

/// A single file of the other family than --model's pipeline is one line that says which to give.
#[test]
fn sd_single_file_of_the_other_family_is_one_line() {
    let f = fixtures();
    let size = ["--width", "64", "--height", "48"];
    let xl = s(&f.join("tiny-sdxl-original.safetensors"));
    sd_fails("tiny-sd15", &[&size[..], &["--transformer", &xl]].concat(), "an SDXL single file, but --model is");
    let sd2 = s(&f.join("tiny-sd2-original.safetensors"));
    sd_fails("tiny-sdxl", &[&size[..], &["--transformer", &sd2]].concat(), "give --model an SD 1.x/2.x pipeline");
}

#[test]
fn sd_pickles_and_bare_checkpoints_are_one_line_errors() {
    let t = tempfile::tempdir().unwrap();
    let ckpt = t.path().join("model.ckpt");
    std::fs::write(&ckpt, b"not read").unwrap();
    let size = ["--width", "64", "--height", "48"];
    let c = s(&ckpt);
    sd_fails("tiny-sd15", &[&size[..], &["--transformer", &c]].concat(), ".ckpt files are Python pickles");
    let single = s(&fixtures().join("tiny-sd15-original.safetensors"));
    let o = bin()
        .args([&["--model", &single, "--prompt", "x", "-o", &s(&t.path().join("o.png"))], &size[..]].concat())
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("single-file checkpoint: give --model the pipeline it belongs to"), "{err}");
}

/// `--quantize` on UNets: the spatial transformers' matrices (every row width of the tiny UNets that is whole
/// 32-blocks) are quantized after any LoRA merge, convolutions stay dense. Measured against diffusers' dense
/// reference for three cases (SD 1.x, SDXL, SD 2.x v-prediction with DDIM): q8_0 51.0 / 48.2 / 44.6 dB, q4_0 32.0 /
/// 30.7 / 27.9 dB (q4_k falls back to q4_0 on rows this narrow and gives the same). The floors sit ~4 dB under the
/// worst of each; sensitivity: q4_0 must land at least 8 dB below q8_0 (it is 12.5–18.9 dB below), so a
/// `--quantize` that did nothing (both at the dense 81.8+ dB) fails. The dry-run estimate shrinks with the format.
#[test]
fn sd_quantized_unets_keep_a_measured_floor() {
    let prompt = "a photo of a cat sitting on a red sofa";
    let dir = tempfile::tempdir().unwrap();
    let mut report = vec![];
    for name in ["sd15-t2i-default", "sdxl-t2i-euler", "sd2-t2i-vpred-ddim"] {
        let case = sd_cases().into_iter().find(|c| c["name"] == name).unwrap();
        let expected = fixtures().join(case["expected"].as_str().unwrap());
        let mut dbs = vec![];
        for (q, floor) in [("q8_0", 40.0), ("q4_0", 23.5)] {
            let out = dir.path().join(format!("{name}-{q}.png"));
            let mut args: Vec<String> = sd_args(&case, prompt, &out).into_iter().filter(|a| a != "-q").collect();
            args.extend(["--quantize".into(), q.into()]);
            let o = bin().args(&args).output().unwrap();
            let err = stderr(&o);
            assert_eq!(o.status.code(), Some(0), "{name} {q}: {err}");
            let n: usize = err
                .split("quantized ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{name} {q}: no quantization note in {err}"));
            assert!(n > 0 && err.contains(&format!("UNet matrices to {q}")), "{name} {q}: {err}");
            let db = psnr(&out, &expected);
            report.push(format!("{name} {q}: {db:.1} dB ({n} matrices)"));
            assert!(db >= floor, "{name} --quantize {q}: {db:.2} dB < {floor} dB");
            dbs.push(db);
        }
        assert!(dbs[0] - dbs[1] >= 8.0, "{name}: q4_0 ({:.1} dB) must be well below q8_0 ({:.1} dB)", dbs[1], dbs[0]);
    }
    // A LoRA is merged before quantizing: cases-sd-lora.json's PEFT case at q8_0 measured 45.4 dB (87.8 dense);
    // without the LoRA diffusers' image is 13.2 dB away.
    let f = fixtures();
    let out = dir.path().join("lora-q8.png");
    let lora = format!("{}:0.8", s(&f.join("loras/sd15-peft.safetensors")));
    let mut args = vec!["--model".to_string(), s(&f.join("tiny-sd15")), "--lora".into(), lora, "--prompt".into()];
    args.push(prompt.into());
    args.extend(
        ["--steps", "5", "--width", "48", "--height", "64", "--seed", "41", "--guidance", "7.5"].map(String::from),
    );
    args.extend(
        ["--scheduler", "euler", "--rng", "torch-cpu", "--dtype", "f32", "--quantize", "q8_0", "-o"].map(String::from),
    );
    args.push(s(&out));
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let db = psnr(&out, &f.join("expected/sd-lora-sd15-lora-peft.png"));
    report.push(format!("sd15 PEFT LoRA q8_0: {db:.1} dB"));
    assert!(db >= 40.0, "LoRA on a q8_0 UNet: {db:.2} dB < 40 dB");
    eprintln!("quantized UNets: {}", report.join(", "));
    let peak = |q: Option<&str>| -> u64 {
        let f = fixtures();
        let mut args = vec!["--model".into(), s(&f.join("tiny-sdxl")), "--prompt".into(), "a cat".into()];
        args.extend(["--width", "64", "--height", "48", "--dry-run", "--json"].map(String::from));
        if let Some(q) = q {
            args.extend(["--quantize".into(), q.into()]);
        }
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["memory_estimate"]["weights"]["transformer"].as_u64().unwrap()
    };
    let (dense, q8, q4) = (peak(None), peak(Some("q8_0")), peak(Some("q4_0")));
    assert!(dense > q8 && q8 > q4, "UNet bytes: dense {dense}, q8_0 {q8}, q4_0 {q4}");
}
