//! The FLUX transformers' weight names: original Black Forest Labs (BFL) layout ⇄ diffusers layout, as data,
//! one table set per family.
//!
//! Our transformers (`models::transformer`, `models::flux2`) ask for BFL names. A diffusers checkpoint stores the
//! same numbers under other names, split differently: BFL fuses q, k and v into one `qkv` matrix, fuses q, k, v
//! and the MLP input of single blocks into `linear1` (FLUX.1; FLUX.2's diffusers model keeps it fused too), and
//! orders the final modulation (shift, scale) where diffusers has (scale, shift). docs/spec-flux1-img2img.md
//! §10.1 is the source of the FLUX.1 rows; diffusers' `convert_flux2_transformer_checkpoint_to_diffusers` of the
//! FLUX.2 rows.

use crate::config::Family;

/// Where the tensor the model asks for lives in a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The same tensor under another name.
    One(String),
    /// These tensors concatenated along dim 0 (fused projections).
    Cat(Vec<String>),
    /// This tensor with its two halves along dim 0 exchanged (final layer's shift/scale order).
    SwapHalves(String),
    /// This tensor reshaped to the requested shape (same element count): BFL's VAE attention uses 1×1
    /// convolutions [C, C, 1, 1] where diffusers has Linear [C, C].
    Reshape(String),
}

/// How a transformer checkpoint names its tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// diffusers `FluxTransformer2DModel` names.
    Diffusers,
    /// Black Forest Labs' names, behind `prefix` (ComfyUI files add `model.diffusion_model.`).
    Bfl { prefix: String },
}

/// Detects the layout of a transformer checkpoint from its tensor names (docs/spec-flux1-img2img.md §10.1).
pub fn transformer_layout(names: &[String]) -> Option<Layout> {
    const PROBE: &str = "double_blocks.0.img_attn.qkv.weight";
    if names.iter().any(|n| n.starts_with("transformer_blocks.0.attn.to_q.")) {
        return Some(Layout::Diffusers);
    }
    names.iter().find(|n| n.ends_with(PROBE)).map(|n| Layout::Bfl { prefix: n[..n.len() - PROBE.len()].to_string() })
}

/// The name map that presents a `family` checkpoint of `layout` under the BFL names the model asks for.
pub fn transformer_map(layout: &Layout, family: Family) -> impl Fn(&str) -> Source + Send + Sync + 'static {
    let layout = layout.clone();
    move |n: &str| match &layout {
        Layout::Diffusers => bfl_to_diffusers_in(tables(family), n),
        Layout::Bfl { prefix } => Source::One(format!("{prefix}{n}")),
    }
}

#[derive(Clone, Copy)]
enum Kind {
    One,
    Cat,
    Swap,
}

/// Rows of (BFL module, diffusers module(s), how they relate).
type Table = &'static [(&'static str, &'static [&'static str], Kind)];

/// A family's rows: modules outside the blocks, in double blocks, in single blocks.
struct Tables {
    global: Table,
    double: Table,
    single: Table,
}

const FLUX1: Tables = Tables { global: GLOBAL, double: DOUBLE, single: SINGLE };
const FLUX2: Tables = Tables { global: GLOBAL2, double: DOUBLE2, single: SINGLE2 };

fn tables(family: Family) -> &'static Tables {
    match family {
        Family::Flux2 => &FLUX2,
        // Only FLUX transformers are mapped here; other families never reach it.
        _ => &FLUX1,
    }
}

/// (BFL module, diffusers module(s), how they relate) for modules outside the blocks.
const GLOBAL: &[(&str, &[&str], Kind)] = &[
    ("img_in", &["x_embedder"], Kind::One),
    ("txt_in", &["context_embedder"], Kind::One),
    ("time_in.in_layer", &["time_text_embed.timestep_embedder.linear_1"], Kind::One),
    ("time_in.out_layer", &["time_text_embed.timestep_embedder.linear_2"], Kind::One),
    ("vector_in.in_layer", &["time_text_embed.text_embedder.linear_1"], Kind::One),
    ("vector_in.out_layer", &["time_text_embed.text_embedder.linear_2"], Kind::One),
    ("guidance_in.in_layer", &["time_text_embed.guidance_embedder.linear_1"], Kind::One),
    ("guidance_in.out_layer", &["time_text_embed.guidance_embedder.linear_2"], Kind::One),
    ("final_layer.linear", &["proj_out"], Kind::One),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"], Kind::Swap),
];

