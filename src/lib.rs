//! flux-img2img: image editing with FLUX.1 (dev, schnell), numerically matching diffusers' pipelines
//! (`FluxImg2ImgPipeline` for SDEdit).
//!
//! Stages, one module each, data flowing one way:
//! `source` (model folder or Hub repo → files) → `config` (JSON → validated configs) → `weights` (safetensors →
//! checked VarBuilders, name tables) → `text` (prompt → conditioning) → `image_io` (file → tensor) → `rng`
//! (seed → noise) → `schedule` (steps, strength → sigmas) → `engine` (plan, session, the edit's numerics) →
//! `output` (atomic PNG). `models` and `kernels` hold the networks and their fused operations. Front ends:
//! `cli` (flags → a batch), `batch` (runs it), `server` (HTTP jobs), `ui` (everything on stderr).

mod enum_names;
pub(crate) use enum_names::named_enum;

pub mod batch;
pub mod cleanup;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod error;
pub mod image_io;
pub mod kernels;
pub mod models;
pub mod output;
pub mod rng;
pub mod schedulers;
pub mod server;
pub mod smoke;
pub mod source;
pub mod text;
pub mod ui;
pub mod weights;

pub use engine::{Mode, Report, Request, Session};
pub use error::{Error, Result};
