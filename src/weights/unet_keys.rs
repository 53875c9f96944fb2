//! UNet weight names: the diffusers `UNet2DConditionModel` names the model asks for → where a single-file
//! checkpoint in the original (CompVis LDM) layout keeps them, under `model.diffusion_model.`.
//!
//! The original numbers its blocks flat: `input_blocks.0` is `conv_in`, then per down level `layers + 1` slots
//! (each resnet with its attention as `.0`/`.1`, the downsampler as the level's last slot `.0.op`);
//! `middle_block.0/1/2` are resnet, attention, resnet; `output_blocks` has `layers + 1` slots per up level, the
//! upsampler after the last slot's resnet (and attention). Attention blocks keep diffusers' inner names.

/// (diffusers module, original module) of the embeddings and the ends.
const TOP: &[(&str, &str)] = &[
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_in", "input_blocks.0.0"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
];

/// (diffusers, original) names inside a resnet.
const RESNET: &[(&str, &str)] = &[
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// The prefix of the UNet in a single-file checkpoint.
pub const PREFIX: &str = "model.diffusion_model.";

fn resnet(rest: &str) -> String {
    RESNET.iter().find(|(d, _)| rest.starts_with(d)).map_or(rest.to_string(), |(d, o)| rest.replacen(d, o, 1))
}

/// Where the diffusers-named tensor `name` lives in an original checkpoint of a UNet with `layers` resnets per
/// down block; `up_attention[i]` says whether up block i has attentions (its upsampler's slot follows them).
pub fn diffusers_to_ldm(name: &str, layers: usize, up_attention: &[bool]) -> String {
    let (module, leaf) = name.rsplit_once('.').unwrap_or((name, ""));
    if let Some((_, o)) = TOP.iter().find(|(d, _)| *d == module) {
        return format!("{PREFIX}{o}.{leaf}");
    }
    let parts: Vec<&str> = name.split('.').collect();
    let tail = |from: usize| parts[from.min(parts.len())..].join(".");
    let ldm = match parts.as_slice() {
        ["mid_block", "resnets", "0", ..] => format!("middle_block.0.{}", resnet(&tail(3))),
        ["mid_block", "attentions", "0", ..] => format!("middle_block.1.{}", tail(3)),
        ["mid_block", "resnets", "1", ..] => format!("middle_block.2.{}", resnet(&tail(3))),
        [side @ ("down_blocks" | "up_blocks"), i, kind, j, ..] => {
            let (i, j) = (i.parse::<usize>().unwrap_or(0), j.parse::<usize>().unwrap_or(0));
            block(*side == "down_blocks", i, kind, j, &tail(4), layers, up_attention)
        }
        _ => name.to_string(),
    };
    format!("{PREFIX}{ldm}")
}

/// A down or up block's tensor: its flat slot and the name inside it.
fn block(down: bool, i: usize, kind: &str, j: usize, rest: &str, layers: usize, up_attention: &[bool]) -> String {
    let per = layers + 1;
    match (down, kind) {
        (true, "downsamplers") => format!("input_blocks.{}.0.op.{}", (i + 1) * per, rest.trim_start_matches("conv.")),
        (true, "resnets") => format!("input_blocks.{}.0.{}", 1 + i * per + j, resnet(rest)),
        (true, _) => format!("input_blocks.{}.1.{rest}", 1 + i * per + j),
        (false, "upsamplers") => {
            let slot = if up_attention.get(i).copied().unwrap_or(false) { 2 } else { 1 };
            format!("output_blocks.{}.{slot}.{rest}", i * per + layers)
        }
        (false, "resnets") => format!("output_blocks.{}.0.{}", i * per + j, resnet(rest)),
        (false, _) => format!("output_blocks.{}.1.{rest}", i * per + j),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rows of SD 1.5's layout (2 resnets per block; up blocks 1–3 with attentions).
    #[test]
    fn sd15_rows() {
        let up = [false, true, true, true];
        let m = |n: &str| diffusers_to_ldm(n, 2, &up).trim_start_matches(PREFIX).to_string();
        assert_eq!(m("conv_in.weight"), "input_blocks.0.0.weight");
        assert_eq!(m("time_embedding.linear_2.bias"), "time_embed.2.bias");
        assert_eq!(m("down_blocks.0.resnets.1.conv1.weight"), "input_blocks.2.0.in_layers.2.weight");
        assert_eq!(m("down_blocks.1.attentions.0.proj_in.weight"), "input_blocks.4.1.proj_in.weight");
        assert_eq!(m("down_blocks.2.downsamplers.0.conv.bias"), "input_blocks.9.0.op.bias");
        assert_eq!(m("down_blocks.1.resnets.0.conv_shortcut.weight"), "input_blocks.4.0.skip_connection.weight");
        assert_eq!(m("mid_block.resnets.1.time_emb_proj.weight"), "middle_block.2.emb_layers.1.weight");
        assert_eq!(
            m("mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight"),
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight"
        );
        assert_eq!(m("up_blocks.0.upsamplers.0.conv.weight"), "output_blocks.2.1.conv.weight");
        assert_eq!(m("up_blocks.1.upsamplers.0.conv.weight"), "output_blocks.5.2.conv.weight");
        assert_eq!(m("up_blocks.3.resnets.2.norm2.bias"), "output_blocks.11.0.out_layers.0.bias");
        assert_eq!(m("up_blocks.3.attentions.2.norm.weight"), "output_blocks.11.1.norm.weight");
        assert_eq!(m("conv_norm_out.weight"), "out.0.weight");
        assert_eq!(m("add_embedding.linear_1.weight"), "label_emb.0.0.weight");
    }
}
