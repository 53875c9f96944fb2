//! Stable Diffusion's prompt encoding, as `StableDiffusion[XL]Pipeline.encode_prompt`: ids padded to 77 tokens,
//! no attention mask.
//!
//! - SD 1.x/2.x: the encoder's last hidden state (final LayerNorm); `clip_skip` N takes the state N layers
//!   earlier, through the final LayerNorm too.
//! - SDXL: each encoder's penultimate hidden state (no final norm; `clip_skip` N goes N layers further back),
//!   concatenated, and the second encoder's projected pooled output; an absent negative prompt is zeros.
//!
//! Negative prompts are encoded without `clip_skip`, as diffusers does.

use super::{Conditioning, EncodeAs, FixedTokenizer, TextEncoder};
use crate::config::sd::SdConfigs;
use crate::config::{Act, ClipConfig};
use crate::error::{Error, Result};
use crate::models::clip::{ClipLora, ClipText};
use crate::source::sd::SdFiles;
use crate::source::Component;
use crate::weights::flux_keys::Source;
use crate::weights::lora::sd::TEXT_ENCODER_2;
use crate::weights::lora::{LoraSet, ScaleCell};
use crate::weights::{CheckedWeights, NameMap};
use candle_core::{DType, Device, Tensor};
use std::path::Path;
use std::sync::Arc;

struct Encoder {
    tok: FixedTokenizer,
    clip: ClipText,
    max_len: usize,
}

impl Encoder {
    /// `prefix`: where an original single file keeps the encoder (transformers' names after it).
    fn load(
        cfg: &ClipConfig,
        c: &Component,
        tokenizer: &Path,
        name: &str,
        prefix: Option<String>,
        (dtype, dev): (DType, &Device),
        lora: Option<&ClipLora>,
    ) -> Result<Self> {
        let max_len = cfg.max_position_embeddings.min(77);
        let tok = FixedTokenizer::load(tokenizer, max_len, "<|endoftext|>", true)?.with_embedding_rows(cfg.vocab_size);
        let act = Act::parse(&cfg.hidden_act, &c.config)?;
        let w = CheckedWeights::open(name, &c.weights)?;
        let map = prefix.map(|p| Arc::new(move |n: &str| Source::One(format!("{p}{n}"))) as NameMap);
        let clip = ClipText::new(cfg, act, w.var_builder(dtype, dev, map), lora)?;
        w.finish()?;
        Ok(Self { tok, clip, max_len })
    }

    /// The state after `depth − skip` layers, with a warning when `skip` leaves none.
    fn layers_for(&self, skip: usize) -> Result<usize> {
        self.clip.depth().checked_sub(skip).filter(|&n| n > 0).ok_or_else(|| {
            Error::Usage(format!(
                "--clip-skip {skip} is more than this text encoder's {} layers allow",
                self.clip.depth()
            ))
        })
    }
}

/// The text encoders of an SD pipeline.
pub struct SdText {
    encoders: Vec<Encoder>,
    xl: bool,
    device: Device,
    notes: Vec<String>,
}

impl SdText {
    /// `lora`: the run's LoRAs, when they change CLIP (side paths in each encoder).
    pub fn load(
        files: &SdFiles,
        cfg: &SdConfigs,
        dtype: DType,
        device: &Device,
        lora: Option<(&LoraSet, ScaleCell)>,
    ) -> Result<Self> {
        let clip_lora =
            |prefix: &'static str| lora.as_ref().map(|(set, scale)| ClipLora { set, scale: scale.clone(), prefix });
        let mut encoders = vec![Encoder::load(
            &cfg.clip,
            &files.text_encoder,
            &files.tokenizer,
            "text_encoder (CLIP)",
            files.original.clip.clone(),
            (dtype, device),
            clip_lora("").as_ref(),
        )?];
        if let (Some(c2), Some(f2), Some(t2)) = (&cfg.clip_2, &files.text_encoder_2, &files.tokenizer_2) {
            let lora = clip_lora(TEXT_ENCODER_2);
            encoders.push(Encoder::load(c2, f2, t2, "text_encoder_2 (CLIP)", None, (dtype, device), lora.as_ref())?);
        }
        Ok(Self { xl: encoders.len() == 2, encoders, device: device.clone(), notes: Vec::new() })
    }

    fn ids(&self, e: &Encoder, prompt: &str, warnings: &mut Vec<String>) -> Result<Tensor> {
        let (ids, dropped) = e.tok.encode(prompt)?;
        if !dropped.trim().is_empty() && !warnings.iter().any(|w| w.contains(dropped.trim())) {
            warnings.push(format!(
                "CLIP takes {} tokens; this part of the prompt is cut off: {:?}",
                e.max_len,
                dropped.trim()
            ));
        }
        Ok(Tensor::new(ids.as_slice(), &self.device)?.unsqueeze(0)?)
    }

    /// SD 1.x/2.x: the last hidden state (or `skip` layers earlier), through the final norm.
    fn encode_sd(&self, prompt: &str, skip: usize, warnings: &mut Vec<String>) -> Result<Conditioning> {
        let e = &self.encoders[0];
        let ids = self.ids(e, prompt, warnings)?;
        let txt = e.clip.final_norm(&e.clip.hidden(&ids, e.layers_for(skip)?)?)?;
        Ok(Conditioning { txt, pooled: None })
    }

    /// SDXL: the penultimate states (or `skip` layers further back) side by side, and the second encoder's
    /// projected pooled output.
    fn encode_xl(&self, prompt: &str, skip: usize, warnings: &mut Vec<String>) -> Result<Conditioning> {
        let mut states = Vec::with_capacity(2);
        let mut pooled = None;
        for e in &self.encoders {
            let ids = self.ids(e, prompt, warnings)?;
            states.push(e.clip.hidden(&ids, e.layers_for(skip + 1)?)?);
            let full = e.clip.final_norm(&e.clip.hidden(&ids, e.clip.depth())?)?;
            if let Some(p) = e.clip.project(&e.clip.pool(&ids, &full)?)? {
                pooled.get_or_insert(p);
            }
        }
        let pooled = pooled.ok_or_else(|| {
            Error::Usage(
                "SDXL's second text encoder has no text_projection weights (CLIPTextModelWithProjection)".into(),
            )
        })?;
        Ok(Conditioning { txt: Tensor::cat(&states, 2)?, pooled: Some(pooled) })
    }
}

impl TextEncoder for SdText {
    fn notes(&self) -> &[String] {
        &self.notes
    }

    fn encode(&mut self, prompt: &str, how: EncodeAs) -> Result<(Conditioning, Vec<String>)> {
        let mut warnings = Vec::new();
        let skip = if how.negative { 0 } else { how.clip_skip.unwrap_or(0) };
        let cond = if self.xl {
            self.encode_xl(prompt, skip, &mut warnings)?
        } else {
            self.encode_sd(prompt, skip, &mut warnings)?
        };
        if how.zeros {
            let pooled = cond.pooled.as_ref().map(Tensor::zeros_like).transpose()?;
            return Ok((Conditioning { txt: cond.txt.zeros_like()?, pooled }, Vec::new()));
        }
        Ok((cond, warnings))
    }
}
