//! The text of the lines the program prints about an edit: what it will do and what it took.

use crate::engine::{Mode, Plan, Request, Timings};

/// What an edit will do, on one line: size, steps, sigma, shift, guidance, seed and generator. Used after
/// `plan: ` on stderr and after `input -> output: ` in a dry run's listing.
pub fn plan(req: &Request, plan: &Plan) -> String {
    let s = &plan.schedule;
    let crop = if plan.crop { " (centre-cropped to aspect)" } else { "" };
    let source = match (&req.mode, plan.input_size) {
        (Mode::Img2Img { .. }, Some((w, h))) => format!("from {w}x{h}{crop}"),
        (mode, Some((w, h))) => format!("{} from {w}x{h}{crop}", mode.name()),
        (mode, None) => mode.name().to_string(),
    };
    let lora = if req.loras.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = req
            .loras
            .iter()
            .map(|l| {
                format!(
                    "{}×{}",
                    l.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    l.weight
                )
            })
            .collect();
        format!(", LoRA {} at {}", names.join(" + "), req.lora_scale)
    };
    let refs = match plan.references.len() {
        0 => String::new(),
        n => {
            let sizes: Vec<String> = plan.references.iter().map(|(w, h)| format!("{w}x{h}")).collect();
            format!(", {n} reference image(s) {}", sizes.join(" + "))
        }
    };
    let cache = req.cache.map(|c| format!(", cache {c}")).unwrap_or_default();
    format!(
        "{}x{} {source}{refs}, {} of {} steps (t_start {}), start sigma {:.6}, {}, {}{lora}{cache}, seed {} ({})",
        plan.width,
        plan.height,
        s.steps_to_run(),
        plan.steps,
        s.t_start,
        s.start_sigma(),
        plan.sampler,
        plan.guide,
        plan.seed,
        match plan.rng_gpu {
            Some(g) => format!("{} as on a {g} GPU", req.rng.kind),
            None => req.rng.kind.to_string(),
        },
    )
}

/// Where the time of one edit went.
pub fn done(t: &Timings) -> String {
    format!(
        "done in {:.2}s (text {:.2}s, vae encode {:.2}s, transformer load {:.2}s, denoise {:.2}s, decode {:.2}s)",
        t.total, t.text_encoding, t.vae_encode, t.load_transformer, t.denoise, t.vae_decode
    )
}
