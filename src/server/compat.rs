//! The OpenAI images API (`/v1/images/generations`, `/v1/images/edits`) and the AUTOMATIC1111 API
//! (`/sdapi/v1/*`) on top of the native jobs: each request becomes [`JobSpec`]s, queued like any other, and the
//! handler waits for them. Unknown fields of these APIs are ignored (their clients send many), but for A1111's
//! ControlNet unit, which becomes the job's ControlNet; `n` images use seeds seed, seed+1, ...

use super::http::{job_json, submit, with_retry, ApiError, Shared};
use super::jobs::State;
use super::spec::JobSpec;
use axum::extract::{Multipart, State as St};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

/// Images one request may ask for.
const MAX_N: usize = 8;

pub fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/images/generations", post(openai_generations))
        .route("/v1/images/edits", post(openai_edits))
        .route("/sdapi/v1/txt2img", post(a1111))
        .route("/sdapi/v1/img2img", post(a1111))
        .route("/sdapi/v1/options", get(a1111_options))
        .route("/sdapi/v1/sd-models", get(a1111_models))
        .route("/sdapi/v1/progress", get(a1111_progress))
}

/// Queues `n` copies of `spec` (seeds counted up from the first) and waits for all; their PNGs, base64.
async fn run_n(app: &Shared, spec: JobSpec, n: usize) -> Result<Vec<String>, ApiError> {
    if n == 0 || n > MAX_N {
        return Err(ApiError(StatusCode::BAD_REQUEST, format!("n must be 1 to {MAX_N}")));
    }
    let base = spec.seed.unwrap_or_else(crate::engine::random_seed);
    let mut ids = Vec::new();
    for k in 0..n {
        let spec = JobSpec { seed: Some(base.wrapping_add(k as u64)), ..spec.clone() };
        match submit(app, spec).await {
            Ok(id) => ids.push(id),
            Err(e) => {
                for id in &ids {
                    app.hub.cancel(id);
                }
                return Err(e);
            }
        }
    }
    let mut out = Vec::new();
    for id in &ids {
        out.push(wait(app, id).await?);
    }
    Ok(out)
}

/// Waits for a job to end: its PNG as base64, or its error.
async fn wait(app: &Shared, id: &str) -> Result<String, ApiError> {
    let mut rx = app.hub.with(id, |j| j.changed.subscribe()).ok_or(ApiError(StatusCode::NOT_FOUND, id.into()))?;
    loop {
        let state = app.hub.with(id, |j| j.state).unwrap_or(State::Failed);
        if state.terminal() {
            let v = job_json(app, id).unwrap_or_default();
            return match (state, v["image"].as_str()) {
                (State::Done, Some(b64)) => Ok(b64.to_string()),
                (State::Cancelled, _) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, err_of(&v, "cancelled"))),
                _ => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, err_of(&v, "failed"))),
            };
        }
        if rx.changed().await.is_err() {
            return Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, "the job vanished".into()));
        }
    }
}

fn err_of(v: &Value, default: &str) -> String {
    v["error"].as_str().unwrap_or(default).to_string()
}

fn reply(app: &Shared, r: Result<Value, ApiError>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(e) => with_retry(app, e),
    }
}

/// [`reply`] for the OpenAI endpoints: an error in OpenAI's shape, `{"error": {"message", "type", "param",
/// "code"}}`, which its client libraries read the message from (a bare string reaches their users as "Error code:
/// 400" alone). Retry-After is kept.
fn openai_reply(app: &Shared, r: Result<Value, ApiError>) -> Response {
    let Err(ApiError(status, msg)) = r else { return reply(app, r) };
    let kind = match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        s if s >= 500 => "server_error",
        _ => "invalid_request_error",
    };
    let body = serde_json::json!({"error": {"message": msg, "type": kind, "param": null, "code": null}});
    let mut res = (status, Json(body)).into_response();
    super::http::add_retry_after(app, &mut res);
    res
}

/// OpenAI's `size`: `WxH` (`auto` or absent: the model's default).
fn parse_size(size: Option<&str>) -> Result<(Option<u32>, Option<u32>), ApiError> {
    match size {
        None | Some("auto") => Ok((None, None)),
        Some(s) => {
            let bad = || ApiError(StatusCode::BAD_REQUEST, format!("size {s:?}: give WIDTHxHEIGHT, e.g. 1024x1024"));
            let (w, h) = s.split_once('x').ok_or_else(bad)?;
            Ok((Some(w.parse().map_err(|_| bad())?), Some(h.parse().map_err(|_| bad())?)))
        }
    }
}

fn check_format(f: Option<&str>) -> Result<(), ApiError> {
    match f {
        None | Some("b64_json") => Ok(()),
        Some(f) => Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("response_format {f:?}: only b64_json is served (no image URLs are kept)"),
        )),
    }
}

