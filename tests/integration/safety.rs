//! Data safety under hostile input (issue 24): the tool never replaces a user's file, treats manifests and PNG
//! records as untrusted data, bounds every size, and keeps working when stdout, the network or the disk misbehave.
//! Every data-loss test compares the user's files byte for byte after the run.

use crate::common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn schnell() -> String {
    fixtures().join("tiny-schnell").to_string_lossy().into_owned()
}
fn image(name: &str) -> PathBuf {
    fixtures().join("images").join(name)
}
fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Fast flags on the schnell-like fixture.
fn fast(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--model", &schnell(), "--prompt", "a cat", "--steps", "1", "--max-sequence-length", "8"]
        .iter()
        .map(|x| x.to_string())
        .collect();
    v.extend(extra.iter().map(|x| x.to_string()));
    v
}

/// Copies fixture images into `dir` under the given names; gives their bytes, to compare after a run.
fn user_files(dir: &Path, names: &[&str]) -> Vec<(PathBuf, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    let sources = ["gradient-80x80.png", "photo-96x64.png", "wide-100x60.png", "tall-48x64.png"];
    names
        .iter()
        .zip(sources.iter().cycle())
        .map(|(n, src)| {
            let p = dir.join(n);
            std::fs::copy(image(src), &p).unwrap();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

fn unchanged(files: &[(PathBuf, Vec<u8>)]) {
    for (p, bytes) in files {
        assert_eq!(&std::fs::read(p).unwrap(), bytes, "{} was changed", p.display());
    }
}

/// A refused run: exit 2, one error line containing `needle`, nothing on stdout.
fn refused(o: &Output, needle: &str) -> String {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    assert!(errors[0].contains(needle), "{needle:?} not in {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(o.stdout.is_empty());
    err
}

fn run_in(dir: &Path, args: &[String]) -> Output {
    bin().current_dir(dir).args(args).output().unwrap()
}

#[test]
fn an_output_never_replaces_another_input_of_the_run() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let files = user_files(d, &["a.png", "b.png", "m.png"]);
    // Manifest rows a→b and b→c: the first would write over the second row's input.
    std::fs::write(d.join("m.csv"), "image,output\na.png,b.png\nb.png,c.png\n").unwrap();
    let o = run_in(d, &fast(&["--manifest", "m.csv"]));
    refused(&o, "it is the input of item 1");
    // -o over the mask; ./ spelling of the same file.
    let o = run_in(d, &fast(&["--image", "a.png", "--mask", "m.png", "-o", "./m.png"]));
    refused(&o, "the mask of item 0");
    // --grid over an item's output, and over an input.
    let o = run_in(d, &fast(&["--image", "a.png", "--seed", "1,2", "--output-dir", "out", "--grid", "out/a-1.png"]));
    refused(&o, "--grid contact sheet");
    let o = run_in(d, &fast(&["--image", "a.png", "b.png", "--output-dir", "out", "--grid", "b.png"]));
    refused(&o, "it is the input of item 1");
    // --output-dir pointing at the input folder: {stem}.png would be each input itself.
    let o = run_in(d, &fast(&["--image", "a.png", "b.png", "--output-dir", "."]));
    refused(&o, "it is the input of item 0");
    // Two manifest outputs spelled differently but the same file.
    std::fs::write(d.join("dup.csv"), "image,output\na.png,dup.png\nb.png,./sub/../dup.png\n").unwrap();
    std::fs::create_dir_all(d.join("sub")).unwrap();
    let o = run_in(d, &fast(&["--manifest", "dup.csv"]));
    refused(&o, "would both write");
    unchanged(&files);
    assert!(!d.join("c.png").exists() && !d.join("out").exists());
}

#[cfg(unix)]
#[test]
fn symlinks_and_hard_links_to_an_input_are_the_input() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    let files = user_files(d, &["a.png"]);
    std::os::unix::fs::symlink(d.join("a.png"), d.join("link.png")).unwrap();
    std::fs::hard_link(d.join("a.png"), d.join("hard.png")).unwrap();
    for out in ["link.png", "hard.png"] {
        let o = run_in(d, &fast(&["--image", "a.png", "-o", out]));
        refused(&o, "it is the input of item 0");
    }
    unchanged(&files);
}

#[test]
fn manifest_outputs_stay_inside_the_output_folder() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("work");
    let files = user_files(&d, &["a.png"]);
    for (out, line) in [("../e.png", 2), ("/tmp/flux-img2img-abs-test.png", 2), ("sub/../../e.png", 2)] {
        std::fs::write(d.join("m.csv"), format!("image,output\na.png,{out}\n")).unwrap();
        let o = run_in(&d, &fast(&["--manifest", "m.csv", "--output-dir", "out"]));
        let err = refused(&o, "--allow-outside");
        assert!(err.contains(&format!("manifest line {line}")), "{err}");
        // Without --output-dir the manifest's folder is the root.
        let o = run_in(&d, &fast(&["--manifest", "m.csv"]));
        refused(&o, "is outside");
    }
    // Confirmed: the plan lists the outside path (a dry run writes nothing).
    std::fs::write(d.join("m.csv"), "image,output\na.png,../e.png\n").unwrap();
    let o = run_in(&d, &fast(&["--manifest", "m.csv", "--allow-outside", "--dry-run"]));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("e.png"));
    unchanged(&files);
}

