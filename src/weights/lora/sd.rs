//! Stable Diffusion LoRA files → UNet and CLIP targets, as diffusers' `StableDiffusion[XL]Pipeline.load_lora_weights`
//! reads them: kohya/sd-scripts names (`lora_unet_*`, `lora_te_*` for SD 1.x/2.x's CLIP, `lora_te1_*`/`lora_te2_*`
//! for SDXL's two encoders; `lora_down`/`lora_up`, scaled by alpha / rank) and diffusers/PEFT names (`unet.…`,
//! `text_encoder.…`, `text_encoder_2.…` with `lora_A`/`lora_B`). Targets are looked up among the model's own
//! modules, so kohya's underscores resolve without guessing. Convolution pairs (1×1 projections, and LoCon's
//! resnet, sampler and conv_in/out kernels) are read as linear pairs on the flattened kernel.

use super::formats::{self, FileView, Format, Parsed, Placement, RawPart, Target, Unsupported};
use std::collections::HashMap;

/// Where SDXL's second text encoder's targets are named.
pub const TEXT_ENCODER_2: &str = "text_encoder_2.";

/// Key parts only FLUX LoRAs have (kohya and BFL block names, diffusers' `transformer.` component).
const FLUX_MARKS: [&str; 5] = ["double_blocks", "single_blocks", "img_attn", "txt_attn", "single_transformer_blocks"];

fn is_flux(k: &str) -> bool {
    k.starts_with("transformer.") || FLUX_MARKS.iter().any(|m| k.contains(m))
}

/// The model's targets by the names files use for them.
struct Index {
    /// UNet modules: diffusers name, and kohya's underscore spelling.
    unet: HashMap<String, Target>,
    unet_flat: HashMap<String, Target>,
    /// Each encoder's modules in kohya's spelling (`text_model_encoder_layers_0_self_attn_q_proj`).
    te1_flat: HashMap<String, Target>,
    te2_flat: HashMap<String, Target>,
}

impl Index {
    fn new(modules: &[Target], aliases: &HashMap<String, String>) -> Self {
        let mut ix = Index {
            unet: HashMap::new(),
            unet_flat: HashMap::new(),
            te1_flat: HashMap::new(),
            te2_flat: HashMap::new(),
        };
        for t in modules {
            match t {
                Target::Transformer(m) => {
                    ix.unet.insert(m.clone(), t.clone());
                    ix.unet_flat.insert(m.replace('.', "_"), t.clone());
                }
                Target::Clip(m) => {
                    let (table, name) = match m.strip_prefix(TEXT_ENCODER_2) {
                        Some(rest) => (&mut ix.te2_flat, rest),
                        None => (&mut ix.te1_flat, m.as_str()),
                    };
                    table.insert(format!("text_model_{}", name.replace('.', "_")), t.clone());
                }
            }
        }
        for (alias, module) in aliases {
            ix.unet_flat.insert(alias.replace('.', "_"), Target::Transformer(module.clone()));
        }
        ix
    }

    /// `lora_unet_…`, `lora_te_…` / `lora_te1_…`, `lora_te2_…`.
    fn kohya(&self, module: &str) -> Option<Target> {
        let table_and_rest = [
            ("lora_unet_", &self.unet_flat),
            ("lora_te1_", &self.te1_flat),
            ("lora_te2_", &self.te2_flat),
            ("lora_te_", &self.te1_flat),
        ];
        table_and_rest.iter().find_map(|(p, table)| module.strip_prefix(p).and_then(|rest| table.get(rest)).cloned())
    }

    /// `unet.…`, `text_encoder.…`, `text_encoder_2.…` (with or without transformers 4's `text_model.`).
    fn peft(&self, module: &str) -> Option<Target> {
        if let Some(m) = module.strip_prefix("unet.") {
            return self.unet.get(m).cloned();
        }
        let (table, rest) = match module.strip_prefix(TEXT_ENCODER_2) {
            Some(rest) => (&self.te2_flat, rest),
            None => (&self.te1_flat, module.strip_prefix("text_encoder.")?),
        };
        let rest = rest.strip_prefix("text_model.").unwrap_or(rest);
        table.get(&format!("text_model_{}", rest.replace('.', "_"))).cloned()
    }
}

