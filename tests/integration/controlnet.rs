//! FLUX.1 ControlNets against diffusers on tests/fixtures/cases-controlnet.json
//! (scripts/make_controlnet_pipeline_fixtures.py): `FluxControlNetPipeline` (text-to-image, with true CFG, a Union
//! mode, and two ControlNets at once), `FluxControlNetImg2ImgPipeline` (Canny made here, a start/end window) and
//! `FluxControlNetInpaintPipeline` (the Union ControlNet), all on tiny-dev with the tiny ControlNets.
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
