//! Batch and scripting behaviour on the tiny fixtures: folders, manifests, failures in the middle of a batch,
//! skip-existing, shards, sweeps, JSON results, metadata round trip, dry-run schedules.

use crate::common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn schnell() -> String {
    fixtures().join("tiny-schnell").to_string_lossy().into_owned()
}
fn dev() -> String {
    fixtures().join("tiny-dev").to_string_lossy().into_owned()
}
fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}
fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Common flags for fast runs on the schnell-like fixture.
fn base(model: &str) -> Vec<String> {
    ["--model", model, "--prompt", "a cat", "--max-sequence-length", "16", "--rng", "torch-cpu"]
        .iter()
        .map(|x| x.to_string())
        .collect()
}

fn json_lines(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each stdout line is JSON"))
        .collect()
}

fn pixels(p: &Path) -> Vec<u8> {
    image::open(p).unwrap().to_rgb8().into_raw()
}

fn folder_with_images(dir: &Path, corrupt_second: bool) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(image("gradient-80x80.png"), dir.join("a.png")).unwrap();
    if corrupt_second {
        std::fs::write(dir.join("b.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    } else {
        std::fs::copy(image("tall-48x64.png"), dir.join("b.png")).unwrap();
    }
    std::fs::copy(image("photo-96x64.png"), dir.join("c.png")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image, and not picked up by the folder scan").unwrap();
}

#[test]
fn folder_with_a_corrupt_file_writes_the_rest_and_exits_1() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    folder_with_images(&input, true);
    let out = t.path().join("out");
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        s(&input),
        "--output-dir".into(),
        s(&out),
        "--seed".into(),
        "5".into(),
        "--json".into(),
    ]);
    let o = bin().args(&args).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(out.join("a.png").exists() && out.join("c.png").exists(), "{err}");
    assert!(!out.join("b.png").exists());
    assert!(err.contains("summary: 2 written, 0 skipped, 1 failed"), "{err}");
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 3);
    let status: Vec<&str> = lines.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(status.iter().filter(|s| **s == "written").count(), 2);
    let failed = lines.iter().find(|v| v["status"] == "failed").unwrap();
    assert!(failed["input"].as_str().unwrap().ends_with("b.png"));
    // Seeds: base + item index in the batch order (a, b, c).
    let seeds: Vec<u64> =
        lines.iter().filter(|v| v["status"] == "written").map(|v| v["seed"].as_u64().unwrap()).collect();
    assert_eq!(seeds, vec![5, 7]);
    // No temporary files left behind.
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn batch_items_equal_single_runs() {
    // The second image of a batch (seed 11 + 1) must be exactly what a single run with seed 12 gives: one
    // session reused for many items changes nothing.
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    folder_with_images(&input, false);
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        s(&input),
        "--output-dir".into(),
        s(&t.path().join("out")),
        "--seed".into(),
        "11".into(),
        "-q".into(),
    ]);
    assert_eq!(bin().args(&args).output().unwrap().status.code(), Some(0));
    let single = t.path().join("single.png");
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        s(&input.join("b.png")),
        "--seed".into(),
        "12".into(),
        "-o".into(),
        s(&single),
        "-q".into(),
    ]);
    assert_eq!(bin().args(&args).output().unwrap().status.code(), Some(0));
    assert_eq!(pixels(&single), pixels(&t.path().join("out/b.png")));
}

