//! Stable Diffusion LoRAs against diffusers: the tiny SD 1.x and SDXL pipelines with random LoRAs in kohya and
//! diffusers/PEFT names (UNet attention, feed-forward, proj_in/proj_out as 1×1 convs and as linears, every CLIP
//! linear of each encoder), compared with `load_lora_weights` + `set_adapters` outputs in
//! tests/fixtures/cases-sd-lora.json (written by scripts/make_sd_lora_fixtures.py); and the one-line errors for
//! a FLUX LoRA on an SD model.

use crate::common::*;
use std::path::Path;

const MIN_PSNR_DB: f64 = 45.0;
/// Without the LoRA, or with only its UNet half, diffusers' own output must fall below this.
const MAX_SENSITIVITY_DB: f64 = 30.0;

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// cases-sd-lora.json, then cases-sd-locon.json (a kohya LoCon: pairs on the UNet's 3×3 convolutions as well,
/// measured bit-identical; without its convolution pairs diffusers' image moves to 15.9 dB).
fn cases() -> Vec<serde_json::Value> {
    let mut all = Vec::new();
    for file in ["cases-sd-lora.json", "cases-sd-locon.json"] {
        let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        all.extend(v["cases"].as_array().unwrap().iter().cloned());
    }
    all
}

/// The flags that reproduce one case (`--lora FILE:WEIGHT`, Euler, CPU generator, f32).
fn args(case: &serde_json::Value, out: &Path) -> Vec<String> {
    let f = fixtures();
    let v = |k: &str| case[k].to_string().trim_matches('"').to_string();
    let lora = format!("{}:{}", s(&f.join("loras").join(v("lora"))), v("weight"));
    let mut a = vec!["--model".into(), s(&f.join(v("model"))), "--prompt".into(), v("prompt"), "--lora".into(), lora];
    for (flag, key) in [
        ("--width", "width"),
        ("--height", "height"),
        ("--steps", "steps"),
        ("--seed", "seed"),
        ("--guidance", "guidance"),
        ("--scheduler", "scheduler"),
    ] {
        a.extend([flag.to_string(), v(key)]);
    }
    if !case["lora_scale"].is_null() {
        a.extend(["--lora-scale".into(), v("lora_scale")]);
    }
    a.extend(["--rng", "torch-cpu", "--dtype", "f32", "-q", "-o"].map(String::from));
    a.push(s(out));
    a
}

/// Each case of cases-sd-lora.json (SD 1.x and SDXL, kohya in diffusers' and in the original block names, PEFT,
/// adapter weights 0.6–1.0, and `--lora-scale`) and the LoCon case.
#[test]
fn sd_loras_match_diffusers() {
    for file in ["cases-sd-lora.json", "cases-sd-locon.json"] {
        crate::modes::run_cases(file, args, |_| MAX_SENSITIVITY_DB);
    }
}

/// `--lora-scale` multiplies the adapters as diffusers' `cross_attention_kwargs={"scale": s}` does: scale 0 is
/// the model without the LoRA, so it lands on the no-LoRA image and far from the LoRA reference.
#[test]
fn sd_lora_scale_zero_is_no_lora() {
    let case = cases().into_iter().next().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (with, zero, plain) = (dir.path().join("a.png"), dir.path().join("b.png"), dir.path().join("c.png"));
    let base = args(&case, &with);
    assert!(bin().args(&base).output().unwrap().status.success());
    let mut z = args(&case, &zero);
    z.extend(["--lora-scale".into(), "0".into()]);
    let o = bin().args(&z).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let mut p = args(&case, &plain);
    let at = p.iter().position(|a| a == "--lora").unwrap();
    p.drain(at..at + 2);
    assert!(bin().args(&p).output().unwrap().status.success());
    assert!(psnr(&zero, &plain) > 60.0, "scale 0 = no LoRA: {:.1} dB", psnr(&zero, &plain));
    assert!(psnr(&zero, &with) < MAX_SENSITIVITY_DB);
}

/// A FLUX LoRA on an SD model is one error line (exit 2, no output).
#[test]
fn flux_lora_on_sd_is_one_line() {
    let f = fixtures();
    for (model, lora) in [("tiny-sd15", "kohya.safetensors"), ("tiny-sdxl", "peft.safetensors")] {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out.png");
        let o = bin()
            .args([
                "--model",
                &s(&f.join(model)),
                "--prompt",
                "a cat",
                "--steps",
                "2",
                "--width",
                "32",
                "--height",
                "32",
                "-q",
                "-o",
                &s(&out),
            ])
            .args(["--lora", &s(&f.join("loras").join(lora))])
            .output()
            .unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{model} + {lora}: {err}");
        assert!(err.contains("is for FLUX") && err.contains("not Stable Diffusion"), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!out.exists());
    }
}

/// A manifest's lora column on an SD model: the row with the LoRA matches diffusers' output with it, the row
/// without runs the plain model (the batch drops the merged UNet and CLIP side paths between them).
#[test]
fn sd_lora_from_manifest_column() {
    let case = cases().into_iter().find(|c| c["name"] == "sd15-lora-peft").unwrap();
    let f = fixtures();
    let t = tempfile::tempdir().unwrap();
    let lora = format!("{}:{}", s(&f.join("loras/sd15-peft.safetensors")), case["weight"]);
    let prompt = case["prompt"].as_str().unwrap();
    let manifest = t.path().join("m.csv");
    let rows = format!("prompt,seed,output,lora\n\"{prompt}\",41,with.png,{lora}\n\"{prompt}\",41,without.png,\n");
    std::fs::write(&manifest, rows).unwrap();
    let o = bin()
        .args(["--model", &s(&f.join("tiny-sd15")), "--manifest", &s(&manifest)])
        .args(["--width", "48", "--height", "64", "--steps", "5", "--guidance", "7.5", "--scheduler", "euler"])
        .args(["--rng", "torch-cpu", "--dtype", "f32", "-q"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = f.join(case["expected"].as_str().unwrap());
    let (with, without) = (psnr(&t.path().join("with.png"), &expected), psnr(&t.path().join("without.png"), &expected));
    eprintln!("manifest lora column: with {with:.1} dB, without {without:.1} dB");
    assert!(with >= MIN_PSNR_DB, "{with:.2} dB");
    assert!(without < MAX_SENSITIVITY_DB, "{without:.2} dB");
}