/// Makes `photo-edited.png`'s record name `input` by running the tool there with that input.
fn png_with_record(dir: &Path, input: &Path) -> PathBuf {
    let out = dir.join("photo-edited.png");
    let o = bin().args(fast(&["--image", &s(input), "--seed", "5", "-o", &s(&out), "-q"])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    out
}

#[test]
fn metadata_never_chooses_where_to_write() {
    let t = tempfile::tempdir().unwrap();
    let victim = t.path().join("victim");
    let files = user_files(&victim, &["photo.png", "photo-edited.png"]);
    // A received PNG whose record names /…/victim/photo.png by its absolute path.
    let received = t.path().join("inbox");
    std::fs::create_dir_all(&received).unwrap();
    let png = png_with_record(&received, &victim.join("photo.png"));
    let cwd = t.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = run_in(&cwd, &["--from-metadata".to_string(), s(&png)]);
    refused(&o, "--allow-metadata-paths");
    // Confirmed: the input is read from there, but the output goes to the current folder.
    let o = run_in(&cwd, &["--from-metadata".to_string(), s(&png), "--allow-metadata-paths".into(), "-q".into()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(cwd.join("photo-edited.png").is_file());
    // Again: the file exists now, so the re-run asks for -o instead of overwriting it.
    let before = std::fs::read(cwd.join("photo-edited.png")).unwrap();
    let o = run_in(&cwd, &["--from-metadata".to_string(), s(&png), "--allow-metadata-paths".into()]);
    refused(&o, "give -o PATH");
    assert_eq!(std::fs::read(cwd.join("photo-edited.png")).unwrap(), before);
    unchanged(&files);
}

#[test]
fn relative_record_paths_resolve_against_the_png() {
    let t = tempfile::tempdir().unwrap();
    let shared = t.path().join("shared");
    let files = user_files(&shared, &["photo.png"]);
    // The record says "photo.png" (relative): made by a run inside that folder.
    let o = bin()
        .current_dir(&shared)
        .args(fast(&["--image", "photo.png", "--seed", "5", "-o", "made.png", "-q"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let cwd = t.path().join("elsewhere");
    std::fs::create_dir_all(&cwd).unwrap();
    let o = run_in(&cwd, &["--from-metadata".into(), s(&shared.join("made.png")), "-o".into(), "again.png".into()]);
    assert_eq!(o.status.code(), Some(0), "the input is found beside the PNG: {}", stderr(&o));
    assert_eq!(
        image::open(cwd.join("again.png")).unwrap().to_rgb8(),
        image::open(shared.join("made.png")).unwrap().to_rgb8(),
        "the same image comes back"
    );
    unchanged(&files);
}

#[test]
fn cache_clear_removes_only_its_own_files() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("models");
    std::fs::create_dir_all(&cache).unwrap();
    // A user's models folder used as the cache: a GGUF and a note that are not the cache's.
    let theirs = cache.join("my-model-Q8_0.gguf");
    std::fs::copy(fixtures().join("bfl-tiny-dev/flux1-Q8_0.gguf"), &theirs).unwrap();
    std::fs::write(cache.join(".data-notes"), b"mine").unwrap();
    let files = vec![(theirs.clone(), std::fs::read(&theirs).unwrap())];
    let out = t.path().join("q.png");
    let args = fast(&["--image", &s(&image("gradient-80x80.png")), "--quantize", "q8_0", "-o", &s(&out), "-q"]);
    let o = bin().args(&args).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ours: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("transformer-") || n.starts_with("t5-"))
        .collect();
    assert_eq!(ours.len(), 2, "transformer and T5 entries: {ours:?}");
    let o = bin().args(["cache", "clear", "--dry-run"]).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap();
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert!(!listed.contains("my-model") && stderr(&o).contains("would remove 2 files"), "{listed}");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 4, "a dry run removes nothing");
    let o = bin().args(["cache", "clear"]).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("left alone"), "{}", stderr(&o));
    let left: Vec<String> =
        std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left.len(), 2, "only the user's files remain: {left:?}");
    unchanged(&files);
}

#[test]
fn a_damaged_cache_entry_is_rebuilt() {
    let t = tempfile::tempdir().unwrap();
    let cache = t.path().join("cache");
    let run = |out: &Path| {
        let args =
            fast(&["--image", &s(&image("gradient-80x80.png")), "--quantize", "q8_0", "--seed", "3", "-o", &s(out)]);
        bin().args(&args).env("FLUX_IMG2IMG_CACHE", &cache).output().unwrap()
    };
    let first = t.path().join("first.png");
    assert_eq!(run(&first).status.code(), Some(0));
    for e in std::fs::read_dir(&cache).unwrap() {
        let p = e.unwrap().path();
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&p).unwrap().set_len(len / 2).unwrap();
    }
    let second = t.path().join("second.png");
    let o = run(&second);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("was damaged") && stderr(&o).contains("rebuilding"), "{}", stderr(&o));
    assert_eq!(psnr(&first, &second), f64::INFINITY);
    let third = t.path().join("third.png");
    let o = run(&third);
    assert!(stderr(&o).contains("from the quantization cache") && !stderr(&o).contains("damaged"), "{}", stderr(&o));
}

