//! `--model` as a Hugging Face Hub repo: aliases (`dev`, `schnell`) or `org/name` at a revision → a local
//! snapshot folder in diffusers layout inside the standard Hugging Face cache.
//!
//! The cache is the one Python tools use (HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub), so
//! files downloaded by either are reused by the other. Only the files a run needs are fetched: configs,
//! tokenizers and the diffusers weights of each component, never the repo's single-file checkpoints
//! (flux1-dev.safetensors, ae.safetensors), and no weights at all for a dry run or an overridden component.
//! HF_TOKEN (or the saved token file) authenticates; HF_HUB_OFFLINE=1 uses the cache only; HF_ENDPOINT
//! points at a mirror. hf-hub does the
//! downloading (resumable, with progress bars on a terminal).

use super::{components, family_of, Overrides, ShardIndex};
use crate::error::{Error, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

pub const ALIASES: &[(&str, &str)] = &[
    ("dev", "black-forest-labs/FLUX.1-dev"),
    ("schnell", "black-forest-labs/FLUX.1-schnell"),
    ("kontext", "black-forest-labs/FLUX.1-Kontext-dev"),
    ("fill", "black-forest-labs/FLUX.1-Fill-dev"),
    ("klein-4b", "black-forest-labs/FLUX.2-klein-4B"),
    ("klein-9b", "black-forest-labs/FLUX.2-klein-9B"),
    ("klein-base-4b", "black-forest-labs/FLUX.2-klein-base-4B"),
    ("klein-base-9b", "black-forest-labs/FLUX.2-klein-base-9B"),
    ("sd14", "CompVis/stable-diffusion-v1-4"),
    ("sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5"),
    ("sd21", "stabilityai/stable-diffusion-2-1"),
    ("sdxl", "stabilityai/stable-diffusion-xl-base-1.0"),
];

/// The repo id `--model` names, if it names one: an alias, or `org/name` that is not a local path.
pub fn repo_id(spec: &str) -> Option<String> {
    if let Some((_, id)) = ALIASES.iter().find(|(a, _)| *a == spec) {
        return Some(id.to_string());
    }
    let parts: Vec<&str> = spec.split('/').collect();
    let ok = |p: &str| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    (parts.len() == 2 && parts.iter().all(|p| ok(p)) && !Path::new(spec).exists()).then(|| spec.to_string())
}

fn env_dir(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

/// `HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`; None when none of those is set
/// (never a folder relative to wherever the program happens to run).
pub fn hf_home() -> Option<PathBuf> {
    env_dir("HF_HOME").or_else(|| {
        env_dir("XDG_CACHE_HOME").or_else(|| env_dir("HOME").map(|h| h.join(".cache"))).map(|c| c.join("huggingface"))
    })
}

/// The hub cache folder, as huggingface_hub resolves it; with no HOME at all, the system's temporary folder
/// rather than the current one.
pub fn cache_dir() -> PathBuf {
    env_dir("HF_HUB_CACHE")
        .unwrap_or_else(|| hf_home().unwrap_or_else(|| std::env::temp_dir().join("huggingface")).join("hub"))
}

fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| hf_home().and_then(|h| std::fs::read_to_string(h.join("token")).ok()))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

const TOKENIZER_FILES: &[&str] = &[
    "tokenizer/vocab.json",
    "tokenizer/merges.txt",
    "tokenizer/tokenizer.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/special_tokens_map.json",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/special_tokens_map.json",
];

/// Where the files come from: the cache alone, or the Hub through the cache.
enum Fetcher {
    Offline(hf_hub::CacheRepo),
    Online { api: hf_hub::api::sync::ApiRepo, listed: Vec<String> },
}

impl Fetcher {
    /// The file's local path; None when the repo does not have it (online) or the cache lacks it (offline).
    fn get(&self, file: &str, ctx: &Ctx) -> Result<Option<PathBuf>> {
        match self {
            Fetcher::Offline(c) => Ok(c.get(file)),
            Fetcher::Online { api, listed } => {
                if !listed.iter().any(|f| f == file) {
                    return Ok(None);
                }
                api.get(file).map(Some).map_err(|e| ctx.error(e, Some(file)))
            }
        }
    }
}

struct Ctx {
    id: String,
    revision: String,
}

/// Why a Hub request failed, read from the error's type rather than its text.
enum Failure {
    Denied,
    NotFound,
    Unreachable,
    Other,
}

fn classify(e: &ApiError) -> Failure {
    match e {
        ApiError::TooManyRetries(inner) => classify(inner),
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(401 | 403, _) => Failure::Denied,
            ureq::Error::Status(404, _) => Failure::NotFound,
            ureq::Error::Status(..) => Failure::Other,
            ureq::Error::Transport(t) => match t.kind() {
                ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed | ureq::ErrorKind::Io => Failure::Unreachable,
                _ => Failure::Other,
            },
        },
        _ => Failure::Other,
    }
}

