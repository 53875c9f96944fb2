//! Fuzz harness: the readers of untrusted input — GGUF and safetensors headers, model configs, manifests, PNG
//! records (through `--from-metadata` expansion) and masks — fed mutated copies of real files and random data.
//! Each must answer Ok or a one-line error, never panic, hang or allocate without bound.
//!
//! Bounded by case count: `FUZZ_CASES` per target (default 24, the short pass CI runs); `scripts/fuzz.sh SECS`
//! repeats the targets with fresh random seeds until SECS have passed. A failure prints proptest's minimal
//! counterexample and its seed.

use proptest::prelude::*;
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn config() -> ProptestConfig {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(24);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

/// Byte-level mutations: (position fraction, new byte) flips, then an optional cut.
fn mutations() -> impl Strategy<Value = (Vec<(f64, u8)>, Option<f64>)> {
    (prop::collection::vec((0.0f64..1.0, any::<u8>()), 1..8), prop::option::of(0.0f64..1.0))
}

fn mutate(base: &[u8], (flips, cut): &(Vec<(f64, u8)>, Option<f64>), head: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    // Most flips land in the header, where the parsing happens.
    let span = head.min(b.len()).max(1);
    for (at, v) in flips {
        let i = ((at * span as f64) as usize).min(b.len() - 1);
        b[i] = *v;
    }
    if let Some(c) = cut {
        b.truncate((c * b.len() as f64) as usize);
    }
    b
}

fn temp_file(name: &str, bytes: &[u8]) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    (d, p)
}

fn gguf_sample() -> Vec<u8> {
    std::fs::read(fixtures().join("bfl-tiny-dev/flux1-Q8_0.gguf")).unwrap()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gguf_headers(m in mutations()) {
        let bytes = mutate(&gguf_sample(), &m, 4096);
        let _ = flux_img2img::weights::gguf::parse(&mut std::io::Cursor::new(&bytes), bytes.len() as u64);
    }

    #[test]
    fn gguf_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut b = b"GGUF\x03\0\0\0".to_vec();
        b.extend(bytes);
        let _ = flux_img2img::weights::gguf::parse(&mut std::io::Cursor::new(&b), b.len() as u64);
    }

    #[test]
    fn safetensors_headers(m in mutations()) {
        let base = std::fs::read(fixtures().join("bfl-tiny-dev/ae.safetensors")).unwrap();
        let bytes = mutate(&base, &m, 2048);
        let (_d, p) = temp_file("w.safetensors", &bytes);
        if let Ok(w) = flux_img2img::weights::CheckedWeights::open("vae", std::slice::from_ref(&p)) {
            let _ = w.names();
        }
        let how = flux_img2img::weights::sizes::LoadAs {
            dtype: candle_core::DType::F32,
            quantize: None,
            rule: flux_img2img::weights::sizes::Rule::Plain,
        };
        let _ = flux_img2img::weights::sizes::loaded_bytes(&[&p], how, |_| true);
    }

    #[test]
    fn model_configs(m in mutations(), which in 0usize..3) {
        let model = fixtures().join("tiny-dev");
        let d = tempfile::tempdir().unwrap();
        let names = ["transformer/config.json", "vae/config.json", "scheduler/scheduler_config.json"];
        let mut paths = Vec::new();
        for (i, n) in names.iter().enumerate() {
            let text = std::fs::read(model.join(n)).unwrap();
            let bytes = if i == which { mutate(&text, &m, text.len()) } else { text };
            let p = d.path().join(format!("{i}.json"));
            std::fs::write(&p, bytes).unwrap();
            paths.push(p);
        }
        let files = flux_img2img::config::ConfigFiles {
            family: flux_img2img::config::Family::Flux1,
            transformer: &paths[0],
            vae: &paths[1],
            scheduler: &paths[2],
            model_index: None,
        };
        let _ = flux_img2img::config::ModelConfigs::read(&files);
    }

    #[test]
    fn manifests(text in "[a-z.,\"\n0-9;:/ ]{0,200}", head in prop::bool::ANY) {
        let csv = if head { format!("image,prompt,strength,output\n{text}") } else { text.clone() };
        let _ = flux_img2img::cli::manifest::parse_csv(&csv);
        let _ = flux_img2img::cli::manifest::parse_jsonl(&text);
        let _ = flux_img2img::cli::manifest::parse_jsonl(&format!("{{\"image\":\"{text}\"}}"));
    }

    #[test]
    fn png_records(m in mutations(), record in "[ -~]{0,120}") {
        let d = tempfile::tempdir().unwrap();
        let png = d.path().join("r.png");
        let img = image::RgbImage::from_pixel(16, 16, image::Rgb([1, 2, 3]));
        let text = [("flux-img2img", format!("{{\"prompt\":\"x\",\"input\":\"{record}\",\"seed\":1}}"))];
        flux_img2img::output::write_png(&png, &img, &text).unwrap();
        let bytes = mutate(&std::fs::read(&png).unwrap(), &m, 200);
        std::fs::write(&png, bytes).unwrap();
        let _ = flux_img2img::output::read_text_chunk(&png, "flux-img2img");
        use clap::Parser;
        let args = flux_img2img::cli::Args::try_parse_from([
            "flux-img2img", "--from-metadata", png.to_str().unwrap(), "--model", "/nonexistent", "--dry-run",
        ]);
        if let Ok(a) = args {
            let _ = a.into_batch();
        }
    }

    #[test]
    fn masks(w in 1u32..48, h in 1u32..48, seed in any::<u64>(), radius in -5.0f32..1e9, tw in 1u32..64, th in 1u32..64) {
        use flux_img2img::image_io::mask;
        let img = image::RgbImage::from_fn(w, h, |x, y| {
            let v = (seed.wrapping_mul(31).wrapping_add((x * 7 + y * 13) as u64) % 256) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        let blurred = mask::gaussian_blur(&img, radius.min(1e6));
        let prepared = mask::prepare(&blurred, tw, th);
        let _ = mask::any(&prepared);
        if let Some(r) = mask::crop_region(&mask::luma(&blurred), tw, th, (seed % 40) as u32) {
            let _ = mask::resize_and_fill(&mask::crop(&blurred, r), tw, th);
        }
    }
}
