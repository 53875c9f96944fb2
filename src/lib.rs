//! flux-img2img: SDEdit image editing with FLUX.1 (dev, schnell), numerically matching diffusers'
//! `FluxImg2ImgPipeline`.
//!
//! Stages, one module each, data flowing one way:
//! `source` (model folder → files) → `config` (JSON → typed configs) → `weights` (safetensors → checked
//! VarBuilders, name tables) → `text` (prompt → conditioning) → `image_io` (file → tensor) → `rng` (seed → noise)
//! → `schedule` (steps, strength → sigmas) → `sdedit` (noise + Euler loop) → `image_io` (tensor → RGB) →
//! `output` (atomic PNG). `pipeline` strings them together; `cli` turns flags into a `pipeline::Request`.

pub mod batch;
pub mod cli;
pub mod config;
pub mod error;
pub mod grid;
pub mod image_io;
pub mod kernels;
pub mod models;
pub mod output;
pub mod pipeline;
pub mod rng;
pub mod schedule;
pub mod sdedit;
pub mod source;
pub mod text;
pub mod weights;

pub use error::{Error, Result};
pub use pipeline::{Report, Request};