impl Ctx {
    fn error(&self, e: ApiError, file: Option<&str>) -> Error {
        let what = format!("{}@{}", self.id, self.revision);
        let text = match classify(&e) {
            Failure::Denied => format!(
                "{what}: access denied — the repo is gated or private. Accept its licence at https://huggingface.co/{}, \
                 then set HF_TOKEN (or run `huggingface-cli login`); FLUX.1-schnell is not gated: --model schnell",
                self.id
            ),
            Failure::Unreachable => format!(
                "{what}: cannot reach the Hub; check the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use what \
                 is already in the cache"
            ),
            Failure::NotFound => format!("{what}: not found on the Hub — check the repo id and --revision"),
            Failure::Other => format!("{what}{}", file.map(|f| format!(" ({f})")).unwrap_or_default()),
        };
        Error::model_from(PathBuf::from(&self.id), text, e)
    }
}

/// Downloads (or finds in the cache) what a run needs and returns the snapshot folder; `bars`: hf-hub draws
/// download progress bars on stderr.
/// The cache alone (HF_HUB_OFFLINE), or the Hub through the cache, for one repo.
fn fetcher(ctx: &Ctx, bars: bool) -> Result<Fetcher> {
    let repo = Repo::with_revision(ctx.id.clone(), RepoType::Model, ctx.revision.clone());
    if offline() {
        return Ok(Fetcher::Offline(Cache::new(cache_dir()).repo(repo)));
    }
    let mut builder = ApiBuilder::new();
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder
        .with_cache_dir(cache_dir())
        .with_token(token())
        .with_progress(bars)
        .build()
        .map_err(|e| ctx.error(e, None))?
        .repo(repo);
    let info = api.info().map_err(|e| ctx.error(e, None))?;
    Ok(Fetcher::Online { api, listed: info.siblings.into_iter().map(|s| s.rfilename).collect() })
}

/// The cached snapshot folder of repo `id` that holds `file`, found without the network (as `HF_HUB_OFFLINE`
/// reads the cache); None when it is not downloaded.
pub fn cached_snapshot(id: &str, file: &str) -> Option<PathBuf> {
    let got = Cache::new(cache_dir()).repo(Repo::model(id.to_string())).get(file)?;
    got.ancestors().nth(Path::new(file).components().count()).map(Path::to_path_buf)
}

/// A LoRA named `org/name` (its only .safetensors, or `pytorch_lora_weights.safetensors`) or
/// `org/name/file.safetensors` on the Hub → the file in the cache; local files as they are.
pub fn lora_file(spec: &Path, bars: bool) -> Result<PathBuf> {
    if spec.is_file() {
        return Ok(spec.to_path_buf());
    }
    if spec.is_dir() {
        return Err(Error::lora(spec, "is a folder; name the LoRA's .safetensors file"));
    }
    let text = spec.to_string_lossy();
    let parts: Vec<&str> = text.split('/').collect();
    if parts.len() < 2 || repo_id(&parts[..2].join("/")).is_none() {
        return Err(Error::lora(spec, "no such LoRA file (nor a Hub repo org/name[/file.safetensors])"));
    }
    let ctx = Ctx { id: parts[..2].join("/"), revision: "main".into() };
    let f = fetcher(&ctx, bars).map_err(Error::into_lora)?;
    let file = match (parts.len() > 2, &f) {
        (true, _) => parts[2..].join("/"),
        (false, Fetcher::Online { listed, .. }) => {
            let st: Vec<&String> = listed.iter().filter(|n| n.ends_with(".safetensors")).collect();
            match st.as_slice() {
                [one] => one.to_string(),
                _ if st.iter().any(|n| *n == "pytorch_lora_weights.safetensors") => {
                    "pytorch_lora_weights.safetensors".into()
                }
                _ => {
                    return Err(Error::lora(
                        spec,
                        format!("the repo has {} .safetensors files; name one: {}/FILE.safetensors", st.len(), ctx.id),
                    ))
                }
            }
        }
        (false, Fetcher::Offline(_)) => "pytorch_lora_weights.safetensors".into(),
    };
    f.get(&file, &ctx)
        .map_err(Error::into_lora)?
        .ok_or_else(|| Error::lora(spec, format!("{}: no {file} (in the cache, if HF_HUB_OFFLINE is set)", ctx.id)))
}

