//! The discrete schedulers against diffusers 0.42.1 (tests/fixtures/schedulers.json, made by
//! scripts/make_scheduler_vectors.py): timesteps, sigmas, init_noise_sigma, and whole loops on a small sample —
//! every scaled input and every step's result — for the SD 1.5 / 2.1 / XL configs as the Hub ships them (read with
//! the checkpoint class's defaults, then by each scheduler), other spacings and beta schedules, PRK warm-up, Karras
//! sigmas and img2img starts; and LMS's integrated coefficients.

use super::*;
use crate::rng::{generator, CudaGeometry, NoiseSource, Precision, RngSettings};
use candle_core::{Device, Tensor};
use serde_json::Value;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../../tests/fixtures/schedulers.json")).expect("valid vectors")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().expect("array").iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

fn tensor(v: &[f32]) -> Tensor {
    Tensor::from_vec(v.to_vec(), (1, 2, 3, 3), &Device::Cpu).expect("18 values")
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// Largest difference relative to the largest magnitude of the reference (0 when both are 0).
fn rel_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs() as f64)).max(1e-30);
    got.iter().zip(want).map(|(g, w)| (*g as f64 - *w as f64).abs()).fold(0.0, f64::max) / scale
}

fn draw(gen: &mut dyn NoiseSource, n: usize) -> Vec<f32> {
    gen.randn(n, Precision::F32)
}

