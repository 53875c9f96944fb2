//! Component overrides in other checkpoint formats: Black Forest Labs' original transformer (plain and with
//! ComfyUI's prefix, bf16) and ae.safetensors VAE, produced from the tiny-dev fixture by
//! scripts/convert_to_bfl.py (an independent Python implementation of spec §10).

use crate::common::*;

fn bfl(name: &str) -> String {
    fixtures().join("bfl-tiny-dev").join(name).to_string_lossy().into_owned()
}

fn edit(out: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let model = fixtures().join("tiny-dev");
    let image = fixtures().join("images/wide-100x60.png");
    let mut args: Vec<String> = ["--model", &model.to_string_lossy(), "--image", &image.to_string_lossy()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(
        ["--prompt", "a cat", "--seed", "5", "--steps", "4", "--max-sequence-length", "16", "-q", "--json"]
            .map(String::from),
    );
    args.extend(["-o".to_string(), out.to_string_lossy().into_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    bin().args(&args).output().unwrap()
}

#[test]
fn original_bfl_files_match_the_diffusers_layout() {
    let t = tempfile::tempdir().unwrap();
    let reference = t.path().join("diffusers.png");
    assert_eq!(edit(&reference, &[]).status.code(), Some(0));

    // Same numbers under other names: the image must be identical.
    let out = t.path().join("bfl.png");
    let o = edit(&out, &["--transformer", &bfl("flux1.safetensors"), "--vae", &bfl("ae.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(psnr(&out, &reference), f64::INFINITY);

    // ComfyUI prefix, weights stored in bf16 (rounded): measured 54.6 dB; the contract is ≥ 45 dB.
    let out = t.path().join("comfy.png");
    let o = edit(&out, &["--transformer", &bfl("flux1-comfy.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let p = psnr(&out, &reference);
    assert!(p >= 45.0, "bf16 ComfyUI file: {p:.1} dB");
}

#[test]
fn schnell_is_detected_from_the_tensors() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.png");
    let o = edit(&out, &["--transformer", &bfl("flux1-noguidance.safetensors")]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("no guidance embedding (schnell-like)"), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["guidance"].is_null());
}

#[test]
fn wrong_or_missing_component_files() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("x.png");
    let o = edit(&out, &["--vae", &bfl("flux1.safetensors")]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("flux1.safetensors: holds no down_blocks.N tensors: these are not vae weights"), "{err}");
    assert!(!out.exists());
    let o = edit(&out, &["--transformer", &bfl("ae.safetensors")]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("FLUX tensor names"), "{}", stderr(&o));
    let o = edit(&out, &["--transformer", "/nonexistent/flux1-dev.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--transformer /nonexistent/flux1-dev.safetensors: no such file"), "{}", stderr(&o));
}

/// Quantised transformers against the f32 run of the same weights. Random toy weights are harsher on
/// quantisation than trained ones; the floors sit a few dB under what was measured (in brackets).
#[test]
fn quantized_and_gguf_transformers_keep_a_measured_floor() {
    let t = tempfile::tempdir().unwrap();
    let reference = t.path().join("f32.png");
    assert_eq!(edit(&reference, &[]).status.code(), Some(0));
    let cases: [(&[&str], f64, &str); 4] = [
        (&["--quantize", "q8_0"], 47.0, "q8_0 in memory, transformer and T5 (50.7 dB)"),
        (&["--quantize", "q4_0"], 25.0, "q4_0 in memory, transformer and T5 (27.6 dB)"),
        // k-quants need 256-column blocks: the 32-wide toy falls back to q4_0 and says so.
        (&["--quantize", "q4_k"], 25.0, "q4_k → q4_0 fallback (28.0 dB)"),
        (&["--transformer", "GGUF"], 42.0, "community-style Q8_0 GGUF, embedders quantised too (45.0 dB)"),
    ];
    for (extra, floor, what) in cases {
        let gguf = bfl("flux1-Q8_0.gguf");
        let extra: Vec<&str> = extra.iter().map(|a| if *a == "GGUF" { gguf.as_str() } else { a }).collect();
        let out = t.path().join("q.png");
        let o = edit(&out, &extra);
        assert_eq!(o.status.code(), Some(0), "{what}: {}", stderr(&o));
        if what.contains("fallback") {
            assert!(stderr(&o).contains("nearest 32-block format"), "{}", stderr(&o));
        }
        let p = psnr(&out, &reference);
        assert!(p >= floor && p.is_finite(), "{what}: {p:.1} dB (floor {floor})");
    }
}

/// Community GGUF formats of the same transformer (scripts/convert_to_gguf.py with gguf-py), against the f32 run.
/// Random toy weights are harsh on quantization; floors sit about 2 dB under what was measured (in brackets).
/// Rows of one 32-block in Q4_1/Q5_0/Q5_1 would trip candle's paired CPU kernels: they run dense instead, and
/// `--quantize q5_k` (Q5_0 fallback on narrow rows) must not fail either.
#[test]
fn every_32_block_gguf_format_runs() {
    let t = tempfile::tempdir().unwrap();
    let reference = t.path().join("f32.png");
    assert_eq!(edit(&reference, &[]).status.code(), Some(0));
    for (format, floor, measured) in
        [("Q5_1", 27.5, 29.7), ("Q5_0", 23.0, 25.2), ("Q4_1", 22.0, 24.3), ("Q4_0", 22.0, 24.3)]
    {
        let out = t.path().join(format!("{format}.png"));
        let o = edit(&out, &["--transformer", &bfl(&format!("flux1-{format}.gguf"))]);
        assert_eq!(o.status.code(), Some(0), "{format}: {}", stderr(&o));
        let p = psnr(&out, &reference);
        assert!(p >= floor && p.is_finite(), "{format}: {p:.1} dB (floor {floor}, measured {measured})");
    }
    let out = t.path().join("q5k.png");
    let o = edit(&out, &["--quantize", "q5_k"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(psnr(&out, &reference) >= 22.0);
}

/// `--quantize` writes its result to the quantization cache once; the next run loads it (saying so) and gives the
/// same image; `cache` lists the files and `cache clear` removes them.
#[test]
fn quantization_is_cached_for_the_next_run() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let run = |out: &std::path::Path| {
        let f = fixtures();
        let args = [
            "--model",
            &f.join("tiny-dev").to_string_lossy(),
            "--image",
            &f.join("images/wide-100x60.png").to_string_lossy(),
            "--prompt",
            "a cat",
            "--seed",
            "5",
            "--steps",
            "4",
            "--max-sequence-length",
            "16",
            "--quantize",
            "q8_0",
            "-q",
            "-o",
        ]
        .map(String::from);
        bin().args(args).arg(out).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap()
    };
    let (first, second) = (t.path().join("1.png"), t.path().join("2.png"));
    let o = run(&first);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("cached in"), "{}", stderr(&o));
    let o = run(&second);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("q8_0 transformer from the quantization cache")
            && err.contains("q8_0 T5 from the quantization cache"),
        "{err}"
    );
    assert_eq!(psnr(&first, &second), f64::INFINITY, "the cached model gives the same image");
    let o = bin().args(["cache"]).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2, "transformer and T5");
    let o = bin().args(["cache", "clear"]).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap();
    assert!(stderr(&o).contains("removed 2 files"), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2, "the removed files, one per line");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 0);
}

/// A community-style GGUF T5 encoder (llama.cpp names, Q8_0; scripts/convert_t5_to_gguf.py with gguf-py's own
/// name map) through --text-encoder-2: renamed once into the quantization cache, then loaded from there. Against the
/// dense-T5 image it measures 54.9 dB (Q8_0 rounding of T5 alone); a second run is identical; without its T5 tensors
/// the run cannot start.
#[test]
fn gguf_t5_encoder_through_text_encoder_2() {
    let t = tempfile::tempdir().unwrap();
    let dense = t.path().join("dense.png");
    assert_eq!(edit(&dense, &[]).status.code(), Some(0));
    let gguf = bfl("t5-encoder-Q8_0.gguf");
    let first = t.path().join("first.png");
    let o = edit(&first, &["--text-encoder-2", &gguf]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let db = psnr(&first, &dense);
    assert!((45.0..f64::INFINITY).contains(&db), "GGUF T5: {db:.1} dB");
    let second = t.path().join("second.png");
    let o = edit(&second, &["--text-encoder-2", &gguf]);
    assert!(stderr(&o).contains("T5 from the quantization cache"), "{}", stderr(&o));
    assert_eq!(psnr(&first, &second), f64::INFINITY);
    // A transformer GGUF is not a T5.
    let o = edit(&t.path().join("bad.png"), &["--text-encoder-2", &bfl("flux1-Q8_0.gguf")]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("these are not text_encoder_2 (T5) weights"), "{}", stderr(&o));
}