#[test]
fn manifests_csv_and_jsonl() {
    let t = tempfile::tempdir().unwrap();
    std::fs::copy(image("gradient-80x80.png"), t.path().join("g.png")).unwrap();
    std::fs::copy(image("wide-100x60.png"), t.path().join("w.png")).unwrap();
    std::fs::write(
        t.path().join("m.csv"),
        "image,prompt,strength,seed,steps,output\ng.png,a red fox,0.8,3,,fox.png\nw.png,,0.5,4,2,\n",
    )
    .unwrap();
    std::fs::write(
        t.path().join("m.jsonl"),
        "{\"image\": \"g.png\", \"prompt\": \"a red fox\", \"strength\": 0.8, \"seed\": 3, \"output\": \"fox2.png\"}\n\n",
    )
    .unwrap();
    let mut args = base(&schnell());
    args.extend(["--manifest".into(), s(&t.path().join("m.csv")), "--json".into(), "-q".into()]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["prompt"], "a red fox");
    assert_eq!(lines[0]["strength"], 0.8);
    assert_eq!(lines[1]["prompt"], "a cat", "an empty cell takes the flag's value");
    assert_eq!(lines[1]["steps"], 2);
    assert!(t.path().join("fox.png").exists());
    assert!(t.path().join("w-edited.png").exists(), "default name beside the input");

    let mut args = base(&schnell());
    args.extend(["--manifest".into(), s(&t.path().join("m.jsonl")), "-q".into()]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(pixels(&t.path().join("fox.png")), pixels(&t.path().join("fox2.png")), "same item, same image");

    // A typo in a column name is an error, not a silently ignored setting.
    std::fs::write(t.path().join("bad.csv"), "image,promt\ng.png,x\n").unwrap();
    let mut args = base(&schnell());
    args.extend(["--manifest".into(), s(&t.path().join("bad.csv"))]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("promt"), "{}", stderr(&o));
}

#[test]
fn skip_existing_resumes() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    folder_with_images(&input, false);
    let out = t.path().join("out");
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        s(&input),
        "--output-dir".into(),
        s(&out),
        "--seed".into(),
        "1".into(),
        "-q".into(),
    ]);
    // First run "interrupted" after one image: simulate by running only a.png.
    let mut first = args.clone();
    let at = first.iter().position(|a| a == "--image").unwrap() + 1;
    first[at] = s(&input.join("a.png"));
    assert_eq!(bin().args(&first).output().unwrap().status.code(), Some(0));
    let before = std::fs::metadata(out.join("a.png")).unwrap().modified().unwrap();
    args.extend(["--skip-existing".into(), "--json".into()]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    let status: Vec<&str> = lines.iter().map(|v| v["status"].as_str().unwrap()).collect();
    assert_eq!(status, vec!["skipped", "written", "written"]);
    assert_eq!(std::fs::metadata(out.join("a.png")).unwrap().modified().unwrap(), before, "not rewritten");
}

#[test]
fn shards_cover_every_item_exactly_once() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    folder_with_images(&input, false);
    let plan = |extra: &[&str]| {
        let mut args = base(&schnell());
        args.extend(["--image".into(), s(&input), "--output-dir".into(), s(&t.path().join("o"))]);
        args.extend(
            ["--seed", "9", "--strength", "0.5,0.9", "--num-images", "2", "--dry-run", "--json"].map(String::from),
        );
        args.extend(extra.iter().map(|x| x.to_string()));
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        json_lines(&o.stdout)
    };
    let all = plan(&[]);
    assert_eq!(all.len(), 3 * 2 * 2, "3 images x 2 strengths x 2 seeds");
    let mut seen: Vec<(u64, u64, String)> = Vec::new();
    for i in 0..3 {
        for v in plan(&["--shard", &format!("{i}/3")]) {
            assert_eq!(v["index"].as_u64().unwrap() % 3, i);
            seen.push((
                v["index"].as_u64().unwrap(),
                v["seed"].as_u64().unwrap(),
                v["output"].as_str().unwrap().into(),
            ));
        }
    }
    seen.sort();
    let whole: Vec<(u64, u64, String)> = all
        .iter()
        .map(|v| (v["index"].as_u64().unwrap(), v["seed"].as_u64().unwrap(), v["output"].as_str().unwrap().into()))
        .collect();
    assert_eq!(seen, whole, "the shards together are the batch, with the same seeds and names");
    let names: std::collections::HashSet<&str> = all.iter().map(|v| v["output"].as_str().unwrap()).collect();
    assert_eq!(names.len(), all.len(), "distinct output names");
    // SLURM-style environment.
    let mut args = base(&schnell());
    args.extend(["--image".into(), s(&input), "--dry-run".into(), "--json".into(), "--shard".into(), "auto".into()]);
    let o = bin()
        .args(&args)
        .env("SLURM_ARRAY_TASK_ID", "2")
        .env("SLURM_ARRAY_TASK_MIN", "1")
        .env("SLURM_ARRAY_TASK_COUNT", "2")
        .output()
        .unwrap();
    let idx: Vec<u64> = json_lines(&o.stdout).iter().map(|v| v["index"].as_u64().unwrap()).collect();
    assert_eq!(idx, vec![1]);
}

