//! Bad input never panics and never writes: one `error:` line naming what is wrong and the fix, exit code 2,
//! no output file, the input untouched.

use crate::common::*;
use std::path::{Path, PathBuf};

struct Case {
    tmp: tempfile::TempDir,
    out: PathBuf,
}

impl Case {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("out.png");
        Case { tmp, out }
    }

    fn base(&self, model: &Path, image: &Path) -> Vec<String> {
        vec![
            "--model".into(),
            model.to_string_lossy().into(),
            "--image".into(),
            image.to_string_lossy().into(),
            "--prompt".into(),
            "a cat".into(),
            "--steps".into(),
            "2".into(),
            "--max-sequence-length".into(),
            "16".into(),
            "--output".into(),
            self.out.to_string_lossy().into(),
        ]
    }

    /// Runs with the base flags plus `extra` and checks the failure contract; returns stderr.
    fn fails(&self, model: &Path, image: &Path, extra: &[&str], needle: &str) -> String {
        let mut args = self.base(model, image);
        // A flag already in the base set takes the new value; others are appended.
        for pair in extra.chunks(2) {
            match args.iter().position(|a| a == pair[0]) {
                Some(i) if pair.len() == 2 => args[i + 1] = pair[1].to_string(),
                _ => args.extend(pair.iter().map(|s| s.to_string())),
            }
        }
        let o = bin().args(&args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "exit code for {extra:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "expected {needle:?} in: {err}");
        let error_lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error_lines.len(), 1, "one error line: {err}");
        assert!(!self.out.exists(), "no output file after a failure");
        let leftovers: Vec<_> = std::fs::read_dir(self.tmp.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary files left: {leftovers:?}");
        assert!(o.stdout.is_empty(), "stdout stays empty on failure");
        err
    }
}

fn dev() -> PathBuf {
    fixtures().join("tiny-dev")
}
fn img() -> PathBuf {
    fixtures().join("images/gradient-80x80.png")
}

#[test]
fn missing_and_non_image_inputs() {
    let c = Case::new();
    c.fails(&dev(), &c.tmp.path().join("nope.jpg"), &[], "no such file");
    let txt = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(txt.path(), "not an image at all").unwrap();
    c.fails(&dev(), txt.path(), &[], "not an image");
    let trunc = tempfile::Builder::new().suffix(".png").tempfile().unwrap();
    let bytes = std::fs::read(img()).unwrap();
    std::fs::write(trunc.path(), &bytes[..bytes.len() / 3]).unwrap();
    c.fails(&dev(), trunc.path(), &[], "cannot decode");
    // A folder is a batch of its images; one without any is an error.
    c.fails(&dev(), &fixtures(), &[], "the folder has no images");
}

#[test]
fn out_of_range_flags() {
    let c = Case::new();
    c.fails(&dev(), &img(), &["--strength", "1.5"], "outside [0, 1]");
    c.fails(&dev(), &img(), &["--strength", "-0.1"], "outside [0, 1]");
    c.fails(&dev(), &img(), &["--steps", "0"], "at least one step");
    c.fails(&dev(), &img(), &["--max-sequence-length", "600"], "1..=512");
    c.fails(&dev(), &img(), &["--device", "tpu"], "expected cpu, cuda or cuda:N");
    c.fails(&dev(), &img(), &["--dtype", "bf16"], "not available on the CPU");
}

/// `--kernels fused` on the CPU, also in a dry run and from a batch of several inputs: one usage error up front,
/// before any item is planned. (On CUDA it runs the compiled kernels, the composition where none fits; no test
/// here can reach a CUDA device: scripts/gpu-check.sh does.)
#[test]
fn fused_kernels_are_refused_on_the_cpu() {
    let c = Case::new();
    let needle = "--kernels fused needs a CUDA device";
    c.fails(&dev(), &img(), &["--kernels", "fused"], needle);
    c.fails(&dev(), &img(), &["--kernels", "fused", "--dry-run"], needle);
    c.fails(&dev(), &fixtures().join("images"), &["--kernels", "fused"], needle);
}

#[test]
fn strength_too_low_names_the_smallest_that_runs() {
    let c = Case::new();
    let err = c.fails(&dev(), &img(), &["--strength", "0"], "leaves no denoising step");
    assert!(err.contains("0.5000"), "suggests 1/steps for the 2 steps asked: {err}");
}

#[test]
fn sizes_off_the_latent_grid() {
    let c = Case::new();
    let err = c.fails(&dev(), &img(), &["--width", "50"], "not a multiple of 16");
    assert!(err.contains("use 48 or 64"), "{err}");
    c.fails(&dev(), &img(), &["--height", "0"], "not a multiple of 16");
}

