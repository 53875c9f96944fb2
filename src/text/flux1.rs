//! FLUX.1: prompt → `Conditioning` with CLIP's pooled embedding [1,P] and T5's sequence [1,L,D], as diffusers'
//! `FluxPipeline.encode_prompt`.
//!
//! Tokenizers: `tokenizer.json` when the folder has one; otherwise CLIP's `vocab.json` + `merges.txt` (the layout of
//! the real FLUX.1 repos) assembled with transformers' `CLIPTokenizer` rules. Both encoders see the ids padded to a
//! fixed length with no attention mask, as in diffusers.

use super::{special_token, tok_err, tok_fail, Conditioning, FixedTokenizer};
use crate::config::{read_json, Act, ClipConfig};
use crate::error::{Error, Result};
use crate::models::clip::{ClipLora, ClipText};
use crate::models::linear::Quant;
use crate::source::ModelFiles;
use crate::weights::CheckedWeights;
use crate::weights::{gguf_cache, t5_keys};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::path::{Path, PathBuf};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormSeq, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSeq;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// transformers' `CLIPTokenizer` built from `vocab.json` + `merges.txt`.
pub(crate) fn clip_from_vocab_merges(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    if !vocab.is_file() || !merges.is_file() {
        return Err(tok_err(dir, "has neither tokenizer.json nor vocab.json + merges.txt"));
    }
    let unk = special_token(dir, "unk_token", "<|endoftext|>");
    let bos = special_token(dir, "bos_token", "<|startoftext|>");
    let eos = special_token(dir, "eos_token", "<|endoftext|>");
    let (v, m) = BPE::read_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .map_err(|e| tok_fail(dir, "cannot read vocab.json + merges.txt", e))?;
    let bpe = BPE::builder()
        .vocab_and_merges(v, m)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(unk)
        .fuse_unk(false)
        .build()
        .map_err(|e| tok_fail(dir, "cannot build CLIP's BPE", e))?;
    let mut tok = Tokenizer::new(bpe);
    let ws = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ")
        .map_err(|e| tok_fail(dir, "whitespace rule", e))?;
    tok.with_normalizer(Some(NormSeq::new(vec![NFC.into(), ws.into(), Lowercase.into()])));
    let split = Split::new(
        SplitPattern::Regex(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+".into(),
        ),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| tok_fail(dir, "split rule", e))?;
    tok.with_pre_tokenizer(Some(PreSeq::new(vec![split.into(), ByteLevel::new(false, true, true).into()])));
    tok.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
    tok.add_special_tokens(&[AddedToken::from(bos.clone(), true), AddedToken::from(eos.clone(), true)]);
    let id = |t: &str| tok.token_to_id(t).ok_or_else(|| tok_err(dir, format!("{t} is not in vocab.json")));
    let post = RobertaProcessing::new((eos.clone(), id(&eos)?), (bos.clone(), id(&bos)?))
        .trim_offsets(false)
        .add_prefix_space(false);
    tok.with_post_processor(Some(post));
    Ok(tok)
}

/// Both text encoders and their tokenizers, loaded once for any number of prompts (a batch encodes all its
/// prompts, then drops this to free the memory before the transformer runs).
pub struct TextEncoders {
    clip_tok: FixedTokenizer,
    clip: ClipText,
    clip_max: usize,
    t5_tok: FixedTokenizer,
    t5: T5,
    max_sequence_length: usize,
    device: Device,
    dtype: DType,
    /// What loading did that the user should know (T5 quantized, or taken from the cache).
    pub notes: Vec<String>,
}

enum T5 {
    Dense(candle_transformers::models::t5::T5EncoderModel),
    Quant(candle_transformers::models::quantized_t5::T5EncoderModel),
}

/// The component's one weight file, when it is GGUF.
fn gguf_file(weights: &[std::path::PathBuf]) -> Option<&Path> {
    match weights {
        [one] if one.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) => Some(one),
        _ => None,
    }
}