pub fn parse(f: &FileView, keys: &[&String]) -> Result<Parsed, Unsupported> {
    if let Some(k) = keys.iter().find(|k| is_flux(k)) {
        return Err(Unsupported::FluxOnSd(k.to_string()));
    }
    let kohya = keys.iter().any(|k| k.starts_with("lora_unet_") || k.starts_with("lora_te"));
    let index = Index::new(&f.modules, &f.aliases);
    let mut out = Parsed { format: Some(if kohya { Format::Kohya } else { Format::Peft }), ..Default::default() };
    let (modules, other) = formats::group(keys);
    out.unmatched.extend(other);
    for (module, [down, up, alpha, bias]) in modules {
        out.unmatched.extend(bias.cloned());
        let target = if kohya { index.kohya(module) } else { index.peft(module) };
        let (Some(target), Some(down), Some(up)) = (target, down, up) else {
            out.unmatched.extend([down, up, alpha].into_iter().flatten().cloned());
            continue;
        };
        let scale = if kohya {
            formats::scale_of(f, down, alpha, None)
        } else {
            formats::peft_scale(f, module, down, alpha, Format::Peft)
        };
        out.parts.push(RawPart {
            target,
            place: Placement::ALL,
            down: down.clone(),
            up: up.clone(),
            bias: None,
            scale,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Family;

    const ATTN: &str = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
    const CLIP2: &str = "text_encoder_2.encoder.layers.1.mlp.fc1";
    const CONV: &str = "down_blocks.0.resnets.0.conv1";

    fn view(keys: &[(&str, Vec<usize>)], alphas: &[(&str, f64)]) -> FileView {
        FileView {
            shapes: keys.iter().map(|(k, s)| (k.to_string(), s.clone())).collect(),
            scalars: alphas.iter().map(|(k, a)| (k.to_string(), *a)).collect(),
            first_alpha: None,
            metadata: None,
            double: 0,
            single: 0,
            family: Family::Sdxl,
            modules: vec![
                Target::Transformer(ATTN.into()),
                Target::Clip(CLIP2.into()),
                Target::Transformer(CONV.into()),
            ],
            aliases: [("input_blocks.1.1.transformer_blocks.0.attn1.to_q".to_string(), ATTN.to_string())].into(),
        }
    }

    fn parse_keys(f: &FileView) -> Result<Parsed, Unsupported> {
        let keys: Vec<&String> = f.shapes.keys().collect();
        parse(f, &keys)
    }

    #[test]
    fn kohya_names_alphas_and_original_blocks() {
        let f = view(
            &[
                ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight", vec![4, 8]),
                ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight", vec![8, 4]),
                ("lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_down.weight", vec![2, 8]),
                ("lora_te2_text_model_encoder_layers_1_mlp_fc1.lora_up.weight", vec![16, 2]),
                ("lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha", vec![]),
                // A LoCon 3×3 pair, as read: [4, 8, 3, 3] → [4, 72], [8, 4, 1, 1] → [8, 4].
                ("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", vec![4, 72]),
                ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", vec![8, 4]),
            ],
            &[("lora_te2_text_model_encoder_layers_1_mlp_fc1.alpha", 1.0)],
        );
        let p = parse_keys(&f).ok().unwrap();
        let mut got: Vec<(Target, f64)> = p.parts.iter().map(|p| (p.target.clone(), p.scale)).collect();
        got.sort_by(|a, b| format!("{:?}", a.0).cmp(&format!("{:?}", b.0)));
        let want = vec![
            (Target::Clip(CLIP2.into()), 0.5),
            (Target::Transformer(ATTN.into()), 1.0),
            (Target::Transformer(CONV.into()), 1.0),
        ];
        assert_eq!(got, want);
        assert!(p.ignored.is_empty() && p.unmatched.is_empty(), "{:?} {:?}", p.ignored, p.unmatched);
    }

    #[test]
    fn peft_names() {
        let f = view(
            &[
                (&format!("unet.{ATTN}.lora_A.weight"), vec![4, 8]),
                (&format!("unet.{ATTN}.lora_B.weight"), vec![8, 4]),
                ("text_encoder_2.text_model.encoder.layers.1.mlp.fc1.lora_A.weight", vec![4, 8]),
                ("text_encoder_2.text_model.encoder.layers.1.mlp.fc1.lora_B.weight", vec![16, 4]),
            ],
            &[],
        );
        let p = parse_keys(&f).ok().unwrap();
        assert_eq!(p.parts.len(), 2);
        assert!(p.unmatched.is_empty());
    }

    #[test]
    fn flux_files_are_refused() {
        for k in ["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "transformer.x_embedder.lora_A.weight"] {
            let f = view(&[(k, vec![4, 8])], &[]);
            assert!(matches!(parse_keys(&f), Err(Unsupported::FluxOnSd(_))), "{k}");
        }
    }
}