#[test]
fn missing_model_folder_and_components() {
    let c = Case::new();
    c.fails(&c.tmp.path().join("no-model"), &img(), &[], "no such folder");
    let model = tempfile::tempdir().unwrap();
    copy_dir(&dev(), model.path());
    std::fs::remove_dir_all(model.path().join("vae")).unwrap();
    c.fails(model.path(), &img(), &[], "vae/ is missing");
    let model = tempfile::tempdir().unwrap();
    copy_dir(&dev(), model.path());
    std::fs::remove_file(model.path().join("transformer/diffusion_pytorch_model-00003-of-00008.safetensors")).unwrap();
    c.fails(model.path(), &img(), &[], "shard listed in");
}

#[test]
fn unreadable_config() {
    let c = Case::new();
    let model = tempfile::tempdir().unwrap();
    copy_dir(&dev(), model.path());
    std::fs::write(model.path().join("vae/config.json"), "{ not json").unwrap();
    c.fails(model.path(), &img(), &[], "invalid config");
}

#[test]
fn missing_and_misshaped_tensors_are_all_named() {
    use safetensors::tensor::{serialize, TensorView};
    let c = Case::new();
    let model = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join("tiny-schnell"), model.path());
    let path = model.path().join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut kept: Vec<(String, TensorView)> = vec![];
    let mut storage: Vec<(String, Vec<u8>, Vec<usize>)> = vec![];
    for (name, view) in st.tensors() {
        if name == "x_embedder.weight" || name == "proj_out.bias" {
            continue; // dropped: must be reported missing
        }
        if name == "context_embedder.weight" {
            // wrong shape: drop the last row
            let shape = view.shape().to_vec();
            let row = shape[1] * 4;
            storage.push((name.clone(), view.data()[..view.data().len() - row].to_vec(), vec![shape[0] - 1, shape[1]]));
            continue;
        }
        kept.push((name, view));
    }
    let mut all: Vec<(String, TensorView)> = kept;
    for (n, d, s) in &storage {
        all.push((n.clone(), TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap()));
    }
    std::fs::write(&path, serialize(all, None).unwrap()).unwrap();
    let err = c.fails(model.path(), &img(), &["--width", "48", "--height", "48"], "transformer weights do not fit");
    assert!(err.contains("2 missing") && err.contains("x_embedder.weight") && err.contains("proj_out.bias"), "{err}");
    assert!(err.contains("1 mis-shaped") && err.contains("context_embedder.weight"), "{err}");
}

