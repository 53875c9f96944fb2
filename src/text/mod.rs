//! Prompt → [`Conditioning`], as each family's diffusers pipeline encodes it: [`flux1`] (CLIP + T5) and
//! [`qwen`] (FLUX.2's Qwen3 hidden states). Encoders are loaded once for a batch's prompts and dropped when this
//! stage returns; text that truncation cuts off comes back as warnings. This stage prints nothing.

pub mod flux1;
pub mod qwen;
pub mod sd;

use crate::config::read_json;
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::path::Path;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

pub use flux1::TextEncoders;

/// What the transformer is conditioned on.
#[derive(Clone)]
pub struct Conditioning {
    /// The prompt sequence [1, L, joint_attention_dim]: T5's last hidden state (FLUX.1) or Qwen3's stacked hidden
    /// states (FLUX.2).
    pub txt: Tensor,
    /// CLIP pooled output [1, pooled_projection_dim] (FLUX.1 only).
    pub pooled: Option<Tensor>,
}

/// Special tokens named in `tokenizer_config.json` (strings or `{"content": ...}` objects).
pub(crate) fn special_token(dir: &Path, key: &str, default: &str) -> String {
    let Ok(v) = read_json::<serde_json::Value>(&dir.join("tokenizer_config.json")) else { return default.into() };
    match v.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o.get("content").and_then(|c| c.as_str()).unwrap_or(default).into(),
        _ => default.into(),
    }
}

pub(crate) fn tok_err(dir: &Path, msg: impl std::fmt::Display) -> Error {
    Error::Tokenizer { path: dir.to_path_buf(), msg: msg.to_string(), source: None }
}

/// A tokenizer-library failure while doing `what` with the tokenizer at `path`.
pub(crate) fn tok_fail(path: &Path, what: &str, e: tokenizers::Error) -> Error {
    Error::tokenizer_from(path, what, e)
}

/// A tokenizer that pads and truncates to `max_len` like `tokenizer(..., padding="max_length", truncation=True)`.
pub struct FixedTokenizer {
    tok: Tokenizer,
    max_len: usize,
    dir: std::path::PathBuf,
    /// Rows of the text encoder's embedding: ids at or past it would fail deep in the model.
    rows: Option<usize>,
}

impl FixedTokenizer {
    pub fn load(dir: &Path, max_len: usize, default_pad: &str, clip_fallback: bool) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut tok = if json.is_file() {
            Tokenizer::from_file(&json).map_err(|e| tok_fail(&json, "unreadable", e))?
        } else if clip_fallback {
            flux1::clip_from_vocab_merges(dir)?
        } else {
            return Err(tok_err(dir, "tokenizer.json is missing"));
        };
        let pad = special_token(dir, "pad_token", default_pad);
        let pad_id =
            tok.token_to_id(&pad).ok_or_else(|| tok_err(dir, format!("pad token {pad} is not in the vocabulary")))?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_len),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        tok.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| tok_fail(dir, "truncation settings", e))?;
        Ok(Self { tok, max_len, dir: dir.to_path_buf(), rows: None })
    }

    /// Ids must stay below `rows`, the embedding size of the encoder this tokenizer feeds.
    pub fn with_embedding_rows(mut self, rows: usize) -> Self {
        self.rows = Some(rows);
        self
    }

    /// Ids padded/truncated to the fixed length, and the text that truncation cut off (empty if none).
    pub fn encode(&self, prompt: &str) -> Result<(Vec<u32>, String)> {
        let (ids, _, dropped) = self.encode_masked(prompt)?;
        Ok((ids, dropped))
    }

    /// Ids, their attention mask (1 = token, 0 = padding) and the text truncation cut off.
    pub fn encode_masked(&self, text: &str) -> Result<(Vec<u32>, Vec<u8>, String)> {
        let enc = self.tok.encode(text, true).map_err(|e| tok_fail(&self.dir, "cannot encode the prompt", e))?;
        let ids = enc.get_ids().to_vec();
        let mask = enc.get_attention_mask().iter().map(|&m| m as u8).collect();
        // Truncation splits the rest into overflow chunks of the same length; all of them were cut off.
        let over: Vec<u32> = enc.get_overflowing().iter().flat_map(|o| o.get_ids().iter().copied()).collect();
        let dropped = if over.is_empty() { String::new() } else { self.tok.decode(&over, true).unwrap_or_default() };
        debug_assert_eq!(ids.len(), self.max_len);
        if let (Some(rows), Some(&max)) = (self.rows, ids.iter().max()) {
            if max as usize >= rows {
                return Err(tok_err(
                    &self.dir,
                    format!(
                        "gives token id {max} but the text encoder's embedding has {rows} rows: this tokenizer does \
                         not belong to the model (use the model's own tokenizer folder)"
                    ),
                ));
            }
        }
        Ok((ids, mask, dropped))
    }
}

/// How one prompt is encoded: as the negative (unconditional) text, which some pipelines encode differently, and
/// with the CLIP layer to stop at (`--clip-skip`, Stable Diffusion).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct EncodeAs {
    pub negative: bool,
    pub clip_skip: Option<usize>,
    /// The pipeline's zero embedding instead of the encoded text (SDXL's `force_zeros_for_empty_prompt` when no
    /// negative prompt is given).
    pub zeros: bool,
}

/// A family's text encoders, loaded once for any number of prompts (a batch encodes all its prompts, then drops
/// them to free the memory before the denoiser runs).
pub trait TextEncoder {
    /// What loading did that the user should know (an encoder quantized, or taken from the cache).
    fn notes(&self) -> &[String];
    /// The prompt's conditioning and warnings about truncated text.
    fn encode(&mut self, prompt: &str, how: EncodeAs) -> Result<(Conditioning, Vec<String>)>;
}
