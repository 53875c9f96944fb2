//! Model files → loaded models. Detects how the transformer checkpoint names its tensors (diffusers or Black
//! Forest Labs, FLUX.1 or FLUX.2, dev or schnell) and builds the VAE and transformer through the checked weights,
//! so that every missing or mis-shaped tensor is named in one message.

use crate::config::{Family, TransformerConfig, VaeConfig};
use crate::engine::flux2::BnStats;
use crate::error::{Error, Result};
use crate::models::flux2::Flux2Transformer;
use crate::models::linear::{gguf_names, DenseWeights, LoraApply, Quant, QuantStats, Weights};
use crate::models::transformer::{FluxTransformer, MLP_PROBE};
use crate::models::vae::AutoencoderKl;
use crate::models::Denoiser;
use crate::source::ModelFiles;
use crate::weights::flux_keys::{self, Layout, Source};
use crate::weights::gguf_cache::{self, Sink};
use crate::weights::layers;
use crate::weights::{vae_keys, CheckedWeights, NameMap};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// What the transformer's tensor names say about it.
#[derive(Debug, Clone)]
pub struct TransformerKind {
    pub layout: Layout,
    pub family: Family,
    /// It has a guidance embedder (dev-like) or not (schnell-like).
    pub guidance_embeds: bool,
    /// The stored input width of the image embedder (FLUX.1): Fill and Control transformers take more than the
    /// latents. None when the file does not say.
    pub in_channels: Option<usize>,
}

/// The transformer file when it is GGUF.
pub fn gguf_file(files: &ModelFiles) -> Option<PathBuf> {
    let w = &files.transformer.weights;
    (w.len() == 1 && w[0].extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))).then(|| w[0].clone())
}

/// Reads the transformer's tensor names: its layout, and dev or schnell (a guidance embedder or none), which
/// may differ from the folder's config when `--transformer` swaps the weights.
pub fn inspect_transformer(files: &ModelFiles, cfg: &TransformerConfig) -> Result<TransformerKind> {
    let names = match gguf_file(files) {
        Some(path) => gguf_names(&path)?,
        None => CheckedWeights::open("transformer", &files.transformer.weights)?.names(),
    };
    let layout = flux_keys::transformer_layout(&names).ok_or_else(|| Error::Tensors {
        component: "transformer".into(),
        file: None,
        detail: format!(
            "{} has neither diffusers (transformer_blocks.0.attn.to_q) nor Black Forest Labs \
             (double_blocks.0.img_attn.qkv) FLUX tensor names",
            files.transformer.weights.first().map(|p| p.display().to_string()).unwrap_or_default()
        ),
    })?;
    let family = flux_keys::transformer_family(&names);
    if family != files.family {
        return Err(Error::model(
            files.transformer.weights.first().cloned().unwrap_or_default(),
            format!(
                "is a {family} transformer but the model folder is {}; use a {} transformer (or a {family} --model)",
                files.family, files.family
            ),
        ));
    }
    let config = files.transformer.config.as_path();
    for (field, claimed, containers) in [
        ("num_layers", cfg.num_layers, &["transformer_blocks", "double_blocks"]),
        ("num_single_layers", cfg.num_single_layers, &["single_transformer_blocks", "single_blocks"]),
    ] {
        let weights = files.transformer.weights.first().map_or(Path::new(""), |p| p.as_path());
        let claim = layers::Claim { component: "transformer", config, field, claimed, containers, weights };
        layers::check(&claim, &names, false)?;
    }
    let embedder = if family == Family::Flux2 { "time_guidance_embed" } else { "time_text_embed" };
    let probe = match &layout {
        Layout::Diffusers => format!("{embedder}.guidance_embedder.linear_1.weight"),
        Layout::Bfl { prefix } => format!("{prefix}guidance_in.in_layer.weight"),
    };
    let in_channels = if family == Family::Flux1 { stored_in_channels(files, &layout)? } else { None };
    Ok(TransformerKind { guidance_embeds: names.contains(&probe), layout, family, in_channels })
}

