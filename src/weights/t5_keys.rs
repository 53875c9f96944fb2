//! T5 encoder weight names: llama.cpp's `t5encoder` GGUF names (the community `t5-v1_1-xxl-encoder-Q8_0.gguf`
//! files) → the transformers names candle's T5 asks for, as data.

/// (llama.cpp module, transformers module) outside the blocks.
const GLOBAL: &[(&str, &str)] = &[("token_embd", "shared"), ("enc.output_norm", "encoder.final_layer_norm")];

/// (llama.cpp module, transformers module) inside block N (`enc.blk.N.` → `encoder.block.N.`); `ffn_up` is `wi_1`
/// in gated T5 (v1.1, FLUX's) and `wi` otherwise.
const BLOCK: &[(&str, &str)] = &[
    ("attn_q", "layer.0.SelfAttention.q"),
    ("attn_k", "layer.0.SelfAttention.k"),
    ("attn_v", "layer.0.SelfAttention.v"),
    ("attn_o", "layer.0.SelfAttention.o"),
    ("attn_rel_b", "layer.0.SelfAttention.relative_attention_bias"),
    ("attn_norm", "layer.0.layer_norm"),
    ("ffn_gate", "layer.1.DenseReluDense.wi_0"),
    ("ffn_up", "layer.1.DenseReluDense.wi_1"),
    ("ffn_down", "layer.1.DenseReluDense.wo"),
    ("ffn_norm", "layer.1.layer_norm"),
];

/// Whether a GGUF file uses llama.cpp's T5 encoder names.
pub fn is_llama_t5(names: &[String]) -> bool {
    names.iter().any(|n| n.starts_with("enc.blk.0."))
}

/// The transformers name of llama.cpp tensor `name`; `gated`: the file has `ffn_gate` tensors. None: unknown.
pub fn llama_to_hf(name: &str, gated: bool) -> Option<String> {
    let (module, param) = name.rsplit_once('.')?;
    if let Some((_, hf)) = GLOBAL.iter().find(|(l, _)| *l == module) {
        return Some(format!("{hf}.{param}"));
    }
    let rest = module.strip_prefix("enc.blk.")?;
    let (n, part) = rest.split_once('.')?;
    let hf = match (part, gated) {
        ("ffn_up", false) => "layer.1.DenseReluDense.wi",
        _ => BLOCK.iter().find(|(l, _)| *l == part)?.1,
    };
    Some(format!("encoder.block.{n}.{hf}.{param}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn community_names_map_to_transformers() {
        assert_eq!(llama_to_hf("token_embd.weight", true).unwrap(), "shared.weight");
        assert_eq!(
            llama_to_hf("enc.blk.3.attn_rel_b.weight", true).unwrap(),
            "encoder.block.3.layer.0.SelfAttention.relative_attention_bias.weight"
        );
        assert_eq!(
            llama_to_hf("enc.blk.0.ffn_up.weight", true).unwrap(),
            "encoder.block.0.layer.1.DenseReluDense.wi_1.weight"
        );
        assert_eq!(
            llama_to_hf("enc.blk.0.ffn_up.weight", false).unwrap(),
            "encoder.block.0.layer.1.DenseReluDense.wi.weight"
        );
        assert_eq!(llama_to_hf("enc.output_norm.weight", true).unwrap(), "encoder.final_layer_norm.weight");
        assert_eq!(llama_to_hf("dec.blk.0.attn_q.weight", true), None);
    }
}