/// T5 from safetensors: dense, or quantized at load (`--quantize`, through the cache).
fn safetensors_t5(
    weights: &[std::path::PathBuf],
    cfg: &serde_json::Value,
    quantize: Option<Quant>,
    dtype: DType,
    device: &Device,
    notes: &mut Vec<String>,
) -> Result<T5> {
    let w = CheckedWeights::open("text_encoder_2 (T5)", weights)?;
    let t5 = match quantize {
        None => T5::Dense(candle_transformers::models::t5::T5EncoderModel::load(
            w.var_builder(dtype, device, None),
            &t5_config(cfg, &w.first_file())?,
        )?),
        Some(q) => {
            let (model, note) = quantized_t5(&w, q, cfg, device)?;
            notes.push(note);
            T5::Quant(model)
        }
    };
    w.finish()?;
    Ok(t5)
}

/// A GGUF T5 encoder. llama.cpp's names (the community files) are rewritten once into the quantization cache
/// under the transformers names candle's T5 reads (the tensors are copied, not re-quantized); files that already
/// use transformers names load as they are.
fn gguf_t5(
    path: &Path,
    cfg: &serde_json::Value,
    device: &Device,
) -> Result<(candle_transformers::models::quantized_t5::T5EncoderModel, String)> {
    let (mut f, content) = crate::weights::gguf::read(path)?;
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    if !t5_keys::is_llama_t5(&names) && !names.iter().any(|n| n.starts_with("encoder.block.0.")) {
        let mut few: Vec<&String> = names.iter().take(3).collect();
        few.sort();
        return Err(Error::model(
            path,
            format!("is not a T5 encoder GGUF (no enc.blk.* or encoder.block.* tensors; it has {few:?}, ...)"),
        ));
    }
    if !t5_keys::is_llama_t5(&names) {
        let gguf = Gguf::File(path.to_path_buf());
        return Ok((load_quantized_t5(&gguf, cfg, path, device)?, format!("T5 from GGUF {}", path.display())));
    }
    let cached = gguf_cache::path_for("t5-gguf", &[path.to_path_buf()], "transformers-names");
    let (gguf, note) = match gguf_cache::lookup(cached.as_deref()) {
        gguf_cache::Lookup::Hit(c) => {
            let note = format!("T5 from the quantization cache {} (renamed from {})", c.display(), path.display());
            (Gguf::File(c), note)
        }
        found => {
            let gated = names.iter().any(|n| n.contains(".ffn_gate."));
            let (mut out, why) = gguf_cache::Writer::create_or_memory(cached.as_deref());
            for name in &names {
                let hf = t5_keys::llama_to_hf(name, gated).ok_or_else(|| {
                    Error::model(path, format!("{name} is not a T5 encoder tensor (llama.cpp names)"))
                })?;
                let t = content
                    .tensor(&mut f, name, &Device::Cpu)
                    .map_err(|e| Error::model_from(path, "unreadable GGUF", e))?;
                out.add(&hf, &t)?;
            }
            let what = format!("T5 GGUF {} renamed for candle", path.display());
            finish_cached(out, why, what, found)?
        }
    };
    Ok((load_quantized_t5(&gguf, cfg, path, device)?, note))
}