/// `double_blocks.N.<bfl>` ⇄ `transformer_blocks.N.<diffusers>`.
const DOUBLE: &[(&str, &[&str], Kind)] = &[
    ("img_mod.lin", &["norm1.linear"], Kind::One),
    ("txt_mod.lin", &["norm1_context.linear"], Kind::One),
    ("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"], Kind::Cat),
    ("txt_attn.qkv", &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], Kind::Cat),
    ("img_attn.norm.query_norm", &["attn.norm_q"], Kind::One),
    ("img_attn.norm.key_norm", &["attn.norm_k"], Kind::One),
    ("txt_attn.norm.query_norm", &["attn.norm_added_q"], Kind::One),
    ("txt_attn.norm.key_norm", &["attn.norm_added_k"], Kind::One),
    ("img_attn.proj", &["attn.to_out.0"], Kind::One),
    ("txt_attn.proj", &["attn.to_add_out"], Kind::One),
    ("img_mlp.0", &["ff.net.0.proj"], Kind::One),
    ("img_mlp.2", &["ff.net.2"], Kind::One),
    ("txt_mlp.0", &["ff_context.net.0.proj"], Kind::One),
    ("txt_mlp.2", &["ff_context.net.2"], Kind::One),
];

/// `single_blocks.N.<bfl>` ⇄ `single_transformer_blocks.N.<diffusers>`.
const SINGLE: &[(&str, &[&str], Kind)] = &[
    ("modulation.lin", &["norm.linear"], Kind::One),
    ("linear1", &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], Kind::Cat),
    ("norm.query_norm", &["attn.norm_q"], Kind::One),
    ("norm.key_norm", &["attn.norm_k"], Kind::One),
    ("linear2", &["proj_out"], Kind::One),
];

/// FLUX.2: shared modulations outside the blocks, no pooled-text embedder, no biases.
const GLOBAL2: &[(&str, &[&str], Kind)] = &[
    ("img_in", &["x_embedder"], Kind::One),
    ("txt_in", &["context_embedder"], Kind::One),
    ("time_in.in_layer", &["time_guidance_embed.timestep_embedder.linear_1"], Kind::One),
    ("time_in.out_layer", &["time_guidance_embed.timestep_embedder.linear_2"], Kind::One),
    ("guidance_in.in_layer", &["time_guidance_embed.guidance_embedder.linear_1"], Kind::One),
    ("guidance_in.out_layer", &["time_guidance_embed.guidance_embedder.linear_2"], Kind::One),
    ("double_stream_modulation_img.lin", &["double_stream_modulation_img.linear"], Kind::One),
    ("double_stream_modulation_txt.lin", &["double_stream_modulation_txt.linear"], Kind::One),
    ("single_stream_modulation.lin", &["single_stream_modulation.linear"], Kind::One),
    ("final_layer.linear", &["proj_out"], Kind::One),
    ("final_layer.adaLN_modulation.1", &["norm_out.linear"], Kind::Swap),
];

/// FLUX.2 `double_blocks.N.<bfl>` ⇄ `transformer_blocks.N.<diffusers>` (SwiGLU MLPs: `linear_in`/`linear_out`).
const DOUBLE2: &[(&str, &[&str], Kind)] = &[
    ("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"], Kind::Cat),
    ("txt_attn.qkv", &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"], Kind::Cat),
    ("img_attn.norm.query_norm", &["attn.norm_q"], Kind::One),
    ("img_attn.norm.key_norm", &["attn.norm_k"], Kind::One),
    ("txt_attn.norm.query_norm", &["attn.norm_added_q"], Kind::One),
    ("txt_attn.norm.key_norm", &["attn.norm_added_k"], Kind::One),
    ("img_attn.proj", &["attn.to_out.0"], Kind::One),
    ("txt_attn.proj", &["attn.to_add_out"], Kind::One),
    ("img_mlp.0", &["ff.linear_in"], Kind::One),
    ("img_mlp.2", &["ff.linear_out"], Kind::One),
    ("txt_mlp.0", &["ff_context.linear_in"], Kind::One),
    ("txt_mlp.2", &["ff_context.linear_out"], Kind::One),
];

/// FLUX.2 `single_blocks.N.<bfl>` ⇄ `single_transformer_blocks.N.<diffusers>` (already fused in diffusers).
const SINGLE2: &[(&str, &[&str], Kind)] = &[
    ("linear1", &["attn.to_qkv_mlp_proj"], Kind::One),
    ("norm.query_norm", &["attn.norm_q"], Kind::One),
    ("norm.key_norm", &["attn.norm_k"], Kind::One),
    ("linear2", &["attn.to_out"], Kind::One),
];

