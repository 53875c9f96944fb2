//! FLUX.2 [klein] against diffusers on tests/fixtures/cases-klein.json (scripts/make_klein_fixtures.py):
//! `Flux2KleinPipeline` text-to-image, one and two references, base-model CFG; `Flux2KleinInpaintPipeline` with and
//! without a reference; and `--strength` on klein (our SDEdit extension, referenced by the inpaint pipeline with an
//! all-white mask); LoRAs in diffusers/PEFT and ai-toolkit names (`load_lora_weights`).
//!
//! Bar: 45 dB, as for FLUX.1. Each case records how far diffusers' own output moves when the prompt, the seed, a
//! reference, the mask, the strength or CFG changes (sensitivity_psnr_db): under 43 dB (measured 8.2–41.7 dB; the
//! reference order, which only moves the time offsets of two references, is the weakest at 41.7), so an edit that
//! ignored any of them could not pass.

use crate::common::*;
use crate::modes::{composed, mode_cases, run_cases};
use serde_json::Value;
use std::path::Path;

const MAX_SENSITIVITY_DB: f64 = 43.0;

/// The flags of one case: the first reference (or the image to inpaint) as --image, further references as
/// --reference.
pub fn klein_args(case: &Value, out: &Path) -> Vec<String> {
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
    ] {
        if !case[key].is_null() {
            a.extend([flag.to_string(), s(key)]);
        }
    }
    let image = |name: &str| f.join("images").join(name).to_string_lossy().to_string();
    let mut refs: Vec<String> =
        case["references"].as_array().into_iter().flatten().map(|r| image(r.as_str().unwrap())).collect();
    match case["image"].as_str() {
        Some(i) => a.extend(["--image".into(), image(i)]),
        None if !refs.is_empty() => a.extend(["--image".into(), refs.remove(0)]),
        None => {}
    }
    for r in refs {
        a.extend(["--reference".into(), r]);
    }
    for l in case["loras"].as_array().into_iter().flatten() {
        a.extend(["--lora".into(), format!("{}:{}", f.join(l[0].as_str().unwrap()).display(), l[1])]);
    }
    if let Some(mask) = case["mask"].as_str() {
        a.extend(["--mask".into(), f.join("masks").join(mask).to_string_lossy().into()]);
    }
    a.extend(["--rng", "torch-cpu", "--dtype", "f32", "-q", "-o"].map(String::from));
    a.push(out.to_string_lossy().into());
    a
}

#[test]
fn klein_matches_diffusers() {
    run_cases("cases-klein.json", klein_args, |_| MAX_SENSITIVITY_DB);
}

/// FLUX.2 [klein] and its base model with `--kernels composed`: the same bar and cap. Measured 74.8–87.8 dB (the
/// CPU kernels: 74.9–86.0).
#[test]
fn klein_matches_diffusers_with_composed_kernels() {
    run_cases("cases-klein.json", composed(klein_args), |_| MAX_SENSITIVITY_DB);
}

fn pixels_equal(a: &Path, b: &Path, what: &str) {
    let db = psnr(a, b);
    assert!(db.is_infinite(), "{what}: {db:.1} dB, not the same pixels");
}

/// The base flags of the tiny klein text-to-image case (expected/klein-t2i.png) plus `extra`, into `out`.
fn t2i(extra: &[&str], out: &Path) -> std::process::Output {
    let case = mode_cases("cases-klein.json").into_iter().find(|c| c["name"] == "klein-t2i").unwrap();
    bin().args(klein_args(&case, out)).args(extra).output().unwrap()
}

/// References given only as --reference (no --image) make the same edit as --image plus --reference.
#[test]
fn references_without_an_input() {
    let t = tempfile::tempdir().unwrap();
    let case = mode_cases("cases-klein.json").into_iter().find(|c| c["name"] == "klein-two-refs").unwrap();
    let a = t.path().join("image-plus-reference.png");
    assert!(bin().args(klein_args(&case, &a)).status().unwrap().success());
    let mut args = klein_args(&case, &t.path().join("b.png"));
    let at = args.iter().position(|x| x == "--image").unwrap();
    args[at] = "--reference".into();
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    pixels_equal(&a, &t.path().join("b.png"), "--reference only");
    // One --reference and no size: it leads, as --image would (the README's promise).
    let model = fixtures().join("tiny-klein");
    let reference = fixtures().join("images/ref-100x70.png");
    let one = |flag: &str, out: &Path| {
        let m = model.to_string_lossy().into_owned();
        let r = reference.to_string_lossy().into_owned();
        let o = out.to_string_lossy().into_owned();
        bin().args(["--model", &m, flag, &r, "--prompt", "a cat", "--seed", "3", "-o", &o]).output().unwrap()
    };
    let (c, d) = (t.path().join("c.png"), t.path().join("d.png"));
    assert!(one("--image", &c).status.success());
    let o = one("--reference", &d);
    assert!(o.status.success(), "{}", stderr(&o));
    pixels_equal(&c, &d, "one --reference, no --image and no size");
}

