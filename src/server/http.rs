//! The HTTP face: routes → handlers that check, queue and read jobs (never run the engine). Every error is JSON
//! `{"error": "..."}` with its status; the API key, when configured, is compared in constant time.

use super::jobs::{Hub, Rejected, State};
use super::spec::{JobSpec, Limits, Refusal};
use axum::extract::{DefaultBodyLimit, Path, Request, State as St};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub struct App {
    pub hub: Arc<Hub>,
    pub limits: Limits,
    pub api_key: Option<Vec<u8>>,
}

pub type Shared = Arc<App>;

/// A JSON error response.
pub struct ApiError(pub StatusCode, pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST), r.msg)
    }
}

pub fn router(app: Shared, max_body: usize) -> Router {
    let api = Router::new()
        .route("/v1/jobs", axum::routing::post(create_job))
        .route("/v1/jobs/{id}", get(get_job).delete(delete_job))
        .route("/v1/jobs/{id}/events", get(job_events))
        .route("/metrics", get(metrics))
        .merge(super::compat::routes())
        .layer(middleware::from_fn_with_state(app.clone(), require_key));
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/", get(|| async { Html(super::PAGE) }))
        .merge(api)
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(json_errors))
        .with_state(app)
}

/// `Authorization: Bearer KEY` or `X-API-Key: KEY`, when the server has a key.
async fn require_key(St(app): St<Shared>, req: Request, next: Next) -> Response {
    let Some(key) = &app.api_key else { return next.run(req).await };
    let h = req.headers();
    let given = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| h.get("x-api-key").and_then(|v| v.to_str().ok()));
    match given {
        Some(g) if super::auth::same(g.trim().as_bytes(), key) => next.run(req).await,
        _ => ApiError(StatusCode::UNAUTHORIZED, "missing or wrong API key (Authorization: Bearer KEY)".into())
            .into_response(),
    }
}

/// axum's own rejections (bad JSON, body too large, wrong content type) are plain text: made JSON here.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let is_json =
        res.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if res.status().is_success() || is_json || res.status() == StatusCode::NOT_MODIFIED {
        return res;
    }
    let status = res.status();
    let text = match axum::body::to_bytes(res.into_body(), 64 << 10).await {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(_) => String::new(),
    };
    let text = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_string() } else { text };
    ApiError(status, text).into_response()
}

