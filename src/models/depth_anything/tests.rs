//! Parity with transformers on scripts/make_depth_fixtures.py's tiny random model, f32 on the CPU. The
//! fixture also records how far transformers' own output moves for a wrong fusion upsampling, a wrong (or no)
//! position-embedding interpolation and another input image: each must be far below the bars here.

use super::config::*;
use super::interp::*;
use super::*;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;

/// predicted_depth PSNR (peak = the reference's largest value). f32 reorderings (SDPA vs matmul-softmax,
/// im2col convs, FMA in the interpolation sums) differ by ~1e-7 relative per op; through 4 layers and the
/// neck that stays far above this, while every sensitivity in the fixture is below 40 dB.
const DEPTH_BAR_DB: f64 = 100.0;
/// Largest |ours − transformers| allowed, relative to the reference's peak.
const MAX_ABS_REL: f32 = 1e-5;

#[derive(Deserialize)]
struct Fixture {
    vectors: String,
    model: String,
    cases: Vec<Case>,
    metric: Metric,
}

#[derive(Deserialize)]
struct Metric {
    case: String,
    max_depth: f64,
    vector: String,
    sensitivity_depth_psnr_db: HashMap<String, f64>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    image: String,
    expected: String,
    processed_size: [usize; 2],
    pixel_values_sha256: String,
    sensitivity_png_psnr_db: HashMap<String, f64>,
    sensitivity_depth_psnr_db: HashMap<String, f64>,
}

/// (max |a − reference|, PSNR dB with the reference's largest magnitude as the peak, that peak).
fn compare(a: &Tensor, reference: &Tensor) -> (f32, f64, f32) {
    assert_eq!(a.dims(), reference.dims());
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let r = reference.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let peak = r.iter().fold(0f32, |m, x| m.max(x.abs()));
    let max_abs = a.iter().zip(&r).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    let mse = a.iter().zip(&r).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / r.len() as f64;
    (max_abs, 10.0 * ((peak as f64).powi(2) / mse).log10(), peak)
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn fixture() -> Fixture {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("depth-cases.json")).unwrap()).unwrap()
}

fn model(f: &Fixture) -> DepthAnything {
    model_on(f, &Device::Cpu)
}

fn model_on(f: &Fixture, device: &Device) -> DepthAnything {
    DepthAnything::load(&fixtures().join(&f.model), DType::F32, device).unwrap()
}

fn input(case: &Case) -> RgbImage {
    image::open(fixtures().join("images").join(&case.image)).unwrap().to_rgb8()
}

#[test]
fn depth_predicted_depth_matches_transformers() {
    predicted_depth_matches(&Device::Cpu);
}

fn predicted_depth_matches(device: &Device) {
    let f = fixture();
    let m = model_on(&f, device);
    let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
    for case in &f.cases {
        let pixels = m.preprocess(&input(case)).unwrap();
        let [w, h] = case.processed_size;
        assert_eq!(pixels.dims(), &[1, 3, h, w], "{}", case.name);
        // The processor's output bit for bit: PIL's bicubic, f64 rescale, f32 normalisation.
        let bytes: Vec<u8> =
            pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
        let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(digest, case.pixel_values_sha256, "{}: pixel_values differ from transformers'", case.name);

        let reference = &vectors[&format!("{}.predicted_depth", case.name)];
        assert_eq!(reference.dims(), &[1, h, w], "{}", case.name);
        let (max_abs, psnr, peak) = compare(&m.forward(&pixels).unwrap(), reference);
        let worst = case.sensitivity_depth_psnr_db.values().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
        eprintln!(
            "{} on {:?}: predicted_depth {w}x{h} max |err| {max_abs:.3e} (peak {peak:.3}), PSNR {psnr:.1} dB \
             (bar {DEPTH_BAR_DB} dB; sensitivities {:?})",
            case.name,
            device.location(),
            case.sensitivity_depth_psnr_db
        );
        assert!(worst < DEPTH_BAR_DB - 30.0, "{}: the fixture cannot tell a wrong port apart", case.name);
        assert!(psnr >= DEPTH_BAR_DB, "{}: PSNR {psnr:.1} dB below {DEPTH_BAR_DB}", case.name);
        assert!(max_abs <= MAX_ABS_REL * peak, "{}: max |err| {max_abs} over {}", case.name, MAX_ABS_REL * peak);
    }
}

