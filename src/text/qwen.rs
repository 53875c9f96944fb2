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
use crate::models::linear::{gguf_names, DenseWeights, Quant, QuantStats, Weights};
use crate::models::qwen3::Qwen3Encoder;
use crate::source::ModelFiles;
use crate::weights::gguf_cache;
use crate::weights::CheckedWeights;
use candle_core::{DType, Device, Tensor};
use std::sync::Arc;

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
    /// What loading did (quantized, or taken from the cache).
    notes: Vec<String>,
}

impl QwenText {
    /// Qwen3 from `files` in `dtype` on `device`; `quantize` quantizes its matrices (through the quantization
    /// cache, like the transformer's), with a note saying so.
    pub fn load(
        files: &ModelFiles,
        max_sequence_length: usize,
        dtype: DType,
        device: &Device,
        quantize: Option<Quant>,
    ) -> Result<Self> {
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
        let tok = FixedTokenizer::load(&files.tokenizer, max_sequence_length, "<|endoftext|>", false)?
            .with_embedding_rows(cfg.vocab_size);
        let depth = OUT_LAYERS.iter().copied().max().unwrap_or(0);
        let sources = &files.text_encoder.weights;
        let cache = quantize.and_then(|q| gguf_cache::path_for("qwen3", sources, q.as_str()));
        let found = gguf_cache::lookup(cache.as_deref());
        let (model, note) = match (quantize, found) {
            (Some(q), gguf_cache::Lookup::Hit(path)) => {
                crate::weights::gguf::header(&path)?;
                let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(&path, device)
                    .map_err(|e| Error::model_from(&path, "unreadable Qwen3 GGUF", e))?;
                let w = Weights::Gguf { vb, dtype, prefix: String::new(), lora: None, bias: false };
                let w = if model_prefixed(&gguf_names(&path)?) { w.pp("model") } else { w };
                let model = Qwen3Encoder::new(&cfg, depth, w)
                    .map_err(|e| Error::model_from(&path, "does not fit text_encoder/config.json", e))?;
                (model, Some(format!("{q} Qwen3 from the quantization cache {}", path.display())))
            }
            (q, found) => {
                let (model, note) = dense(&cfg, depth, sources, dtype, device, q.map(|q| (q, cache)))?;
                match found {
                    gguf_cache::Lookup::Damaged(d) => (model, Some(format!("{d}; {}", note.unwrap_or_default()))),
                    _ => (model, note),
                }
            }
        };
        let notes = note.into_iter().collect();
        Ok(Self { tok, model, max_sequence_length, device: device.clone(), dtype, notes })
    }
}

impl super::TextEncoder for QwenText {
    fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The prompt's embeddings, and a warning if truncation cut text off (negative prompts encode alike).
    fn encode(&mut self, prompt: &str, _: super::EncodeAs) -> Result<(Conditioning, Vec<String>)> {
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

/// Whether Qwen3's tensors sit under `model.` (transformers' `Qwen3ForCausalLM` files) or at the root.
fn model_prefixed(names: &[String]) -> bool {
    names.iter().any(|n| n == "model.embed_tokens.weight")
}

/// Qwen3 from safetensors, its matrices quantized when `quantize` names a format and the cache file to write.
fn dense(
    cfg: &Qwen3Config,
    depth: usize,
    sources: &[std::path::PathBuf],
    dtype: DType,
    device: &Device,
    quantize: Option<(Quant, Option<std::path::PathBuf>)>,
) -> Result<(Qwen3Encoder, Option<String>)> {
    let w = CheckedWeights::open("text_encoder (Qwen3)", sources)?;
    let names = w.names();
    if !model_prefixed(&names) && !names.iter().any(|n| n == "embed_tokens.weight") {
        return Err(Error::model(
            w.first_file(),
            "is not a Qwen3 text encoder (no embed_tokens); FLUX.2 klein needs Qwen3 weights such as \
             qwen_3_4b.safetensors, not CLIP or T5",
        ));
    }
    let stats = Arc::new(QuantStats::default());
    let cache = quantize.as_ref().and_then(|(_, p)| p.as_deref());
    let (sink, why) = crate::engine::load::cache_sink(quantize.is_some(), cache);
    let weights = Weights::Dense(DenseWeights {
        vb: w.var_builder(dtype, device, None),
        cpu: w.var_builder(DType::F32, &Device::Cpu, None),
        quant: quantize.as_ref().map(|(q, _)| q.ggml()),
        stats: stats.clone(),
        sink: sink.clone(),
        lora: None,
        bias: false,
    });
    let weights = if model_prefixed(&names) { weights.pp("model") } else { weights };
    let model = Qwen3Encoder::new(cfg, depth, weights)?;
    w.finish()?;
    let note = quantize.map(|(q, _)| crate::engine::load::quantize_note("Qwen3", q, &stats, sink, why));
    Ok((model, note))
}
