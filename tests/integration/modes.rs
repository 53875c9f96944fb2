//! Editing modes against diffusers on tests/fixtures/cases-modes.json (scripts/make_fixtures.py --only modes):
//! text-to-image (FluxPipeline) and true CFG with a negative prompt (FluxImg2ImgPipeline, FluxPipeline).
//!
//! Bar: 45 dB, as for img2img. Each case records how far diffusers' own output moves when the prompt, the seed or
//! the mode's feature changes (removing true CFG, another negative prompt); those must stay below 30 dB, so a
//! mode that ignored its feature could not pass.

use crate::common::*;
use serde_json::Value;

const MIN_PSNR_DB: f64 = 45.0;
const MAX_SENSITIVITY_DB: f64 = 30.0;

pub fn mode_cases(file: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join(file)).unwrap()).unwrap();
    v["cases"].as_array().unwrap().clone()
}

/// The flags that reproduce one case (any mode): model, size, steps, seed, and what the mode adds.
pub fn case_args(case: &Value, out: &std::path::Path) -> Vec<String> {
    let f = fixtures();
    let s = |k: &str| case[k].to_string().trim_matches('"').to_string();
    let mut a: Vec<String> = vec!["--model".into(), f.join(s("model")).to_string_lossy().into()];
    for (flag, key) in [
        ("--prompt", "prompt"),
        ("--width", "width"),
        ("--height", "height"),
        ("--steps", "steps"),
        ("--seed", "seed"),
        ("--max-sequence-length", "max_sequence_length"),
        ("--guidance", "guidance"),
        ("--strength", "strength"),
        ("--negative-prompt", "negative_prompt"),
        ("--true-cfg", "true_cfg"),
    ] {
        if !case[key].is_null() {
            a.extend([flag.to_string(), s(key)]);
        }
    }
    if let Some(image) = case["image"].as_str() {
        a.extend(["--image".into(), f.join("images").join(image).to_string_lossy().into()]);
    }
    a.extend(["--rng", "torch-cpu", "--dtype", "f32", "-q", "-o"].map(String::from));
    a.push(out.to_string_lossy().into());
    a
}

/// Runs every case of `file`, reporting each PSNR; fails listing every case under the bar.
pub fn check_cases(file: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (mut failures, mut report) = (vec![], vec![]);
    for case in mode_cases(file) {
        let name = case["name"].as_str().unwrap();
        for (what, db) in case["sensitivity_psnr_db"].as_object().unwrap() {
            if db.as_f64().unwrap() > MAX_SENSITIVITY_DB {
                failures.push(format!("{name}: changing the {what} moves the reference only to {db} dB"));
            }
        }
        let out = dir.path().join(format!("{name}.png"));
        let o = bin().args(case_args(&case, &out)).output().unwrap();
        if !o.status.success() {
            failures.push(format!("{name}: exit {:?}: {}", o.status.code(), stderr(&o)));
            continue;
        }
        let db = psnr(&out, &fixtures().join(case["expected"].as_str().unwrap()));
        report.push(format!("{name}: {db:.1} dB"));
        if db < MIN_PSNR_DB {
            failures.push(format!("{name}: {db:.2} dB < {MIN_PSNR_DB} dB"));
        }
    }
    eprintln!("{file}: {}", report.join(", "));
    assert!(failures.is_empty(), "failing cases:\n{}", failures.join("\n"));
}

#[test]
fn text_to_image_and_true_cfg_match_diffusers() {
    check_cases("cases-modes.json");
}
