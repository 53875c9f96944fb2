//! LoRA files → where each low-rank pair lands. Detects the naming the way diffusers' `load_lora_weights` does
//! (kohya/sd-scripts and ComfyUI `lora_down/lora_up/alpha`, XLabs `processor`, diffusers/PEFT `lora_A/lora_B`)
//! and maps every pair to a transformer module in BFL names (with its rows inside fused q/k/v layers) or a CLIP
//! linear, with the scale the format gives it (alpha / rank).
//!
//! Where diffusers drops valid-looking parts silently (kohya embedders and final layer, T5 parts) they are dropped
//! here too, and counted. Two spellings diffusers loads as no-ops are applied here: PEFT's `.default` adapter keys
//! and Black Forest Labs names with `lora_A/lora_B`.

use crate::config::Family;
use crate::weights::flux_keys::{self, Rows};
use std::collections::HashMap;

/// What a LoRA pair modifies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A denoiser linear: FLUX's transformer by its BFL module name (`double_blocks.0.img_attn.qkv`), SD's UNet by
    /// its diffusers name (`down_blocks.0.attentions.0.proj_in`, linear or 1×1 conv).
    Transformer(String),
    /// A CLIP text-encoder linear (`encoder.layers.0.self_attn.q_proj`; SDXL's second encoder under
    /// `text_encoder_2.`).
    Clip(String),
}

/// Which rows of the target a pair covers: `count` consecutive parts from `first` of a layer fused from `of` parts
/// (`of` = 1: all rows); `swap`: the pair's rows are in diffusers' (scale, shift) order, BFL's is (shift, scale).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub first: usize,
    pub count: usize,
    pub of: usize,
    pub swap: bool,
}

impl Placement {
    pub const ALL: Placement = Placement { first: 0, count: 1, of: 1, swap: false };

    fn from_rows(r: Rows) -> Self {
        match r {
            Rows::All => Self::ALL,
            Rows::Part { index, of } => Placement { first: index, count: 1, of, swap: false },
            Rows::SwapHalves => Placement { swap: true, ..Self::ALL },
        }
    }

    /// (first row, row count) inside a target of `out`×`inp`. Fused q/k/v layers split equally; `linear1` of
    /// single blocks is [q | k | v | mlp] with q, k, v as wide as its input.
    pub fn rows(&self, out: usize, inp: usize) -> (usize, usize) {
        let part = if self.of == 4 { inp } else { out / self.of };
        let start = self.first * part;
        let len = if self.first + self.count == self.of { out - start } else { self.count * part };
        (start, len)
    }
}

/// The naming a file uses (shown to the user).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Kohya,
    ComfyUi,
    XLabs,
    Peft,
    BflLoraAB,
    FalKontext,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Kohya => "kohya/sd-scripts",
            Format::ComfyUi => "ComfyUI (diffusion_model. + lora_down/up)",
            Format::XLabs => "XLabs",
            Format::Peft => "diffusers/PEFT",
            Format::BflLoraAB => "Black Forest Labs names with lora_A/lora_B",
            Format::FalKontext => "fal Kontext",
        }
    }
}

/// One low-rank pair: tensors `down` [r, in] and `up` [rows, r] of the file, and its scale.
#[derive(Debug, Clone)]
pub struct RawPart {
    pub target: Target,
    pub place: Placement,
    pub down: String,
    pub up: String,
    /// `lora_B.bias` (control LoRAs): added to the layer's output with the pair.
    pub bias: Option<String>,
    pub scale: f64,
}