/// How close to a grey-level boundary our unquantised value must lie for a pixel to be allowed one level off
/// transformers': the measured predicted_depth error (≤ 2.4e-4 of a 72 peak, ≈ 1e-3 grey levels after the
/// min-max scaling) with a tenfold margin. On this machine no pixel differs at all; another CPU's summation
/// order may move a value sitting on a boundary across it, and only such a value.
const BOUNDARY_EPS: f32 = 0.01;

#[test]
fn depth_map_matches_the_pipeline_png() {
    png_matches(&Device::Cpu);
}

fn png_matches(device: &Device) {
    let f = fixture();
    let m = model_on(&f, device);
    for case in &f.cases {
        let img = input(case);
        let ours = m.depth_map(&img).unwrap();
        let levels = m.grey_levels(&img).unwrap();
        let expected = image::open(fixtures().join(&case.expected)).unwrap().to_rgb8();
        assert_eq!(ours.dimensions(), img.dimensions(), "{}: the depth map has the input's size", case.name);
        assert_eq!(ours.dimensions(), expected.dimensions(), "{}", case.name);
        assert!(ours.pixels().all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]), "{}: not grey", case.name);
        let mut differing = 0;
        for (i, (a, b)) in ours.pixels().zip(expected.pixels()).enumerate() {
            let (a, b) = (a.0[0], b.0[0]);
            if a != b {
                differing += 1;
                let boundary = a.max(b) as f32;
                assert!(
                    a.abs_diff(b) == 1 && (levels[i] - boundary).abs() < BOUNDARY_EPS,
                    "{}: pixel {i} is {a}, transformers' {b} (unquantised {})",
                    case.name,
                    levels[i]
                );
            }
        }
        // Values this close to a boundary are the ones another machine could see land one level off (the min
        // and max pixels sit exactly on 0 and 255 by construction and are not counted).
        let near = levels.iter().filter(|&&v| v != 0.0 && v != 255.0 && (v - v.round()).abs() < BOUNDARY_EPS).count();
        let psnr = image_io::psnr(&ours, &expected);
        eprintln!(
            "{} on {:?}: depth PNG {}x{}: {differing} of {} pixels differ, PSNR {psnr:.1} dB; {near} values lie within \
             {BOUNDARY_EPS} of a grey-level boundary (sensitivities {:?})",
            case.name,
            device.location(),
            img.width(),
            img.height(),
            levels.len(),
            case.sensitivity_png_psnr_db
        );
        let worst = case.sensitivity_png_psnr_db.values().fold(f64::NEG_INFINITY, |a, &x| a.max(x));
        assert!(worst < 45.0, "{}: the fixture cannot tell a wrong port apart", case.name);
    }
}

#[test]
fn depth_metric_head_matches_transformers() {
    let f = fixture();
    let dir = broken(|d| {
        edit_config(d, |v| {
            v["depth_estimation_type"] = "metric".into();
            v["max_depth"] = f.metric.max_depth.into();
        })
    });
    let m = DepthAnything::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let case = f.cases.iter().find(|c| c.name == f.metric.case).unwrap();
    let ours = m.forward(&m.preprocess(&input(case)).unwrap()).unwrap();
    let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
    let (max_abs, psnr, peak) = compare(&ours, &vectors[&f.metric.vector]);
    eprintln!(
        "{} (metric head, max_depth {}): max |err| {max_abs:.3e} (peak {peak:.3}), PSNR {psnr:.1} dB \
         (relative head instead: {:?})",
        case.name, f.metric.max_depth, f.metric.sensitivity_depth_psnr_db
    );
    // The same pre-activation error as the relative head's (bounded by MAX_ABS_REL of that head's peak), through
    // the sigmoid's steepest slope 1/4 and the ×max_depth; the metric peak itself saturates at max_depth.
    let relative = &vectors[&format!("{}.predicted_depth", case.name)];
    let relative_peak = relative.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    let bound = MAX_ABS_REL * relative_peak * f.metric.max_depth as f32 / 4.0;
    assert!(psnr >= DEPTH_BAR_DB, "{}: PSNR {psnr:.1} dB below {DEPTH_BAR_DB}", case.name);
    assert!(max_abs <= bound, "{}: max |err| {max_abs} over {bound}", case.name);
}

/// A folder holding the fixture's files, `edit`ed.
fn broken(edit: impl FnOnce(&Path)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join("tiny-depth-anything");
    for name in ["config.json", "model.safetensors", "preprocessor_config.json"] {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    }
    edit(dir.path());
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, v.to_string()).unwrap();
}

