//! FLUX.1 Fill and outpainting against diffusers on tests/fixtures/cases-fill.json (scripts/make_fill_fixtures.py):
//! `FluxFillPipeline` inpainting at the default strength 1.0 and at 0.8, and `--outpaint` (the canvas and mask
//! built as src/image_io/outpaint.rs documents, Fill run on them, the result composed over the canvas).
//!
//! Bar: 45 dB, as for every mode (measured 70.7–75.7 dB). Each case records how far diffusers' own output moves
//! when the prompt, the seed, the mask or the margins change: under 35 dB (measured 10.5–31.0 dB; moving a mask
//! only changes part of the picture, so it is the weakest at 31.0), so an edit that ignored any of them could not
//! pass. Outpainting must also give the input's pixels back byte for byte beyond the feathered seam.

use crate::common::*;
use crate::modes::{case_args, run_cases};
use serde_json::Value;
use std::path::Path;

const MAX_SENSITIVITY_DB: f64 = 35.0;

fn fill_args(case: &Value, out: &Path) -> Vec<String> {
    let mut a = case_args(case, out);
    if let Some(m) = case["outpaint"].as_array() {
        let m: Vec<String> = m.iter().map(|v| v.to_string()).collect();
        a.extend(["--outpaint".into(), m.join(",")]);
    }
    a
}

#[test]
fn fill_matches_diffusers() {
    run_cases("cases-fill.json", fill_args, |_| MAX_SENSITIVITY_DB);
}

/// A Fill transformer as a BFL single file and as Q8_0 GGUF under a dev folder's configs (in_channels 64): told
/// apart by its stored input width, to the same image (BFL: 71.5 dB as the diffusers folder; Q8_0: 45.0 dB, the
/// floor formats.rs measures for Q8_0 GGUF of the dev transformer, so held to the same 42 dB).
#[test]
fn fill_single_files_are_recognised() {
    let case = crate::modes::mode_cases("cases-fill.json").into_iter().find(|c| c["name"] == "fill-rect").unwrap();
    let t = tempfile::tempdir().unwrap();
    for (file, floor) in [("flux1-fill.safetensors", 45.0), ("flux1-fill-Q8_0.gguf", 42.0)] {
        let out = t.path().join(format!("{file}.png"));
        let mut a = case_args(&case, &out);
        let model = a.iter().position(|x| x == "--model").unwrap() + 1;
        a[model] = fixtures().join("tiny-dev").to_string_lossy().into();
        a.extend(["--transformer".into(), fixtures().join("bfl-tiny-fill").join(file).to_string_lossy().into()]);
        let o = bin().args(&a).output().unwrap();
        assert!(o.status.success(), "{file}: {}", stderr(&o));
        let db = psnr(&out, &fixtures().join(case["expected"].as_str().unwrap()));
        eprintln!("{file}: {db:.1} dB");
        assert!(db >= floor, "{file}: {db:.2} dB < {floor}");
    }
}

fn rgb(p: &Path) -> image::RgbImage {
    image::open(p).unwrap().to_rgb8()
}

/// Runs an outpaint of tall-48x64.png on `model` with `flags`; gives the output and the process's stderr.
fn outpaint(model: &str, flags: &[&str], out: &Path) -> (image::RgbImage, String) {
    let f = fixtures();
    let o = bin()
        .args(["--model", &f.join(model).to_string_lossy(), "--image"])
        .arg(f.join("images/tall-48x64.png"))
        .args(["--prompt", "a bowl of ramen", "--steps", "2", "--seed", "3", "--max-sequence-length", "16", "-o"])
        .arg(out)
        .args(flags)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    (rgb(out), stderr(&o))
}

/// Whether every input pixel at least `margin` pixels inside the seams equals the output's at (left, top).
fn input_kept(out: &image::RgbImage, (left, top): (u32, u32), margin: u32) -> bool {
    let input = rgb(&fixtures().join("images/tall-48x64.png"));
    let (w, h) = input.dimensions();
    (margin..h - margin)
        .flat_map(|y| (margin..w - margin).map(move |x| (x, y)))
        .all(|(x, y)| input.get_pixel(x, y) == out.get_pixel(x + left, y + top))
}

