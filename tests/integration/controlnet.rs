//! FLUX.1 ControlNets against diffusers on tests/fixtures/cases-controlnet.json
//! (scripts/make_controlnet_pipeline_fixtures.py): `FluxControlNetPipeline` (text-to-image, with true CFG, a Union
//! mode, two ControlNets at once, XLabs), `FluxControlNetImg2ImgPipeline` (Canny made here, a start/end window,
//! XLabs) and `FluxControlNetInpaintPipeline` (the Union ControlNet) on tiny-dev with the tiny InstantX, Union and
//! XLabs ControlNets, and text-to-image and inpainting on tiny-schnell (no guidance embedder, another VAE and
//! widths) with its own. Measured 77.9–89.0 dB.
//!
//! Bar: 45 dB. Sensitivity: another control image, another conditioning scale, another Union mode, no ControlNet
//! (scale 0), the mask, the prompt and the seed each move diffusers' own output to 10–38 dB (held under 40), so an
//! edit that ignored any of them could not pass.

use crate::common::*;
use crate::modes::{case_args, run_cases};
use serde_json::Value;
use std::path::Path;

const MAX_SENSITIVITY_DB: f64 = 40.0;

/// Union mode names by `controlnet_mode_embedder` row (diffusers takes the index).
const MODES: [&str; 7] = ["canny", "tile", "depth", "blur", "pose", "gray", "lq"];

fn controlnet_args(case: &Value, out: &Path) -> Vec<String> {
    let mut a = case_args(case, out);
    let f = fixtures();
    for cn in case["controlnets"].as_array().unwrap() {
        a.extend(["--controlnet".into(), f.join(cn["model"].as_str().unwrap()).to_string_lossy().into()]);
        let control = cn["control"].as_str().unwrap();
        match control.strip_prefix("canny:").and_then(|t| t.split_once(',')) {
            Some((low, high)) => {
                a.extend(["--control-from", "canny", "--canny-low", low, "--canny-high", high].map(String::from))
            }
            None => a.extend(["--control".into(), f.join("images").join(control).to_string_lossy().into()]),
        }
        let mode = cn["mode"].as_u64().map(|m| MODES[m as usize]).unwrap_or("none");
        a.extend(["--control-mode".into(), mode.into()]);
        for (flag, key) in [("--control-scale", "scale"), ("--control-start", "start"), ("--control-end", "end")] {
            a.extend([flag.to_string(), cn[key].to_string()]);
        }
    }
    a
}

#[test]
fn controlnets_match_diffusers() {
    run_cases("cases-controlnet.json", controlnet_args, |_| MAX_SENSITIVITY_DB);
}

fn s(p: &str) -> String {
    fixtures().join(p).to_string_lossy().into_owned()
}