/// What a file holds for this model.
#[derive(Debug, Default)]
pub struct Parsed {
    pub format: Option<Format>,
    pub parts: Vec<RawPart>,
    /// Pairs recognised but not applied, as diffusers does not apply them (with why).
    pub ignored: Vec<(String, &'static str)>,
    /// Tensors that match nothing in this model.
    pub unmatched: Vec<String>,
    /// Control LoRAs: norm scales that replace the model's (file key, BFL parameter name).
    pub norms: Vec<(String, String)>,
}

/// A LoRA file's tensors as the parser sees them.
pub struct FileView {
    /// Tensor name → shape.
    pub shapes: HashMap<String, Vec<usize>>,
    /// Scalar tensors (alphas), by name.
    pub scalars: HashMap<String, f64>,
    /// The first alpha in data order (diffusers gives it to PEFT modules without their own).
    pub first_alpha: Option<f64>,
    /// The header's `lora_adapter_metadata` JSON (PEFT configs saved by diffusers), if any.
    pub metadata: Option<serde_json::Value>,
    /// The model's block counts, to know its module names.
    pub double: usize,
    pub single: usize,
    /// The model's family (FLUX.1 and FLUX.2 name their modules differently).
    pub family: Family,
    /// Every module the model lets LoRAs target (SD's names are looked up here).
    pub modules: Vec<Target>,
    /// Other names of denoiser modules → their names among `modules`.
    pub aliases: HashMap<String, String>,
}

/// Why a file cannot be used at all.
pub enum Unsupported {
    OtherArchitecture(String),
    /// A LoRA for the other FLUX family: (its family, a key that shows it).
    OtherFamily(Family, String),
    /// A FLUX LoRA on a Stable Diffusion model (a key that shows it).
    FluxOnSd(String),
}

/// Module names only one family has (diffusers, BFL and kohya spellings); FLUX.2's are checked first, since
/// FLUX.1's `modulation.lin` is part of FLUX.2's `stream_modulation.lin`.
const FLUX2_ONLY: [&str; 5] =
    ["to_qkv_mlp_proj", "stream_modulation", "time_guidance_embed", "linear_in", "linear_out"];
const FLUX1_ONLY: [&str; 9] = [
    "norm1.linear",
    "norm1_context.linear",
    "ff.net.",
    "proj_mlp",
    "img_mod",
    "txt_mod",
    "time_text_embed",
    "vector_in",
    "text_embedder",
];

/// The family a LoRA file was made for, when its names show it.
pub fn family_of(keys: &[&String]) -> Option<(Family, String)> {
    let find = |marks: &[&str]| keys.iter().find(|k| marks.iter().any(|m| k.contains(m))).map(|k| k.to_string());
    if let Some(k) = find(&FLUX2_ONLY) {
        return Some((Family::Flux2, k));
    }
    if let Some(k) = find(&FLUX1_ONLY) {
        return Some((Family::Flux1, k));
    }
    // FLUX.1 single blocks have their own modulation (`single_blocks.N.modulation.lin` / `_modulation_lin`).
    keys.iter()
        .find(|k| k.contains("single_blocks") && k.contains("modulation"))
        .map(|k| (Family::Flux1, k.to_string()))
}

pub fn parse(f: &FileView) -> Result<Parsed, Unsupported> {
    let keys: Vec<&String> = f.shapes.keys().filter(|k| !k.contains("dora_scale")).collect();
    if f.family.is_sd() {
        return super::sd::parse(f, &keys);
    }
    if let Some(k) = keys.iter().find(|k| is_stable_diffusion(k)) {
        return Err(Unsupported::OtherArchitecture(k.to_string()));
    }
    if let Some((family, key)) = family_of(&keys).filter(|(fam, _)| *fam != f.family) {
        return Err(Unsupported::OtherFamily(family, key));
    }
    let comfy = keys.iter().any(|k| k.starts_with("diffusion_model."));
    if keys.iter().any(|k| k.contains(".lora_down.weight")) {
        if keys.iter().any(|k| k.starts_with("transformer.")) {
            return Ok(peft(f, &keys, true));
        }
        return Ok(kohya(f, &keys, if comfy { Format::ComfyUi } else { Format::Kohya }));
    }
    if keys.iter().any(|k| k.contains("processor")) {
        return Ok(xlabs(&keys));
    }
    if comfy || keys.iter().any(|k| k.starts_with("lora_unet_")) {
        // ComfyUI/kohya names with PEFT's lora_A/lora_B: the same layout as lora_down/lora_up.
        return Ok(kohya(f, &keys, Format::BflLoraAB));
    }
    Ok(peft(f, &keys, false))
}

/// Keys of Stable Diffusion 1.x/2.x/XL LoRAs (UNet blocks), which share the kohya and PEFT spellings.
pub(super) fn is_stable_diffusion(k: &str) -> bool {
    ["down_blocks_", "up_blocks_", "mid_block_", "input_blocks_", "output_blocks_", "middle_block_"]
        .iter()
        .any(|p| k.starts_with(&format!("lora_unet_{p}")))
        || k.starts_with("unet.")
        || k.contains("lora_te2_text_model_encoder")
}

/// BFL module names (and CLIP linears) in kohya's underscore spelling → target.
fn underscore_index(f: &FileView) -> HashMap<String, Target> {
    let mut m: HashMap<String, Target> = flux_keys::bfl_module_names(f.double, f.single, f.family)
        .into_iter()
        .map(|b| (b.replace('.', "_"), Target::Transformer(b)))
        .collect();
    for n in 0..64 {
        for p in
            ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1", "mlp.fc2"]
        {
            let name = format!("encoder.layers.{n}.{p}");
            m.insert(format!("text_model_{}", name.replace('.', "_")), Target::Clip(name));
        }
    }
    m
}

/// The module part of a key: everything before `.lora_down.weight` / `.lora_up.weight` / `.alpha` (and the A/B
/// spellings), with `.default` adapter names removed.
pub(super) fn module_of(k: &str) -> Option<(&str, &'static str)> {
    const SUFFIXES: [(&str, &str); 10] = [
        (".lora_down.weight", "down"),
        (".lora_up.weight", "up"),
        (".lora_A.weight", "down"),
        (".lora_B.weight", "up"),
        (".lora_A.default.weight", "down"),
        (".lora_B.default.weight", "up"),
        (".down.weight", "down"),
        (".up.weight", "up"),
        (".alpha", "alpha"),
        // Control LoRAs' lora_B has a bias (PEFT's `lora_bias`).
        (".lora_B.bias", "bias"),
    ];
    SUFFIXES.iter().find_map(|(s, what)| k.strip_suffix(s).map(|m| (m, *what)))
}

/// down/up/alpha/bias keys grouped by module.
pub(super) fn group<'a>(keys: &[&'a String]) -> (HashMap<&'a str, [Option<&'a String>; 4]>, Vec<String>) {
    let mut m: HashMap<&str, [Option<&String>; 4]> = HashMap::new();
    let mut other = Vec::new();
    for k in keys {
        match module_of(k) {
            Some((module, what)) => {
                let slot = match what {
                    "down" => 0,
                    "up" => 1,
                    "bias" => 3,
                    _ => 2,
                };
                m.entry(module).or_default()[slot] = Some(k);
            }
            None => other.push(k.to_string()),
        }
    }
    (m, other)
}