/// The family a transformer checkpoint belongs to, from its tensor names: FLUX.2 has shared modulation layers.
pub fn transformer_family(names: &[String]) -> Family {
    let flux2 = names.iter().any(|n| {
        n.ends_with("single_stream_modulation.lin.weight") || n.ends_with("single_stream_modulation.linear.weight")
    });
    if flux2 {
        Family::Flux2
    } else {
        Family::Flux1
    }
}

/// Splits `prefix.N.rest` into (N, rest).
fn block_index<'a>(name: &'a str, prefix: &str) -> Option<(usize, &'a str)> {
    let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
    let (idx, rest) = rest.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

/// Where the BFL-named FLUX.1 tensor `name` (e.g. `double_blocks.3.img_attn.qkv.weight`) lives in a diffusers
/// file. Names the table does not know are passed through unchanged, so they show up as "missing" by their own
/// name.
pub fn bfl_to_diffusers(name: &str) -> Source {
    bfl_to_diffusers_in(&FLUX1, name)
}

fn bfl_to_diffusers_in(t: &Tables, name: &str) -> Source {
    let (module, param) = match name.rsplit_once('.') {
        Some(p) => p,
        None => return Source::One(name.to_string()),
    };
    // BFL's RMSNorm calls its weight `scale`; diffusers' `weight`.
    let dparam = if param == "scale" { "weight" } else { param };
    let (table, dprefix, module): (Table, String, &str) = if let Some((n, rest)) = block_index(module, "double_blocks")
    {
        (t.double, format!("transformer_blocks.{n}."), rest)
    } else if let Some((n, rest)) = block_index(module, "single_blocks") {
        (t.single, format!("single_transformer_blocks.{n}."), rest)
    } else {
        (t.global, String::new(), module)
    };
    let Some((_, targets, kind)) = table.iter().find(|(bfl, _, _)| *bfl == module) else {
        return Source::One(name.to_string());
    };
    let full = |t: &str| format!("{dprefix}{t}.{dparam}");
    match kind {
        Kind::One => Source::One(full(targets[0])),
        Kind::Swap => Source::SwapHalves(full(targets[0])),
        Kind::Cat => Source::Cat(targets.iter().map(|t| full(t)).collect()),
    }
}

/// Where a diffusers transformer module's rows sit in the BFL module that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    /// All of them.
    All,
    /// Part `index` of `of` equal-or-fused parts concatenated along the rows (q, k, v[, mlp]).
    Part { index: usize, of: usize },
    /// All, with the two halves exchanged (the final modulation's (scale, shift) vs (shift, scale)).
    SwapHalves,
}

/// The BFL module and row placement of the `family` diffusers module `module` (e.g.
/// `transformer_blocks.3.attn.to_k` → `double_blocks.3.img_attn.qkv`, part 1 of 3), read off the same tables as
/// the weight names.
pub fn diffusers_module_to_bfl(module: &str, family: Family) -> Option<(String, Rows)> {
    let t = tables(family);
    let (table, bprefix, rest): (Table, String, &str) =
        if let Some((n, rest)) = block_index(module, "transformer_blocks") {
            (t.double, format!("double_blocks.{n}."), rest)
        } else if let Some((n, rest)) = block_index(module, "single_transformer_blocks") {
            (t.single, format!("single_blocks.{n}."), rest)
        } else {
            (t.global, String::new(), module)
        };
    table.iter().find_map(|(bfl, targets, kind)| {
        let index = targets.iter().position(|t| *t == rest)?;
        let rows = match kind {
            Kind::One => Rows::All,
            Kind::Swap => Rows::SwapHalves,
            Kind::Cat => Rows::Part { index, of: targets.len() },
        };
        Some((format!("{bprefix}{bfl}"), rows))
    })
}

