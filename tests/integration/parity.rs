//! Parity with diffusers' FluxImg2ImgPipeline on every case of tests/fixtures/cases.json, with the CPU's own
//! kernels and with `--kernels composed` (candle's composition, what CUDA runs).
//!
//! Threshold: 45 dB PSNR on 8-bit RGB (the project's acceptance bar). Measured on the committed fixtures:
//! 78.7–∞ dB with the CPU kernels, 80.0–∞ composed (at most one 8-bit level off on a handful of pixels, from float
//! summation order in convolutions and matmuls). The fixture generator also records how far the reference moves
//! when the prompt, guidance or seed changes (12–22 dB); the test checks that stays far below the bar, so a broken
//! text encoder, guidance path or RNG could not pass.

use crate::common::*;
use serde_json::Value;

const MIN_PSNR_DB: f64 = 45.0;
/// A conditioning change must move the reference output at least this far below the parity bar.
const MAX_SENSITIVITY_DB: f64 = 30.0;

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join("cases.json")).expect("cases.json");
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn args_for(case: &Value, out: &str) -> Vec<String> {
    let f = fixtures();
    let s = |k: &str| case[k].to_string().trim_matches('"').to_string();
    let mut a = vec![
        "--model".into(),
        f.join(s("model")).to_string_lossy().to_string(),
        "--image".into(),
        f.join("images").join(s("image")).to_string_lossy().to_string(),
        "--prompt".into(),
        s("prompt"),
        "--width".into(),
        s("width"),
        "--height".into(),
        s("height"),
        "--strength".into(),
        s("strength"),
        "--steps".into(),
        s("steps"),
        "--seed".into(),
        s("seed"),
        "--max-sequence-length".into(),
        s("max_sequence_length"),
        "--rng".into(),
        "torch-cpu".into(),
        "--device".into(),
        "cpu".into(),
        "--dtype".into(),
        "f32".into(),
        "--output".into(),
        out.into(),
    ];
    if !case["guidance"].is_null() {
        a.push("--guidance".into());
        a.push(s("guidance"));
    }
    a
}

/// Every case of cases.json run with `extra` flags: each PSNR reported, every case under the bar listed.
fn check_every_case(extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = vec![];
    let mut report = vec![];
    let cases = cases();
    assert!(cases.len() >= 6, "fixture cases are missing");
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let out = dir.path().join(format!("{name}.png"));
        let o = bin().args(args_for(case, out.to_str().unwrap())).args(extra).output().unwrap();
        if !o.status.success() {
            failures.push(format!("{name}: exit {:?}: {}", o.status.code(), stderr(&o)));
            continue;
        }
        assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), out.to_str().unwrap(), "stdout carries the path only");
        let db = psnr(&out, &fixtures().join(case["expected"].as_str().unwrap()));
        report.push(format!("{name}: {db:.1} dB"));
        if db < MIN_PSNR_DB {
            failures.push(format!("{name}: {db:.2} dB < {MIN_PSNR_DB} dB"));
        }
    }
    eprintln!("parity {extra:?}: {}", report.join(", "));
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn matches_diffusers_on_every_fixture_case() {
    check_every_case(&[]);
}

/// candle's composition (what CUDA runs), forced on the CPU's f32 tensors: the same bar as the CPU's own kernels.
/// Measured 80.0–∞ dB (the CPU kernels: 78.7–∞). Sensitivity, measured by breaking the composition on purpose:
/// without the attention scale every case falls to 20.0–30.1 dB; RoPE on halves instead of FLUX's interleaved
/// pairs to 19.9–44.5 dB (the tiny dev transformer attends weakly to position at full strength).
#[test]
fn composed_kernels_match_diffusers_on_every_fixture_case() {
    check_every_case(&["--kernels", "composed"]);
}

#[test]
fn fixtures_are_sensitive_to_prompt_guidance_and_seed() {
    let mut failures = vec![];
    let mut saw_guidance = false;
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        for (what, db) in case["sensitivity_psnr_db"].as_object().unwrap() {
            saw_guidance |= what == "guidance";
            let db = db.as_f64().unwrap();
            if db > MAX_SENSITIVITY_DB {
                failures.push(format!("{name}: changing the {what} moves the reference only to {db:.1} dB"));
            }
        }
        let sat = case["saturated_fraction"].as_f64().unwrap();
        if sat > 0.5 {
            failures.push(format!("{name}: {:.0}% of pixels saturated; PSNR would be meaningless", sat * 100.0));
        }
    }
    assert!(saw_guidance, "no case records guidance sensitivity");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn seed_changes_the_output_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    let case = &cases()[0];
    let a = dir.path().join("a.png");
    let b = dir.path().join("b.png");
    let c = dir.path().join("c.png");
    let mut args_a = args_for(case, a.to_str().unwrap());
    let args_b = args_for(case, b.to_str().unwrap());
    assert!(bin().args(&args_a).status().unwrap().success());
    assert!(bin().args(&args_b).status().unwrap().success());
    assert_eq!(psnr(&a, &b), f64::INFINITY, "same seed, same image");
    let i = args_a.iter().position(|x| x == "--seed").unwrap();
    args_a[i + 1] = "1".into();
    let j = args_a.iter().position(|x| x == "--output").unwrap();
    args_a[j + 1] = c.to_string_lossy().to_string();
    assert!(bin().args(&args_a).status().unwrap().success());
    assert!(psnr(&a, &c) < MAX_SENSITIVITY_DB, "another seed must give another image");
}