#[test]
fn without_home_the_cache_stays_in_memory() {
    let t = tempfile::tempdir().unwrap();
    let cwd = t.path().join("cwd");
    std::fs::create_dir_all(&cwd).unwrap();
    let args = fast(&["--image", &s(&image("gradient-80x80.png")), "--quantize", "q8_0", "-o", "out.png"]);
    let mut c = Command::new(env!("CARGO_BIN_EXE_flux-img2img"));
    c.current_dir(&cwd).args(&args);
    for v in ["HOME", "HF_HOME", "XDG_CACHE_HOME", "FLUX_IMG2IMG_CACHE", "HF_HUB_CACHE", "RUST_BACKTRACE"] {
        c.env_remove(v);
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("in memory only"), "{}", stderr(&o));
    let made: Vec<_> = std::fs::read_dir(&cwd).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(made, vec![std::ffi::OsString::from("out.png")], "nothing but the output in the current folder");
    // A GGUF T5 with an unwritable cache folder works too, in memory.
    let t5 = fixtures().join("bfl-tiny-dev/t5-encoder-Q8_0.gguf");
    let dev = fixtures().join("tiny-dev");
    let out = t.path().join("t5.png");
    let o = bin()
        .args(["--model", &s(&dev), "--prompt", "a cat", "--steps", "1", "--max-sequence-length", "8"])
        .args(["--image", &s(&image("gradient-80x80.png")), "--text-encoder-2", &s(&t5), "-o", &s(&out)])
        .env("FLUX_IMG2IMG_CACHE", "/proc/self/no-cache-here")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("kept in memory only"), "{}", stderr(&o));
}