/// Black Forest Labs / ComfyUI / GGUF single files for the transformer, BFL's flux2_ae.safetensors and a one-file
/// Qwen3 replace the folder's components. Measured against diffusers' image: BFL names 81.8 dB (the same numbers
/// as the folder's), ComfyUI's bf16-stored copy 54.6 dB (bf16 rounding of the weights), GGUF Q8_0 41.9 dB and
/// --quantize q8_0 37.8 dB (the transformer and Qwen3 quantized: the transformer alone gave 41.8, and quantizing
/// Qwen3 too moves a 64² image 45.3 dB; FLUX.1's q8_0 measures 36–41 dB on its tiny pipeline); the VAE and the
/// text encoder exactly the folder's image.
#[test]
fn single_files_and_quantization() {
    let t = tempfile::tempdir().unwrap();
    let f = fixtures();
    let expected = f.join("expected/klein-t2i.png");
    let folder = t.path().join("folder.png");
    assert!(t2i(&[], &folder).status.success());
    let bfl = f.join("bfl-tiny-klein");
    let s = |p: std::path::PathBuf| p.to_string_lossy().to_string();
    let cases: [(&str, String, f64); 6] = [
        ("--transformer", s(bfl.join("flux-2-klein.safetensors")), 75.0),
        ("--transformer", s(bfl.join("flux-2-klein-comfy.safetensors")), 50.0),
        ("--transformer", s(bfl.join("flux-2-klein-Q8_0.gguf")), 38.0),
        ("--vae", s(bfl.join("flux2_ae.safetensors")), 75.0),
        ("--text-encoder", s(f.join("tiny-klein/text_encoder/model.safetensors")), 75.0),
        ("--quantize", "q8_0".into(), 35.0),
    ];
    for (flag, value, floor) in cases {
        let out = t.path().join("out.png");
        let o = t2i(&[flag, &value], &out);
        assert!(o.status.success(), "{flag} {value}: {}", stderr(&o));
        let db = psnr(&out, &expected);
        eprintln!("{flag} {value}: {db:.1} dB");
        assert!(db >= floor, "{flag} {value}: {db:.1} dB < {floor}");
        if floor > 70.0 {
            pixels_equal(&out, &folder, flag);
        }
        if flag == "--quantize" {
            // Quantized now, or read from the cache another test of this process wrote.
            let err = stderr(&o);
            let qwen = err.contains("Qwen3 matrices to q8_0") || err.contains("q8_0 Qwen3 from the quantization cache");
            assert!(qwen, "Qwen3 is quantized too: {err}");
            // The second run reads the quantization cache: the same image.
            let again = t.path().join("again.png");
            assert!(t2i(&[flag, &value], &again).status.success());
            pixels_equal(&out, &again, "quantization cache");
        }
    }
}

