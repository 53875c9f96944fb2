//! The memory estimate (`--dry-run`, `--json`) and `--memory-budget`: refused before anything loads, with a flag
//! that fits, and nothing written.

use crate::common::{bin, fixtures, stderr};
use serde_json::Value;
use std::path::Path;

fn dev() -> String {
    fixtures().join("tiny-dev").display().to_string()
}

fn edit(out: &Path, extra: &[&str]) -> std::process::Output {
    let input = fixtures().join("images/photo-96x64.png");
    let mut args = vec!["--model".to_string(), dev(), "-i".into(), input.display().to_string()];
    args.extend(["-p", "a cat", "--strength", "0.8", "--seed", "3", "--steps", "4", "-o"].map(String::from));
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    bin().env("FLUX_IMG2IMG_CACHE", out.with_file_name("qcache")).args(&args).output().unwrap()
}

fn estimate(out: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--dry-run", "--json"];
    args.extend(extra);
    let o = edit(out, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    v["memory_estimate"].clone()
}

/// Bytes of tensor data in a folder's safetensors shards: each file less its 8-byte length and JSON header.
fn data_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "safetensors") {
            let bytes = std::fs::read(&p).unwrap();
            let header = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            total += bytes.len() as u64 - 8 - header;
        }
    }
    total
}

#[test]
fn dry_run_reports_the_expected_peak() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    let m = estimate(&out, &[]);
    let peak = m["peak"].as_u64().unwrap();
    let stages = m["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["text encoding", "VAE encode", "denoising", "VAE decode"]);
    // The weights are the fixture's f32 tensors: exactly the data bytes of the shards on disk.
    let w = &m["weights"];
    let loaded = w["transformer"].as_u64().unwrap() + w["vae"].as_u64().unwrap();
    let on_disk: u64 = ["transformer", "vae"].iter().map(|c| data_bytes(&fixtures().join("tiny-dev").join(c))).sum();
    assert_eq!(loaded, on_disk);
    assert_eq!(m["backend"], "cpu");
    // Bigger sizes need more; quantizing needs less.
    let big = estimate(&out, &["--width", "512", "--height", "512"]);
    assert!(big["peak"].as_u64().unwrap() > peak);
    let q = estimate(&out, &["--quantize", "q4_0"]);
    assert!(q["weights"]["transformer"].as_u64().unwrap() < w["transformer"].as_u64().unwrap());
    // The plain dry run prints it on stderr.
    let o = edit(&out, &["--dry-run"]);
    assert!(stderr(&o).contains("memory: about"), "{}", stderr(&o));
}

