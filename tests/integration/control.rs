//! FLUX.1 Control against diffusers on tests/fixtures/cases-control.json (scripts/make_control_fixtures.py):
//! `FluxControlPipeline` (text-to-image), `FluxControlImg2ImgPipeline` with `--control-from canny` (the edges
//! made here, cv2.Canny there) and `FluxControlInpaintPipeline`; and our Canny against OpenCV's on
//! tests/fixtures/canny.json, pixel for pixel.
//!
//! Bar: 45 dB (measured 70.7–76.2 dB). Sensitivity: another control image, other Canny thresholds, the prompt,
//! the seed and the mask each move diffusers' own output to 10.9–32.2 dB (held under 35: the control image, which
//! steers but does not replace the prompt, is the weakest), so an edit that ignored any of them could not pass.

use crate::common::*;
use crate::modes::{case_args, mode_cases, run_cases};
use serde_json::Value;
use std::path::Path;

const MAX_SENSITIVITY_DB: f64 = 35.0;

fn control_args(case: &Value, out: &Path) -> Vec<String> {
    let mut a = case_args(case, out);
    if let Some(c) = case["control"].as_str() {
        a.extend(["--control".into(), fixtures().join("images").join(c).to_string_lossy().into()]);
    }
    if let Some(t) = case["canny"].as_array() {
        let t: Vec<String> = t.iter().map(|v| v.to_string()).collect();
        a.extend(["--control-from", "canny", "--canny-low", &t[0], "--canny-high", &t[1]].map(String::from));
    }
    a
}

#[test]
fn control_matches_diffusers() {
    run_cases("cases-control.json", control_args, |_| MAX_SENSITIVITY_DB);
}

#[test]
fn canny_matches_opencv() {
    let mut failures = Vec::new();
    for case in mode_cases("canny.json") {
        let f = fixtures();
        let img = image::open(f.join("images").join(case["image"].as_str().unwrap())).unwrap().to_rgb8();
        let (low, high) = (case["low"].as_f64().unwrap() as f32, case["high"].as_f64().unwrap() as f32);
        let ours = flux_img2img::image_io::canny::edges(&img, low, high);
        let want = image::open(f.join(case["expected"].as_str().unwrap())).unwrap().to_rgb8();
        let differ = ours.pixels().zip(want.pixels()).filter(|(a, b)| a != b).count();
        let edges = want.pixels().filter(|p| p.0[0] == 255).count();
        eprintln!("{}: {edges} edge pixels, {differ} differ", case["expected"]);
        if differ > 0 {
            failures.push(format!("{}: {differ} pixels differ", case["expected"]));
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn control_bad_input_is_one_line() {
    let f = fixtures();
    let s = |p: &str| f.join(p).to_string_lossy().into_owned();
    let (image, model) = (s("images/gradient-80x80.png"), s("tiny-control"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--model".into(), s("tiny-dev"), "--image".into(), image.clone(), "--control".into(), image.clone()],
            "need a FLUX.1 Control model",
        ),
        (vec!["--model".into(), model.clone(), "--image".into(), image.clone()], "this is a FLUX.1 Control model"),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--image".into(),
                image.clone(),
                "--control".into(),
                s("images/photo-96x64.png"),
            ],
            "another aspect than the 80x80",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--image".into(),
                image.clone(),
                "--control-from".into(),
                "depth".into(),
                "--depth-model".into(),
                s("images"),
            ],
            "--depth-model: no config.json",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--control-from".into(),
                "depth".into(),
                "--width".into(),
                "64".into(),
                "--height".into(),
                "64".into(),
            ],
            "--control-from depth needs an input image",
        ),
        (
            vec!["--model".into(), model.clone(), "--image".into(), image.clone(), "--depth-model".into(), s("x")],
            "--depth-model applies to --control-from depth",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--image".into(),
                image.clone(),
                "--control-from".into(),
                "depth".into(),
                "--canny-low".into(),
                "5".into(),
            ],
            "apply to --control-from canny, not depth",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--control-from".into(),
                "canny".into(),
                "--width".into(),
                "64".into(),
                "--height".into(),
                "64".into(),
            ],
            "needs an input image",
        ),
        (
            vec![
                "--model".into(),
                model.clone(),
                "--image".into(),
                image.clone(),
                "--control".into(),
                image.clone(),
                "--kontext".into(),
            ],
            "not kontext",
        ),
        (
            vec!["--model".into(), s("tiny-dev"), "--image".into(), image.clone(), "--canny-low".into(), "3".into()],
            "apply to --control-from canny",
        ),
    ];
    assert_one_line_errors(&cases);
}