/// Bad ControlNet input: one line, exit 2, nothing written, before any weight loads.
#[test]
fn controlnet_bad_input_is_one_line() {
    let base = |model: &str| -> Vec<String> {
        ["--model", &s(model), "--image", &s("images/gradient-80x80.png")].map(String::from).to_vec()
    };
    let with = |model: &str, extra: &[&str]| -> Vec<String> {
        let mut a = base(model);
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let (cn, union, control) =
        (s("tiny-controlnet"), s("tiny-controlnet-union"), s("images/control-gradient-80x80.png"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        // A ControlNet of another family (a UNet's folder), and a FLUX ControlNet on Stable Diffusion.
        (with("tiny-dev", &["--controlnet", &s("tiny-sd15/unet"), "--control", &control]), "not a FLUX.1 ControlNet"),
        (with("tiny-sd15", &["--controlnet", &cn, "--control", &control]), "Stable Diffusion ControlNets"),
        (with("tiny-klein", &["--controlnet", &cn, "--control", &control]), "FLUX.2 models take none"),
        // Settings without a ControlNet, images that do not pair up, another aspect.
        (with("tiny-dev", &["--control-scale", "0.5"]), "--control-scale applies to ControlNets"),
        (with("tiny-dev", &["--controlnet", &cn]), "1 --controlnet and 0 control image(s)"),
        (
            with("tiny-dev", &["--controlnet", &cn, "--control", &control, "--control", &control]),
            "1 --controlnet and 2 control image(s)",
        ),
        (
            with("tiny-dev", &["--controlnet", &cn, "--control", &s("images/photo-96x64.png")]),
            "another aspect than the 80x80",
        ),
        (
            with(
                "tiny-dev",
                &[
                    "--controlnet",
                    &cn,
                    "--controlnet",
                    &cn,
                    "--control",
                    &control,
                    "--control",
                    &control,
                    "--control-scale",
                    "1",
                    "--control-scale",
                    "2",
                    "--control-scale",
                    "3",
                ],
            ),
            "3 --control-scale values for 2 --controlnet",
        ),
        (
            with(
                "tiny-dev",
                &["--controlnet", &cn, "--control", &control, "--control-start", "0.9", "--control-end", "0.2"],
            ),
            "give 0 <= start < end <= 1",
        ),
        // Union modes: missing, on a plain ControlNet, unknown.
        (with("tiny-dev", &["--controlnet", &union, "--control", &control]), "give --control-mode"),
        (
            with("tiny-dev", &["--controlnet", &cn, "--control", &control, "--control-mode", "depth"]),
            "needs a Union ControlNet",
        ),
        (
            with("tiny-dev", &["--controlnet", &union, "--control", &control, "--control-mode", "seg"]),
            "unknown --control-mode",
        ),
        // Modes and models a ControlNet does not go with.
        (
            with("tiny-dev", &["--controlnet", &cn, "--control", &control, "--cache", "fbcache"]),
            "does not go with --cache",
        ),
        (with("tiny-dev", &["--controlnet", &cn, "--control", &control, "--kontext"]), "does not go with Kontext"),
        (with("tiny-control", &["--controlnet", &cn, "--control", &control]), "Fill or Control model"),
        (with("tiny-dev", &["--controlnet", &s("images"), "--control", &control]), "no config.json"),
        (
            with("tiny-dev", &["--controlnet", "no/such-controlnet-here/x", "--control", &control]),
            "not a folder or a Hub repo id",
        ),
    ];
    assert_one_line_errors(&cases);
}

/// --from-metadata gives a two-ControlNet edit back (Canny thresholds, Union mode, scales and window included).
#[test]
fn controlnets_come_back_from_metadata() {
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    let args: Vec<String> = [
        "--model",
        &s("tiny-dev"),
        "--image",
        &s("images/photo-96x64.png"),
        "--prompt",
        "a cat",
        "--steps",
        "3",
        "--controlnet",
        &s("tiny-controlnet-union"),
        "--control",
        &s("images/control-photo-96x64.png"),
        "--controlnet",
        &s("tiny-controlnet"),
        "--control-from",
        "canny",
        "--canny-low",
        "40",
        "--canny-high",
        "90",
        "--control-mode",
        "pose",
        "--control-mode",
        "none",
        "--control-scale",
        "0.6",
        "--control-scale",
        "1.3",
        "--control-end",
        "0.7",
        "--seed",
        "3",
        "--rng",
        "torch-cpu",
        "-q",
        "-o",
    ]
    .map(String::from)
    .to_vec();
    let mut args = args;
    args.push(first.to_string_lossy().into());
    assert_metadata_round_trip(&args, &first);
    let record = std::fs::read(&first).unwrap();
    let text = String::from_utf8_lossy(&record);
    assert!(text.contains("canny:40,90") && text.contains("\"pose\""), "the record keeps each ControlNet's settings");
}

/// The dry run names each ControlNet on the plan line, and the memory estimate counts its weights.
#[test]
fn controlnet_plan_and_memory() {
    let run = |extra: &[&str]| -> Value {
        let mut a: Vec<String> = [
            "--model",
            &s("tiny-dev"),
            "--image",
            &s("images/gradient-80x80.png"),
            "--prompt",
            "a cat",
            "--dry-run",
            "--json",
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|x| x.to_string()));
        let o = bin().args(&a).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let control = s("images/control-gradient-80x80.png");
    let plain = run(&[]);
    let with = run(&[
        "--controlnet",
        &s("tiny-controlnet-union"),
        "--control",
        &control,
        "--control-mode",
        "tile",
        "--control-start",
        "0.25",
    ]);
    assert!(plain["memory_estimate"]["weights"]["adapters"].is_null());
    // f32 weights: the safetensors file less its header.
    let file = std::fs::read(fixtures().join("tiny-controlnet-union/diffusion_pytorch_model.safetensors")).unwrap();
    let header = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    assert_eq!(with["memory_estimate"]["weights"]["adapters"].as_u64().unwrap() as usize, file.len() - 8 - header);
    assert_eq!(with["controlnets"][0]["mode"], "tile");
    let o = bin()
        .args(["--model", &s("tiny-dev"), "--image", &s("images/gradient-80x80.png"), "--prompt", "a cat", "--dry-run"])
        .args(["--controlnet", &s("tiny-controlnet"), "--control", &control, "--control-scale", "0.5"])
        .output()
        .unwrap();
    let plan = String::from_utf8_lossy(&o.stdout);
    assert!(plan.contains("ControlNet tiny-controlnet on control-gradient-80x80.png x0.5"), "{plan}");
}

/// A manifest's `control` and `control_scale` columns set the one ControlNet's image and scale per row: the row
/// at scale 0 equals a run at --control-scale 0, the other differs.
#[test]
fn manifest_sets_control_and_scale() {
    let t = tempfile::tempdir().unwrap();
    let manifest = t.path().join("m.csv");
    let control = s("images/control-gradient-80x80.png");
    std::fs::write(
        &manifest,
        format!("image,prompt,control,control_scale,output\n{img},a cat,{control},0,zero.png\n{img},a cat,,1.5,strong.png\n", img = s("images/gradient-80x80.png")),
    )
    .unwrap();
    let common = ["--model", &s("tiny-dev"), "--steps", "2", "--rng", "torch-cpu", "-q"];
    let other = s("images/control-photo-80x80.png");
    let o = bin()
        .args(common)
        .args([
            "--seed",
            "5",
            "--manifest",
            &manifest.to_string_lossy(),
            "--controlnet",
            &s("tiny-controlnet"),
            "--control",
            &other,
        ])
        .args(["--output-dir", &t.path().to_string_lossy()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Row k runs at seed 5 + k.
    let single = |seed: &str, scale: &str, control: &str, out: &str| {
        let out = t.path().join(out);
        let o = bin()
            .args(common)
            .args([
                "--image",
                &s("images/gradient-80x80.png"),
                "--prompt",
                "a cat",
                "--controlnet",
                &s("tiny-controlnet"),
            ])
            .args(["--control", control, "--control-scale", scale, "--seed", seed, "-o", &out.to_string_lossy()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        image::open(out).unwrap().to_rgb8()
    };
    let read = |p: &str| image::open(t.path().join(p)).unwrap().to_rgb8();
    assert_eq!(read("zero.png"), single("5", "0", &control, "zero-single.png"));
    assert_eq!(read("strong.png"), single("6", "1.5", &other, "strong-single.png"));
    assert_ne!(read("zero.png"), read("strong.png"));
}

/// One session running a plain edit and then a ControlNet edit (a library caller's sequence): the transformer
/// stays loaded and the ControlNet still joins, giving what a fresh run gives.
#[test]
fn a_session_picks_up_controlnets_between_edits() {
    use clap::Parser;
    let t = tempfile::tempdir().unwrap();
    let request = |extra: &[&str], out: &str| {
        let mut a: Vec<String> =
            ["flux-img2img", "--model", &s("tiny-dev"), "--image", &s("images/gradient-80x80.png")]
                .map(String::from)
                .to_vec();
        a.extend(["--prompt", "a cat", "--steps", "3", "--seed", "9", "--rng", "torch-cpu", "-o"].map(String::from));
        a.push(t.path().join(out).to_string_lossy().into());
        a.extend(extra.iter().map(|x| x.to_string()));
        let args = flux_img2img::cli::Args::try_parse_from(a).unwrap();
        args.into_batch().unwrap().items.remove(0).request
    };
    let control = s("images/control-gradient-80x80.png");
    let with = ["--controlnet", &s("tiny-controlnet"), "--control", &control];
    let progress: std::sync::Arc<dyn flux_img2img::engine::Progress> =
        std::sync::Arc::new(flux_img2img::engine::Silent);
    let mut session = flux_img2img::Session::open(
        &fixtures().join("tiny-dev"),
        &Default::default(),
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
        progress,
    )
    .unwrap();
    session.run(&request(&[], "plain.png")).unwrap();
    session.run(&request(&with, "second.png")).unwrap();
    let o = bin().args(request_args_for_fresh_run(&with, &t.path().join("fresh.png"))).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(psnr(&t.path().join("second.png"), &t.path().join("fresh.png")).is_infinite());
    assert!(psnr(&t.path().join("plain.png"), &t.path().join("fresh.png")) < 40.0);
}

/// The same edit as [`a_session_picks_up_controlnets_between_edits`]' second one, as a command line.
fn request_args_for_fresh_run(extra: &[&str], out: &Path) -> Vec<String> {
    let mut a: Vec<String> =
        ["--model", &s("tiny-dev"), "--image", &s("images/gradient-80x80.png")].map(String::from).to_vec();
    a.extend(["--prompt", "a cat", "--steps", "3", "--seed", "9", "--rng", "torch-cpu", "-q", "-o"].map(String::from));
    a.push(out.to_string_lossy().into());
    a.extend(extra.iter().map(|x| x.to_string()));
    a
}

/// `--control-scale 0,1.5` sweeps every ControlNet's scale: one image each, named `-c{scale}`, each equal to its
/// single run (item k at seed 5 + k); a list beside per-ControlNet values is refused.
#[test]
fn control_scale_sweep() {
    let t = tempfile::tempdir().unwrap();
    let control = s("images/control-gradient-80x80.png");
    let base: Vec<String> =
        ["--model", &s("tiny-dev"), "--image", &s("images/gradient-80x80.png"), "--prompt", "a cat", "--steps", "2"]
            .map(String::from)
            .to_vec();
    let cn = ["--controlnet", &s("tiny-controlnet"), "--control", &control, "--rng", "torch-cpu", "-q"];
    let o = bin()
        .args(&base)
        .args(cn)
        .args(["--control-scale", "0,1.5", "--seed", "5", "--output-dir", &t.path().to_string_lossy()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for (scale, seed) in [("0", "5"), ("1.5", "6")] {
        let swept = t.path().join(format!("gradient-80x80-c{scale}.png"));
        let single = t.path().join(format!("single-{scale}.png"));
        let o = bin()
            .args(&base)
            .args(cn)
            .args(["--control-scale", scale, "--seed", seed, "-o", &single.to_string_lossy()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        assert!(psnr(&swept, &single).is_infinite(), "scale {scale}: the swept image differs from its single run");
    }
    // (assert_one_line_errors adds the prompt and steps itself.)
    let mut bad: Vec<String> = base[..4].to_vec();
    bad.extend(["--controlnet", &s("tiny-controlnet"), "--control", &control].map(String::from));
    bad.extend(["--controlnet", &s("tiny-controlnet"), "--control", &control].map(String::from));
    bad.extend(["--control-scale", "0,1", "--control-scale", "2"].map(String::from));
    assert_one_line_errors(&[(bad, "give one list to sweep")]);
}