/// The columns of the stored image embedder (`img_in` / `x_embedder`).
fn stored_in_channels(files: &ModelFiles, layout: &Layout) -> Result<Option<usize>> {
    const PROBE: &str = "img_in.weight";
    if let Some(path) = gguf_file(files) {
        let (_, c) = crate::weights::gguf::read(&path)?;
        let prefix = match layout {
            Layout::Bfl { prefix } => prefix.clone(),
            Layout::Diffusers => String::new(),
        };
        let info = [format!("{prefix}{PROBE}"), "x_embedder.weight".into()]
            .iter()
            .find_map(|n| c.tensor_infos.get(n).map(|t| t.shape.dims().to_vec()));
        return Ok(info.filter(|d| d.len() == 2).map(|d| d[1]));
    }
    let tw = CheckedWeights::open("transformer", &files.transformer.weights)?;
    let map: NameMap = Arc::new(flux_keys::transformer_map(layout, Family::Flux1));
    Ok(match map(PROBE) {
        Source::One(name) => tw.shape_of(&name).filter(|s| s.len() == 2).map(|s| s[1]),
        _ => None,
    })
}

/// The VAE; Black Forest Labs' `ae.safetensors` names are mapped to the diffusers ones the model asks for.
pub fn vae(files: &ModelFiles, cfg: &VaeConfig, dtype: DType, device: &Device) -> Result<AutoencoderKl> {
    let w = CheckedWeights::open("vae", &files.vae.weights)?;
    check_vae_family(&w, files)?;
    let vae = AutoencoderKl::new(cfg, cfg.activation(), w.var_builder(dtype, device, vae_map(&w, cfg)))?;
    w.finish()?;
    Ok(vae)
}

/// The name map for a BFL-named VAE file (diffusers files need none).
fn vae_map(w: &CheckedWeights, cfg: &VaeConfig) -> Option<NameMap> {
    vae_keys::bfl_prefix(&w.names()).map(|prefix| {
        let blocks = cfg.block_out_channels.len();
        Arc::new(move |n: &str| vae_keys::diffusers_to_bfl(n, blocks, &prefix)) as NameMap
    })
}

/// The VAE and text encoder files belong to the model's family (read from their tensor names, before anything
/// loads): a `--vae` or `--text-encoder` of the other family is one clear error.
pub fn check_components(files: &ModelFiles, vae: &VaeConfig) -> Result<()> {
    let vw = CheckedWeights::open("vae", &files.vae.weights)?;
    check_vae_family(&vw, files)?;
    let config = files.vae.config.as_path();
    let claimed = vae.block_out_channels.len();
    let weights = vw.first_file();
    let containers = &["down_blocks", "down"];
    let claim =
        layers::Claim { component: "vae", config, field: "block_out_channels", claimed, containers, weights: &weights };
    layers::check(&claim, &vw.names(), false)?;
    check_t5_layers(files)?;
    let te = CheckedWeights::open("text_encoder", &files.text_encoder.weights)?;
    let names = te.names();
    let qwen = names.iter().any(|n| n.ends_with("embed_tokens.weight"));
    let clip = names.iter().any(|n| n.ends_with("embeddings.token_embedding.weight"));
    let wrong = match files.family {
        Family::Flux1 if qwen => Some("a Qwen3 text encoder (FLUX.2); FLUX.1 needs CLIP-L (e.g. clip_l.safetensors)"),
        Family::Flux2 if clip => {
            Some("a CLIP text encoder (FLUX.1); FLUX.2 klein needs Qwen3 (e.g. qwen_3_4b.safetensors)")
        }
        _ => None,
    };
    if let Some(msg) = wrong {
        return Err(Error::model(te.first_file(), format!("is {msg}")));
    }
    if files.family == Family::Flux1 {
        let clip: crate::config::ClipConfig = crate::config::read_json(&files.text_encoder.config)?;
        let config = files.text_encoder.config.as_path();
        let claimed = clip.num_hidden_layers;
        let weights = te.first_file();
        let claim = layers::Claim {
            component: "text_encoder (CLIP)",
            config,
            field: "num_hidden_layers",
            claimed,
            containers: &["layers"],
            weights: &weights,
        };
        layers::check(&claim, &names, false)?;
    }
    Ok(())
}

