//! Text-encoder weight names: the transformers `CLIPTextModel[WithProjection]` names the model asks for → where a
//! single-file checkpoint keeps them. SD 1.x and SDXL's first encoder keep transformers' names behind a prefix;
//! SD 2.x's encoder and SDXL's second are OpenCLIP modules (`transformer.resblocks.N`, q/k/v fused into one
//! `in_proj`, `text_projection` stored as [in, out]), named here by table as diffusers' single-file loader reads
//! them.

use super::flux_keys::Source;
use super::NameMap;
use std::sync::Arc;

/// How a single file names one text encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextKeys {
    /// transformers' names behind a prefix (`cond_stage_model.transformer.`).
    Transformers(String),
    /// OpenCLIP's names behind a prefix; `projection`: the encoder has a text projection (SDXL's second; SD 2.x's
    /// stored projection is not part of its diffusers encoder and is left unread).
    OpenClip { prefix: String, projection: bool },
}

/// (transformers module, OpenCLIP module) outside the layers.
const TOP: &[(&str, &str)] = &[
    ("embeddings.token_embedding.weight", "token_embedding.weight"),
    ("embeddings.position_embedding.weight", "positional_embedding"),
    ("final_layer_norm", "ln_final"),
];

/// (transformers, OpenCLIP) names inside a layer; q/k/v are thirds of `in_proj`.
const LAYER: &[(&str, &str)] = &[
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    ("mlp.fc1", "mlp.c_fc"),
    ("mlp.fc2", "mlp.c_proj"),
    ("self_attn.out_proj", "attn.out_proj"),
];

const QKV: [&str; 3] = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"];

/// Where the transformers-named tensor `name` lives in an OpenCLIP encoder behind `prefix`.
pub fn transformers_to_open_clip(name: &str, prefix: &str, projection: bool) -> Source {
    let n = name.strip_prefix("text_model.").unwrap_or(name);
    let one = |s: String| Source::One(format!("{prefix}{s}"));
    if n == "text_projection.weight" {
        // Absent when unread: the encoder is then built without it, as diffusers builds SD 2.x's.
        return if projection { Source::Transpose(format!("{prefix}text_projection")) } else { one(n.into()) };
    }
    if let Some((t, o)) = TOP.iter().find(|(t, _)| n.starts_with(t)) {
        return one(n.replacen(t, o, 1));
    }
    let Some(rest) = n.strip_prefix("encoder.layers.") else { return one(n.into()) };
    let Some((i, inner)) = rest.split_once('.') else { return one(n.into()) };
    let block = format!("transformer.resblocks.{i}");
    if let Some(index) = QKV.iter().position(|q| inner.starts_with(q)) {
        let leaf = inner.rsplit('.').next().unwrap_or("weight");
        return Source::Chunk { name: format!("{prefix}{block}.attn.in_proj_{leaf}"), index, parts: 3 };
    }
    match LAYER.iter().find(|(t, _)| inner.starts_with(t)) {
        Some((t, o)) => one(format!("{block}.{}", inner.replacen(t, o, 1))),
        None => one(format!("{block}.{inner}")),
    }
}

impl TextKeys {
    /// The name map for the encoder's `VarBuilder`.
    pub fn map(&self) -> NameMap {
        match self.clone() {
            TextKeys::Transformers(p) => Arc::new(move |n: &str| Source::One(format!("{p}{n}"))),
            TextKeys::OpenClip { prefix, projection } => {
                Arc::new(move |n: &str| transformers_to_open_clip(n, &prefix, projection))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_clip_rows() {
        let m = |n: &str| transformers_to_open_clip(n, "p.", true);
        let one = |s: &str| Source::One(format!("p.{s}"));
        assert_eq!(m("text_model.embeddings.position_embedding.weight"), one("positional_embedding"));
        assert_eq!(m("text_model.embeddings.token_embedding.weight"), one("token_embedding.weight"));
        assert_eq!(m("text_model.final_layer_norm.bias"), one("ln_final.bias"));
        assert_eq!(m("text_model.encoder.layers.3.layer_norm2.weight"), one("transformer.resblocks.3.ln_2.weight"));
        assert_eq!(m("text_model.encoder.layers.0.mlp.fc1.bias"), one("transformer.resblocks.0.mlp.c_fc.bias"));
        assert_eq!(
            m("text_model.encoder.layers.1.self_attn.out_proj.weight"),
            one("transformer.resblocks.1.attn.out_proj.weight")
        );
        assert_eq!(
            m("text_model.encoder.layers.1.self_attn.v_proj.bias"),
            Source::Chunk { name: "p.transformer.resblocks.1.attn.in_proj_bias".into(), index: 2, parts: 3 }
        );
        assert_eq!(m("text_projection.weight"), Source::Transpose("p.text_projection".into()));
        assert_eq!(transformers_to_open_clip("text_projection.weight", "p.", false), one("text_projection.weight"));
    }
}