#[test]
fn output_folder_missing_wrong_extension_or_the_input() {
    let c = Case::new();
    let o = run(&[
        "--model",
        dev().to_str().unwrap(),
        "--image",
        img().to_str().unwrap(),
        "--prompt",
        "x",
        "--output",
        c.tmp.path().join("no/such/dir/o.png").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("does not exist; create it first"), "{}", stderr(&o));
    let o = run(&[
        "--model",
        dev().to_str().unwrap(),
        "--image",
        img().to_str().unwrap(),
        "--prompt",
        "x",
        "--output",
        c.tmp.path().join("o.jpg").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains(".png"), "{}", stderr(&o));
    // The input itself as output: refused, input unchanged.
    let input = c.tmp.path().join("in.png");
    std::fs::copy(img(), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = run(&[
        "--model",
        dev().to_str().unwrap(),
        "--image",
        input.to_str().unwrap(),
        "--prompt",
        "x",
        "--output",
        input.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("it is the input of item 0"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&input).unwrap(), before);
}

#[test]
fn long_prompt_warns_with_the_truncated_words() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = run(&[
        "--model",
        dev().to_str().unwrap(),
        "--image",
        img().to_str().unwrap(),
        "--prompt",
        "a cat on a red sofa, watercolor painting with golden hour light and a lazy dog",
        "--max-sequence-length",
        "8",
        "--steps",
        "2",
        "-q",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("warning:") && err.contains("truncated") && err.contains("lazy dog"), "{err}");
}

#[test]
fn no_cuda_in_a_cpu_build_is_a_clear_error() {
    if cfg!(feature = "cuda") {
        return;
    }
    let c = Case::new();
    c.fails(&dev(), &img(), &["--device", "cuda"], "built without CUDA");
}

/// A candle error carries a backtrace when backtraces are captured (RUST_LIB_BACKTRACE here; CI runners often set
/// RUST_BACKTRACE): by default it is still one `error:` line; `-v` adds the chain and the backtrace.
#[test]
fn candle_errors_are_one_line_unless_verbose() {
    let c = Case::new();
    // A GGUF transformer whose matrices do not fit the config: candle's quantized loader bails with a captured
    // backtrace.
    let model = tempfile::tempdir().unwrap();
    copy_dir(&dev(), model.path());
    let cfg_path = model.path().join("transformer/config.json");
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg["pooled_projection_dim"] = serde_json::json!(31);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let gguf = fixtures().join("bfl-tiny-dev/flux1-Q8_0.gguf");
    let mut args = c.base(model.path(), &img());
    args.extend(["--seed".into(), "1".into(), "--transformer".into(), gguf.to_string_lossy().into_owned()]);
    let o = bin().args(&args).env("RUST_LIB_BACKTRACE", "1").env_remove("RUST_BACKTRACE").output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(!err.contains("caused by") && !err.contains("candle_core::"), "no chain or backtrace: {err}");
    assert!(
        errors[0].contains("does not fit transformer/config.json") && errors[0].contains("shape mismatch"),
        "{err}"
    );
    args.push("-v".into());
    let o = bin().args(&args).env("RUST_LIB_BACKTRACE", "1").env_remove("RUST_BACKTRACE").output().unwrap();
    assert!(stderr(&o).lines().count() > 3, "-v shows the chain and the backtrace: {}", stderr(&o));
    assert!(!c.out.exists());
}

/// Configs are validated on load: an empty or inconsistent list is one clear line naming the file, never a panic.
#[test]
fn inconsistent_configs_are_clear_errors() {
    let c = Case::new();
    let edits: [(&str, &str, serde_json::Value, &str); 3] = [
        ("vae/config.json", "block_out_channels", serde_json::json!([]), "block_out_channels is empty"),
        ("vae/config.json", "norm_num_groups", serde_json::json!(5), "multiple of norm_num_groups 5"),
        ("transformer/config.json", "axes_dims_rope", serde_json::json!([4, 6, 8]), "not attention_head_dim 16"),
    ];
    for (file, key, value, needle) in edits {
        let model = tempfile::tempdir().unwrap();
        copy_dir(&dev(), model.path());
        let path = model.path().join(file);
        let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let err = c.fails(model.path(), &img(), &["--seed", "1"], needle);
        assert!(err.contains(file), "names the file: {err}");
    }
}

/// Text-to-image and true CFG flags that cannot work: one line each, exit 2, nothing written.
#[test]
fn mode_flags_that_cannot_work() {
    let c = Case::new();
    let run_without_image = |extra: &[&str], needle: &str| {
        let mut args: Vec<String> =
            vec!["--model".into(), dev().to_string_lossy().into(), "--prompt".into(), "x".into()];
        args.extend(["-o".into(), c.out.to_string_lossy().into_owned()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        let o = bin().args(&args).output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
        assert!(!c.out.exists());
    };
    run_without_image(&[], "--width and --height to make an image from the prompt alone");
    run_without_image(&["--width", "64"], "needs the output size: give --width and --height");
    run_without_image(&["--width", "64", "--height", "50"], "not a multiple of 16");
    c.fails(&dev(), &img(), &["--negative-prompt", "blurry"], "--negative-prompt needs --true-cfg");
    c.fails(&dev(), &img(), &["--true-cfg", "3"], "--true-cfg needs --negative-prompt");
    c.fails(&dev(), &img(), &["--negative-prompt", "blurry", "--true-cfg", "1"], "must be above 1");
}

/// Masks that cannot work: one line each, exit 2, nothing written; a mask of another size but the same aspect is
/// resized with a warning.
#[test]
fn bad_masks() {
    let c = Case::new();
    let masks = tempfile::tempdir().unwrap();
    let save = |name: &str, w: u32, h: u32, v: u8| {
        let p = masks.path().join(name);
        image::GrayImage::from_pixel(w, h, image::Luma([v])).save(&p).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (black, wide, half) =
        (save("black.png", 80, 80, 0), save("wide.png", 90, 40, 255), save("half.png", 40, 40, 255));
    c.fails(&dev(), &img(), &["--mask", &black], "the mask is empty");
    c.fails(&dev(), &img(), &["--mask", &wide], "another aspect ratio");
    c.fails(&dev(), &img(), &["--mask", &half, "--kontext"], "takes no mask");
    c.fails(&dev(), &img(), &["--paste-back"], "--paste-back applies to inpainting: give --mask");
    c.fails(&dev(), &img(), &["--mask", &half, "--mask-blur", "-2"], "--mask-blur -2 must be");
    c.fails(&dev(), &img(), &["--mask", "alpha"], "has no alpha channel");
    c.fails(&dev(), &img(), &["--mask", "auto"], "gradient-80x80.mask.png");
    // Same aspect, other size: resized, with a warning.
    let mut args = c.base(&dev(), &img());
    args.extend(["--mask".into(), half]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: mask") && stderr(&o).contains("resized to fit"), "{}", stderr(&o));
}