#[test]
fn a_budget_below_the_estimate_refuses_before_loading() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    let dense = estimate(&out, &[])["peak"].as_u64().unwrap();
    let q8 = estimate(&out, &["--quantize", "q8_0"])["peak"].as_u64().unwrap();
    assert!(q8 < dense);
    // Between the two: the dense edit is refused and q8_0 is named as the fix.
    let budget = format!("{:.9}", (dense + q8) as f64 / 2.0 / 1e9);
    let o = edit(&out, &["--memory-budget", &budget]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.contains("--memory-budget") && err.contains("--quantize q8_0 would need"), "{err}");
    assert!(!out.exists(), "nothing is written");
    assert!(!err.contains("denois"), "refused before any step: {err}");
    // The same check in a dry run.
    let o = edit(&out, &["--memory-budget", &budget, "--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // With that flag it runs.
    let o = edit(&out, &["--memory-budget", &budget, "--quantize", "q8_0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(out.exists());
}

#[test]
fn a_budget_nothing_fits_says_so() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    let o = edit(&out, &["--memory-budget", "0.001"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("no smaller format or size fits"), "{err}");
    assert!(!out.exists());
}

#[test]
fn auto_budget_and_bad_values() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    // `auto` on the CPU is the host's available memory, far above a tiny edit.
    let o = edit(&out, &["--memory-budget", "auto", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for bad in ["0", "-3", "lots", "nan"] {
        let o = edit(&out, &["--memory-budget", bad]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("not a size in GB"), "{bad}: {err}");
    }
}

#[test]
fn a_smaller_size_is_suggested_when_no_format_fits() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    let t2i = |extra: &[&str]| {
        let mut args = vec!["--model".to_string(), dev(), "-p".into(), "a cat".into(), "-o".into()];
        args.push(out.display().to_string());
        args.extend(extra.iter().map(|a| a.to_string()));
        bin().env("FLUX_IMG2IMG_CACHE", t.path().join("qcache")).args(&args).output().unwrap()
    };
    let peak = |w: &str| {
        let o = t2i(&["--width", w, "--height", w, "--dry-run", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        v["memory_estimate"]["peak"].as_u64().unwrap()
    };
    // A budget that 256² fits and 512² does not, whatever the format (the VAE's activations dominate here).
    let budget = format!("{:.9}", (peak("256") + 1) as f64 / 1e9);
    let o = t2i(&["--width", "512", "--height", "512", "--memory-budget", &budget]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--width 256 --height 256 would need"), "{err}");
    assert!(!out.exists());
}

/// Tensor data bytes of a GGUF file, from its tensor table.
fn gguf_data_bytes(path: &Path) -> u64 {
    let mut f = std::fs::File::open(path).unwrap();
    let c = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    c.tensor_infos
        .values()
        .map(|t| (t.shape.elem_count() / t.ggml_dtype.block_size() * t.ggml_dtype.type_size()) as u64)
        .sum()
}

#[test]
fn quantized_sizes_are_what_the_quantization_cache_holds() {
    // The cache holds exactly what a quantized run loads: its data must equal the estimate's weights.
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("o.png");
    let m = estimate(&out, &["--quantize", "q4_0"]);
    let o = edit(&out, &["--quantize", "q4_0"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cached = |stem: &str| {
        let dir = t.path().join("qcache");
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(stem));
        gguf_data_bytes(&f.unwrap())
    };
    assert_eq!(m["weights"]["transformer"].as_u64().unwrap(), cached("transformer-"));
    let clip = data_bytes(&fixtures().join("tiny-dev/text_encoder"));
    assert_eq!(m["weights"]["text_encoders"].as_u64().unwrap(), clip + cached("t5-"));
}

#[test]
fn qwen3_quantized_size_is_what_the_cache_holds() {
    // FLUX.2: Qwen3's layers up to the last one read, without the final norm or lm_head, quantized like the cache.
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("k.png");
    let args = |extra: &[&str]| {
        let mut a = vec!["--model".to_string(), fixtures().join("tiny-klein").display().to_string()];
        a.extend(
            ["-p", "a red fox", "--width", "64", "--height", "64", "--seed", "1", "--quantize", "q8_0", "-o"]
                .map(String::from),
        );
        a.push(out.display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let cache = t.path().join("qcache");
    let o = bin().env("FLUX_IMG2IMG_CACHE", &cache).args(args(&["--dry-run", "--json"])).output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let o = bin().env("FLUX_IMG2IMG_CACHE", &cache).args(args(&[])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let qwen = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("qwen3-"));
    let w = &v["memory_estimate"]["weights"];
    assert_eq!(w["text_encoders"].as_u64().unwrap(), gguf_data_bytes(&qwen.unwrap()));
}

#[test]
fn chunked_attention_gives_the_same_image_and_is_advised_first() {
    // f16 on the CPU runs the composed attention, as CUDA does; chunking must not change a pixel.
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.png"), t.path().join("b.png"));
    assert_eq!(edit(&a, &["--dtype", "f16"]).status.code(), Some(0));
    assert_eq!(edit(&b, &["--dtype", "f16", "--attention-chunk", "7"]).status.code(), Some(0));
    let (ia, ib) = (image::open(&a).unwrap().to_rgb8(), image::open(&b).unwrap().to_rgb8());
    assert!(ia == ib, "chunked attention changed the image");
    // Over budget at 512², where chunks of 1024 rows bound the scores: the advice is the chunk, before any format.
    let out = t.path().join("c.png");
    let peak = |extra: &[&str]| {
        let mut args = vec!["--model".to_string(), dev(), "-p".into(), "a cat".into(), "-o".into()];
        args.push(out.display().to_string());
        args.extend(["--width", "512", "--height", "512", "--dtype", "f16"].map(String::from));
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = bin().env("FLUX_IMG2IMG_CACHE", t.path().join("q")).args(&args).output().unwrap();
        (o.status.code(), stderr(&o), o.stdout)
    };
    let json = |x: &[&str]| {
        let mut a = vec!["--dry-run", "--json"];
        a.extend(x);
        let v: Value = serde_json::from_slice(&peak(&a).2).unwrap();
        v["memory_estimate"]["peak"].as_u64().unwrap()
    };
    let (whole, chunked) = (json(&[]), json(&["--attention-chunk", "1024"]));
    let banded = json(&["--attention-chunk", "1024", "--vae-band", "128"]);
    assert!(banded < chunked && chunked < whole);
    let budget = format!("{:.9}", (whole + chunked) as f64 / 2.0 / 1e9);
    let (code, err, _) = peak(&["--memory-budget", &budget]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--attention-chunk 1024 would need"), "{err}");
    // Below what chunking alone reaches: banded VAE convolutions as well.
    let budget = format!("{:.9}", (chunked + banded) as f64 / 2.0 / 1e9);
    let (code, err, _) = peak(&["--memory-budget", &budget]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--attention-chunk 1024 --vae-band 128 would need"), "{err}");
}

#[test]
fn banded_vae_convolutions_give_the_same_image() {
    // f16 on the CPU runs candle's convolution, as CUDA does; bands of 3 output rows must not change a pixel.
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a.png"), t.path().join("b.png"));
    assert_eq!(edit(&a, &["--dtype", "f16"]).status.code(), Some(0));
    assert_eq!(edit(&b, &["--dtype", "f16", "--vae-band", "3"]).status.code(), Some(0));
    let (ia, ib) = (image::open(&a).unwrap().to_rgb8(), image::open(&b).unwrap().to_rgb8());
    assert!(ia == ib, "banded convolutions changed the image");
}