/// A GGUF for candle's quantized T5: a checked file, or one built in memory.
enum Gguf {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// A finished cache writer as the GGUF to load, and the note: cached in its file, or (no cache folder, an
/// unwritable or full one) kept in memory with the reason.
fn finish_cached(
    out: gguf_cache::Writer,
    why: Option<String>,
    what: String,
    found: gguf_cache::Lookup,
) -> Result<(Gguf, String)> {
    let damaged = match found {
        gguf_cache::Lookup::Damaged(d) => format!("{d}; "),
        _ => String::new(),
    };
    if why.is_some() {
        let why = why.unwrap_or_default();
        return Ok((Gguf::Bytes(out.finish_bytes()?), format!("{damaged}{what}, kept in memory only ({why})")));
    }
    match out.finish() {
        Ok(p) => {
            let note = format!("{damaged}{what}; cached in {} for the next run", p.display());
            Ok((Gguf::File(p), note))
        }
        Err(e) => Err(e),
    }
}

/// T5 with its 2-D matrices quantized (vectors and the embedding stay f32), from the quantization cache when it
/// holds this checkpoint in this format; otherwise each tensor is read from the mmap, quantized on the CPU and
/// streamed into the cache file (or into memory if there is no writable cache), which candle's quantized T5
/// then loads.
fn quantized_t5(
    w: &CheckedWeights,
    q: Quant,
    cfg: &serde_json::Value,
    device: &Device,
) -> Result<(candle_transformers::models::quantized_t5::T5EncoderModel, String)> {
    let cached = gguf_cache::path_for("t5", w.paths(), q.as_str());
    let (gguf, note) = match gguf_cache::lookup(cached.as_deref()) {
        gguf_cache::Lookup::Hit(c) => {
            let note = format!("{q} T5 from the quantization cache {}", c.display());
            (Gguf::File(c), note)
        }
        found => {
            let (mut out, why) = gguf_cache::Writer::create_or_memory(cached.as_deref());
            write_quantized_t5(w, q.ggml(), &mut out)?;
            finish_cached(out, why, format!("quantized T5 to {q}"), found)?
        }
    };
    Ok((load_quantized_t5(&gguf, cfg, &w.first_file(), device)?, note))
}

fn write_quantized_t5(w: &CheckedWeights, q: GgmlDType, out: &mut gguf_cache::Writer) -> Result<()> {
    for name in w.names() {
        let t = w.load_f32_cpu(&name)?;
        let matrix = t.rank() == 2 && name != "shared.weight" && t.dim(1)? % q.block_size() == 0;
        out.add(&name, &QTensor::quantize(&t, if matrix { q } else { GgmlDType::F32 })?)?;
    }
    Ok(())
}

/// candle's quantized T5 from `gguf`; `source` is the file the user named (for errors).
fn load_quantized_t5(
    gguf: &Gguf,
    cfg: &serde_json::Value,
    source: &Path,
    device: &Device,
) -> Result<candle_transformers::models::quantized_t5::T5EncoderModel> {
    use candle_transformers::quantized_var_builder::VarBuilder;
    let vb = match gguf {
        Gguf::File(p) => {
            crate::weights::gguf::header(p)?;
            VarBuilder::from_gguf(p, device).map_err(|e| Error::model_from(p, "unreadable T5 GGUF", e))?
        }
        Gguf::Bytes(b) => {
            VarBuilder::from_gguf_buffer(b, device).map_err(|e| Error::model_from(source, "unreadable T5 GGUF", e))?
        }
    };
    candle_transformers::models::quantized_t5::T5EncoderModel::load(vb, &t5_config(cfg, source)?)
        .map_err(|e| Error::model_from(source, "does not fit text_encoder_2/config.json", e))
}

/// T5's config in the form one of candle's T5 implementations reads (dense and quantized have their own type).
fn t5_config<T: serde::de::DeserializeOwned>(raw: &serde_json::Value, config: &Path) -> Result<T> {
    serde_json::from_value(raw.clone()).map_err(|e| Error::model_from(config, "invalid T5 config", e))
}

impl TextEncoders {
    /// `quantize`: also quantize T5's matrices (T5-XXL is 4.7 B parameters, the largest part of FLUX.1 after the
    /// transformer).
    pub fn load(
        files: &ModelFiles,
        max_sequence_length: usize,
        dtype: DType,
        device: &Device,
        quantize: Option<Quant>,
        clip_lora: Option<ClipLora>,
    ) -> Result<Self> {
        let clip_cfg: ClipConfig = read_json(&files.text_encoder.config)?;
        clip_cfg.validate(&files.text_encoder.config)?;
        let clip_max = clip_model_max_length(&files.tokenizer).unwrap_or(clip_cfg.max_position_embeddings);
        let clip_tok = FixedTokenizer::load(&files.tokenizer, clip_max, "<|endoftext|>", true)?
            .with_embedding_rows(clip_cfg.vocab_size);
        let act = Act::parse(&clip_cfg.hidden_act, &files.text_encoder.config)?;
        let w = CheckedWeights::open("text_encoder (CLIP)", &files.text_encoder.weights)?;
        let clip = ClipText::new(&clip_cfg, act, w.var_builder(dtype, device, None), clip_lora.as_ref())?;
        w.finish()?;
        let mut notes = Vec::new();
        let (t5_files, t5_tokenizer) = files.t5()?;
        let t5_raw: serde_json::Value = read_json(&t5_files.config)?;
        // Both of candle's T5 config types parse here, so a bad field names the config, not the weights.
        let dense: candle_transformers::models::t5::Config = t5_config(&t5_raw, &t5_files.config)?;
        let _: candle_transformers::models::quantized_t5::Config = t5_config(&t5_raw, &t5_files.config)?;
        let t5_tok = FixedTokenizer::load(t5_tokenizer, max_sequence_length, "<pad>", false)?
            .with_embedding_rows(dense.vocab_size);
        let t5 = match gguf_file(&t5_files.weights) {
            // A GGUF T5 (`--text-encoder-2 t5-v1_1-xxl-encoder-Q8_0.gguf`) is already quantized: used as it is.
            Some(path) => {
                let (model, note) = gguf_t5(path, &t5_raw, device)?;
                notes.push(note);
                T5::Quant(model)
            }
            None => safetensors_t5(&t5_files.weights, &t5_raw, quantize, dtype, device, &mut notes)?,
        };
        Ok(Self { clip_tok, clip, clip_max, t5_tok, t5, max_sequence_length, device: device.clone(), dtype, notes })
    }
}

impl super::TextEncoder for TextEncoders {
    fn notes(&self) -> &[String] {
        &self.notes
    }