fn load_error(dir: &Path) -> String {
    match DepthAnything::load(dir, DType::F32, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => {
            let line = e.one_line();
            eprintln!("{line}");
            assert!(!line.contains('\n'), "{line}");
            line
        }
    }
}

#[test]
fn depth_bad_folders_give_one_clear_line() {
    let empty = tempfile::tempdir().unwrap();
    let line = load_error(empty.path());
    assert!(line.contains("config.json") && line.contains("cannot read"), "{line}");

    let other = broken(|d| edit_config(d, |v| v["model_type"] = "dpt".into()));
    assert!(load_error(other.path()).contains("model_type \"dpt\" is not \"depth_anything\""));

    let swiglu = broken(|d| edit_config(d, |v| v["backbone_config"]["use_swiglu_ffn"] = true.into()));
    assert!(load_error(swiglu.path()).contains("use_swiglu_ffn"));

    let no_weights = broken(|d| std::fs::remove_file(d.join("model.safetensors")).unwrap());
    assert!(load_error(no_weights.path()).contains("model.safetensors"));

    let missing = broken(|d| {
        let path = d.join("model.safetensors");
        let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        t.remove("head.conv3.weight");
        t.remove("backbone.encoder.layer.2.mlp.fc1.bias");
        candle_core::safetensors::save(&t, &path).unwrap();
    });
    let line = load_error(missing.path());
    assert!(line.contains("2 missing") && line.contains("head.conv3.weight"), "{line}");

    let wide = broken(|d| edit_config(d, |v| v["backbone_config"]["hidden_size"] = 32.into()));
    assert!(load_error(wide.path()).contains("mis-shaped"));
}

#[test]
fn depth_interpolation_follows_torch() {
    // torch's F.interpolate of one random [1, 2, 4, 6] input (|x| < 3) to sizes up, down and mixed (the fixture
    // script). torch's compiled kernel contracts the index and cubic-coefficient arithmetic into FMAs, so its
    // weights differ from these plain f32 ones by about an ulp: measured ≤ 1.4e-6 here. A wrong kernel (A = −0.5,
    // nearest, corners aligned or not) is off by 1e-2 or more.
    let f = fixture();
    let vectors = candle_core::safetensors::load(fixtures().join(&f.vectors), &Device::Cpu).unwrap();
    let x = &vectors["interp.input"];
    let mut checked = 0;
    for (name, expected) in vectors.iter().filter(|(n, _)| n.starts_with("interp.") && *n != "interp.input") {
        let mode = match name.split('.').nth(1).unwrap() {
            "bicubic" => Interp::Bicubic,
            "bilinear" => Interp::Bilinear { align_corners: false },
            "bilinear_aligned" => Interp::Bilinear { align_corners: true },
            other => panic!("{other}"),
        };
        let (_, _, h, w) = expected.dims4().unwrap();
        let ours = resize(x, h, w, mode).unwrap();
        let err = (ours - expected).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        eprintln!("{name}: max |err| {err:.2e}");
        assert!(err < 1e-5, "{name}: {err}");
        checked += 1;
    }
    assert_eq!(checked, 9);
}

/// The same two parity checks on a GPU: `cargo test --features cuda --lib depth_on_cuda -- --ignored` on a
/// machine with one (candle's CUDA kernels for the convolutions, gathers and attention).
#[test]
#[ignore = "needs a CUDA device and --features cuda"]
fn depth_on_cuda_matches_transformers() {
    let device = Device::new_cuda(0).unwrap();
    predicted_depth_matches(&device);
    png_matches(&device);
}

/// f16 weights and activations (the fixture's weights are stored in f16, so only the arithmetic rounds):
/// measured 60.7 and 64.8 dB against transformers' f32 PNG; every sensitivity stays under 40 dB.
const HALF_BAR_DB: f64 = 50.0;

#[test]
fn depth_map_in_f16_stays_close() {
    let f = fixture();
    let m = DepthAnything::load(&fixtures().join(&f.model), DType::F16, &Device::Cpu).unwrap();
    for case in &f.cases {
        let ours = m.depth_map(&input(case)).unwrap();
        let expected = image::open(fixtures().join(&case.expected)).unwrap().to_rgb8();
        let psnr = image_io::psnr(&ours, &expected);
        eprintln!("{}: depth PNG in f16: PSNR {psnr:.1} dB (bar {HALF_BAR_DB} dB)", case.name);
        assert!(psnr >= HALF_BAR_DB, "{}: {psnr:.1} dB", case.name);
    }
}