#[test]
fn sweep_writes_every_combination_and_json_has_the_schema() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let mut args = base(&schnell());
    args.extend(["--image".into(), s(&image("gradient-80x80.png")), "--output-dir".into(), s(&out)]);
    args.extend(["--strength", "0.5,1.0", "--seed", "1,2", "--json", "-q"].map(String::from));
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = json_lines(&o.stdout);
    assert_eq!(lines.len(), 4);
    for name in
        ["gradient-80x80-s0.5-1.png", "gradient-80x80-s0.5-2.png", "gradient-80x80-s1-1.png", "gradient-80x80-s1-2.png"]
    {
        assert!(out.join(name).exists(), "{name}");
    }
    let v = &lines[0];
    for key in
        ["input", "output", "prompt", "strength", "steps", "steps_run", "start_sigma", "seed", "width", "height", "rng"]
    {
        assert!(!v[key].is_null(), "{key} in {v}");
    }
    for key in ["text_encoding", "vae_encode", "load_transformer", "denoise", "vae_decode", "total"] {
        assert!(v["timings"][key].as_f64().unwrap() >= 0.0, "timings.{key}");
    }
    assert!(v["peak_rss_mib"].as_f64().unwrap() > 1.0);
    // Present in every written item; a number on CUDA, null on the CPU.
    assert!(v.as_object().unwrap().contains_key("peak_gpu_mib") && v["peak_gpu_mib"].is_null(), "{v}");
    assert_eq!(v["steps_run"], 2, "schnell 4 steps at strength 0.5");
    assert_eq!(lines[2]["steps_run"], 4);
    assert!(lines[1]["timings"]["vae_encode"].as_f64().unwrap() < v["timings"]["vae_encode"].as_f64().unwrap());
    // The sweep reuses the text encoding and the input's VAE posterior; its last image must still be exactly
    // what a single run with those settings gives.
    let single = t.path().join("single.png");
    let mut args = base(&schnell());
    args.extend(["--image".into(), s(&image("gradient-80x80.png")), "-o".into(), s(&single)]);
    args.extend(["--strength", "0.5", "--seed", "2", "-q"].map(String::from));
    assert_eq!(bin().args(&args).output().unwrap().status.code(), Some(0));
    assert_eq!(pixels(&single), pixels(&out.join("gradient-80x80-s0.5-2.png")));
}

