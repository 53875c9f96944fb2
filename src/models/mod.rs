//! Model code: pure `new(cfg, weights)` constructors and `forward` functions, no I/O, no CLI types.
//!
//! - `vae`: diffusers `AutoencoderKL` (encoder with posterior parameters, decoder); FLUX.2's `AutoencoderKLFlux2`
//!   is the same network with quant convs (its batch-norm statistics are applied by the engine).
//! - `clip`: transformers `CLIPTextModel` (pooled output only, as FLUX.1 uses it).
//! - `qwen3`: transformers `Qwen3Model`'s hidden states (FLUX.2's text encoder), with the padding mask.
//! - `transformer`: FLUX.1's MM-DiT (docs/spec-flux1-img2img.md §6) in Black Forest Labs' weight names, fused
//!   projections; `flux2`: FLUX.2's, sharing its attention, norm and RoPE pieces.
//! - `controlnet`: an InstantX-layout FLUX.1 ControlNet giving per-block residuals to the transformer.
//! - `hooks`: where a step cache (`--cache`) reaches into a transformer's forward.
//! - `linear`: dense / quantised (`--quantize`, GGUF) linear layers for the transformers, with LoRA side paths.
//! - `unet` (+ `unet_attention`): diffusers' `UNet2DConditionModel` for Stable Diffusion 1.x/2.x and SDXL.
//! - T5 comes straight from `candle_transformers::models::t5`.

pub mod clip;
pub mod controlnet;
pub mod depth_anything;
pub mod flux2;
pub mod hooks;
pub mod linear;
pub mod qwen3;
pub mod redux;
pub mod transformer;
pub mod unet;
pub mod unet_attention;
pub mod vae;

use candle_core::{Result, Tensor};

/// A loaded FLUX transformer of either family: (tokens, σ, conditioning) → velocity.
pub enum Denoiser {
    Flux1(transformer::FluxTransformer),
    Flux2(flux2::Flux2Transformer),
}

impl Denoiser {
    pub fn forward(&self, tokens: &Tensor, timestep: &Tensor, inputs: &transformer::Inputs) -> Result<Tensor> {
        self.forward_cached(tokens, timestep, inputs, &mut hooks::NoCache)
    }

    /// [`Denoiser::forward`] with a step cache deciding which blocks run.
    pub fn forward_cached(
        &self,
        tokens: &Tensor,
        timestep: &Tensor,
        inputs: &transformer::Inputs,
        cache: &mut dyn hooks::BlockCache,
    ) -> Result<Tensor> {
        match self {
            Denoiser::Flux1(m) => m.forward_cached(tokens, timestep, inputs, cache),
            Denoiser::Flux2(m) => m.forward_cached(tokens, timestep, inputs, cache),
        }
    }

    /// [`Denoiser::forward`] with ControlNet residuals (FLUX.1 only).
    pub fn forward_controlled(
        &self,
        tokens: &Tensor,
        timestep: &Tensor,
        inputs: &transformer::Inputs,
        control: Option<&hooks::Residuals>,
    ) -> Result<Tensor> {
        match (self, control) {
            (Denoiser::Flux1(m), _) => m.forward_controlled(tokens, timestep, inputs, &mut hooks::NoCache, control),
            (_, None) => self.forward(tokens, timestep, inputs),
            (Denoiser::Flux2(_), Some(_)) => candle_core::bail!("FLUX.2 takes no ControlNet"),
        }
    }

    /// (double blocks, single blocks).
    pub fn blocks(&self) -> (usize, usize) {
        match self {
            Denoiser::Flux1(m) => m.blocks(),
            Denoiser::Flux2(m) => m.blocks(),
        }
    }
}
