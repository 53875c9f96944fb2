//! `flux-img2img serve` started for real on a free loopback port with tiny-schnell: a job's PNG equals the CLI's
//! byte for byte, SSE events arrive in order, the queue answers 429, cancel stops a job, bad requests get JSON
//! errors while the server keeps serving, the API key is required, and SIGTERM answers every waiting request.

use super::common::{bin, fixtures};
use base64::Engine as _;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "test-key-0123456789";

fn model() -> String {
    fixtures().join("tiny-schnell").to_string_lossy().into_owned()
}

/// A running server; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = bin()
            .args(["serve", "--port", "0", "--model", &model()])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("server starts");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let base = loop {
            let line = lines.next().expect("server prints its address").expect("stderr readable");
            if let Some(addr) = line.strip_prefix("listening on ") {
                break addr.to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Server { child, base }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn post(&self, path: &str, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::post(&self.url(path));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        answer(req.send_json(body.clone()))
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = ureq::get(&self.url(path));
        if let Some(k) = key {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        answer(req.call())
    }

    /// The job's whole event stream (it ends after the job's last event).
    fn events(&self, id: &str) -> String {
        let mut text = String::new();
        ureq::get(&self.url(&format!("/v1/jobs/{id}/events")))
            .call()
            .unwrap()
            .into_reader()
            .read_to_string(&mut text)
            .unwrap();
        text
    }

    /// Polls a job until it has ended.
    fn wait(&self, id: &str, key: Option<&str>) -> Value {
        let t0 = Instant::now();
        loop {
            let (status, v) = self.get(&format!("/v1/jobs/{id}"), key);
            assert_eq!(status, 200, "{v}");
            if ["done", "failed", "cancelled"].contains(&v["state"].as_str().unwrap()) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(120), "job {id} never ended: {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_state(&self, id: &str, state: &str, key: Option<&str>) {
        let t0 = Instant::now();
        while self.get(&format!("/v1/jobs/{id}"), key).1["state"] != state {
            assert!(t0.elapsed() < Duration::from_secs(60), "job {id} never reached {state}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Status and JSON body, for successes and HTTP errors alike (every error must be JSON).
fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let res = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = res.status();
    let text = res.into_string().expect("body");
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("status {status}: not JSON: {text}")))
}

fn b64(path: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(path).unwrap())
}

fn png_of(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(v["image"].as_str().expect("a done job has its image")).unwrap()
}

/// A slow job (many steps) to hold the worker busy.
fn slow_job() -> Value {
    json!({"prompt": "slow", "width": 64, "height": 64, "steps": 1000, "seed": 1})
}

#[test]
fn server_job_equals_cli_output_and_streams_events() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("images/photo-96x64.png"), dir.path().join("input.png")).unwrap();
    std::fs::copy(fixtures().join("masks/small-96x64.png"), dir.path().join("mask.png")).unwrap();
    let server = Server::start(&[]);
    let job = json!({"prompt": "a red house", "seed": 7, "strength": 0.7, "steps": 4,
        "image": b64(&dir.path().join("input.png")), "image_name": "input.png",
        "mask": b64(&dir.path().join("mask.png")), "mask_name": "mask.png"});
    let (status, v) = server.post("/v1/jobs", &job, None);
    assert_eq!(status, 202, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let done = server.wait(&id, None);
    assert_eq!(done["state"], "done", "{done}");

    let out = bin()
        .current_dir(dir.path())
        .args(["--model", &model(), "--image", "input.png", "--mask", "mask.png", "--prompt", "a red house"])
        .args(["--seed", "7", "--strength", "0.7", "--steps", "4", "-o", "cli.png"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let cli = std::fs::read(dir.path().join("cli.png")).unwrap();
    assert!(png_of(&done) == cli, "the server's PNG differs from the CLI's (pixels or metadata)");

    // The event stream replays the whole job in order and ends after the terminal stage.
    let text = server.events(&id);
    let data: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    let stages: Vec<&str> = data.iter().filter_map(|d| d["stage"].as_str()).collect();
    assert_eq!(stages, ["queued", "running", "loading", "denoising", "encoding", "done"], "{text}");
    let steps: Vec<u64> = data.iter().filter_map(|d| d["step"].as_u64()).collect();
    assert_eq!(steps, (0..=steps.len() as u64 - 1).collect::<Vec<_>>(), "steps out of order: {text}");

    let (status, m) = (200, ureq::get(&server.url("/metrics")).call().unwrap().into_string().unwrap());
    assert_eq!(status, 200);
    assert!(m.contains("flux_jobs_total{result=\"done\"} 1"), "{m}");
}

#[test]
fn server_queue_cancel_limits_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let server =
        Server::start(&["--max-queue", "1", "--max-body-mib", "1", "--api-key-file", key_file.to_str().unwrap()]);
    let key = Some(KEY);

    // The key is required and must be the whole key.
    assert_eq!(server.post("/v1/jobs", &slow_job(), None).0, 401);
    assert_eq!(server.post("/v1/jobs", &slow_job(), Some("test-key-012345678X")).0, 401);

    // Bad requests: JSON errors with their status.
    let bad_json = ureq::post(&server.url("/v1/jobs")).set("Authorization", &format!("Bearer {KEY}"));
    let (status, v) = answer(bad_json.send_string("{not json"));
    assert_eq!(status, 400, "{v}");
    // An oversized body gets 413 — or, when the server answers and closes before the client has finished
    // writing (a race under load: hyper does not drain a refused body), a closed connection; either way no job.
    let big = json!({"prompt": "x".repeat(2 << 20)});
    let sent = ureq::post(&server.url("/v1/jobs")).set("Authorization", &format!("Bearer {KEY}")).send_json(big);
    match sent {
        Err(ureq::Error::Transport(t)) => eprintln!("oversized body: connection closed early ({t})"),
        other => assert_eq!(answer(other).0, 413),
    }
    assert_eq!(server.get("/healthz", None).0, 200, "still serving after an oversized body");
    let photo = b64(&fixtures().join("images/photo-96x64.png"));
    for (job, what) in [
        (json!({"prompt": "x", "image": "/etc/passwd"}), "not base64"),
        (json!({"prompt": "x", "image": photo, "image_name": "../../etc/passwd"}), "plain file names"),
        (json!({"prompt": "x", "output": "/tmp/evil.png"}), "unknown field"),
        (json!({"prompt": "x", "lora": ["../../x.safetensors"]}), "--lora-dir"),
        (json!({"prompt": "x", "model": "/etc"}), "not served here"),
    ] {
        let (status, v) = server.post("/v1/jobs", &job, key);
        assert_eq!(status, 400, "{job}: {v}");
        assert!(v["error"].as_str().unwrap().contains(what), "{v}");
    }

    // One running, one queued, the next refused with Retry-After.
    let a = server.post("/v1/jobs", &slow_job(), key).1["id"].as_str().unwrap().to_string();
    server.wait_state(&a, "running", key);
    let b = server.post("/v1/jobs", &slow_job(), key).1["id"].as_str().unwrap().to_string();
    let full = ureq::post(&server.url("/v1/jobs")).set("Authorization", &format!("Bearer {KEY}")).send_json(slow_job());
    match full {
        Err(ureq::Error::Status(429, r)) => assert!(r.header("retry-after").is_some()),
        other => panic!("expected 429, got {other:?}"),
    }
    // Cancel: the queued job at once, the running one between steps.
    assert_eq!(answer(ureq::delete(&server.url(&format!("/v1/jobs/{b}"))).set("X-API-Key", KEY).call()).0, 200);
    assert_eq!(server.wait(&b, key)["state"], "cancelled");
    server.get(&format!("/v1/jobs/{a}"), key);
    assert_eq!(answer(ureq::delete(&server.url(&format!("/v1/jobs/{a}"))).set("X-API-Key", KEY).call()).0, 200);
    let ended = server.wait(&a, key);
    assert_eq!(ended["state"], "cancelled", "{ended}");
    assert!(ended["step"].as_u64().unwrap() < 1000, "{ended}");

    // Still serving.
    assert_eq!(server.get("/healthz", None).0, 200);
    assert_eq!(server.get("/v1/jobs/nope", key).0, 404);
}

#[test]
fn server_sigterm_answers_every_waiting_request() {
    let mut server = Server::start(&[]);
    let url = server.url("/sdapi/v1/txt2img");
    let body = json!({"prompt": "slow", "width": 64, "height": 64, "steps": 1000, "seed": 3});
    let clients: Vec<_> = (0..2)
        .map(|k| {
            let (url, body) = (url.clone(), body.clone());
            std::thread::sleep(Duration::from_millis(200 * k));
            std::thread::spawn(move || answer(ureq::post(&url).send_json(body)))
        })
        .collect();
    // Both requests are in: one runs, one waits.
    let t0 = Instant::now();
    while server.get("/sdapi/v1/progress", None).1["state"]["job_count"] != 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "jobs never queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    for c in clients {
        let (status, v) = c.join().unwrap();
        assert_eq!(status, 503, "{v}");
        assert!(v["error"].is_string(), "{v}");
    }
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// A multipart/form-data body: (name, filename, bytes) parts.
fn multipart(parts: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "flux-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, file, bytes) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: image/png\r\n\r\n")
                    .as_bytes(),
            ),
            None => body.extend_from_slice(format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes()),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn cli_png(dir: &Path, args: &[&str]) -> Vec<u8> {
    let out = bin().current_dir(dir).args(["--model", &model(), "-o", "cli.png"]).args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(dir.join("cli.png")).unwrap()
}

fn decode(b: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(b.as_str().expect("base64 image")).unwrap()
}

#[test]
fn server_openai_and_a1111_match_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.png");
    std::fs::copy(fixtures().join("images/photo-96x64.png"), &input).unwrap();
    let server = Server::start(&[]);
    let edit = cli_png(dir.path(), &["--image", "input.png", "--prompt", "a boat", "--seed", "5", "--strength", "0.7"]);

    let bytes = std::fs::read(&input).unwrap();
    let (ctype, body) = multipart(&[
        ("image", Some("photo.png"), &bytes),
        ("prompt", None, b"a boat"),
        ("seed", None, b"5"),
        ("strength", None, b"0.7"),
        ("response_format", None, b"b64_json"),
        ("model", None, b"dall-e-2"),
    ]);
    let (status, v) = answer(ureq::post(&server.url("/v1/images/edits")).set("Content-Type", &ctype).send_bytes(&body));
    assert_eq!(status, 200, "{v}");
    assert!(decode(&v["data"][0]["b64_json"]) == edit, "OpenAI edit differs from the CLI's");

    let a = json!({"prompt": "a boat", "seed": 5, "denoising_strength": 0.7, "init_images": [b64(&input)],
        "sampler_name": "Euler", "override_settings": {}});
    let (status, v) = server.post("/sdapi/v1/img2img", &a, None);
    assert_eq!(status, 200, "{v}");
    assert!(decode(&v["images"][0]) == edit, "A1111 img2img differs from the CLI's");

    // n images take seeds seed, seed+1.
    let (status, v) = server.post(
        "/v1/images/generations",
        &json!({"prompt": "a boat", "n": 2, "size": "64x48", "seed": 9, "response_format": "b64_json"}),
        None,
    );
    assert_eq!(status, 200, "{v}");
    let second = cli_png(dir.path(), &["--prompt", "a boat", "--seed", "10", "--width", "64", "--height", "48"]);
    assert!(decode(&v["data"][1]["b64_json"]) == second, "OpenAI generation differs from the CLI's");
    let (_, v) = server.post("/v1/images/generations", &json!({"prompt": "x", "response_format": "url"}), None);
    // OpenAI's own error shape, which its client libraries read the message from.
    assert!(v["error"]["message"].as_str().unwrap().contains("b64_json"), "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");

    let (status, v) = server.get("/sdapi/v1/sd-models", None);
    assert_eq!((status, v[0]["model_name"].as_str().unwrap()), (200, model().as_str()));
    assert_eq!(server.get("/sdapi/v1/options", None).0, 200);
    assert_eq!(server.get("/sdapi/v1/progress", None).1["progress"], 0.0);
    let page = ureq::get(&server.url("/")).call().unwrap().into_string().unwrap();
    assert!(page.contains("<canvas") && !page.contains("http"), "the page is embedded and loads nothing remote");
}

/// Random and mutated bodies against every POST endpoint: each answer is JSON with a status below 500, and the
/// server still answers /healthz. Bounded: 150 requests of at most 1 s each (a mutation may make a valid, larger job,
/// which the waiting endpoints would wait for: a timeout there counts as accepted).
#[test]
fn server_fuzzed_bodies_get_json_errors() {
    let server = Server::start(&["--max-queue", "64"]);
    let valid = json!({"prompt": "p", "width": 32, "height": 32, "steps": 1, "seed": 1}).to_string().into_bytes();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let paths = ["/v1/jobs", "/sdapi/v1/img2img", "/sdapi/v1/txt2img", "/v1/images/generations", "/v1/images/edits"];
    let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(1)).build();
    for k in 0..150 {
        let mut body =
            if k % 3 == 0 { (0..rand() % 200).map(|_| rand() as u8).collect::<Vec<u8>>() } else { valid.clone() };
        for _ in 0..1 + rand() % 4 {
            if body.is_empty() {
                break;
            }
            let i = (rand() as usize) % body.len();
            match rand() % 3 {
                0 => body[i] = rand() as u8,
                1 => body.truncate(i),
                _ => body.insert(i, b"{}[]\",:-0e9"[(rand() % 11) as usize]),
            }
        }
        let path = paths[k % paths.len()];
        let ctype = if path.ends_with("edits") { "multipart/form-data; boundary=x" } else { "application/json" };
        let (status, v) = match agent.post(&server.url(path)).set("Content-Type", ctype).send_bytes(&body) {
            Err(ureq::Error::Transport(t)) if t.to_string().contains("timed out") => continue,
            r => answer(r),
        };
        assert!(status < 500 || status == 503, "{path} {:?}: {status} {v}", String::from_utf8_lossy(&body));
    }
    assert_eq!(server.get("/healthz", None).0, 200);
}