/// --from-metadata gives a Control edit back (the Canny thresholds from the record).
#[test]
fn control_comes_back_from_metadata() {
    let case = mode_cases("cases-control.json").into_iter().find(|c| c["name"] == "control-img2img-canny").unwrap();
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    assert_metadata_round_trip(&control_args(&case, &first), &first);
}

/// Manifest columns `control` (a file, or `canny`) and `redux` (FILE[:W];…) give the images their flags give.
#[test]
fn control_and_redux_manifest_columns() {
    let f = fixtures();
    let s = |p: &str| f.join(p).to_string_lossy().into_owned();
    let t = tempfile::tempdir().unwrap();
    let manifest = t.path().join("m.csv");
    let (img, ctl, red) =
        (s("images/gradient-80x80.png"), s("images/control-gradient-80x80.png"), s("images/ref-64x80.png"));
    std::fs::write(
        &manifest,
        format!("image,prompt,control,redux,output\n{img},a cat,{ctl},,a.png\n{img},a cat,canny,{red}:0.6,b.png\n"),
    )
    .unwrap();
    let common = ["--steps", "2", "--width", "64", "--height", "64", "--max-sequence-length", "16", "-q"];
    let redux_model = ["--redux-model", &s("tiny-redux")];
    let out = t.path().join("out");
    let o = bin()
        .args(["--model", &s("tiny-control"), "--manifest"])
        .arg(&manifest)
        .args(common)
        .args(redux_model)
        .args(["--seed", "5"])
        .arg("--output-dir")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let single = |name: &str, seed: &str, extra: &[&str]| {
        let p = t.path().join(name);
        let mut a: Vec<String> =
            ["--model", &s("tiny-control"), "--image", &img, "--prompt", "a cat"].map(String::from).into();
        a.extend(common.iter().map(|x| x.to_string()));
        a.extend(extra.iter().map(|x| x.to_string()));
        a.extend(["--seed".into(), seed.into(), "-o".into(), p.to_string_lossy().into()]);
        let o = bin().args(&a).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(&p).unwrap().to_rgb8()
    };
    let rgb = |p: std::path::PathBuf| image::open(p).unwrap().to_rgb8();
    assert_eq!(rgb(out.join("a.png")), single("a1.png", "5", &["--control", &ctl]));
    let b = single(
        "b1.png",
        "6",
        &["--control-from", "canny", "--redux", &format!("{red}:0.6"), redux_model[0], redux_model[1]],
    );
    assert_eq!(rgb(out.join("b.png")), b);
}

/// FLUX.1 Control LoRAs (as FLUX.1-Canny/Depth-dev-lora): tiny-dev turned into a Control model by a LoRA with
/// biases on every layer, a widened img_in and replacement norm scales, against `FluxControlPipeline` /
/// `FluxControlImg2ImgPipeline` with diffusers' `load_lora_weights` (tests/fixtures/cases-control-lora.json,
/// scripts/make_control_lora_fixtures.py). The same numbers in PEFT and in BFL names must both match; measured
/// 75.8 dB. Sensitivity: another control image, half the LoRA weight, the norms not replaced, no lora_B biases,
/// prompt and seed move diffusers' own output to 11.1–33.9 dB (held under 35).
#[test]
fn control_loras_match_diffusers() {
    for file in ["control-lora-peft.safetensors", "control-lora-bfl.safetensors"] {
        let lora = fixtures().join("loras").join(file).to_string_lossy().into_owned();
        run_cases(
            "cases-control-lora.json",
            |case, out| {
                let mut a = control_args(case, out);
                a.extend(["--lora".into(), lora.clone()]);
                a
            },
            |_| MAX_SENSITIVITY_DB,
        );
    }
}

