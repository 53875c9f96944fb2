//! FLUX.2: prompt → `Conditioning` with Qwen3's hidden states of layers 9, 18 and 27 side by side [1, L, 3·hidden],
//! as diffusers' `Flux2KleinPipeline._get_qwen3_prompt_embeds`.
//!
//! The prompt is wrapped in Qwen3's chat template exactly as `apply_chat_template(add_generation_prompt=True,
//! enable_thinking=False)` renders one user message (no system block), tokenized without special tokens added,
//! right-padded with the tokenizer's pad token to `--max-sequence-length` and truncated there. The padding mask
//! is used inside Qwen3 only: the transformer attends to every position, padding included.

use super::{tok_err, Conditioning, FixedTokenizer};
use crate::config::qwen3::Qwen3Config;
use crate::config::read_json;
use crate::error::{Error, Result};
use crate::models::qwen3::Qwen3Encoder;
use crate::source::ModelFiles;
use crate::weights::CheckedWeights;
use candle_core::{DType, Device, Tensor};

/// The hidden states FLUX.2 stacks (the pipeline's `text_encoder_out_layers` default).
pub const OUT_LAYERS: [usize; 3] = [9, 18, 27];

/// One user turn and the assistant's opening with thinking switched off, as Qwen3's template renders it.
pub fn chat_text(prompt: &str) -> String {
    format!("<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
}

/// Qwen3 and its tokenizer, loaded once for any number of prompts.
pub struct QwenText {
    tok: FixedTokenizer,
    model: Qwen3Encoder,
    max_sequence_length: usize,
    device: Device,
    dtype: DType,
}

impl QwenText {
    pub fn load(files: &ModelFiles, max_sequence_length: usize, dtype: DType, device: &Device) -> Result<Self> {
        let cfg_path = &files.text_encoder.config;
        let cfg: Qwen3Config = read_json(cfg_path)?;
        cfg.validate(cfg_path, &OUT_LAYERS)?;
        if !files.tokenizer.join("tokenizer.json").is_file() {
            return Err(tok_err(
                &files.tokenizer,
                "has no tokenizer.json; FLUX.2 needs the Qwen tokenizer (tokenizer.json and tokenizer_config.json \
                 from the model's tokenizer/ folder)",
            ));
        }
        let tok = FixedTokenizer::load(&files.tokenizer, max_sequence_length, "<|endoftext|>", false)?;
        let w = CheckedWeights::open("text_encoder (Qwen3)", &files.text_encoder.weights)?;
        let names = w.names();
        let prefixed = names.iter().any(|n| n == "model.embed_tokens.weight");
        if !prefixed && !names.iter().any(|n| n == "embed_tokens.weight") {
            return Err(Error::model(
                w.first_file(),
                "is not a Qwen3 text encoder (no embed_tokens); FLUX.2 klein needs Qwen3 weights such as \
                 qwen_3_4b.safetensors, not CLIP or T5",
            ));
        }
        let vb = w.var_builder(dtype, device, None);
        let vb = if prefixed { vb.pp("model") } else { vb };
        let depth = OUT_LAYERS.iter().copied().max().unwrap_or(0);
        let model = Qwen3Encoder::new(&cfg, depth, vb)?;
        w.finish()?;
        Ok(Self { tok, model, max_sequence_length, device: device.clone(), dtype })
    }

    /// The prompt's embeddings, and a warning if truncation cut text off.
    pub fn encode(&mut self, prompt: &str) -> Result<(Conditioning, Vec<String>)> {
        let (ids, mask, dropped) = self.tok.encode_masked(&chat_text(prompt))?;
        let mut warnings = Vec::new();
        if !dropped.trim().is_empty() {
            warnings.push(format!(
                "the prompt (in Qwen's chat template) is longer than --max-sequence-length {} tokens; truncated: {:?}",
                self.max_sequence_length,
                dropped.trim()
            ));
        }
        let ids = Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let txt = self.model.hidden_states(&ids, &mask, &OUT_LAYERS)?.to_dtype(self.dtype)?;
        Ok((Conditioning { txt, pooled: None }, warnings))
    }
}