/// T5's `num_layers` against the blocks of its weights (safetensors or GGUF, transformers or llama.cpp names).
fn check_t5_layers(files: &ModelFiles) -> Result<()> {
    let Some(t5) = &files.text_encoder_2 else { return Ok(()) };
    let cfg: serde_json::Value = crate::config::read_json(&t5.config)?;
    let Some(claimed) = cfg.get("num_layers").and_then(|v| v.as_u64()) else { return Ok(()) };
    let names = match t5.weights.as_slice() {
        [one] if one.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) => {
            crate::weights::gguf::header(one)?.tensors.into_iter().map(|t| t.name).collect()
        }
        _ => CheckedWeights::open("text_encoder_2", &t5.weights)?.names(),
    };
    let claim = layers::Claim {
        component: "text_encoder_2 (T5)",
        config: &t5.config,
        field: "num_layers",
        claimed: claimed as usize,
        containers: &["block", "blk"],
        weights: t5.weights.first().map_or(Path::new(""), |p| p.as_path()),
    };
    layers::check(&claim, &names, false)
}

/// A FLUX.2 VAE has batch-norm statistics, a FLUX.1 VAE none: a `--vae` of the other family is named as such.
fn check_vae_family(w: &CheckedWeights, files: &ModelFiles) -> Result<()> {
    let flux2 = w.names().iter().any(|n| n.ends_with("bn.running_mean"));
    let family = if flux2 { Family::Flux2 } else { Family::Flux1 };
    if family == files.family {
        return Ok(());
    }
    Err(Error::model(
        w.first_file(),
        format!(
            "is a {family} VAE but the model is {}; use the model's own VAE ({})",
            files.family,
            if files.family == Family::Flux2 { "flux2_ae.safetensors" } else { "ae.safetensors" }
        ),
    ))
}

/// FLUX.2: the VAE's batch-norm statistics (`bn.running_mean`, `bn.running_var`, read in f32) as the pipeline
/// applies them to patchified latents.
pub fn vae_bn(files: &ModelFiles, cfg: &VaeConfig, dtype: DType, device: &Device) -> Result<BnStats> {
    let w = CheckedWeights::open("vae", &files.vae.weights)?;
    check_vae_family(&w, files)?;
    let vb = w.var_builder(DType::F32, device, vae_map(&w, cfg));
    let c = 4 * cfg.latent_channels;
    let (mean, var) = (vb.get(c, "bn.running_mean")?, vb.get(c, "bn.running_var")?);
    w.finish()?;
    Ok(BnStats::new(&mean, &var, cfg.batch_norm_eps, dtype)?)
}

/// A loaded transformer and, when it was quantized at load, a note saying how.
pub struct LoadedTransformer {
    pub model: Denoiser,
    pub note: Option<String>,
}

/// How the transformer is loaded.
pub struct TransformerOptions {
    pub family: Family,
    pub quantize: Option<Quant>,
    /// LoRA adapters: merged into dense layers or added as side paths.
    pub lora: Option<Arc<LoraApply>>,
    pub dtype: DType,
    pub device: Device,
}

/// The transformer from safetensors (optionally quantized at load, or from the quantization cache) or GGUF.
pub fn transformer(
    files: &ModelFiles,
    cfg: &TransformerConfig,
    layout: &Layout,
    o: &TransformerOptions,
) -> Result<LoadedTransformer> {
    match gguf_file(files) {
        Some(path) => gguf_transformer(&path, cfg, layout, o),
        None => dense_transformer(files, cfg, layout, o),
    }
}

/// Feed-forward width as stored (rows of the first MLP matrix); FLUX.1's 4 × inner width when the checkpoint
/// lacks it (the checked loader then names the missing tensor).
fn mlp_width(stored_rows: Option<usize>, cfg: &TransformerConfig) -> usize {
    stored_rows.unwrap_or(4 * cfg.inner_dim())
}

