//! `--model` as a Hub repo, resolved offline from a cache folder laid out as huggingface_hub lays it out
//! (models--org--name/refs/<rev>, snapshots/<commit>/… as links into blobs/), plus the error paths.

use crate::common::*;
use std::path::{Path, PathBuf};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A cache holding the tiny-dev fixture as `acme/tiny-flux` at `main`; `weights: false` leaves them out.
fn cache_with_fixture(root: &Path, weights: bool) -> PathBuf {
    cache_with(root, "tiny-dev", "tiny-flux", weights)
}

/// A cache holding fixture pipeline `fixture` as `acme/<name>` at `main`.
fn cache_with(root: &Path, fixture: &str, name: &str, weights: bool) -> PathBuf {
    let repo = root.join(format!("models--acme--{name}"));
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snap = repo.join("snapshots").join(COMMIT);
    let blobs = repo.join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let src = fixtures().join(fixture);
    let mut stack = vec![src.clone()];
    let mut n = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            if !weights && p.to_string_lossy().ends_with(".safetensors") {
                continue;
            }
            n += 1;
            let blob = blobs.join(format!("blob{n}"));
            std::fs::copy(&p, &blob).unwrap();
            let link = snap.join(rel);
            std::fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(&blob, &link).unwrap();
        }
    }
    root.to_path_buf()
}

fn run_with(cache: &Path, model: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let image = fixtures().join("images/gradient-80x80.png");
    let mut args: Vec<String> = vec!["--model".into(), model.into(), "--image".into(), image.to_string_lossy().into()];
    args.extend(
        ["--prompt", "a cat", "--seed", "4", "--steps", "3", "--max-sequence-length", "16", "-q"].map(String::from),
    );
    args.extend(["-o".to_string(), out.to_string_lossy().into_owned()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    bin().args(&args).env("HF_HUB_CACHE", cache).env("HF_HUB_OFFLINE", "1").env_remove("HF_TOKEN").output().unwrap()
}

#[test]
fn repo_id_resolves_from_the_cache_offline() {
    let t = tempfile::tempdir().unwrap();
    let cache = cache_with_fixture(&t.path().join("hub"), true);
    let out = t.path().join("hub.png");
    let o = run_with(&cache, "acme/tiny-flux", &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let local = t.path().join("local.png");
    let o = run_with(&cache, &fixtures().join("tiny-dev").to_string_lossy(), &local, &[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(psnr(&out, &local), f64::INFINITY, "same files, same image");
}

#[test]
fn dry_run_needs_only_the_configs() {
    let t = tempfile::tempdir().unwrap();
    let cache = cache_with_fixture(&t.path().join("hub"), false);
    let o = run_with(&cache, "acme/tiny-flux", &t.path().join("x.png"), &["--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("start sigma"));
    // A real run needs the weights, and says which file is missing and why.
    let o = run_with(&cache, "acme/tiny-flux", &t.path().join("x.png"), &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("not in the cache") && err.contains("HF_HUB_OFFLINE"), "{err}");
}

#[test]
fn offline_errors_name_the_repo_and_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let cache = cache_with_fixture(&t.path().join("hub"), true);
    let o = run_with(&cache, "acme/tiny-flux", &t.path().join("x.png"), &["--revision", "v2"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("acme/tiny-flux@v2"), "{}", stderr(&o));
    let o = run_with(&cache, "acme/other", &t.path().join("x.png"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("acme/other@main") && stderr(&o).contains("run once online"), "{}", stderr(&o));
    let o = run_with(&cache, "no-such-local-folder", &t.path().join("x.png"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no such folder"), "{}", stderr(&o));
}

#[test]
fn gated_repo_gives_one_actionable_line() {
    use std::io::{Read, Write};
    // A stand-in Hub (HF_ENDPOINT) that answers 401, as huggingface.co does for a gated repo without access.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..4 {
            let Ok((mut c, _)) = listener.accept() else { return };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = "{\"error\":\"Access to model black-forest-labs/FLUX.1-dev is restricted.\"}";
            let _ = write!(
                c,
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let t = tempfile::tempdir().unwrap();
    let image = fixtures().join("images/gradient-80x80.png");
    let o = bin()
        .args(["--model", "dev", "--image", &image.to_string_lossy(), "--prompt", "x", "-o"])
        .arg(t.path().join("x.png"))
        .env("HF_HUB_CACHE", t.path().join("hub"))
        .env("HF_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env("HF_HOME", t.path().join("home"))
        .output()
        .unwrap();
    drop(server);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains("black-forest-labs/FLUX.1-dev@main"), "{err}");
    assert!(err.contains("Accept its licence") && err.contains("HF_TOKEN") && err.contains("--model schnell"), "{err}");
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
}

/// `--lora org/name` and `org/name/file.safetensors` resolve from the Hub cache offline (offline, a bare repo means
/// its `pytorch_lora_weights.safetensors`, diffusers' name) and give the local file's image; a missing one is an
/// error naming the LoRA.
#[test]
fn lora_from_the_hub_cache() {
    let t = tempfile::tempdir().unwrap();
    let cache = cache_with_fixture(&t.path().join("hub"), true);
    let repo = cache.join("models--acme--style-lora");
    let snap = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let lora = fixtures().join("loras/xlabs.safetensors");
    std::fs::copy(&lora, snap.join("pytorch_lora_weights.safetensors")).unwrap();
    std::fs::copy(&lora, snap.join("other.safetensors")).unwrap();
    let local = t.path().join("local.png");
    let o = run_with(&cache, "acme/tiny-flux", &local, &["--lora", &format!("{}:0.8", lora.display())]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    for spec in ["acme/style-lora:0.8", "acme/style-lora/other.safetensors:0.8"] {
        let out = t.path().join("hub-lora.png");
        let o = run_with(&cache, "acme/tiny-flux", &out, &["--lora", spec]);
        assert_eq!(o.status.code(), Some(0), "{spec}: {}", stderr(&o));
        assert_eq!(image::open(&out).unwrap().to_rgb8(), image::open(&local).unwrap().to_rgb8(), "{spec}");
        std::fs::remove_file(&out).unwrap();
    }
    let out = t.path().join("missing.png");
    let o = run_with(&cache, "acme/tiny-flux", &out, &["--lora", "acme/style-lora/absent.safetensors"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).starts_with("error: LoRA acme/style-lora/absent.safetensors:"), "{}", stderr(&o));
    assert!(!out.exists());
}

/// A FLUX.2 klein repo resolves from the cache offline with its three components (no text_encoder_2/tokenizer_2),
/// the same image as the local folder.
#[test]
fn klein_repo_from_the_cache() {
    let t = tempfile::tempdir().unwrap();
    let cache = cache_with(&t.path().join("hub"), "tiny-klein", "tiny-klein", true);
    let size = ["--width", "64", "--height", "64"];
    let hub = t.path().join("hub.png");
    let o = run_with(&cache, "acme/tiny-klein", &hub, &size);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let local = t.path().join("local.png");
    let folder = fixtures().join("tiny-klein");
    let o = run_with(&cache, &folder.to_string_lossy(), &local, &size);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(image::open(&hub).unwrap().to_rgb8(), image::open(&local).unwrap().to_rgb8());
}
