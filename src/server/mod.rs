//! `flux-img2img serve`: a resident server that keeps the model loaded. HTTP handlers (axum on tokio) check
//! requests and queue jobs in a bounded FIFO ([`jobs`]); one std thread ([`worker`]) owns the synchronous engine
//! session and runs them in order. Native API (`/v1/jobs`), OpenAI and A1111 compatible endpoints ([`compat`]),
//! Prometheus metrics and a small web page. Shutdown (SIGTERM, Ctrl-C) stops taking jobs, then cancels or (with
//! `--drain`) finishes what is queued, so every job ends with an answer.

pub(crate) mod auth;
mod compat;
mod http;
mod jobs;
pub(crate) mod spec;
mod worker;

use crate::error::{Error, Result};
use crate::ui::Ui;
use std::path::PathBuf;
use std::sync::Arc;

/// The web page at `/`, embedded (no CDN).
const PAGE: &str = include_str!("page.html");

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on. Anything but loopback should come with --api-key-file.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed on stderr).
    #[arg(long, default_value_t = 7860)]
    pub port: u16,
    /// Models jobs may ask for (folder, Hub id or alias), repeatable; the first is the default. Loaded on first
    /// use and kept until a job asks for another.
    #[arg(long, env = "FLUX_MODEL", value_name = "DIR|REPO", required = true)]
    pub model: Vec<String>,
    /// A file whose first line is the API key (16+ characters): every API call then needs
    /// `Authorization: Bearer KEY` (or `X-API-Key: KEY`). /healthz and the page stay open.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Jobs that may wait; one more gets 429 with Retry-After.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub max_queue: u64,
    /// Also keep each result as DIR/<job id>.png (otherwise results exist only in responses).
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// On SIGTERM, finish the running and queued jobs before exiting (default: cancel them, answering each).
    #[arg(long)]
    pub drain: bool,
    /// Folder of LoRA files jobs may name (by file name only).
    #[arg(long, value_name = "DIR")]
    pub lora_dir: Option<PathBuf>,
    /// FLUX.1 ControlNets jobs may name (folder or Hub id, as given here), repeatable.
    #[arg(long, value_name = "DIR|REPO")]
    pub controlnet: Vec<String>,
    /// The Depth Anything model of jobs asking for `"control": "depth"` [default: the CLI's].
    #[arg(long, value_name = "DIR|REPO")]
    pub depth_model: Option<String>,
    /// Largest request body, MiB.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_body_mib: u64,
    /// Largest uploaded image, pixels (width × height, read from the header before decoding).
    #[arg(long, default_value_t = 16_777_216)]
    pub max_pixels: u64,
    /// Fail a job whose expected peak memory (what the CLI's --dry-run shows) is above this many GB, or above what
    /// the device has free (`auto`), before it loads anything [default: the CPU's available memory; on CUDA no
    /// check unless given].
    #[arg(long, value_name = "GB|auto", value_parser = crate::cli::parse_budget)]
    pub memory_budget: Option<crate::engine::memory::Budget>,
    /// Unload the model after this many seconds without jobs (its memory goes back; the next job loads it
    /// again). 0: keep it loaded.
    #[arg(long, value_name = "SECS", default_value_t = 600)]
    pub idle_unload: u64,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu", env = "FLUX_DEVICE")]
    pub device: String,
    /// Precision (f32, bf16, f16) [default: f32 on CPU, bf16 on CUDA].
    #[arg(long)]
    pub dtype: Option<String>,
}

/// Runs the server until SIGTERM or Ctrl-C; the exit code.
pub fn command(args: &ServeArgs, ui: &Arc<Ui>) -> u8 {
    match serve(args, ui) {
        Ok(()) => 0,
        Err(e) => {
            ui.error(&e);
            2
        }
    }
}

fn serve(args: &ServeArgs, ui: &Arc<Ui>) -> Result<()> {
    let api_key = args.api_key_file.as_deref().map(auth::read_key).transpose()?;
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::output_from(dir, "cannot create the folder", e))?;
    }
    if let Some(dir) = args.lora_dir.as_ref().filter(|d| !d.is_dir()) {
        return Err(Error::Usage(format!("--lora-dir {}: not a folder", dir.display())));
    }
    let limits = spec::Limits {
        models: args.model.clone(),
        lora_dir: args.lora_dir.clone(),
        controlnets: args.controlnet.clone(),
        depth_model: args.depth_model.clone(),
        max_pixels: args.max_pixels,
        device: args.device.clone(),
        dtype: args.dtype.clone(),
    };
    let hub = Arc::new(jobs::Hub::new(args.max_queue as usize));
    // The session is made on its thread and never leaves it (the engine's models are not Send).
    let (hub2, ui2, out) = (hub.clone(), ui.clone(), args.output_dir.clone());
    let idle = (args.idle_unload > 0).then(|| std::time::Duration::from_secs(args.idle_unload));
    let budget = args.memory_budget;
    let engine = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || worker::Worker::new(hub2, ui2, out, budget).run(idle))
        .map_err(|e| Error::Usage(format!("cannot start the engine thread: {e}")))?;
    let app = Arc::new(http::App { hub: hub.clone(), limits, api_key });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start the HTTP runtime: {e}")))?;
    let result = runtime.block_on(listen(args, app, ui));
    // Every job has ended (shutdown waits for it); the worker sees the closed, empty queue and returns.
    hub.close(args.drain);
    let _ = engine.join();
    result
}

async fn listen(args: &ServeArgs, app: http::Shared, ui: &Arc<Ui>) -> Result<()> {
    let addr = format!("{}:{}", args.host, args.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| Error::Usage(format!("cannot listen on {addr}: {e} (another --port?)")))?;
    let local = listener.local_addr().map_err(|e| Error::Usage(e.to_string()))?;
    if !local.ip().is_loopback() && app.api_key.is_none() {
        ui.warn(&format!(
            "listening on {local} without --api-key-file: anyone who can reach this address can run jobs"
        ));
    }
    // Tests and scripts read the address from this line (it is printed even with --quiet).
    ui.alert(&format!("listening on http://{local}"));
    let hub = app.hub.clone();
    let router = http::router(app, (args.max_body_mib as usize) << 20);
    let (drain, ui2) = (args.drain, ui.clone());
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { shutdown(hub, drain, ui2).await })
        .await
        .map_err(|e| Error::Usage(format!("the server stopped: {e}")))
}

/// Resolves once a stop signal came and every job has ended (cancelled, or finished with `--drain`).
async fn shutdown(hub: Arc<jobs::Hub>, drain: bool, ui: Arc<Ui>) {
    stop_signal().await;
    let how = if drain { "finishing queued jobs (--drain)" } else { "cancelling queued and running jobs" };
    ui.alert(&format!("shutting down: {how}"));
    hub.close(drain);
    while !hub.idle() {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else { return std::future::pending().await };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