fn gguf_transformer(
    path: &std::path::Path,
    cfg: &TransformerConfig,
    layout: &Layout,
    o: &TransformerOptions,
) -> Result<LoadedTransformer> {
    let Layout::Bfl { prefix } = layout else {
        return Err(Error::model(path, "GGUF transformers must use Black Forest Labs tensor names"));
    };
    crate::weights::gguf::header(path)?;
    let vb = candle_transformers::quantized_var_builder::VarBuilder::from_gguf(path, &o.device)
        .map_err(|e| Error::model_from(path, "unreadable GGUF", e))?;
    let vb = if prefix.is_empty() { vb } else { vb.pp(prefix.trim_end_matches('.')) };
    let mlp = mlp_width(vb.get_no_shape(MLP_PROBE).ok().map(|w| w.shape().dims()[0]), cfg);
    let bias = o.family == Family::Flux1;
    let w = Weights::Gguf { vb, dtype: o.dtype, prefix: String::new(), lora: o.lora.clone(), bias };
    let model =
        build(cfg, mlp, w, o.family).map_err(|e| Error::model_from(path, "does not fit transformer/config.json", e))?;
    Ok(LoadedTransformer { model, note: None })
}

/// The family's model over `w` (BFL names); `mlp` is FLUX.1's stored feed-forward width.
fn build(cfg: &TransformerConfig, mlp: usize, w: Weights, family: Family) -> candle_core::Result<Denoiser> {
    Ok(match family {
        Family::Flux1 => Denoiser::Flux1(FluxTransformer::new(cfg, mlp, w)?),
        Family::Flux2 => Denoiser::Flux2(Flux2Transformer::new(cfg, w)?),
        other => candle_core::bail!("{other} models have a UNet, not a FLUX transformer"),
    })
}

fn dense_transformer(
    files: &ModelFiles,
    cfg: &TransformerConfig,
    layout: &Layout,
    o: &TransformerOptions,
) -> Result<LoadedTransformer> {
    let cache = o.quantize.and_then(|q| gguf_cache::path_for("transformer", &files.transformer.weights, q.as_str()));
    let mut damaged = None;
    match (o.quantize, gguf_cache::lookup(cache.as_deref())) {
        (Some(q), gguf_cache::Lookup::Hit(path)) => {
            let mut loaded = gguf_transformer(&path, cfg, &Layout::Bfl { prefix: String::new() }, o)?;
            loaded.note = Some(format!(
                "{q} transformer from the quantization cache {} (`flux-img2img cache clear` removes it)",
                path.display()
            ));
            return Ok(loaded);
        }
        (_, gguf_cache::Lookup::Damaged(note)) => damaged = Some(note),
        _ => {}
    }
    let tw = CheckedWeights::open("transformer", &files.transformer.weights)?;
    // The model reads BFL names; a diffusers checkpoint is translated (and its q/k/v concatenated).
    let map: NameMap = Arc::new(flux_keys::transformer_map(layout, o.family));
    let stats = Arc::new(QuantStats::default());
    let (sink, why) = cache_sink(o.quantize.is_some(), cache.as_deref());
    let w = Weights::Dense(DenseWeights {
        vb: tw.var_builder(o.dtype, &o.device, Some(map.clone())),
        cpu: tw.var_builder(DType::F32, &Device::Cpu, Some(map.clone())),
        quant: o.quantize.map(Quant::ggml),
        stats: stats.clone(),
        sink: sink.clone(),
        lora: o.lora.clone(),
        bias: o.family == Family::Flux1,
    });
    let model = build(cfg, mlp_width(stored_mlp_rows(&tw, &map), cfg), w, o.family)?;
    tw.finish()?;
    let note = o.quantize.map(|q| quantize_note("transformer", q, &stats, sink, why));
    let note = match (damaged, note) {
        (Some(d), Some(n)) => Some(format!("{d}; {n}")),
        (d, n) => n.or(d),
    };
    Ok(LoadedTransformer { model, note })
}

/// Rows of the first MLP matrix as the checkpoint stores it.
fn stored_mlp_rows(tw: &CheckedWeights, map: &NameMap) -> Option<usize> {
    match map(MLP_PROBE) {
        Source::One(name) => tw.shape_of(&name).map(|s| s[0]),
        _ => None,
    }
}

