//! An edit over its memory budget → the change that would fit: chunked attention and banded VAE convolutions
//! (where they are composed), a smaller `--quantize` format (dense transformers), else a smaller working size (alone, then with the smallest
//! format). Each candidate is planned
//! again and estimated like the edit itself, so the advice is never refused in turn.

use crate::engine::memory::gb;
use crate::engine::plan::SizeRule;
use crate::engine::{Plan, Request, Session};
use crate::error::Result;
use crate::image_io::floor_to_multiple;
use crate::models::linear::Quant;

/// `--quantize` formats from the largest to the smallest.
const QUANTS: [Quant; 5] = [Quant::Q8_0, Quant::Q6K, Quant::Q5K, Quant::Q4K, Quant::Q4_0];
/// Query rows per attention chunk that advice names: scores of 1024 × S, a GEMM still large enough to be fast.
const ATTENTION_CHUNK: usize = 1024;
/// Output rows per VAE convolution band that advice names: an eighth of a 1024-pixel image.
const VAE_BAND: usize = 128;
/// Fractions of the working area tried, largest first.
const AREAS: [f64; 4] = [0.75, 0.5, 0.25, 0.125];

/// What would bring `req` under `limit` bytes, as advice for the error or warning line.
pub fn suggestion(session: &mut Session, req: &Request, plan: &Plan, limit: u64) -> Result<String> {
    for (r, flags) in exact(req) {
        if let Some(need) = fits(session, &r, plan, limit)? {
            return Ok(format!("{flags} would need {need}"));
        }
    }
    let quants = smaller_formats(session, req);
    for q in &quants {
        let r = Request { quantize: Some(*q), ..req.clone() };
        if let Some(need) = fits(session, &r, plan, limit)? {
            return Ok(format!("--quantize {q} would need {need}"));
        }
    }
    let multiple = session.size_multiple();
    for f in AREAS {
        let Some((r, flag)) = smaller_size(req, plan, f, multiple) else { continue };
        let Ok(p) = session.plan(&r, plan.input_size) else { continue };
        if let Some(need) = fits(session, &r, &p, limit)? {
            return Ok(format!("{flag} would need {need}"));
        }
        if let Some(q) = quants.last() {
            let r = Request { quantize: Some(*q), ..r };
            if let Some(need) = fits(session, &r, &p, limit)? {
                return Ok(format!("--quantize {q} {flag} would need {need}"));
            }
        }
    }
    Ok("no smaller format or size fits: use a device with more memory".into())
}

/// Chunked attention, then also banded VAE convolutions: no cost in quality, so tried first, where they apply
/// (the composed paths: CUDA, f16) and are not in use yet.
fn exact(req: &Request) -> Vec<(Request, String)> {
    let composed = !req.device.is_cpu() || req.dtype != candle_core::DType::F32;
    if !composed {
        return Vec::new();
    }
    let mut out = Vec::new();
    let (mut r, mut flags) = (req.clone(), Vec::new());
    if r.attention_chunk.is_none() {
        r.attention_chunk = Some(ATTENTION_CHUNK);
        flags.push(format!("--attention-chunk {ATTENTION_CHUNK}"));
        out.push((r.clone(), flags.join(" ")));
    }
    if r.vae_band.is_none() {
        r.vae_band = Some(VAE_BAND);
        flags.push(format!("--vae-band {VAE_BAND}"));
        out.push((r, flags.join(" ")));
    }
    out
}

/// The `--quantize` formats smaller than the request's; none when the transformer is stored quantized (GGUF).
fn smaller_formats(session: &Session, req: &Request) -> Vec<Quant> {
    if session.transformer_prequantized() {
        return Vec::new();
    }
    let from = req.quantize.and_then(|q| QUANTS.iter().position(|x| *x == q)).map_or(0, |i| i + 1);
    QUANTS[from..].to_vec()
}

/// The expected peak of `req` as `plan`, when it is within `limit`.
fn fits(session: &mut Session, req: &Request, plan: &Plan, limit: u64) -> Result<Option<String>> {
    Ok(session.memory(req, plan)?.map(|e| e.peak()).filter(|p| *p <= limit).map(gb))
}

/// `req` at `f` of the plan's area, and the flag that says so: the size itself where the mode takes one, a
/// megapixel cap for FLUX.1 inputs; none for FLUX.2 inpainting and `--strength`, which work at the input's size.
fn smaller_size(req: &Request, plan: &Plan, f: f64, multiple: u32) -> Option<(Request, String)> {
    let s = f.sqrt();
    let (w, h) =
        (floor_to_multiple(plan.width as f64 * s, multiple), floor_to_multiple(plan.height as f64 * s, multiple));
    match plan.size_rule {
        SizeRule::Given => {
            Some((Request { width: Some(w), height: Some(h), ..req.clone() }, format!("--width {w} --height {h}")))
        }
        SizeRule::Input => {
            let mp = (w as f64 * h as f64 / 1e6 * 100.0).floor() / 100.0;
            (mp >= 0.01)
                .then(|| (Request { max_megapixels: Some(mp), ..req.clone() }, format!("--max-megapixels {mp}")))
        }
        SizeRule::Fixed => None,
    }
}