#[test]
fn metadata_round_trip() {
    let t = tempfile::tempdir().unwrap();
    let first = t.path().join("first.png");
    let mut args = base(&dev());
    args.extend(["--image".into(), s(&image("wide-100x60.png")), "-o".into(), s(&first)]);
    args.extend(
        [
            "--strength",
            "0.7",
            "--steps",
            "3",
            "--guidance",
            "5",
            "--seed",
            "77",
            "--width",
            "48",
            "--height",
            "48",
            "-q",
        ]
        .map(String::from),
    );
    assert_eq!(bin().args(&args).output().unwrap().status.code(), Some(0));
    let again = t.path().join("again.png");
    // The record names the fixture by its absolute path: a re-run confirms it with --allow-metadata-paths.
    let o =
        bin().args(["--from-metadata", &s(&first), "-o", &s(&again), "-q", "--allow-metadata-paths"]).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(pixels(&first), pixels(&again), "same parameters from the PNG, same image");
    // An explicit flag wins over the stored value.
    let other = t.path().join("other.png");
    let o = bin()
        .args(["--from-metadata", &s(&first), "--seed", "78", "-o", &s(&other), "-q", "--allow-metadata-paths"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_ne!(pixels(&first), pixels(&other));
    // A PNG without our parameters.
    let o = bin().args(["--from-metadata", &s(&image("gradient-80x80.png")), "-o", &s(&other)]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no flux-img2img parameters"));
}

#[test]
fn dry_run_matches_the_spec_schedule_without_weights() {
    // A model folder with configs only: a dry run must not need a single weight file.
    let t = tempfile::tempdir().unwrap();
    let model = t.path().join("configs-only");
    copy_dir(&fixtures().join("tiny-dev"), &model);
    for e in walk(&model) {
        if e.to_string_lossy().ends_with(".safetensors") {
            std::fs::remove_file(e).unwrap();
        }
    }
    let big = t.path().join("big.png");
    image::RgbImage::new(1024, 1024).save(&big).unwrap();
    let mut args = base(&s(&model));
    args.extend(["--image".into(), s(&big), "--steps".into(), "28".into(), "--strength".into(), "0.6".into()]);
    args.extend(["--seed", "1", "--dry-run", "--json"].map(String::from));
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v = &json_lines(&o.stdout)[0];
    // Spec §4.5: FLUX.1-dev 1024², 28 steps, strength 0.6 → t_start 11, 17 steps, σ = 0.82995641, mu 1.15.
    assert_eq!(v["t_start"], 11);
    assert_eq!(v["steps_run"], 17);
    assert!((v["start_sigma"].as_f64().unwrap() - 0.82995641).abs() < 1e-6, "{v}");
    assert!((v["mu"].as_f64().unwrap() - 1.15).abs() < 1e-6);
    assert_eq!((v["width"].as_u64(), v["height"].as_u64()), (Some(1024), Some(1024)));
    assert!(!big.with_file_name("big-edited.png").exists(), "a dry run writes nothing");
    // Without weight files there is nothing to size: no estimate, and no error.
    assert!(v["memory_estimate"].is_null(), "{v}");

    // Strengths that round to the same first step are flagged.
    let mut args = base(&schnell());
    args.extend(["--image".into(), s(&image("gradient-80x80.png")), "--steps".into(), "4".into()]);
    args.extend(["--strength", "0.55,0.6", "--seed", "1", "--dry-run"].map(String::from));
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("give the same image"), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout).lines().count(), 2);
}

#[test]
fn batch_usage_errors() {
    let t = tempfile::tempdir().unwrap();
    let input = t.path().join("in");
    folder_with_images(&input, false);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["--image".into(), s(&input), "-o".into(), s(&t.path().join("x.png"))], "use --output-dir"),
        (
            vec![
                "--image".into(),
                s(&input),
                "--output-dir".into(),
                s(&t.path().join("o")),
                "--name".into(),
                "same".into(),
            ],
            "would both write",
        ),
        (vec!["--image".into(), s(&input), "--name".into(), "{stem}-{bogus}".into()], "unknown placeholder"),
        (vec!["--image".into(), s(&t.path().join("*.jpg"))], "no file matches"),
        (vec!["--image".into(), s(&input), "--shard".into(), "3/3".into()], "not in 0..3"),
        (vec!["--image".into(), s(&input), "--strength".into(), "0.5,2".into()], "outside [0, 1]"),
    ];
    for (extra, needle) in cases {
        let mut args = base(&schnell());
        args.extend(extra);
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(needle), "expected {needle:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn resize_modes_keep_size_and_grid() {
    let t = tempfile::tempdir().unwrap();
    let wide = s(&image("wide-100x60.png"));
    let sizes = |extra: &[&str]| -> ((u64, u64), (u32, u32)) {
        let out = t.path().join("r.png");
        let mut args = base(&schnell());
        args.extend([
            "--image".into(),
            wide.clone(),
            "-o".into(),
            s(&out),
            "--seed".into(),
            "1".into(),
            "--json".into(),
        ]);
        args.push("-q".into());
        if !extra.contains(&"--width") {
            args.extend(["--width", "64", "--height", "64"].map(String::from));
        }
        args.extend(extra.iter().map(|x| x.to_string()));
        let o = bin().args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = &json_lines(&o.stdout)[0];
        let file = image::image_dimensions(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        ((v["width"].as_u64().unwrap(), v["height"].as_u64().unwrap()), file)
    };
    // The schnell fixture's VAE downscales 2× → sizes are multiples of 4. 100×60 into 64×64:
    assert_eq!(sizes(&["--resize", "crop"]), ((64, 64), (64, 64)));
    assert_eq!(sizes(&["--resize", "stretch"]), ((64, 64), (64, 64)));
    assert_eq!(sizes(&["--resize", "pad"]), ((64, 64), (64, 64)));
    assert_eq!(sizes(&["--resize", "fit"]), ((64, 36), (64, 36)), "64×38.4 floored to the multiple of 4");
    // Working size capped at 2000 px (100×60 → 56×32), result given back at the input's 100×60.
    assert_eq!(
        sizes(&["--width", "100", "--height", "60", "--max-megapixels", "0.002", "--keep-size"]),
        ((56, 32), (100, 60))
    );

    // Grid: 2 inputs × (2 strengths × 2 seeds) → 2 rows of 4 cells of 256 px plus a 16 px label strip.
    let g = t.path().join("sheet.png");
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        wide.clone(),
        s(&image("tall-48x64.png")),
        "--output-dir".into(),
        s(&t.path().join("o")),
    ]);
    args.extend(["--strength", "0.5,0.9", "--seed", "1,22", "-q", "--grid"].map(String::from));
    args.push(s(&g));
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(image::image_dimensions(&g).unwrap(), (4 * 256, 2 * (256 + 16)));
}