/// `--server URL`: the CLI sends the edit to a running server and writes the server's PNG locally — byte for byte
/// the local CLI's for the same flags. A server refusal, a flag a job cannot carry, a server that is not there and
/// an output over the input are each one `error:` line with exit 2 and no file written.
#[test]
fn cli_as_a_client_writes_the_same_png() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("images/photo-96x64.png"), dir.path().join("input.png")).unwrap();
    std::fs::copy(fixtures().join("masks/small-96x64.png"), dir.path().join("mask.png")).unwrap();
    let server = Server::start(&[]);
    let edit = ["--image", "input.png", "--mask", "mask.png", "--prompt", "a red house", "--seed", "7"];
    let run = |extra: &[&str]| {
        bin()
            .current_dir(dir.path())
            .args(["--model", &model()])
            .args(edit)
            .args(["--strength", "0.7", "--steps", "4"])
            .args(extra)
            .output()
            .unwrap()
    };
    let local = run(&["-o", "cli.png"]);
    assert!(local.status.success(), "{}", String::from_utf8_lossy(&local.stderr));
    let remote = run(&["--server", &server.base, "-o", "client.png"]);
    let err = String::from_utf8_lossy(&remote.stderr);
    assert!(remote.status.success(), "{err}");
    assert_eq!(String::from_utf8_lossy(&remote.stdout).trim(), "client.png");
    assert!(err.contains("denoise: step 1/"), "progress from the server's events: {err}");
    let (cli, client) =
        (std::fs::read(dir.path().join("cli.png")).unwrap(), std::fs::read(dir.path().join("client.png")).unwrap());
    assert!(cli == client, "the client's PNG differs from the local CLI's");

    let input_before = std::fs::read(dir.path().join("input.png")).unwrap();
    let fails = |args: Vec<&str>, needle: &str| {
        let o = bin().current_dir(dir.path()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!dir.path().join("bad.png").exists(), "no output after {args:?}");
    };
    let base = server.base.clone();
    let with = |more: &[&'static str]| -> Vec<&str> {
        let mut v = vec!["--server", base.as_str(), "--image", "input.png", "--prompt", "x", "--steps", "2"];
        v.extend_from_slice(more);
        v
    };
    fails(
        with(&["--model", "not-served", "-o", "bad.png"]),
        "refused the job (400): model \"not-served\" is not served",
    );
    let mut q = with(&["--quantize", "q8_0", "-o", "bad.png"]);
    q.extend(["--model", "m"]);
    fails(q, "--quantize is not sent to a server");
    fails(
        vec![
            "--server",
            "http://127.0.0.1:9",
            "--model",
            "m",
            "--image",
            "input.png",
            "--prompt",
            "x",
            "-o",
            "bad.png",
        ],
        "cannot reach a server at http://127.0.0.1:9",
    );
    fails(with(&["--model", "m", "-o", "input.png"]), "input.png");
    assert_eq!(std::fs::read(dir.path().join("input.png")).unwrap(), input_before, "the input is untouched");
}