/// A batch of three with stdout closed early or full: every image is written, and the exit code says results
/// were lost.
#[test]
fn a_closed_or_full_stdout_never_stops_the_work() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    user_files(d, &["a.png", "b.png", "c.png"]);
    let args = fast(&["--image", "a.png", "b.png", "c.png", "--output-dir", "out", "--seed", "1"]);
    let mut child = bin().current_dir(d).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader goes away, as `| head -0` does
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("standard output failed"), "{}", stderr(&o));
    for n in ["a", "b", "c"] {
        assert!(d.join(format!("out/{n}.png")).is_file());
    }
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = bin().current_dir(d).args(&args).args(["--name", "f{stem}"]).stdout(full).output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
        assert!(d.join("out/fc.png").is_file());
    }
}

#[test]
fn silent_servers_time_out_and_pipes_are_refused() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/cat.png", listener.local_addr().unwrap());
    let keep = std::thread::spawn(move || {
        // Accept and never answer.
        let conn = listener.accept();
        std::thread::sleep(std::time::Duration::from_secs(8));
        drop(conn);
    });
    let t = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let o = bin()
        .args(fast(&["--image", &url, "--download-timeout", "1", "-o", &s(&t.path().join("o.png"))]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot download"), "{}", stderr(&o));
    assert!(started.elapsed().as_secs() < 6, "gave up after {:?}", started.elapsed());
    keep.join().unwrap();
    #[cfg(unix)]
    {
        let fifo = t.path().join("pipe.png");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let o = bin().args(fast(&["--image", &s(&fifo), "-o", &s(&t.path().join("p.png"))])).output().unwrap();
        refused(&o, "not a regular file");
    }
}

fn tiny_copy(t: &Path) -> PathBuf {
    let m = t.join("model");
    copy_dir(&fixtures().join("tiny-schnell"), &m);
    m
}

fn set_config(model: &Path, file: &str, key: &str, value: serde_json::Value) {
    let p = model.join(file);
    let mut cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    cfg[key] = value;
    std::fs::write(&p, cfg.to_string()).unwrap();
}

#[test]
fn sizes_are_bounded_before_anything_loads() {
    let t = tempfile::tempdir().unwrap();
    let img = s(&image("gradient-80x80.png"));
    let out = s(&t.path().join("o.png"));
    for (value, needle) in [(1_000_000_000u64, "num_layers 1000000000"), (0, "num_layers 0")] {
        let m = tiny_copy(&t.path().join(value.to_string()));
        set_config(&m, "transformer/config.json", "num_layers", value.into());
        let mut args = fast(&["--image", &img, "-o", &out]);
        args[1] = s(&m);
        let started = std::time::Instant::now();
        refused(&bin().args(&args).output().unwrap(), needle);
        assert!(started.elapsed().as_secs() < 20);
    }
    let m = tiny_copy(&t.path().join("t5"));
    set_config(&m, "text_encoder_2/config.json", "num_layers", 1_000_000_000u64.into());
    let mut args = fast(&["--image", &img, "-o", &out]);
    args[1] = s(&m);
    refused(&bin().args(&args).output().unwrap(), "text_encoder_2/config.json");
    let cases: [(&[&str], &str); 4] = [
        (&["--steps", "1000000000"], "at most 1000"),
        (&["--num-images", "1000000000"], "at most 10000"),
        (&["--guidance", "1e308"], "outside ±1000"),
        (&["--lora-scale", "1e308"], "outside ±1000"),
    ];
    for (extra, needle) in cases {
        let mut args = fast(&["--image", &img, "-o", &out]);
        args.extend(extra.iter().map(|x| x.to_string()));
        if extra[0] == "--steps" {
            args.drain(4..6); // the fast flags' own --steps
        }
        refused(&bin().args(&args).output().unwrap(), needle);
    }
    assert!(!Path::new(&out).exists());
}

#[test]
fn an_input_too_large_for_the_machine_is_refused_before_loading() {
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("big.png");
    image::RgbImage::from_pixel(12000, 12000, image::Rgb([90, 120, 200])).save(&big).unwrap();
    let o = bin().args(fast(&["--image", &s(&big), "-o", &s(&t.path().join("o.png"))])).output().unwrap();
    let err = refused(&o, "--memory-budget GB to run it anyway");
    assert!(!err.contains("plan:"), "refused before the edit starts: {err}");
}

#[test]
fn huge_mask_blurs_finish_quickly_and_say_what_happened() {
    let t = tempfile::tempdir().unwrap();
    let mask = t.path().join("mask.png");
    let mut m = image::GrayImage::new(80, 80);
    for y in 30..50 {
        for x in 30..50 {
            m.put_pixel(x, y, image::Luma([255]));
        }
    }
    m.save(&mask).unwrap();
    let img = s(&image("gradient-80x80.png"));
    for blur in ["150", "10000000"] {
        let started = std::time::Instant::now();
        let out = s(&t.path().join("o.png"));
        let o = bin()
            .args(fast(&["--image", &img, "--mask", &s(&mask), "--mask-blur", blur, "-o", &out]))
            .output()
            .unwrap();
        let err = refused(&o, "spreads the mask so thin");
        assert!(err.contains("error: mask ") && !err.contains("mask is empty"), "{err}");
        assert!(started.elapsed().as_secs() < 10, "--mask-blur {blur} took {:?}", started.elapsed());
    }
}

/// Writes a copy of tiny-schnell whose transformer weights are all NaN.
fn nan_model(t: &Path) -> PathBuf {
    use safetensors::tensor::{serialize, TensorView};
    let m = tiny_copy(t);
    let dir = m.join("transformer");
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        let bytes = std::fs::read(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let owned: Vec<(String, Vec<u8>, Vec<usize>)> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| {
                let nan: Vec<u8> = f32::NAN.to_le_bytes().iter().copied().cycle().take(v.data().len()).collect();
                (n, nan, v.shape().to_vec())
            })
            .collect();
        let views: Vec<(String, TensorView)> = owned
            .iter()
            .map(|(n, d, sh)| (n.clone(), TensorView::new(safetensors::Dtype::F32, sh.clone(), d).unwrap()))
            .collect();
        std::fs::write(&p, serialize(views, None).unwrap()).unwrap();
    }
    m
}