fn openai_data(images: Vec<String>) -> Value {
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    json!({"created": created, "data": images.into_iter().map(|b| json!({"b64_json": b})).collect::<Vec<_>>()})
}

#[derive(Deserialize)]
struct Generations {
    prompt: String,
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<String>,
    model: Option<String>,
    strength: Option<f64>,
    seed: Option<u64>,
    steps: Option<usize>,
    guidance: Option<f64>,
}

async fn openai_generations(St(app): St<Shared>, body: axum::body::Bytes) -> Response {
    let r = async {
        let g: Generations = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the body is not an images request: {e}")))?;
        check_format(g.response_format.as_deref())?;
        let (width, height) = parse_size(g.size.as_deref())?;
        let spec = JobSpec {
            prompt: Some(g.prompt),
            model: served_model(&app, g.model),
            strength: g.strength,
            seed: g.seed,
            steps: g.steps,
            guidance: g.guidance,
            width: width.or(Some(1024)),
            height: height.or(Some(1024)),
            ..Default::default()
        };
        Ok(openai_data(run_n(&app, spec, g.n.unwrap_or(1)).await?))
    };
    let r = r.await;
    openai_reply(&app, r)
}

/// OpenAI clients send their own model names (`dall-e-2`): those mean the server's default.
fn served_model(app: &Shared, m: Option<String>) -> Option<String> {
    m.filter(|m| app.limits.models.contains(m))
}

async fn openai_edits(St(app): St<Shared>, mut form: Multipart) -> Response {
    let r = async {
        let mut spec = JobSpec::default();
        let (mut n, mut size, mut format) = (None, None, None);
        let bad = |e: String| ApiError(StatusCode::BAD_REQUEST, e);
        while let Some(field) = form.next_field().await.map_err(|e| bad(format!("multipart: {e}")))? {
            let name = field.name().unwrap_or("").to_string();
            let bytes = field.bytes().await.map_err(|e| bad(format!("multipart field {name}: {e}")))?;
            let text = || String::from_utf8_lossy(&bytes).trim().to_string();
            let num = |what: &str| -> Result<f64, ApiError> {
                text().parse().map_err(|_| bad(format!("{what}: not a number")))
            };
            match name.as_str() {
                "image" | "image[]" => spec.image = Some(b64(&bytes)),
                "mask" => spec.mask = Some(b64(&openai_mask(&bytes)?)),
                "prompt" => spec.prompt = Some(text()),
                "n" => n = Some(num("n")? as usize),
                "size" => size = Some(text()),
                "response_format" => format = Some(text()),
                "model" => spec.model = served_model(&app, Some(text())),
                "strength" => spec.strength = Some(num("strength")?),
                "seed" => spec.seed = Some(num("seed")? as u64),
                "steps" => spec.steps = Some(num("steps")? as usize),
                "guidance" => spec.guidance = Some(num("guidance")?),
                _ => {}
            }
        }
        check_format(format.as_deref())?;
        (spec.width, spec.height) = parse_size(size.as_deref())?;
        if spec.image.is_none() {
            return Err(bad("`image` is required".into()));
        }
        Ok(openai_data(run_n(&app, spec, n.unwrap_or(1)).await?))
    };
    let r = r.await;
    openai_reply(&app, r)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// OpenAI's masks mark the area to edit as transparent; ours as white. A mask without transparency is taken as
/// ours.
fn openai_mask(bytes: &[u8]) -> Result<Vec<u8>, ApiError> {
    let img = image::load_from_memory(bytes).map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("mask: {e}")))?;
    if !img.color().has_alpha() {
        return Ok(bytes.to_vec());
    }
    let rgba = img.to_rgba8();
    let grey = image::GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        image::Luma([if rgba.get_pixel(x, y)[3] == 0 { 255 } else { 0 }])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    grey.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(out.into_inner())
}

#[derive(Deserialize)]
struct A1111 {
    prompt: String,
    negative_prompt: Option<String>,
    seed: Option<i64>,
    steps: Option<usize>,
    cfg_scale: Option<f64>,
    width: Option<u32>,
    height: Option<u32>,
    #[serde(default)]
    init_images: Vec<String>,
    mask: Option<String>,
    denoising_strength: Option<f64>,
    inpainting_mask_invert: Option<i64>,
    mask_blur: Option<f32>,
    batch_size: Option<usize>,
    n_iter: Option<usize>,
    /// The ControlNet extension's units (`alwayson_scripts.controlnet.args`), read by [`controlnet_unit`].
    alwayson_scripts: Option<Value>,
}