/// Mixed families, LoRAs for the other family, a missing Qwen tokenizer, FLUX.2-only flags on FLUX.1 and the
/// reverse: one line, exit 2, no output.
#[test]
fn family_mismatches_are_one_line_errors() {
    let t = tempfile::tempdir().unwrap();
    let f = fixtures();
    let s = |p: std::path::PathBuf| p.to_string_lossy().to_string();
    let broken = t.path().join("no-tokenizer");
    copy_dir(&f.join("tiny-klein"), &broken);
    std::fs::remove_file(broken.join("tokenizer/tokenizer.json")).unwrap();
    let image = s(f.join("images/ref-100x70.png"));
    let tiny = s(f.join("images/tall-48x64.png"));
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--model".into(),
                s(f.join("tiny-klein")),
                "--transformer".into(),
                s(f.join("bfl-tiny-dev/flux1.safetensors")),
            ],
            "is a FLUX.1 transformer but the model folder is FLUX.2",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-dev")),
                "--transformer".into(),
                s(f.join("bfl-tiny-klein/flux-2-klein.safetensors")),
            ],
            "is a FLUX.2 transformer but the model folder is FLUX.1",
        ),
        (
            vec!["--model".into(), s(f.join("tiny-klein")), "--vae".into(), s(f.join("bfl-tiny-dev/ae.safetensors"))],
            "is a FLUX.1 VAE but the model is FLUX.2",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-dev")),
                "--vae".into(),
                s(f.join("bfl-tiny-klein/flux2_ae.safetensors")),
            ],
            "is a FLUX.2 VAE but the model is FLUX.1",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-klein")),
                "--text-encoder".into(),
                s(f.join("tiny-dev/text_encoder/model-00001-of-00003.safetensors")),
            ],
            "is a CLIP text encoder (FLUX.1)",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-dev")),
                "--text-encoder".into(),
                s(f.join("tiny-klein/text_encoder/model.safetensors")),
            ],
            "is a Qwen3 text encoder (FLUX.2)",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-klein")),
                "--text-encoder-2".into(),
                s(f.join("tiny-dev/text_encoder_2/model-00001-of-00002.safetensors")),
            ],
            "has no second text encoder",
        ),
        (
            vec!["--model".into(), s(f.join("tiny-dev")), "--lora".into(), s(f.join("loras/klein-peft.safetensors"))],
            "this LoRA is for FLUX.2",
        ),
        (
            vec!["--model".into(), s(f.join("tiny-klein")), "--lora".into(), s(f.join("loras/kohya.safetensors"))],
            "this LoRA is for FLUX.1",
        ),
        (vec!["--model".into(), s(broken), "--image".into(), image.clone()], "FLUX.2 needs the Qwen tokenizer"),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-dev")),
                "--image".into(),
                image.clone(),
                "--reference".into(),
                image.clone(),
            ],
            "--reference is for FLUX.2",
        ),
        (
            vec!["--model".into(), s(f.join("tiny-klein")), "--image".into(), image.clone(), "--kontext".into()],
            "--kontext is for FLUX.1 Kontext",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-klein")),
                "--image".into(),
                image.clone(),
                "--mask".into(),
                s(f.join("masks/klein-rect-100x70.png")),
                "--mask-crop".into(),
                "8".into(),
            ],
            "--mask-crop is not available for FLUX.2",
        ),
        (
            vec![
                "--model".into(),
                s(f.join("tiny-klein")),
                "--image".into(),
                image.clone(),
                "--reference".into(),
                tiny,
            ],
            "FLUX.2 reference images need both sides ≥ 64",
        ),
    ];
    for (args, needle) in cases {
        let out = t.path().join("out.png");
        let mut a = args.clone();
        a.extend(["--prompt", "a cat", "--width", "64", "--height", "64", "--steps", "2", "-o"].map(String::from));
        a.push(out.to_string_lossy().into());
        let o = bin().args(&a).output().unwrap();
        let err = stderr(&o);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(errors.len(), 1, "one error line for {args:?}: {err}");
        assert!(errors[0].contains(needle), "{needle:?} not in {}", errors[0]);
        assert!(!err.lines().any(|l| l.starts_with("  caused by")), "{err}");
        assert!(!out.exists(), "no output for {args:?}");
    }
}

/// A manifest's reference column, and --from-metadata: the references come back from the PNG.
#[test]
fn manifest_references_and_metadata() {
    let t = tempfile::tempdir().unwrap();
    let case = mode_cases("cases-klein.json").into_iter().find(|c| c["name"] == "klein-two-refs").unwrap();
    let direct = t.path().join("direct.png");
    assert!(bin().args(klein_args(&case, &direct)).status().unwrap().success());
    let f = fixtures();
    let csv = format!(
        "image,reference,seed,output\n{},{},{},row.png\n",
        f.join("images/ref-100x70.png").display(),
        f.join("images/ref-64x80.png").display(),
        case["seed"]
    );
    std::fs::write(t.path().join("m.csv"), csv).unwrap();
    let mut args = klein_args(&case, &t.path().join("unused.png"));
    let at = args.iter().position(|x| x == "--image").unwrap();
    args.drain(at..at + 4); // --image A --reference B
    args.extend(["--manifest".into(), t.path().join("m.csv").to_string_lossy().into()]);
    let o = bin().args(&args).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    pixels_equal(&direct, &t.path().join("row.png"), "manifest reference column");
    let again = t.path().join("again.png");
    let o = bin()
        .args([
            "--from-metadata",
            &direct.to_string_lossy(),
            "--allow-metadata-paths",
            "--rng",
            "torch-cpu",
            "-q",
            "-o",
            &again.to_string_lossy(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    pixels_equal(&direct, &again, "--from-metadata");
}

/// FLUX.2 [dev] (Flux2Pipeline: 32B, Mistral text encoder) is named as unsupported, not run into a tensor error.
#[test]
fn flux2_dev_is_refused_by_name() {
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("flux2-dev");
    copy_dir(&fixtures().join("tiny-klein"), &model);
    let index = model.join("model_index.json");
    let text = std::fs::read_to_string(&index).unwrap().replace("Flux2KleinPipeline", "Flux2Pipeline");
    std::fs::write(&index, text).unwrap();
    let out = t.path().join("o.png");
    let case = mode_cases("cases-klein.json").into_iter().find(|c| c["name"] == "klein-t2i").unwrap();
    let mut args = klein_args(&case, &out);
    args[1] = model.to_string_lossy().into();
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("FLUX.2 [dev]") && stderr(&o).contains("klein-4b"), "{}", stderr(&o));
}