/// Every BFL module of a `family` transformer with `double` and `single` blocks (what LoRAs can target).
pub fn bfl_module_names(double: usize, single: usize, family: Family) -> Vec<String> {
    let t = tables(family);
    let mut out: Vec<String> = t.global.iter().map(|m| m.0.to_string()).collect();
    out.extend((0..double).flat_map(|n| t.double.iter().map(move |m| format!("double_blocks.{n}.{}", m.0))));
    out.extend((0..single).flat_map(|n| t.single.iter().map(move |m| format!("single_blocks.{n}.{}", m.0))));
    out.retain(|m| !m.contains("_norm") && !m.ends_with(".norm.query_norm") && !m.ends_with(".norm.key_norm"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fused_and_renamed_keys() {
        assert_eq!(
            bfl_to_diffusers("double_blocks.12.img_attn.qkv.bias"),
            Source::Cat(vec![
                "transformer_blocks.12.attn.to_q.bias".into(),
                "transformer_blocks.12.attn.to_k.bias".into(),
                "transformer_blocks.12.attn.to_v.bias".into()
            ])
        );
        assert_eq!(
            bfl_to_diffusers("double_blocks.0.txt_attn.norm.key_norm.scale"),
            Source::One("transformer_blocks.0.attn.norm_added_k.weight".into())
        );
        assert_eq!(
            bfl_to_diffusers("single_blocks.37.linear1.weight"),
            Source::Cat(vec![
                "single_transformer_blocks.37.attn.to_q.weight".into(),
                "single_transformer_blocks.37.attn.to_k.weight".into(),
                "single_transformer_blocks.37.attn.to_v.weight".into(),
                "single_transformer_blocks.37.proj_mlp.weight".into()
            ])
        );
        assert_eq!(
            bfl_to_diffusers("final_layer.adaLN_modulation.1.weight"),
            Source::SwapHalves("norm_out.linear.weight".into())
        );
        assert_eq!(
            bfl_to_diffusers("guidance_in.out_layer.bias"),
            Source::One("time_text_embed.guidance_embedder.linear_2.bias".into())
        );
        assert_eq!(bfl_to_diffusers("unknown.weight"), Source::One("unknown.weight".into()));
    }

    #[test]
    fn diffusers_modules_find_their_bfl_rows() {
        assert_eq!(
            diffusers_module_to_bfl("transformer_blocks.3.attn.to_k", Family::Flux1),
            Some(("double_blocks.3.img_attn.qkv".into(), Rows::Part { index: 1, of: 3 }))
        );
        assert_eq!(
            diffusers_module_to_bfl("single_transformer_blocks.0.proj_mlp", Family::Flux1),
            Some(("single_blocks.0.linear1".into(), Rows::Part { index: 3, of: 4 }))
        );
        assert_eq!(
            diffusers_module_to_bfl("norm_out.linear", Family::Flux1),
            Some(("final_layer.adaLN_modulation.1".into(), Rows::SwapHalves))
        );
        assert_eq!(diffusers_module_to_bfl("x_embedder", Family::Flux1), Some(("img_in".into(), Rows::All)));
        assert_eq!(
            diffusers_module_to_bfl("transformer_blocks.0.attn.norm_q", Family::Flux1),
            Some(("double_blocks.0.img_attn.norm.query_norm".into(), Rows::All))
        );
        assert_eq!(diffusers_module_to_bfl("nope", Family::Flux1), None);
        let names = bfl_module_names(1, 2, Family::Flux1);
        assert!(
            names.contains(&"single_blocks.1.linear1".to_string()) && !names.iter().any(|n| n.contains("query_norm"))
        );
    }

    /// Every diffusers transformer tensor of the committed fixtures (FLUX.1 tiny-dev, FLUX.2 tiny-klein) is reached
    /// by exactly one BFL name of the family's tables (without the guidance embedder neither has).
    #[test]
    fn tables_cover_real_diffusers_key_lists() {
        for (fixture, family, (depth, single), bias) in
            [("tiny-dev", Family::Flux1, (1, 2), true), ("tiny-klein", Family::Flux2, (2, 2), false)]
        {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(fixture);
            let files = crate::source::weight_files(&dir.join("transformer"), "diffusion_pytorch_model").unwrap();
            let w = crate::weights::CheckedWeights::open("transformer", &files).unwrap();
            let mut stored: Vec<String> = w.names();
            stored.sort();
            let t = tables(family);
            let mut bfl: Vec<String> = t.global.iter().map(|m| m.0.to_string()).collect();
            bfl.retain(|m| family == Family::Flux1 || !m.starts_with("guidance_in"));
            for n in 0..depth {
                bfl.extend(t.double.iter().map(|m| format!("double_blocks.{n}.{}", m.0)));
            }
            for n in 0..single {
                bfl.extend(t.single.iter().map(|m| format!("single_blocks.{n}.{}", m.0)));
            }
            let mut reached = vec![];
            for m in bfl {
                let params: &[&str] = match (m.contains("_norm"), bias) {
                    (true, _) => &["scale"],
                    (false, true) => &["weight", "bias"],
                    (false, false) => &["weight"],
                };
                for p in params {
                    match bfl_to_diffusers_in(t, &format!("{m}.{p}")) {
                        Source::One(n) | Source::SwapHalves(n) | Source::Reshape(n) => reached.push(n),
                        Source::Cat(ns) => reached.extend(ns),
                    }
                }
            }
            reached.sort();
            assert_eq!(reached, stored, "{fixture}");
        }
    }
}