/// alpha / rank, the alpha from the module's key or `default`.
pub(super) fn scale_of(f: &FileView, down: &str, alpha: Option<&String>, default: Option<f64>) -> f64 {
    let rank = f.shapes.get(down).and_then(|s| s.first()).copied().unwrap_or(1).max(1) as f64;
    let alpha = alpha.and_then(|a| f.scalars.get(a)).copied().or(default).unwrap_or(rank);
    alpha / rank
}

const EDGE: [&str; 6] = ["img_in", "txt_in", "time_in", "vector_in", "guidance_in", "final_layer"];

/// kohya/sd-scripts, ComfyUI and BFL-named files: underscore or dotted BFL module names, CLIP under `lora_te1_` or
/// `text_encoders.clip_l.transformer.`, alpha / rank per module.
fn kohya(f: &FileView, keys: &[&String], format: Format) -> Parsed {
    let index = underscore_index(f);
    let mut out = Parsed { format: Some(format), ..Default::default() };
    let (modules, other) = group(keys);
    out.unmatched.extend(other);
    for (module, [down, up, alpha, bias]) in modules {
        out.unmatched.extend(bias.cloned());
        let normal = module.replacen("diffusion_model.", "lora_unet_", 1).replacen(
            "text_encoders.clip_l.transformer.",
            "lora_te_",
            1,
        );
        if normal.starts_with("text_encoders.t5xxl") || normal.starts_with("lora_te2_") {
            out.ignored.push((module.to_string(), "T5 parts are not applied (as diffusers)"));
            continue;
        }
        let flat = normal.replace('.', "_");
        let target = flat
            .strip_prefix("lora_unet_")
            .or_else(|| flat.strip_prefix("lora_te1_"))
            .or_else(|| flat.strip_prefix("lora_te_"))
            .and_then(|rest| index.get(rest));
        let (Some(target), Some(down), Some(up)) = (target, down, up) else {
            out.unmatched.extend([down, up, alpha].into_iter().flatten().cloned());
            continue;
        };
        if let (Target::Transformer(b), Family::Flux1) = (target, f.family) {
            // diffusers' FLUX.1 kohya converter drops these; its FLUX.2 converters keep them.
            if EDGE.iter().any(|e| b.starts_with(e)) {
                out.ignored.push((module.to_string(), "embedder and final-layer parts are not applied (as diffusers)"));
                continue;
            }
        }
        let scale = scale_of(f, down, alpha, None);
        out.parts.push(RawPart {
            target: target.clone(),
            place: Placement::ALL,
            down: down.clone(),
            up: up.clone(),
            bias: None,
            scale,
        });
    }
    out
}

