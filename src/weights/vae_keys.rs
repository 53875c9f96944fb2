//! VAE weight names: the diffusers `AutoencoderKL` names the model asks for → where Black Forest Labs'
//! `ae.safetensors` keeps them (docs/spec-flux1-img2img.md §10.2). BFL numbers the decoder's up blocks from the lowest resolution
//! up, diffusers from the highest down, so decoder block i is BFL's block n−1−i; mid-block attention is stored
//! as 1×1 convolutions.

use super::flux_keys::Source;

/// Whether a VAE checkpoint uses BFL names; returns the prefix in front of them (`first_stage_model.`, `vae.`
/// or nothing).
pub fn bfl_prefix(names: &[String]) -> Option<String> {
    const PROBE: &str = "encoder.down.0.block.0.conv1.weight";
    names.iter().find(|n| n.ends_with(PROBE)).map(|n| n[..n.len() - PROBE.len()].to_string())
}

/// (diffusers module, BFL module) renames inside the mid block, the resnets and the attention.
const RENAMES: &[(&str, &str)] = &[
    ("conv_shortcut", "nin_shortcut"),
    ("attentions.0.group_norm", "attn_1.norm"),
    ("attentions.0.to_q", "attn_1.q"),
    ("attentions.0.to_k", "attn_1.k"),
    ("attentions.0.to_v", "attn_1.v"),
    ("attentions.0.to_out.0", "attn_1.proj_out"),
    ("resnets.0", "block_1"),
    ("resnets.1", "block_2"),
];

/// Where the diffusers-named VAE tensor `name` lives in a BFL checkpoint with `blocks` resolution levels.
pub fn diffusers_to_bfl(name: &str, blocks: usize, prefix: &str) -> Source {
    // FLUX.2's VAE keeps its quant convs inside the encoder and decoder (`encoder.quant_conv`).
    for (conv, half) in [("quant_conv.", "encoder."), ("post_quant_conv.", "decoder.")] {
        if name.starts_with(conv) {
            return Source::One(format!("{prefix}{half}{name}"));
        }
    }
    let Some((half, rest)) = name.split_once('.') else { return Source::One(format!("{prefix}{name}")) };
    let mut out = format!("{half}.");
    let parts: Vec<&str> = rest.split('.').collect();
    let mut tail = rest.to_string();
    match parts.as_slice() {
        ["conv_norm_out", ..] => tail = tail.replacen("conv_norm_out", "norm_out", 1),
        ["down_blocks", i, "resnets", j, ..] => {
            tail = format!("down.{i}.block.{j}.{}", parts[4..].join(".")).replace("conv_shortcut", "nin_shortcut")
        }
        ["down_blocks", i, "downsamplers", "0", ..] => tail = format!("down.{i}.downsample.{}", parts[4..].join(".")),
        ["up_blocks", i, "resnets", j, ..] => {
            let b = blocks.saturating_sub(1 + i.parse::<usize>().unwrap_or(0));
            tail = format!("up.{b}.block.{j}.{}", parts[4..].join(".")).replace("conv_shortcut", "nin_shortcut")
        }
        ["up_blocks", i, "upsamplers", "0", ..] => {
            let b = blocks.saturating_sub(1 + i.parse::<usize>().unwrap_or(0));
            tail = format!("up.{b}.upsample.{}", parts[4..].join("."))
        }
        ["mid_block", ..] => {
            let inner = parts[1..].join(".");
            let renamed = RENAMES
                .iter()
                .find(|(d, _)| inner.starts_with(d))
                .map(|(d, b)| inner.replacen(d, b, 1))
                .unwrap_or(inner.clone());
            tail = format!("mid.{renamed}");
            out.push_str(&tail);
            let full = format!("{prefix}{out}");
            // q, k, v and the output projection are 1×1 convolutions in BFL's file.
            return if inner.starts_with("attentions.0.to_") && name.ends_with(".weight") {
                Source::Reshape(full)
            } else {
                Source::One(full)
            };
        }
        _ => {}
    }
    out.push_str(&tail);
    Source::One(format!("{prefix}{out}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_rows() {
        let m = |n: &str| diffusers_to_bfl(n, 4, "");
        assert_eq!(m("encoder.conv_in.weight"), Source::One("encoder.conv_in.weight".into()));
        assert_eq!(m("quant_conv.bias"), Source::One("encoder.quant_conv.bias".into()));
        assert_eq!(m("post_quant_conv.weight"), Source::One("decoder.post_quant_conv.weight".into()));
        assert_eq!(m("bn.running_var"), Source::One("bn.running_var".into()));
        assert_eq!(
            m("encoder.down_blocks.1.resnets.0.conv_shortcut.bias"),
            Source::One("encoder.down.1.block.0.nin_shortcut.bias".into())
        );
        assert_eq!(
            m("encoder.down_blocks.2.downsamplers.0.conv.weight"),
            Source::One("encoder.down.2.downsample.conv.weight".into())
        );
        assert_eq!(
            m("decoder.up_blocks.0.resnets.2.norm1.weight"),
            Source::One("decoder.up.3.block.2.norm1.weight".into())
        );
        assert_eq!(
            m("decoder.up_blocks.3.resnets.0.conv_shortcut.weight"),
            Source::One("decoder.up.0.block.0.nin_shortcut.weight".into())
        );
        assert_eq!(
            m("decoder.up_blocks.1.upsamplers.0.conv.bias"),
            Source::One("decoder.up.2.upsample.conv.bias".into())
        );
        assert_eq!(
            m("encoder.mid_block.resnets.1.conv2.weight"),
            Source::One("encoder.mid.block_2.conv2.weight".into())
        );
        assert_eq!(
            m("decoder.mid_block.attentions.0.group_norm.bias"),
            Source::One("decoder.mid.attn_1.norm.bias".into())
        );
        assert_eq!(
            m("decoder.mid_block.attentions.0.to_out.0.weight"),
            Source::Reshape("decoder.mid.attn_1.proj_out.weight".into())
        );
        assert_eq!(m("encoder.mid_block.attentions.0.to_q.bias"), Source::One("encoder.mid.attn_1.q.bias".into()));
        assert_eq!(m("encoder.conv_norm_out.weight"), Source::One("encoder.norm_out.weight".into()));
        assert_eq!(
            diffusers_to_bfl("decoder.conv_out.bias", 4, "vae."),
            Source::One("vae.decoder.conv_out.bias".into())
        );
    }
}
