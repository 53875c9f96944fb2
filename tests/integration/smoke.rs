//! `flux-img2img smoke`: the embedded pipeline against diffusers' image, on the CPU (f32 and f16), and the exit
//! code and one-line message when the device cannot be used.

use crate::common::*;

#[test]
fn smoke_passes_on_the_cpu_in_f32_and_f16() {
    let o = run(&["smoke", "--json", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!(v["passed"], true);
    assert_eq!((v["device"].as_str(), v["dtype"].as_str()), (Some("cpu"), Some("f32")));
    // Measured: bit-identical to diffusers' float32 image (∞ dB; serialized as null).
    assert!(v["psnr_db"].is_null() || v["psnr_db"].as_f64().unwrap() >= 45.0, "{v}");
    for key in ["first_run_s", "second_run_s", "startup_s", "threshold_db"] {
        assert!(v[key].as_f64().is_some(), "{key} in {v}");
    }
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));

    // f16 against the f32 image: measured 44.7 dB, bar 30 dB.
    let o = run(&["smoke", "--dtype", "f16"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("verdict:  PASS") && text.contains("dtype:    f16"), "{text}");
}

#[test]
fn smoke_that_cannot_run_exits_2_with_one_line() {
    let o = run(&["smoke", "--device", "cuda", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.contains("built without CUDA"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["passed"].as_bool(), v["cannot_run"].as_bool()), (Some(false), Some(true)));
    let o = run(&["smoke", "--dtype", "bf16"]);
    assert_eq!(o.status.code(), Some(2), "bf16 needs CUDA");
    let o = run(&["smoke", "--kernels", "fused", "--json"]);
    assert_eq!(o.status.code(), Some(2), "fused kernels need CUDA");
    assert!(stderr(&o).contains("--kernels fused needs a CUDA device"), "{}", stderr(&o));
}

#[test]
fn smoke_runs_the_composed_path_on_the_cpu() {
    // Measured: bit-identical to diffusers' float32 image, as the CPU kernels are.
    let o = run(&["smoke", "--kernels", "composed", "--json", "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
    assert_eq!((v["passed"].as_bool(), v["kernels"].as_str()), (Some(true), Some("composed")), "{v}");
}