fn xlabs(keys: &[&String]) -> Parsed {
    let mut out = Parsed { format: Some(Format::XLabs), ..Default::default() };
    let (modules, other) = group(keys);
    out.unmatched.extend(other);
    for (module, [down, up, _, bias]) in modules {
        out.unmatched.extend(bias.cloned());
        let m = module.strip_prefix("diffusion_model.").unwrap_or(module);
        let target = m.split_once(".processor.").and_then(|(block, p)| {
            let (place, module) = match (block.starts_with("single"), p) {
                (false, "qkv_lora1") => (Placement::ALL, "img_attn.qkv"),
                (false, "qkv_lora2") => (Placement::ALL, "txt_attn.qkv"),
                (false, "proj_lora1") => (Placement::ALL, "img_attn.proj"),
                (false, "proj_lora2") => (Placement::ALL, "txt_attn.proj"),
                // q, k, v only: the first three parts of [q | k | v | mlp].
                (true, "qkv_lora") => (Placement { first: 0, count: 3, of: 4, swap: false }, "linear1"),
                (true, "proj_lora") => (Placement::ALL, "linear2"),
                _ => return None,
            };
            Some((Target::Transformer(format!("{block}.{module}")), place))
        });
        match (target, down, up) {
            (Some((target, place)), Some(d), Some(u)) => {
                out.parts.push(RawPart { target, place, down: d.clone(), up: u.clone(), bias: None, scale: 1.0 })
            }
            _ => out.unmatched.extend([down, up].into_iter().flatten().cloned()),
        }
    }
    out
}

/// diffusers/PEFT names (and bare BFL or fal names with lora_A/lora_B). `kohya_spelling`: `transformer.*` keys with
/// lora_down/lora_up, whose alphas diffusers ignores (scale 1).
fn peft(f: &FileView, keys: &[&String], kohya_spelling: bool) -> Parsed {
    let bfl_index: HashMap<String, Target> = flux_keys::bfl_module_names(f.double, f.single, f.family)
        .into_iter()
        .map(|b| (b.clone(), Target::Transformer(b)))
        .collect();
    let underscore = underscore_index(f);
    let mut out = Parsed::default();
    let (modules, other) = group(keys);
    out.unmatched.extend(other);
    for (module, [down, up, alpha, bias]) in modules {
        let Some((target, place, format)) = peft_target(module, &bfl_index, &underscore, f.family) else {
            out.unmatched.extend([down, up, alpha, bias].into_iter().flatten().cloned());
            continue;
        };
        let (Some(down), Some(up)) = (down, up) else {
            out.unmatched.extend([down, up, alpha, bias].into_iter().flatten().cloned());
            continue;
        };
        out.format.get_or_insert(format);
        let scale = if kohya_spelling { 1.0 } else { peft_scale(f, module, down, alpha, format) };
        out.parts.push(RawPart { target, place, down: down.clone(), up: up.clone(), bias: bias.cloned(), scale });
    }
    out.norms = norm_replacements(&mut out.unmatched, f.family);
    out
}