#[test]
fn outpainting_keeps_the_input_pixels() {
    let t = tempfile::tempdir().unwrap();
    // No feather: every input pixel, on Fill.
    let (out, _) =
        outpaint("tiny-fill", &["--outpaint", "16,0,16,8", "--outpaint-feather", "0"], &t.path().join("a.png"));
    assert_eq!(out.dimensions(), (80, 80), "the canvas grows right/bottom to a multiple of 16");
    assert!(input_kept(&out, (16, 0), 0), "every input pixel comes back with --outpaint-feather 0");
    // The default 8-pixel seam: the rest of the input exactly; the seam itself repainted.
    let (out, _) = outpaint("tiny-fill", &["--outpaint", "16,0,16,8"], &t.path().join("b.png"));
    assert!(input_kept(&out, (16, 0), 8));
    assert!(!input_kept(&out, (16, 0), 0), "the seam blends into the input");
    // --outpaint-to with --align on an ordinary model: inpainting, with a warning naming Fill.
    let flags = ["--outpaint-to", "96x64", "--align", "right", "--outpaint-feather", "0"];
    let (out, err) = outpaint("tiny-dev", &flags, &t.path().join("c.png"));
    assert_eq!(out.dimensions(), (96, 64));
    assert!(input_kept(&out, (48, 0), 0));
    assert!(err.contains("FLUX.1 Fill (--model fill) is the model made for outpainting"), "{err}");
}

/// --from-metadata on an outpainted PNG outpaints again, to the same pixels.
#[test]
fn outpainting_comes_back_from_metadata() {
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    let (a, _) =
        outpaint("tiny-fill", &["--outpaint-to", "80x64", "--align", "left", "--outpaint-feather", "4"], &first);
    let again = t.path().join("again.png");
    let o =
        bin().arg("--from-metadata").arg(&first).arg("--allow-metadata-paths").arg("-o").arg(&again).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(a, rgb(&again));
}

#[test]
fn fill_and_outpaint_bad_input_is_one_line() {
    let f = fixtures();
    let s = |p: &str| f.join(p).to_string_lossy().into_owned();
    let image = s("images/tall-48x64.png");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--model".into(), s("tiny-fill"), "--image".into(), image.clone()], "this is a FLUX.1 Fill model"),
        (
            vec!["--model".into(), s("tiny-fill"), "--width".into(), "64".into(), "--height".into(), "64".into()],
            "this is a FLUX.1 Fill model",
        ),
        (
            vec!["--model".into(), s("tiny-dev"), "--image".into(), image.clone(), "--outpaint=-4,0,0,0".into()],
            "--outpaint \"-4,0,0,0\"",
        ),
        (
            vec!["--model".into(), s("tiny-dev"), "--image".into(), image.clone(), "--outpaint".into(), "0".into()],
            "adds nothing",
        ),
        (
            vec![
                "--model".into(),
                s("tiny-dev"),
                "--image".into(),
                image.clone(),
                "--outpaint-to".into(),
                "32x32".into(),
            ],
            "smaller than the 48x64 input",
        ),
        (
            vec![
                "--model".into(),
                s("tiny-dev"),
                "--image".into(),
                image.clone(),
                "--outpaint-to".into(),
                "64x64".into(),
                "--align".into(),
                "middle".into(),
            ],
            "--align \"middle\"",
        ),
        (
            vec![
                "--model".into(),
                s("tiny-dev"),
                "--image".into(),
                image.clone(),
                "--outpaint".into(),
                "8".into(),
                "--mask".into(),
                s("masks/rect-80x80.png"),
            ],
            "--mask does not go with outpainting",
        ),
        (
            vec!["--model".into(), s("tiny-dev"), "--image".into(), image.clone(), "--align".into(), "top".into()],
            "--align applies to outpainting",
        ),
        (
            vec![
                "--model".into(),
                s("tiny-dev"),
                "--outpaint".into(),
                "8".into(),
                "--width".into(),
                "64".into(),
                "--height".into(),
                "64".into(),
            ],
            "outpainting grows an input image",
        ),
    ];
    assert_one_line_errors(&cases);
}
