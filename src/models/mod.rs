//! Model code: pure `new(cfg, vb)` constructors and `forward` functions, no I/O, no CLI types.
//!
//! - `vae`: diffusers `AutoencoderKL` (encoder with posterior parameters, decoder).
//! - `clip`: transformers `CLIPTextModel` (pooled output only, as FLUX uses it).
//! - `transformer`: FLUX's MM-DiT, built from candle-transformers with names translated from diffusers.
//! - T5 comes straight from `candle_transformers::models::t5`.

pub mod clip;
pub mod transformer;
pub mod vae;