/// The snapshot folder of `id` holding every one of `files` (fetched when online), for repos that are not
/// pipelines (FLUX.1-Redux-dev's prior).
pub fn snapshot(id: &str, files: &[&str], bars: bool) -> Result<PathBuf> {
    let ctx = Ctx { id: id.to_string(), revision: "main".to_string() };
    let fetcher = fetcher(&ctx, bars)?;
    let mut root = None;
    for file in files {
        let got = fetcher.get(file, &ctx)?.ok_or_else(|| {
            Error::model(PathBuf::from(id), format!("{id}: no {file} (in the cache, if HF_HUB_OFFLINE is set)"))
        })?;
        let depth = Path::new(file).components().count();
        root = got.ancestors().nth(depth).map(Path::to_path_buf);
    }
    root.ok_or_else(|| Error::model(PathBuf::from(id), "no files asked for"))
}

pub fn resolve(id: &str, revision: Option<&str>, weights: bool, overrides: &Overrides, bars: bool) -> Result<PathBuf> {
    let ctx = Ctx { id: id.to_string(), revision: revision.unwrap_or("main").to_string() };
    let cache = cache_dir();
    let fetcher = fetcher(&ctx, bars)?;
    let missing = |file: &str| {
        if matches!(fetcher, Fetcher::Offline(_)) {
            Error::model(
                PathBuf::from(id),
                format!(
                    "{}@{}: {file} is not in the cache {} and HF_HUB_OFFLINE is set; run once online (or unset \
                     HF_HUB_OFFLINE)",
                    ctx.id,
                    ctx.revision,
                    cache.display()
                ),
            )
        } else {
            Error::model(
                PathBuf::from(id),
                format!(
                    "{}@{}: the repo has no {file}; is it a FLUX or Stable Diffusion diffusers repo?",
                    ctx.id, ctx.revision
                ),
            )
        }
    };
    let required = |file: &str| -> Result<PathBuf> { fetcher.get(file, &ctx)?.ok_or_else(|| missing(file)) };

    let scheduler = required("scheduler/scheduler_config.json")?;
    // snapshots/<commit>/scheduler/scheduler_config.json → snapshots/<commit>
    let root = scheduler.parent().and_then(Path::parent).map(Path::to_path_buf).expect("a file two levels down");
    let _ = fetcher.get("model_index.json", &ctx)?;
    // A FLUX repo is told by its transformer (model_index.json may be missing); SD repos have a UNet instead.
    if !family_of(&root).is_sd() {
        required("transformer/config.json")?;
    }
    for f in TOKENIZER_FILES {
        fetcher.get(f, &ctx)?;
    }
    for &(dir, stem) in components(family_of(&root)) {
        required(&format!("{dir}/config.json"))?;
        if !weights || overrides.for_component(dir).is_some() {
            continue;
        }
        let index = format!("{dir}/{stem}.safetensors.index.json");
        if let Some(idx) = fetcher.get(&index, &ctx)? {
            for s in ShardIndex::read(&idx)?.shards() {
                required(&format!("{dir}/{s}"))?;
            }
        } else {
            required(&format!("{dir}/{stem}.safetensors"))?;
        }
    }
    Ok(root)
}