#[test]
fn nan_weights_stop_with_the_stage_named_and_no_file() {
    let t = tempfile::tempdir().unwrap();
    let m = nan_model(t.path());
    let out = t.path().join("o.png");
    let mut args = fast(&["--image", &s(&image("gradient-80x80.png")), "-o", &s(&out)]);
    args[1] = s(&m);
    let err = refused(&bin().args(&args).output().unwrap(), "denoising step 1/1 produced NaN or infinite values");
    assert!(err.contains("transformer weights"), "{err}");
    assert!(!out.exists());
    let leftovers: Vec<_> =
        std::fs::read_dir(t.path()).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    assert_eq!(leftovers, vec![std::ffi::OsString::from("model")], "no partial files: {leftovers:?}");
}

/// A PNG whose eXIf chunk says "rotate 90° clockwise to display" (EXIF orientation 6).
fn png_with_orientation(path: &Path, w: u32, h: u32) {
    let file = std::fs::File::create(path).unwrap();
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), w, h);
    enc.set_color(png::ColorType::Rgb);
    let mut writer = enc.write_header().unwrap();
    // Little-endian TIFF header, one IFD entry: tag 0x0112 (Orientation), SHORT, count 1, value 6.
    let exif: Vec<u8> = [
        &b"II*\0"[..],
        &8u32.to_le_bytes(),
        &1u16.to_le_bytes(),
        &0x0112u16.to_le_bytes(),
        &3u16.to_le_bytes(),
        &1u32.to_le_bytes(),
        &6u16.to_le_bytes(),
        &[0, 0],
        &0u32.to_le_bytes(),
    ]
    .concat();
    writer.write_chunk(png::chunk::ChunkType(*b"eXIf"), &exif).unwrap();
    let data: Vec<u8> = (0..w * h).flat_map(|i| [(i % w * 3) as u8, (i / w * 3) as u8, 128]).collect();
    writer.write_image_data(&data).unwrap();
}