/// A scale sweep keeps the control LoRA as side paths (not merged): the bias and the widened input still apply.
#[test]
fn control_lora_side_paths_match_diffusers() {
    let case = &mode_cases("cases-control-lora.json")[0];
    let t = tempfile::tempdir().unwrap();
    let mut a = control_args(case, &t.path().join("unused.png"));
    let o = a.iter().position(|x| x == "-o").unwrap();
    a.drain(o..o + 2);
    a.retain(|x| x != "-q");
    a.extend(["--output-dir".into(), t.path().to_string_lossy().into(), "--name".into(), "{lora}".into()]);
    a.extend(
        ["--lora", &fixtures().join("loras/control-lora-bfl.safetensors").to_string_lossy(), "--lora-scale", "1,0.5"]
            .map(String::from),
    );
    let o = bin().args(&a).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("run as side paths each step"), "{}", stderr(&o));
    let db = psnr(&t.path().join("1.png"), &fixtures().join(case["expected"].as_str().unwrap()));
    eprintln!("control LoRA as side paths: {db:.1} dB");
    assert!(db >= 45.0, "{db:.1} dB");
}

/// Control LoRAs are refused in one line where the widened layer cannot be built or the mode has no control image.
#[test]
fn control_lora_bad_input_is_one_line() {
    let f = fixtures();
    let s = |p: &str| f.join(p).to_string_lossy().into_owned();
    let lora = s("loras/control-lora-bfl.safetensors");
    let base =
        ["--model", &s("tiny-dev"), "--width", "64", "--height", "64", "--lora", &lora].map(String::from).to_vec();
    let with =
        |extra: &[&str]| -> Vec<String> { base.iter().cloned().chain(extra.iter().map(|x| x.to_string())).collect() };
    let cases: Vec<(Vec<String>, &str)> = vec![
        (with(&[]), "this is a FLUX.1 Control model"),
        (with(&["--control", &s("images/control-gradient-80x80.png"), "--quantize", "q8_0"]), "without --quantize"),
    ];
    assert_one_line_errors(&cases);
}

/// `--control-from depth` end to end (tests/fixtures/cases-control-depth.json, scripts/make_depth_control_fixtures.py):
/// the tiny Depth Anything's depth map (transformers' `pipeline("depth-estimation")` there) as the control image of
/// `FluxControlImg2ImgPipeline` and of `FluxControlNetImg2ImgPipeline` with the Union ControlNet in depth mode.
/// Sensitivity: Canny edges in place of the depth map, the prompt and the seed move diffusers' own image to
/// 12.0–28.8 dB (held under 35).
#[test]
fn depth_control_matches_diffusers() {
    let f = fixtures();
    run_cases(
        "cases-control-depth.json",
        |case, out| {
            let mut a = case_args(case, out);
            a.extend(["--control-from", "depth", "--depth-model"].map(String::from));
            a.push(f.join("tiny-depth-anything").to_string_lossy().into());
            if let Some(net) = case["controlnet"].as_str() {
                a.extend(["--controlnet".into(), f.join(net).to_string_lossy().into()]);
                a.extend(["--control-mode", "depth"].map(String::from));
            }
            a
        },
        |_| MAX_SENSITIVITY_DB,
    );
}

/// --from-metadata gives a depth-controlled edit back (the depth model from the record).
#[test]
fn depth_control_comes_back_from_metadata() {
    let f = fixtures();
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    let s = |p: &str| f.join(p).to_string_lossy().into_owned();
    let args: Vec<String> = [
        "--model",
        &s("tiny-control"),
        "--image",
        &s("images/photo-96x64.png"),
        "--control-from",
        "depth",
        "--depth-model",
        &s("tiny-depth-anything"),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--seed",
        "4",
        "-q",
        "-o",
        &first.to_string_lossy(),
    ]
    .map(String::from)
    .to_vec();
    assert_metadata_round_trip(&args, &first);
}