/// `--idle-unload 1`: the model is dropped a second after the last job (the gauge and counter say so) and the
/// next job loads it again, giving the same PNG. `--memory-budget`: a job over it fails with the estimate in its
/// error, before the denoiser loads, and the server goes on serving.
#[test]
fn server_idle_unload_and_memory_budget() {
    let server = Server::start(&["--idle-unload", "1"]);
    let job = json!({"prompt": "a lighthouse", "width": 64, "height": 48, "steps": 2, "seed": 3});
    let run = |s: &Server| {
        let (status, v) = s.post("/v1/jobs", &job, None);
        assert_eq!(status, 202, "{v}");
        s.wait(v["id"].as_str().unwrap(), None)
    };
    let metric = |s: &Server, name: &str| -> String {
        let m = ureq::get(&s.url("/metrics")).call().unwrap().into_string().unwrap();
        m.lines().find(|l| l.starts_with(&format!("{name} "))).unwrap_or_else(|| panic!("{name} in {m}")).to_string()
    };
    let first = run(&server);
    assert_eq!(first["state"], "done", "{first}");
    assert_eq!(metric(&server, "flux_models_loaded"), "flux_models_loaded 1");
    let t0 = Instant::now();
    while metric(&server, "flux_idle_unloads_total") != "flux_idle_unloads_total 1" {
        assert!(t0.elapsed() < Duration::from_secs(20), "never unloaded");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(metric(&server, "flux_models_loaded"), "flux_models_loaded 0");
    let again = run(&server);
    assert_eq!(again["state"], "done", "{again}");
    assert!(png_of(&again) == png_of(&first), "the reloaded model gives the same PNG");
    assert_eq!(metric(&server, "flux_models_loaded"), "flux_models_loaded 1");
    drop(server);

    let tight = Server::start(&["--memory-budget", "0.05"]);
    let failed = run(&tight);
    assert_eq!(failed["state"], "failed", "{failed}");
    let msg = failed["error"].as_str().unwrap();
    assert!(msg.contains("needs") && msg.contains("memory limit (--memory-budget)"), "{msg}");
    assert_eq!(tight.get("/healthz", None).0, 200);
}

/// `preview_every`: a `preview` event (a PNG of the picture so far) after every N-th step but the last, and the
/// final image unchanged by them.
#[test]
fn server_previews_in_the_event_stream() {
    let server = Server::start(&[]);
    let job = |preview: Option<u64>| {
        let mut j = json!({"prompt": "a lighthouse", "width": 64, "height": 48, "steps": 3, "seed": 3});
        if let Some(p) = preview {
            j["preview_every"] = json!(p);
        }
        let (status, v) = server.post("/v1/jobs", &j, None);
        assert_eq!(status, 202, "{v}");
        let id = v["id"].as_str().unwrap().to_string();
        (id.clone(), server.wait(&id, None))
    };
    let (id, with) = job(Some(1));
    let (_, without) = job(None);
    assert_eq!(with["state"], "done", "{with}");
    assert!(png_of(&with) == png_of(&without), "previews must not change the image");
    let text = server.events(&id);
    let previews: Vec<Value> = text
        .split("\n\n")
        .filter(|e| e.contains("event: preview"))
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(previews.iter().map(|p| p["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2], "{text}");
    let png = base64::engine::general_purpose::STANDARD.decode(previews[0]["image"].as_str().unwrap()).unwrap();
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (64, 48));
    let (status, v) = server.post("/v1/jobs", &json!({"prompt": "x", "preview_every": 0}), None);
    assert_eq!(status, 400, "{v}");
}

/// Client mode against a server with a key, and interrupted: `--api-key-file` is sent (without it: the server's
/// 401 as one line, no file), `--json` prints one object, and Ctrl-C on the client cancels the remote job (exit
/// 130, the server counts it cancelled, nothing written).
#[test]
fn cli_as_a_client_with_a_key_json_and_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("images/photo-96x64.png"), dir.path().join("input.png")).unwrap();
    std::fs::write(dir.path().join("key.txt"), format!("{KEY}\n")).unwrap();
    let server = Server::start(&["--api-key-file", &dir.path().join("key.txt").to_string_lossy()]);
    let client = |key: bool, extra: &[&str]| {
        let mut c = bin();
        c.current_dir(dir.path()).args(["--server", &server.base, "--image", "input.png", "--prompt", "x"]);
        if key {
            c.args(["--api-key-file", "key.txt"]);
        }
        c.args(extra);
        c
    };
    let out = client(false, &["--steps", "2", "-o", "bad.png"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && err.contains("401"), "{err}");
    assert!(!dir.path().join("bad.png").exists());

    let out = client(true, &["--steps", "2", "--seed", "5", "-o", "ok.png", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("--json: one object");
    assert_eq!(
        (v["status"].as_str(), v["output"].as_str(), v["seed"].as_u64()),
        (Some("written"), Some("ok.png"), Some(5))
    );
    assert!(output_is_png(&dir.path().join("ok.png")));
    // As the local CLI's --json: the edit's record too.
    assert_eq!((v["prompt"].as_str(), v["index"].as_u64()), (Some("x"), Some(0)), "{v}");
    assert!(v["steps"].is_number() && v["input"].as_str() == Some("input.png"), "{v}");

    let mut child = client(true, &["--steps", "1000", "--strength", "1", "--seed", "1", "-o", "slow.png"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let running = lines.any(|l| l.is_ok_and(|l| l.contains("step 2/")));
    assert!(running, "the client never showed the job's steps");
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    std::thread::spawn(move || lines.for_each(drop));
    assert_eq!(child.wait().unwrap().code(), Some(130));
    let t0 = Instant::now();
    loop {
        let (_, m) = (0, server_metrics(&server));
        if m.contains("flux_jobs_total{result=\"cancelled\"} 1") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the remote job was not cancelled: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!dir.path().join("slow.png").exists());
}

fn output_is_png(p: &Path) -> bool {
    std::fs::read(p).is_ok_and(|b| b.starts_with(b"\x89PNG"))
}

fn server_metrics(s: &Server) -> String {
    let req = ureq::get(&s.url("/metrics")).set("Authorization", &format!("Bearer {KEY}"));
    req.call().unwrap().into_string().unwrap()
}

/// Control over the server: a job with an uploaded control image and one of the server's ControlNets, and a job
/// asking a Control model to derive Canny edges, each equal to the CLI's PNG byte for byte (the upload's name in
/// the record); a ControlNet the server does not serve is a JSON error. The CLI as a client sends the same.
#[test]
fn server_control_and_controlnet_jobs_equal_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("images/photo-96x64.png"), dir.path().join("input.png")).unwrap();
    std::fs::copy(fixtures().join("images/control-photo-96x64.png"), dir.path().join("edges.png")).unwrap();
    let (control_model, net) = (
        fixtures().join("tiny-control").to_string_lossy().into_owned(),
        fixtures().join("tiny-controlnet-schnell").to_string_lossy().into_owned(),
    );
    let server = Server::start(&["--model", &control_model, "--controlnet", &net]);
    let input = b64(&dir.path().join("input.png"));
    let run = |job: Value| {
        let (status, v) = server.post("/v1/jobs", &job, None);
        assert_eq!(status, 202, "{v}");
        let done = server.wait(v["id"].as_str().unwrap(), None);
        assert_eq!(done["state"], "done", "{done}");
        png_of(&done)
    };
    let controlnet = run(json!({"prompt": "a red house", "seed": 3, "strength": 0.7, "steps": 3,
        "image": input, "image_name": "input.png", "controlnet": net,
        "control": b64(&dir.path().join("edges.png")), "control_name": "edges.png", "control_scale": 0.8}));
    let cli = cli_png(
        dir.path(),
        &["--image", "input.png", "--prompt", "a red house", "--seed", "3", "--strength", "0.7", "--steps", "3"],
    );
    let with_net = {
        let out = bin()
            .current_dir(dir.path())
            .args(["--model", &model(), "--image", "input.png", "--prompt", "a red house", "--seed", "3"])
            .args(["--strength", "0.7", "--steps", "3", "--controlnet", &net, "--control", "edges.png"])
            .args(["--control-scale", "0.8", "-o", "cli-net.png"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(dir.path().join("cli-net.png")).unwrap()
    };
    assert!(controlnet == with_net, "the server's ControlNet PNG differs from the CLI's");
    assert!(controlnet != cli, "the ControlNet changed nothing");

    let canny = run(json!({"prompt": "a red house", "seed": 4, "strength": 0.8, "steps": 3, "model": control_model,
        "image": input, "image_name": "input.png", "control": "canny", "canny_low": 40, "canny_high": 90}));
    let out = bin()
        .current_dir(dir.path())
        .args(["--model", &control_model, "--image", "input.png", "--prompt", "a red house", "--seed", "4"])
        .args(["--strength", "0.8", "--steps", "3", "--control-from", "canny", "--canny-low", "40"])
        .args(["--canny-high", "90", "-o", "cli-canny.png"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(canny == std::fs::read(dir.path().join("cli-canny.png")).unwrap(), "Canny job differs from the CLI");

    let (status, v) = server.post("/v1/jobs", &json!({"prompt": "x", "controlnet": "/elsewhere/net"}), None);
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("is not served here"), "{v}");

    // The A1111 ControlNet extension's unit: the same pixels (its record names the upload control.png).
    let a = json!({"prompt": "a red house", "seed": 3, "denoising_strength": 0.7, "steps": 3, "init_images": [input],
        "alwayson_scripts": {"controlnet": {"args": [{"enabled": true, "model": net, "module": "none",
        "image": b64(&dir.path().join("edges.png")), "weight": 0.8}, {"enabled": false}]}}});
    let (status, v) = server.post("/sdapi/v1/img2img", &a, None);
    assert_eq!(status, 200, "{v}");
    let pixels = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8();
    assert!(pixels(&decode(&v["images"][0])) == pixels(&with_net), "A1111 ControlNet unit differs from the CLI");
    let two = json!({"prompt": "x", "alwayson_scripts": {"controlnet": {"args": [{"model": net}, {"model": net}]}}});
    let (status, v) = server.post("/sdapi/v1/txt2img", &two, None);
    assert!(status == 400 && v.to_string().contains("one per job"), "{status} {v}");

    // The CLI as a client: the same ControlNet job, sent.
    let out = bin()
        .current_dir(dir.path())
        .args(["--server", &server.base, "--image", "input.png", "--prompt", "a red house", "--seed", "3"])
        .args(["--strength", "0.7", "--steps", "3", "--controlnet", &net, "--control", "edges.png"])
        .args(["--control-scale", "0.8", "-o", "client.png"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(dir.path().join("client.png")).unwrap() == with_net, "the client's PNG differs");
}