/// Runs one case's loop; gives the worst relative error of the start, the scaled inputs and the step results.
fn run_case(case: &Value) -> std::result::Result<f64, String> {
    let raw = case["config"].as_object().expect("config");
    let kind: SchedulerKind = case["kind"].as_str().unwrap().parse().map_err(|e: String| e)?;
    let settings = Settings::for_kind(raw, kind)?;
    let (steps, begin) = (case["steps"].as_u64().unwrap() as usize, case["begin"].as_u64().unwrap() as usize);
    let mut s = build(kind, &settings, steps)?;
    let ts: Vec<f64> = case["timesteps"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
    // Karras timesteps come from logs of float32 sigmas: a float32 ulp apart at most.
    if s.timesteps().iter().zip(&ts).any(|(a, b)| (a - b).abs() > 1e-6 * b.abs().max(1.0))
        || s.timesteps().len() != ts.len()
    {
        return Err(format!("timesteps {:?}, diffusers {ts:?}", s.timesteps()));
    }
    let mut worst = 0f64;
    let init = case["init_noise_sigma"].as_f64().unwrap();
    worst = worst.max((s.init_noise_sigma() - init).abs() / init);
    if let Some(sig) = case.get("sigmas") {
        let ours: Vec<f32> = (0..ts.len()).map(|i| s.sigma_at(i) as f32).collect();
        worst = worst.max(rel_err(&ours, &floats(sig)[..ts.len()]));
    }
    let (x0, noise) = (tensor(&floats(&case["x0"])), tensor(&floats(&case["noise"])));
    let mut x = if begin > 0 {
        s.add_noise(&x0, &noise, begin).unwrap()
    } else {
        super::mul(&noise, s.init_noise_sigma() as f32).unwrap()
    };
    worst = worst.max(rel_err(&values(&x), &floats(&case["start"])));
    let settings_cpu = RngSettings::default();
    let mut step_gen = generator(&settings_cpu, 7, CudaGeometry::H100);
    for (k, idx) in (begin..ts.len()).enumerate() {
        let xin = s.scale_input(&x, idx).unwrap();
        worst = worst.max(rel_err(&values(&xin), &floats(&case["scaled"][k])));
        let e = tensor(&draw(generator(&settings_cpu, 1000 + k as u64, CudaGeometry::H100).as_mut(), 18));
        let out = ((&xin * 0.5).unwrap() + e).unwrap();
        let mut noise =
            |like: &Tensor| Tensor::from_vec(draw(step_gen.as_mut(), like.elem_count()), like.shape(), like.device());
        x = s.step(&out, idx, &x, &mut noise).unwrap();
        worst = worst.max(rel_err(&values(&x), &floats(&case["results"][k])));
    }
    Ok(worst)
}

/// Every case within 2e-6 of diffusers relative to the sample's magnitude (float32 rounding: the loops
/// compute the same operations in the same order; measured at most 7.3e-7), and the whole set of cases present.
#[test]
fn schedulers_match_diffusers() {
    let v = vectors();
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 50, "scheduler vectors are missing");
    let (mut failures, mut worst) = (Vec::new(), 0f64);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        match run_case(case) {
            Ok(err) if err <= 2e-6 => worst = worst.max(err),
            Ok(err) => failures.push(format!("{name}: relative error {err:.2e}")),
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    eprintln!("schedulers: worst relative error {worst:.2e} over {} cases", cases.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A wrong setting moves the loops far from diffusers, so the checks above are sensitive: v-prediction read as
/// epsilon is off by 4.1 times the sample's magnitude; PNDM's "leading" spacing carried over to Euler, or Karras
/// sigmas dropped, change the timesteps themselves.
#[test]
fn scheduler_vectors_are_sensitive() {
    let v = vectors();
    for (name, key, value) in [
        ("sd21-ddim-10-0", "prediction_type", Value::from("epsilon")),
        ("sd15-euler-10-0", "timestep_spacing", Value::from("leading")),
        ("sdxl-karras-euler-8-0", "use_karras_sigmas", Value::from(false)),
    ] {
        let mut case = v["cases"].as_array().unwrap().iter().find(|c| c["name"] == name).unwrap().clone();
        case["config"][key] = value;
        let err = run_case(&case).unwrap_or(f64::INFINITY);
        eprintln!("{name} with another {key}: {err:.2e}");
        assert!(err > 1e-3, "{name} with another {key}: still within {err:.2e}");
    }
}

/// LMS's coefficients: scipy's quad of the Lagrange basis, reproduced by one 21-point Gauss–Kronrod rule. Within
/// 1e-6 relative, not bit for bit: torch's vectorised float32 square root (AVX-512 here) is one ulp off the IEEE
/// one for 190 of SD's 1000 training sigmas, so a few sigmas, and the integrals over them, differ by an ulp
/// (measured 7e-8).
#[test]
fn lms_coefficients_match_scipy() {
    let v = vectors();
    let l = &v["lms_coefficients"];
    let settings = Settings::for_kind(l["config"].as_object().unwrap(), SchedulerKind::Lms).unwrap();
    let lms = lms::Lms::new(&settings, l["steps"].as_u64().unwrap() as usize).unwrap();
    for row in l["rows"].as_array().unwrap() {
        let (t, order) = (row["t"].as_u64().unwrap() as usize, row["order"].as_u64().unwrap() as usize);
        for (c, want) in row["coeffs"].as_array().unwrap().iter().enumerate() {
            let (got, want) = (lms.coefficient(order, t, c), want.as_f64().unwrap());
            assert!((got - want).abs() <= 1e-6 * want.abs().max(1e-3), "t {t} order {order} c {c}: {got} vs {want}");
        }
    }
}

#[test]
fn kinds_read_from_configs() {
    let raw = |s: &str| serde_json::from_str::<serde_json::Map<String, Value>>(s).unwrap();
    assert_eq!(SchedulerKind::of_config("PNDMScheduler", &raw("{}")), Some(SchedulerKind::Pndm));
    let karras = raw(r#"{"use_karras_sigmas": true}"#);
    assert_eq!(SchedulerKind::of_config("DPMSolverMultistepScheduler", &karras), Some(SchedulerKind::DpmPp2mKarras));
    assert_eq!(SchedulerKind::of_config("UniPCMultistepScheduler", &karras), None);
    let thresholding = raw(r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#);
    let s = Settings::for_kind(&thresholding, SchedulerKind::Ddim).unwrap();
    assert!(s.check(SchedulerKind::Ddim).unwrap_err().contains("thresholding"));
    // Another class ignores the field it does not have.
    assert!(Settings::for_kind(&thresholding, SchedulerKind::Euler).unwrap().check(SchedulerKind::Euler).is_ok());
}