#[test]
fn exif_orientation_is_applied_to_inputs() {
    let t = tempfile::tempdir().unwrap();
    let phone = t.path().join("phone.png");
    png_with_orientation(&phone, 80, 48);
    let o =
        bin().args(fast(&["--image", &s(&phone), "--dry-run", "-o", &s(&t.path().join("o.png"))])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(plan.contains("48x80 from 48x80"), "the upright picture is 48 wide: {plan}");
    let o = bin().args(fast(&["--image", &s(&phone), "-o", &s(&t.path().join("o.png")), "-q"])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(image::open(t.path().join("o.png")).unwrap().to_rgb8().dimensions(), (48, 80));
}

#[test]
fn cut_short_jpegs_warn_or_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let jpg = t.path().join("cut.jpg");
    let img = image::open(image("photo-96x64.png")).unwrap().to_rgb8();
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 90).encode_image(&img).unwrap();
    std::fs::write(&jpg, &bytes[..bytes.len() * 2 / 3]).unwrap();
    let out = t.path().join("o.png");
    let o = bin().args(fast(&["--image", &s(&jpg), "-o", &s(&out)])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("warning: input image") && stderr(&o).contains("cut short"), "{}", stderr(&o));
    std::fs::remove_file(&out).unwrap();
    let o = bin().args(fast(&["--image", &s(&jpg), "-o", &s(&out), "--strict-images"])).output().unwrap();
    refused(&o, "--strict-images");
    assert!(!out.exists());
    // A whole JPEG gets no warning.
    std::fs::write(&jpg, &bytes).unwrap();
    let o = bin().args(fast(&["--image", &s(&jpg), "-o", &s(&out), "--strict-images"])).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
}

#[test]
fn manifest_quotes_that_never_close_name_their_line() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    user_files(d, &["a.png", "b.png"]);
    std::fs::write(d.join("m.csv"), "image,prompt\na.png,\"a cat\nb.png,a dog\n").unwrap();
    let o = run_in(d, &fast(&["--manifest", "m.csv", "--output-dir", "out"]));
    refused(&o, "line 2: a quoted cell opens here and never closes");
    std::fs::write(d.join("m.csv"), "image,prompt,strength\na.png,x,0.5\nb.png,y,7\n").unwrap();
    let o = run_in(d, &fast(&["--manifest", "m.csv", "--output-dir", "out"]));
    refused(&o, "manifest line 3: strength 7");
}

#[test]
fn skip_existing_remakes_empty_and_cut_short_pngs() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    user_files(d, &["a.png", "b.png", "c.png"]);
    let args = fast(&["--image", "a.png", "b.png", "c.png", "--output-dir", "out", "--seed", "1", "-q"]);
    assert_eq!(run_in(d, &args).status.code(), Some(0));
    let good = std::fs::read(d.join("out/c.png")).unwrap();
    std::fs::write(d.join("out/a.png"), b"").unwrap();
    let b = std::fs::read(d.join("out/b.png")).unwrap();
    std::fs::write(d.join("out/b.png"), &b[..b.len() / 2]).unwrap();
    let mut again = args.clone();
    again.push("--skip-existing".into());
    again.retain(|a| a != "-q");
    let o = run_in(d, &again);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("a.png exists but is not a complete PNG") && err.contains("b.png exists but"), "{err}");
    assert!(err.contains("skip:") && err.contains("c.png exists"), "{err}");
    assert_eq!(std::fs::read(d.join("out/b.png")).unwrap(), b, "remade identically");
    assert_eq!(std::fs::read(d.join("out/c.png")).unwrap(), good);
    assert!(image::open(d.join("out/a.png")).is_ok());
}

#[test]
fn an_unwritable_output_folder_fails_before_any_model_loads() {
    // /proc/self is a folder in which nobody, root included, can create files.
    let t = tempfile::tempdir().unwrap();
    if !Path::new("/proc/self").is_dir() {
        return;
    }
    let o =
        bin().args(fast(&["--image", &s(&image("gradient-80x80.png")), "-o", "/proc/self/out.png"])).output().unwrap();
    let err = refused(&o, "cannot write in /proc/self");
    assert!(!err.contains("plan:"), "{err}");
    // --grid inside an --output-dir the run creates is fine.
    let o = bin()
        .current_dir(t.path())
        .args(fast(&["--image", &s(&image("gradient-80x80.png")), "--output-dir", "new", "--grid", "new/s.png", "-q"]))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(t.path().join("new/s.png").is_file());
}