    /// CLIP pooled + T5 sequence for `prompt`, and a warning for any text CLIP or T5 cut off (negative prompts
    /// encode alike).
    fn encode(&mut self, prompt: &str, _: super::EncodeAs) -> Result<(Conditioning, Vec<String>)> {
        let mut warnings = Vec::new();
        let (clip_ids, clip_dropped) = self.clip_tok.encode(prompt)?;
        if !clip_dropped.trim().is_empty() {
            warnings.push(format!(
                "CLIP takes {} tokens; this part of the prompt only reaches T5: {:?}",
                self.clip_max,
                clip_dropped.trim()
            ));
        }
        let pooled = self.clip.pooled(&Tensor::new(clip_ids.as_slice(), &self.device)?.unsqueeze(0)?)?;
        let (t5_ids, t5_dropped) = self.t5_tok.encode(prompt)?;
        if !t5_dropped.trim().is_empty() {
            warnings.push(format!(
                "the prompt is longer than --max-sequence-length {} T5 tokens; truncated: {:?}",
                self.max_sequence_length,
                t5_dropped.trim()
            ));
        }
        let ids = Tensor::new(t5_ids.as_slice(), &self.device)?.unsqueeze(0)?;
        let t5 = match &mut self.t5 {
            T5::Dense(m) => m.forward(&ids)?,
            T5::Quant(m) => m.forward(&ids)?.to_dtype(self.dtype)?,
        };
        Ok((Conditioning { txt: t5, pooled: Some(pooled) }, warnings))
    }
}

/// `model_max_length` from the CLIP tokenizer's config (77 for FLUX.1), which diffusers pads to.
fn clip_model_max_length(dir: &Path) -> Option<usize> {
    let v: serde_json::Value = read_json(&dir.join("tokenizer_config.json")).ok()?;
    let n = v.get("model_max_length")?.as_f64()?;
    (1.0..1e6).contains(&n).then_some(n as usize)
}