/// The A1111 ControlNet extension's enabled unit as job fields: `model` one of the server's `--controlnet` values,
/// `image` (base64) or a `module` the server runs on the input (canny with `threshold_a`/`threshold_b`, depth…;
/// `none` takes the image as it is),
/// `weight`, `guidance_start`, `guidance_end`. One unit per job; other scripts are ignored as before.
fn controlnet_unit(spec: &mut JobSpec, scripts: Option<&Value>) -> Result<(), ApiError> {
    let bad = |m: String| ApiError(StatusCode::BAD_REQUEST, m);
    let Some(units) = scripts.and_then(|s| s.get("controlnet")).and_then(|c| c.get("args")) else { return Ok(()) };
    let units = units.as_array().ok_or_else(|| bad("alwayson_scripts.controlnet.args must be a list".into()))?;
    let enabled: Vec<&Value> =
        units.iter().filter(|u| u.get("enabled").and_then(Value::as_bool) != Some(false)).collect();
    let unit = match enabled.as_slice() {
        [] => return Ok(()),
        [one] => *one,
        _ => return Err(bad(format!("{} ControlNet units: this server runs one per job", enabled.len()))),
    };
    let text = |k: &str| unit.get(k).and_then(Value::as_str).map(str::to_string);
    let number = |k: &str| unit.get(k).and_then(Value::as_f64);
    spec.controlnet = Some(text("model").ok_or_else(|| bad("a ControlNet unit needs its `model`".into()))?);
    let module = text("module").unwrap_or_else(|| "none".into()).to_ascii_lowercase();
    spec.control = match module.as_str() {
        "none" => Some(
            text("image")
                .or_else(|| text("input_image"))
                .ok_or_else(|| bad("a ControlNet unit with module none needs its `image`".into()))?,
        ),
        m if m.starts_with("canny") => {
            // The extension's canny thresholds (its sliders' values; negative: unset).
            let t = |k: &str| number(k).filter(|v| *v >= 0.0).map(|v| v as f32);
            (spec.canny_low, spec.canny_high) = (t("threshold_a"), t("threshold_b"));
            Some("canny".into())
        }
        m if m.starts_with("depth") => Some("depth".into()),
        m => return Err(bad(format!("ControlNet module {m:?}: this server runs none, canny or depth"))),
    };
    (spec.control_scale, spec.control_start, spec.control_end) =
        (number("weight"), number("guidance_start"), number("guidance_end"));
    Ok(())
}

/// txt2img and img2img alike: init_images makes it an edit. cfg_scale is FLUX's embedded guidance; samplers do not
/// apply (FLUX runs its flow-matching Euler schedule).
async fn a1111(St(app): St<Shared>, body: axum::body::Bytes) -> Response {
    let r = async {
        let a: A1111 = serde_json::from_slice(&body)
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("the body is not an A1111 request: {e}")))?;
        let n = a.batch_size.unwrap_or(1).max(1) * a.n_iter.unwrap_or(1).max(1);
        let mut spec = JobSpec {
            prompt: Some(a.prompt.clone()),
            negative_prompt: a.negative_prompt.filter(|s| !s.is_empty()),
            seed: a.seed.filter(|s| *s >= 0).map(|s| s as u64),
            steps: a.steps,
            guidance: a.cfg_scale,
            width: a.width,
            height: a.height,
            image: a.init_images.first().cloned(),
            mask: a.mask,
            invert_mask: a.inpainting_mask_invert == Some(1),
            mask_blur: a.mask_blur.filter(|b| *b > 0.0),
            strength: a.denoising_strength.filter(|_| !a.init_images.is_empty()),
            ..Default::default()
        };
        controlnet_unit(&mut spec, a.alwayson_scripts.as_ref())?;
        let images = run_n(&app, spec, n).await?;
        Ok(json!({"images": images, "parameters": {"prompt": a.prompt}, "info": "{}"}))
    };
    let r = r.await;
    reply(&app, r)
}

async fn a1111_options(St(app): St<Shared>) -> Json<Value> {
    Json(json!({"sd_model_checkpoint": app.limits.models[0]}))
}

async fn a1111_models(St(app): St<Shared>) -> Json<Value> {
    let list: Vec<Value> = app
        .limits
        .models
        .iter()
        .map(|m| json!({"title": m, "model_name": m, "filename": m, "hash": null, "sha256": null, "config": null}))
        .collect();
    Json(Value::Array(list))
}

/// The running job's share of steps done.
async fn a1111_progress(St(app): St<Shared>) -> Json<Value> {
    let running = app.hub.running.lock().unwrap().clone();
    let (done, total) = running.as_deref().and_then(|id| app.hub.with(id, |j| j.step)).unwrap_or((0, 0));
    let progress = if total == 0 { 0.0 } else { done as f64 / total as f64 };
    Json(json!({
        "progress": progress,
        "eta_relative": 0.0,
        "state": {"job_count": app.hub.queue_len() + running.is_some() as usize, "sampling_step": done,
                  "sampling_steps": total},
        "current_image": null,
        "textinfo": null
    }))
}