#[test]
fn corrupt_gguf_headers_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixtures().join("bfl-tiny-dev/flux1-Q8_0.gguf")).unwrap();
    let name = b"double_blocks.0.img_attn.qkv.weight";
    let at = good.windows(name.len()).position(|w| w == name).unwrap() + name.len();
    let dev = fixtures().join("tiny-dev");
    // The type id after the name, its 4-byte dimension count and two 8-byte dimensions.
    for (what, id) in [("F32", 0u32), ("F16", 1), ("BF16", 30), ("Q4_0", 2)] {
        let mut bytes = good.clone();
        let ty = at + 4 + 16;
        bytes[ty..ty + 4].copy_from_slice(&id.to_le_bytes());
        let gguf = t.path().join(format!("{what}.gguf"));
        std::fs::write(&gguf, bytes).unwrap();
        let o = bin()
            .args(["--model", &s(&dev), "--prompt", "x", "--image", &s(&image("gradient-80x80.png"))])
            .args(["--transformer", &s(&gguf), "-o", &s(&t.path().join("o.png"))])
            .output()
            .unwrap();
        refused(&o, "not a valid GGUF file");
    }
}

#[test]
fn clearer_errors_name_the_file_and_the_fix() {
    let t = tempfile::tempdir().unwrap();
    let img = s(&image("gradient-80x80.png"));
    let out = s(&t.path().join("o.png"));
    let file = fixtures().join("bfl-tiny-dev/flux1.safetensors");
    let mut args = fast(&["--image", &img, "-o", &out]);
    args[1] = s(&file);
    refused(&bin().args(&args).output().unwrap(), "--transformer FILE");
    let o = bin().args(fast(&["--image", &img, "-o", &out, "--vae", &s(&file)])).output().unwrap();
    let err = refused(&o, "flux1.safetensors");
    assert!(err.len() < 400, "one short line: {err}");
    let m = tiny_copy(t.path());
    set_config(&m, "text_encoder_2/config.json", "d_model", "wide".into());
    let mut args = fast(&["--image", &img, "-o", &out]);
    args[1] = s(&m);
    refused(&bin().args(&args).output().unwrap(), "text_encoder_2/config.json: invalid T5 config");
    let o =
        bin().args(fast(&["--image", &img, "--mask", &s(&t.path().join("none.png")), "-o", &out])).output().unwrap();
    refused(&o, "error: mask ");
}

/// SIGTERM during a batch: the current image finishes, the summary prints, no `.part` file stays, exit 143.
#[cfg(unix)]
#[test]
fn sigterm_finishes_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path();
    user_files(d, &["a.png", "b.png", "c.png", "d.png"]);
    // Twelve items at a larger size, so the signal lands mid-batch.
    let mut args = fast(&["--image", "a.png", "b.png", "c.png", "d.png", "--output-dir", "out", "--seed", "1"]);
    args.extend(["--num-images", "3", "--width", "256", "--height", "256"].map(String::from));
    args[5] = "4".into();
    let child = bin().current_dir(d).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    // Wait for the first image, then ask the process to stop.
    let first = d.join("out/a-1.png");
    let started = std::time::Instant::now();
    while !first.exists() && started.elapsed().as_secs() < 60 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(143), "{err}");
    assert!(err.contains("terminated (SIGTERM)") && err.contains("summary:") && err.contains("interrupted"), "{err}");
    let names: Vec<String> = std::fs::read_dir(d.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| n.ends_with(".png") && !n.starts_with('.')), "no temporary files: {names:?}");
    assert!(names.len() < 12, "stopped early: {names:?}");
    for n in names {
        assert!(image::open(d.join("out").join(n)).is_ok(), "every written file is whole");
    }
}
