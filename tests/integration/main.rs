//! Integration tests: the `flux-img2img` binary run on the committed tiny pipelines (tests/fixtures), compared
//! with diffusers' own outputs, plus the command-line contract for bad input.

mod bad_input;
mod batch;
mod cache;
mod common;
mod control;
mod controlnet;
mod fill;
mod formats;
mod hub;
mod klein;
mod lora;
mod memory;
mod modes;
mod parity;
mod redux;
mod safety;
mod sd;
mod sd_lora;
mod server;
mod smoke;