/// The feed-forward width of the FLUX.1 transformer in `files` (the LoRA shape check needs it before loading).
pub fn mlp_rows(files: &ModelFiles, cfg: &TransformerConfig, layout: &Layout) -> Result<usize> {
    if let Some(path) = gguf_file(files) {
        let (_, c) = crate::weights::gguf::read(&path)?;
        let prefix = match layout {
            Layout::Bfl { prefix } => prefix.as_str(),
            Layout::Diffusers => "",
        };
        let rows = c.tensor_infos.get(&format!("{prefix}{MLP_PROBE}")).map(|t| t.shape.dims()[0]);
        return Ok(mlp_width(rows, cfg));
    }
    let tw = CheckedWeights::open("transformer", &files.transformer.weights)?;
    let map: NameMap = Arc::new(flux_keys::transformer_map(layout, Family::Flux1));
    Ok(mlp_width(stored_mlp_rows(&tw, &map), cfg))
}

/// Where quantized tensors are streamed while a model is built (`quantize`): the cache file at `path`, or none —
/// the model is then quantized in memory only — with the reason.
pub(crate) fn cache_sink(quantize: bool, path: Option<&Path>) -> (Option<Sink>, Option<String>) {
    if !quantize {
        return (None, None);
    }
    let (writer, why) = match path.map(gguf_cache::Writer::create) {
        Some(Ok(w)) => (Some(w), None),
        Some(Err(e)) => (None, Some(e.one_line())),
        None => (None, Some(format!("no cache folder {}", gguf_cache::dir_shown()))),
    };
    (Some(Arc::new(Mutex::new(writer))), why)
}

/// What quantizing `what` did, and where its result was cached (or why it was not).
pub(crate) fn quantize_note(
    what: &str,
    q: Quant,
    stats: &QuantStats,
    sink: Option<Sink>,
    why: Option<String>,
) -> String {
    let (n, f) = (stats.requested.load(Ordering::Relaxed), stats.fallback.load(Ordering::Relaxed));
    let fallback =
        if f > 0 { format!(" ({f} narrower than 256 columns to the nearest 32-block format)") } else { String::new() };
    let writer = sink.and_then(|s| s.lock().expect("cache lock").take());
    let cached = match writer.map(gguf_cache::Writer::finish) {
        Some(Ok(path)) => format!("; cached in {} for the next run", path.display()),
        Some(Err(e)) => format!("; kept in memory only: {}", e.one_line()),
        None => format!("; kept in memory only ({})", why.unwrap_or_else(|| "not cached".into())),
    };
    format!("quantized {n} {what} matrices to {q}{fallback}{cached}")
}

/// A FLUX.1 ControlNet (InstantX, Union or XLabs layout) from a diffusers folder (`config.json` +
/// `diffusion_pytorch_model` safetensors), its config checked against the base transformer's and the requested Union
/// mode first.
pub fn controlnet(
    dir: &Path,
    base: &TransformerConfig,
    mode: Option<&str>,
    dtype: DType,
    device: &Device,
) -> Result<crate::models::controlnet::FluxControlNet> {
    let file = dir.join("config.json");
    let cfg = crate::engine::controlnet::read_config(&file)?;
    crate::engine::controlnet::check_config(&cfg, base, mode, &file)?;
    let files = crate::source::weight_files(dir, "diffusion_pytorch_model")?;
    let cw = CheckedWeights::open("controlnet", &files)?;
    // Its transformer parts have the transformer's diffusers names; `controlnet_*` tensors pass through as stored.
    let map: NameMap = Arc::new(flux_keys::transformer_map(&Layout::Diffusers, Family::Flux1));
    let w = Weights::Dense(DenseWeights {
        vb: cw.var_builder(dtype, device, Some(map.clone())),
        cpu: cw.var_builder(DType::F32, &Device::Cpu, Some(map.clone())),
        quant: None,
        stats: Arc::new(QuantStats::default()),
        sink: None,
        lora: None,
        bias: true,
    });
    let mlp = mlp_width(stored_mlp_rows(&cw, &map), &cfg.base);
    let net = crate::models::controlnet::FluxControlNet::new(&cfg, mlp, w)
        .map_err(|e| Error::model_from(&file, "the ControlNet's weights do not fit its config.json", e))?;
    cw.finish()?;
    Ok(net)
}
