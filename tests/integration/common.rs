//! Shared helpers: fixture paths, running the binary, PSNR.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The binary, with the quantization cache in a folder of this test process (never the user's).
pub fn bin() -> Command {
    static CACHE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let cache = CACHE.get_or_init(|| tempfile::tempdir().expect("temporary folder"));
    let mut c = Command::new(env!("CARGO_BIN_EXE_flux-img2img"));
    c.env("FLUX_IMG2IMG_CACHE", cache.path());
    // Errors are one line unless backtraces are asked for; a developer's RUST_BACKTRACE must not change results.
    c.env_remove("RUST_BACKTRACE");
    c
}

/// Runs the binary with `args`, returning its output.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("binary runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// PSNR in dB between two 8-bit RGB images of the same size (∞ when identical).
/// With `FLUX_TEST_KEEP=DIR`, every image compared is also copied there as `<test>__<file>`, so that a refactor
/// can be checked bit for bit against the outputs of the commit before it.
pub fn psnr(a: &Path, b: &Path) -> f64 {
    if let Some(dir) = std::env::var_os("FLUX_TEST_KEEP") {
        let test = std::thread::current().name().unwrap_or("main").replace("::", "-");
        let name = format!("{test}__{}", a.file_name().unwrap().to_string_lossy());
        std::fs::copy(a, Path::new(&dir).join(name)).expect("FLUX_TEST_KEEP is a writable folder");
    }
    let a = image::open(a).expect("output decodes").to_rgb8();
    let b = image::open(b).expect("reference decodes").to_rgb8();
    assert_eq!(a.dimensions(), b.dimensions(), "image sizes differ");
    let n = a.as_raw().len() as f64;
    let mse: f64 = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Copies a fixture pipeline into a temp folder so a test can break it.
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// Runs each `(args, needle)` with a prompt, two steps and an output file, and asserts the bad-input contract:
/// exit 2, exactly one `error:` line containing `needle`, and no output written.
pub fn assert_one_line_errors(cases: &[(Vec<String>, &str)]) {
    let t = tempfile::tempdir().unwrap();
    for (args, needle) in cases {
        let out = t.path().join("out.png");
        let o = bin().args(args).args(["--prompt", "a cat", "--steps", "2", "-o"]).arg(&out).output().unwrap();
        let err = stderr(&o);
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(errors.len(), 1, "one error line for {args:?}: {err}");
        assert!(errors[0].contains(needle), "{needle:?} not in {}", errors[0]);
        assert!(!out.exists(), "no output for {args:?}");
    }
}

/// Runs `args` (which end in `-o FIRST`), then `--from-metadata FIRST`, and asserts both give the same pixels.
pub fn assert_metadata_round_trip(args: &[String], first: &Path) {
    assert!(bin().args(args).status().unwrap().success());
    let again = first.with_file_name("again.png");
    let o =
        bin().arg("--from-metadata").arg(first).arg("--allow-metadata-paths").arg("-o").arg(&again).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(image::open(first).unwrap().to_rgb8(), image::open(&again).unwrap().to_rgb8());
}