/// Control LoRAs' replacement query/key norm scales (`….norm.query_norm.scale` in BFL names,
/// `transformer.….attn.norm_q.weight` in diffusers'), taken out of `unmatched`: (file key, BFL parameter).
fn norm_replacements(unmatched: &mut Vec<String>, family: crate::config::Family) -> Vec<(String, String)> {
    let mut norms = Vec::new();
    unmatched.retain(|k| {
        let bfl = match k.strip_prefix("transformer.").and_then(|m| m.strip_suffix(".weight")) {
            Some(m) if ["norm_q", "norm_k", "norm_added_q", "norm_added_k"].iter().any(|n| m.ends_with(n)) => {
                flux_keys::diffusers_module_to_bfl(m, family).map(|(b, _)| format!("{b}.scale"))
            }
            _ if k.ends_with("query_norm.scale") || k.ends_with("key_norm.scale") => Some(k.clone()),
            _ => None,
        };
        match bfl {
            Some(b) => {
                norms.push((k.clone(), b));
                false
            }
            None => true,
        }
    });
    norms
}

/// Where a module of a PEFT-style file lands, and the naming it was written in.
fn peft_target(
    module: &str,
    bfl: &HashMap<String, Target>,
    underscore: &HashMap<String, Target>,
    family: crate::config::Family,
) -> Option<(Target, Placement, Format)> {
    if let Some(m) = module.strip_prefix("transformer.") {
        let (b, rows) = flux_keys::diffusers_module_to_bfl(m, family)?;
        return Some((Target::Transformer(b), Placement::from_rows(rows), Format::Peft));
    }
    if let Some(m) = module.strip_prefix("text_encoder.") {
        let m = m.strip_prefix("text_model.").unwrap_or(m);
        return underscore
            .get(&format!("text_model_{}", m.replace('.', "_")))
            .map(|t| (t.clone(), Placement::ALL, Format::Peft));
    }
    if let Some(m) = module.strip_prefix("base_model.model.") {
        return bfl.get(m).map(|t| (t.clone(), Placement::ALL, Format::FalKontext));
    }
    // Bare BFL module names with lora_A/lora_B.
    bfl.get(module).map(|t| (t.clone(), Placement::ALL, Format::BflLoraAB))
}

/// A PEFT module's scale: the saved LoraConfig (metadata) if any; else its own alpha, else the file's first alpha
/// (as diffusers), else none (scale 1). fal files carry no alpha.
pub(super) fn peft_scale(f: &FileView, module: &str, down: &str, alpha: Option<&String>, format: Format) -> f64 {
    if format == Format::FalKontext {
        return 1.0;
    }
    let component = module.split('.').next().unwrap_or("");
    if let Some(cfg) = f.metadata.as_ref().filter(|_| format == Format::Peft) {
        let rank = f.shapes.get(down).and_then(|s| s.first()).copied().unwrap_or(1).max(1) as f64;
        let get = |k: &str| cfg.get(format!("{component}.{k}"));
        let path = module.strip_prefix(&format!("{component}.")).unwrap_or(module);
        let pattern = get("alpha_pattern").and_then(|p| p.as_object()).and_then(|p| {
            p.iter().find(|(k, _)| path == k.as_str() || path.ends_with(&format!(".{k}"))).and_then(|(_, v)| v.as_f64())
        });
        let alpha = pattern.or_else(|| get("lora_alpha").and_then(|v| v.as_f64())).unwrap_or(rank);
        let rslora = get("use_rslora").and_then(|v| v.as_bool()).unwrap_or(false);
        return if rslora { alpha / rank.sqrt() } else { alpha / rank };
    }
    scale_of(f, down, alpha, f.first_alpha)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placements() {
        let q = Placement::from_rows(Rows::Part { index: 1, of: 3 });
        assert_eq!(q.rows(96, 32), (32, 32));
        let mlp = Placement::from_rows(Rows::Part { index: 3, of: 4 });
        assert_eq!(mlp.rows(224, 32), (96, 128));
        let qkv_of_linear1 = Placement { first: 0, count: 3, of: 4, swap: false };
        assert_eq!(qkv_of_linear1.rows(224, 32), (0, 96));
        assert_eq!(Placement::ALL.rows(64, 32), (0, 64));
    }

    #[test]
    fn modules_of_keys() {
        assert_eq!(module_of("transformer.x_embedder.lora_A.default.weight"), Some(("transformer.x_embedder", "down")));
        assert_eq!(
            module_of("lora_unet_single_blocks_0_linear1.alpha"),
            Some(("lora_unet_single_blocks_0_linear1", "alpha"))
        );
        assert!(is_stable_diffusion("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"));
        assert!(!is_stable_diffusion("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"));
    }
}