#[test]
fn depth_hub_config_fills_in_transformers_defaults() {
    // Depth-Anything-V2-Small-hf's config.json names only what differs from the defaults.
    let cfg: DepthAnythingConfig = serde_json::from_str(
        r#"{"model_type": "depth_anything", "architectures": ["DepthAnythingForDepthEstimation"],
            "backbone_config": {"architectures": ["Dinov2Model"], "hidden_size": 384, "image_size": 518,
              "model_type": "dinov2", "num_attention_heads": 6, "out_features": ["stage3", "stage6", "stage9",
              "stage12"], "out_indices": [3, 6, 9, 12], "reshape_hidden_states": false},
            "depth_estimation_type": "relative", "fusion_hidden_size": 64, "head_hidden_size": 32,
            "head_in_index": -1, "neck_hidden_sizes": [48, 96, 192, 384], "patch_size": 14,
            "reassemble_factors": [4, 2, 1, 0.5], "reassemble_hidden_size": 384}"#,
    )
    .unwrap();
    let b = &cfg.backbone_config;
    assert_eq!((b.num_hidden_layers, b.mlp_ratio, b.layer_norm_eps), (12, 4.0, 1e-6));
    assert_eq!(b.stages().unwrap(), vec![3, 6, 9, 12]);
    assert_eq!(cfg.max_depth, Some(1.0));
    cfg.check().unwrap();
    // An explicit null: transformers 5.23's head multiplies by None and raises, so the port refuses it.
    let null = DepthAnythingConfig { max_depth: None, ..cfg.clone() };
    assert!(null.check().unwrap_err().contains("max_depth is null"));
    // Only out_features: the same stages.
    let b = Dinov2Config { out_indices: None, ..cfg.backbone_config.clone() };
    assert_eq!(b.stages().unwrap(), vec![3, 6, 9, 12]);
    // Neither: the last stage only.
    let b = Dinov2Config { out_features: None, ..b };
    assert_eq!(b.stages().unwrap(), vec![12]);
}

#[test]
fn depth_without_preprocessor_config_uses_depth_anything_v2_settings() {
    let dir = broken(|d| std::fs::remove_file(d.join("preprocessor_config.json")).unwrap());
    let m = DepthAnything::load(dir.path(), DType::F32, &Device::Cpu).unwrap();
    let img = image::open(fixtures().join("images/photo-96x64.png")).unwrap().to_rgb8();
    assert_eq!(m.preprocess(&img).unwrap().dims(), &[1, 3, 350, 518]);
}

#[test]
fn depth_reads_transformers_5_attention_names() {
    // The names transformers 5 uses in memory (`attention.{q,k,v,o}_proj`), as a checkpoint might store them.
    let renamed = broken(|d| {
        let path = d.join("model.safetensors");
        let renames = [
            ("attention.attention.query.", "attention.q_proj."),
            ("attention.attention.key.", "attention.k_proj."),
            ("attention.attention.value.", "attention.v_proj."),
            ("attention.output.dense.", "attention.o_proj."),
        ];
        let t: HashMap<String, Tensor> = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap()
            .into_iter()
            .map(|(n, t)| (renames.iter().fold(n, |n, (a, b)| n.replace(a, b)), t))
            .collect();
        assert!(t.keys().any(|n| n.contains(".attention.q_proj.")));
        candle_core::safetensors::save(&t, &path).unwrap();
    });
    let f = fixture();
    let (a, b) = (model(&f), DepthAnything::load(renamed.path(), DType::F32, &Device::Cpu).unwrap());
    let pixels = a.preprocess(&input(&f.cases[0])).unwrap();
    let diff = (a.forward(&pixels).unwrap() - b.forward(&pixels).unwrap()).unwrap().abs().unwrap();
    assert_eq!(diff.max_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn depth_processor_sizes_follow_dpt() {
    let p = ProcessorConfig::depth_anything();
    // 96x64: the width scales least (518/96), the height follows and rounds to a multiple of 14.
    assert_eq!(p.target_size(96, 64), (518, 350));
    let mut small = p.clone();
    small.size = Size { height: 70, width: 70 };
    // 105 / 14 = 7.5 rounds half to even: 8 · 14 = 112 (the fixture's processed size).
    assert_eq!(small.target_size(96, 64), (112, 70));
    assert_eq!(small.target_size(80, 80), (70, 70));
}
