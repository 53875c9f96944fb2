//! Model code: pure `new(cfg, weights)` constructors and `forward` functions, no I/O, no CLI types.
//!
//! - `vae`: diffusers `AutoencoderKL` (encoder with posterior parameters, decoder).
//! - `clip`: transformers `CLIPTextModel` (pooled output only, as FLUX uses it).
//! - `transformer`: FLUX's MM-DiT (docs/spec-flux1-img2img.md §6) in Black Forest Labs' weight names, fused projections.
//! - `linear`: dense / quantised (`--quantize`, GGUF) linear layers for the transformer.
//! - T5 comes straight from `candle_transformers::models::t5`.

pub mod clip;
pub mod linear;
pub mod transformer;
pub mod vae;