#[test]
fn default_size_follows_the_input_and_seed_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let f = fixtures();
    // 100x60 input, tiny-dev's VAE needs multiples of 16: 96x48.
    let o = run(&[
        "--model",
        f.join("tiny-dev").to_str().unwrap(),
        "--image",
        f.join("images/wide-100x60.png").to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--strength",
        "0.5",
        "--max-sequence-length",
        "16",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (96, 48));
    let err = stderr(&o);
    assert!(err.contains("plan: 96x48 from 100x60"), "{err}");
    assert!(err.contains("seed "), "a random seed is reported: {err}");
    // Only --width: height follows the aspect ratio (64·60/100 = 38.4 → 32).
    let o = run(&[
        "--model",
        f.join("tiny-dev").to_str().unwrap(),
        "--image",
        f.join("images/wide-100x60.png").to_str().unwrap(),
        "--prompt",
        "a cat",
        "--steps",
        "2",
        "--max-sequence-length",
        "16",
        "--width",
        "64",
        "-q",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(&out).unwrap().to_rgb8().dimensions(), (64, 32));
}

#[test]
fn png_carries_generation_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("meta.png");
    let case = &cases()[0];
    assert!(bin().args(args_for(case, out.to_str().unwrap())).status().unwrap().success());
    let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).unwrap()));
    let reader = dec.read_info().unwrap();
    let texts: Vec<(String, String)> =
        reader.info().utf8_text.iter().map(|t| (t.keyword.clone(), t.get_text().unwrap())).collect();
    let params = &texts.iter().find(|(k, _)| k == "parameters").expect("parameters chunk").1;
    assert!(params.starts_with(case["prompt"].as_str().unwrap()), "{params}");
    assert!(params.contains("Seed: 42") && params.contains("Denoising strength: 0.75"), "{params}");
    let json: Value = serde_json::from_str(&texts.iter().find(|(k, _)| k == "flux-img2img").unwrap().1).unwrap();
    assert_eq!(json["steps_run"], 6);
    assert_eq!(json["t_start"], 2);
}

/// `--kernels` is part of the record (PNG chunk and --json) and `--from-metadata` restores it: the same pixels as
/// the composed run, which differ from the CPU kernels' (dev-low-strength: 82.3 and 83.8 dB from diffusers).
#[test]
fn kernel_selection_is_recorded_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let case = &cases().into_iter().find(|c| c["name"] == "dev-low-strength").unwrap();
    let path = |n: &str| dir.path().join(n).to_string_lossy().to_string();
    let json = |args: Vec<String>| -> Value {
        let o = bin().args(args).args(["--json", "-q"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let mut composed = args_for(case, &path("composed.png"));
    composed.extend(["--kernels".into(), "composed".into()]);
    assert_eq!(json(composed)["kernels"], "composed");
    assert_eq!(json(args_for(case, &path("auto.png")))["kernels"], "auto");
    let restored = json(vec![
        "--from-metadata".into(),
        path("composed.png"),
        "-o".into(),
        path("again.png"),
        "--allow-metadata-paths".into(),
    ]);
    assert_eq!(restored["kernels"], "composed");
    let p = |n: &str| dir.path().join(n);
    assert_eq!(psnr(&p("composed.png"), &p("again.png")), f64::INFINITY, "--from-metadata restores --kernels");
    assert!(psnr(&p("composed.png"), &p("auto.png")).is_finite(), "the selection changes the computation");
}

/// `--rng torch-cuda` against diffusers fed the noise an H100's `torch.Generator("cuda").manual_seed(7)` gave
/// (tests/fixtures/cases-cuda-rng.json; scripts/make_fixtures.py --only cuda-rng). The CPU generator with the
/// same seed moves the reference to ~22 dB, so only the CUDA generator's draws, in pipeline order, can pass.
#[test]
fn torch_cuda_generator_matches_diffusers_with_gpu_noise() {
    let text = std::fs::read_to_string(fixtures().join("cases-cuda-rng.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for case in v["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        assert!(case["sensitivity_psnr_db"]["rng"].as_f64().unwrap() < MAX_SENSITIVITY_DB);
        let out = dir.path().join(format!("{name}.png"));
        let mut args = args_for(case, out.to_str().unwrap());
        let at = args.iter().position(|a| a == "torch-cpu").unwrap();
        args[at] = "torch-cuda".into();
        args.extend(["--rng-gpu".into(), case["rng_gpu"].as_str().unwrap().into()]);
        let o = bin().args(&args).output().unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let db = psnr(&out, &fixtures().join(case["expected"].as_str().unwrap()));
        eprintln!("{name}: {db:.1} dB");
        assert!(db >= MIN_PSNR_DB, "{name}: {db:.2} dB");
        // The record carries the generator and its geometry, and --from-metadata restores them.
        let again = dir.path().join(format!("{name}-again.png"));
        let o = bin()
            .args([
                "--from-metadata",
                out.to_str().unwrap(),
                "-o",
                again.to_str().unwrap(),
                "-q",
                "--allow-metadata-paths",
            ])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(psnr(&out, &again), f64::INFINITY, "--from-metadata restores --rng torch-cuda");
    }
}