/// Checks a spec and queues it: the job id, or the refusal.
pub async fn submit(app: &Shared, spec: JobSpec) -> Result<String, ApiError> {
    let app2 = app.clone();
    // Decoding and writing the uploads is blocking work.
    let built = tokio::task::spawn_blocking(move || {
        let dir = tempfile::Builder::new()
            .prefix("flux-img2img-job-")
            .tempdir()
            .map_err(|e| Refusal { status: 500, msg: format!("cannot make the job's folder: {e}") })?;
        spec.build(dir.path(), &app2.limits).map(|b| (b, dir))
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    match app.hub.submit(built.0, built.1) {
        Ok(id) => Ok(id),
        Err(Rejected::Full { retry_after }) => Err(ApiError(
            StatusCode::TOO_MANY_REQUESTS,
            format!("the queue is full ({} jobs); retry after {retry_after} s", app.hub.max_queue),
        )),
        Err(Rejected::Closing) => Err(ApiError(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down".into())),
    }
}

/// A refusal with a Retry-After header when it is the queue's 429.
pub fn with_retry(app: &Shared, e: ApiError) -> Response {
    let mut res = e.into_response();
    add_retry_after(app, &mut res);
    res
}

/// Retry-After (the mean job time × jobs ahead) on a 429.
pub fn add_retry_after(app: &Shared, res: &mut Response) {
    if res.status() == StatusCode::TOO_MANY_REQUESTS {
        let secs = app.hub.retry_after(app.hub.queue_len());
        res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

async fn create_job(St(app): St<Shared>, body: axum::body::Bytes) -> Response {
    let spec: JobSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return ApiError(StatusCode::BAD_REQUEST, format!("the body is not a job: {e}")).into_response(),
    };
    match submit(&app, spec).await {
        Ok(id) => (StatusCode::ACCEPTED, Json(json!({"id": id, "state": State::Queued}))).into_response(),
        Err(e) => with_retry(&app, e),
    }
}

/// A job as JSON: its state, step, and when done the PNG as base64.
pub fn job_json(app: &App, id: &str) -> Option<Value> {
    app.hub.with(id, |j| {
        let mut v = json!({"id": id, "state": j.state, "step": j.step.0, "total": j.step.1});
        if let Some(s) = j.seed {
            v["seed"] = json!(s);
        }
        if let Some(e) = &j.error {
            v["error"] = json!(e);
        }
        if let Some(png) = &j.png {
            v["image"] = json!(base64::engine::general_purpose::STANDARD.encode(png.as_slice()));
        }
        v
    })
}

fn unknown(id: &str) -> ApiError {
    ApiError(StatusCode::NOT_FOUND, format!("no job {id:?}"))
}

async fn get_job(St(app): St<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    job_json(&app, &id).map(Json).ok_or_else(|| unknown(&id))
}

async fn delete_job(St(app): St<Shared>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let state = app.hub.cancel(&id).ok_or_else(|| unknown(&id))?;
    Ok(Json(json!({"id": id, "state": state, "cancel_requested": !state.terminal() || state == State::Cancelled})))
}

/// Server-Sent Events: every event of the job from the first, in order, ending after the terminal one.
async fn job_events(St(app): St<Shared>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let rx = app.hub.with(&id, |j| j.changed.subscribe()).ok_or_else(|| unknown(&id))?;
    let stream =
        futures_util::stream::unfold((app, id, 0usize, rx, false), |(app, id, mut next, mut rx, ended)| async move {
            if ended {
                return None;
            }
            loop {
                let (event, terminal) = app.hub.with(&id, |j| {
                    let ev = j.events.get(next).cloned();
                    (ev, j.state.terminal() && next + 1 >= j.events.len())
                })?;
                if let Some(ev) = event {
                    next += 1;
                    let sse = SseEvent::default().event(ev.name).data(ev.data.to_string());
                    return Some((Ok::<_, std::convert::Infallible>(sse), (app, id, next, rx, terminal)));
                }
                rx.changed().await.ok()?;
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()).into_response())
}

async fn metrics(St(app): St<Shared>) -> Response {
    let m = &app.hub.metrics;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let steps = get(&m.steps);
    let mean = if steps == 0 { 0.0 } else { get(&m.step_micros) as f64 / steps as f64 / 1e6 };
    let text = format!(
        "# HELP flux_queue_length Jobs waiting.\n# TYPE flux_queue_length gauge\nflux_queue_length {}\n\
         # HELP flux_jobs_total Jobs ended, by result.\n# TYPE flux_jobs_total counter\n\
         flux_jobs_total{{result=\"done\"}} {}\nflux_jobs_total{{result=\"failed\"}} {}\n\
         flux_jobs_total{{result=\"cancelled\"}} {}\n\
         # HELP flux_jobs_rejected_total Jobs refused with 429.\n# TYPE flux_jobs_rejected_total counter\n\
         flux_jobs_rejected_total {}\n\
         # HELP flux_step_seconds Mean denoising step time.\n# TYPE flux_step_seconds gauge\nflux_step_seconds {mean:.6}\n\
         # HELP flux_steps_total Denoising steps run.\n# TYPE flux_steps_total counter\nflux_steps_total {steps}\n\
         # HELP flux_peak_rss_bytes Host peak RSS reported after a job.\n# TYPE flux_peak_rss_bytes gauge\n\
         flux_peak_rss_bytes {}\n\
         # HELP flux_models_loaded Models loaded now.\n# TYPE flux_models_loaded gauge\nflux_models_loaded {}\n\
         # HELP flux_idle_unloads_total Models unloaded after --idle-unload.\n# TYPE flux_idle_unloads_total counter\n\
         flux_idle_unloads_total {}\n",
        app.hub.queue_len(),
        get(&m.done),
        get(&m.failed),
        get(&m.cancelled),
        get(&m.rejected),
        get(&m.peak_rss_kib) * 1024,
        get(&m.loaded),
        get(&m.idle_unloads),
    );
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"));
    (headers, text).into_response()
}
