//! An edit over its memory budget → the change that would fit: a `--quantize` format (dense transformers), else a
//! smaller working size, each checked with the same estimate; or that nothing smaller fits.

use crate::config::Family;
use crate::engine::memory::{gb, Workload};
use crate::engine::{Mode, Plan, Request, Session};
use crate::error::Result;
use crate::image_io::floor_to_multiple;
use crate::models::linear::Quant;

/// `--quantize` formats from the largest to the smallest.
const QUANTS: [Quant; 5] = [Quant::Q8_0, Quant::Q6K, Quant::Q5K, Quant::Q4K, Quant::Q4_0];
/// Fractions of the working area tried, largest first.
const AREAS: [f64; 4] = [0.75, 0.5, 0.25, 0.125];

/// What would bring `req` under `limit` bytes, as advice for the error or warning line.
pub fn suggestion(session: &mut Session, req: &Request, plan: &Plan, limit: u64) -> Result<String> {
    let work = Workload::of(req, plan);
    if let Some(fix) = quantized(session, req, &work, limit)? {
        return Ok(fix);
    }
    for f in AREAS {
        match session.memory_for(req, &work.scaled(f), req.quantize)? {
            Some(e) if e.peak() <= limit => {
                let multiple = session.configs().vae.size_multiple();
                return Ok(format!("{} would need {}", size_flag(req, plan, f, multiple), gb(e.peak())));
            }
            _ => {}
        }
    }
    Ok("no smaller format or size fits: use a device with more memory".into())
}

/// The first `--quantize` format smaller than the current one that fits, if the transformer is not already
/// stored quantized.
fn quantized(session: &mut Session, req: &Request, work: &Workload, limit: u64) -> Result<Option<String>> {
    if session.transformer_prequantized() {
        return Ok(None);
    }
    let from = req.quantize.and_then(|q| QUANTS.iter().position(|x| *x == q)).map_or(0, |i| i + 1);
    for q in &QUANTS[from..] {
        if let Some(e) = session.memory_for(req, work, Some(*q))?.filter(|e| e.peak() <= limit) {
            return Ok(Some(format!("--quantize {q} would need {}", gb(e.peak()))));
        }
    }
    Ok(None)
}

/// The flag that shrinks the working area to `f` of the plan's: the size itself where the mode takes one, a
/// megapixel cap for FLUX.1 inputs, else a smaller input.
fn size_flag(req: &Request, plan: &Plan, f: f64, multiple: u32) -> String {
    let s = f.sqrt();
    let (w, h) =
        (floor_to_multiple(plan.width as f64 * s, multiple), floor_to_multiple(plan.height as f64 * s, multiple));
    match (&req.mode, plan.family) {
        (Mode::Txt2Img, _) | (Mode::Reference { .. }, Family::Flux2) => format!("--width {w} --height {h}"),
        (_, Family::Flux1) => format!("--max-megapixels {:.2}", (w as f64 * h as f64 / 1e6 * 100.0).floor() / 100.0),
        _ => format!("an input of {w}x{h}"),
    }
}