#[test]
fn stdin_url_and_stdout() {
    use std::io::{Read, Write};
    let t = tempfile::tempdir().unwrap();
    let src = image("gradient-80x80.png");
    let bytes = std::fs::read(&src).unwrap();
    let reference = t.path().join("ref.png");
    let mut args = base(&schnell());
    args.extend(["--image".into(), s(&src), "--seed".into(), "3".into(), "-o".into(), s(&reference), "-q".into()]);
    assert_eq!(bin().args(&args).output().unwrap().status.code(), Some(0));

    // `--image - -o -`: PNG bytes in, PNG bytes out, nothing else on stdout.
    let mut args = base(&schnell());
    args.extend(["--image", "-", "--seed", "3", "-o", "-", "-q"].map(String::from));
    let mut child = bin()
        .args(&args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let piped = image::load_from_memory(&o.stdout).unwrap().to_rgb8().into_raw();
    assert_eq!(piped, pixels(&reference));

    // An http URL served by a one-shot local server; the output is named after the URL's file.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = bytes.clone();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = conn.read(&mut req).unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            served.len()
        );
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(&served).unwrap();
    });
    let out = t.path().join("out");
    let mut args = base(&schnell());
    args.extend([
        "--image".into(),
        format!("http://127.0.0.1:{port}/pics/cat.png?x=1"),
        "--output-dir".into(),
        s(&out),
    ]);
    args.extend(["--seed", "3", "-q"].map(String::from));
    let o = bin().args(&args).output().unwrap();
    server.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(pixels(&out.join("cat.png")), pixels(&reference));

    // A URL that cannot be fetched is that item's failure, with the URL named.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut args = base(&schnell());
    args.extend(["--image".into(), format!("http://127.0.0.1:{dead}/x.png"), "-o".into(), s(&t.path().join("x.png"))]);
    let o = bin().args(&args).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("cannot download"), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().filter(|l| l.starts_with("error:")).count(), 1, "{}", stderr(&o));
}

#[test]
fn ctrl_c_finishes_the_current_image_and_prints_the_summary() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    let mut args = base(&dev());
    args.extend(["--image".into(), s(&image("photo-96x64.png")), "--output-dir".into(), s(&out)]);
    args.extend(["--num-images", "400", "--seed", "1", "--steps", "8", "--strength", "1"].map(String::from));
    let child =
        bin().args(&args).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Wait for the first image, then interrupt.
    let start = std::time::Instant::now();
    while !out.join("photo-96x64-1.png").exists() {
        assert!(start.elapsed().as_secs() < 120, "no first image");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("summary:"), "{err}");
    let names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert!(names.len() < 400, "stopped early");
    assert!(names.iter().all(|n| n.ends_with(".png") && !n.starts_with('.')), "no partial files: {names:?}");
    for n in &names {
        image::open(out.join(n)).expect("every written image is complete");
    }
}

/// Outputs get the mode any new file gets under the umask (0644 with umask 022), not a temporary file's 0600.
#[cfg(unix)]
#[test]
fn outputs_follow_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let t = tempfile::tempdir().unwrap();
    for (umask, mode) in [(0o022, 0o644), (0o027, 0o640)] {
        let out = t.path().join(format!("u{umask:o}.png"));
        let mut args = base(&schnell());
        args.extend([
            "--image".into(),
            s(&image("tall-48x64.png")),
            "--seed".into(),
            "1".into(),
            "-q".into(),
            "-o".into(),
            s(&out),
        ]);
        let mut cmd = bin();
        cmd.args(&args);
        // SAFETY: umask is async-signal-safe; it only sets the child's file-creation mask before exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        let o = cmd.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, mode, "umask {umask:o}");
    }
}
