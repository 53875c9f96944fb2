//! FLUX.1's structure controls beyond the Control transformers' channels: each ControlNet's control input (drawn
//! first, as `FluxControlNet*Pipeline` do) and the ControlNets loaded beside the transformer; and the Control LoRAs
//! (FLUX.1-Canny/Depth-dev-lora), which widen the transformer's input to make a dev model a Control one.

use super::Flux;
use crate::config::{Family, ModelConfigs};
use crate::engine::family::Env;
use crate::engine::load;
use crate::engine::plan::Plan;
use crate::engine::request::Request;
use crate::engine::{control, controlnet};
use crate::error::{Error, Result};
use crate::image_io;
use crate::rng;
use image::RgbImage;

impl Flux {
    /// The input width a control LoRA of `req` widens the transformer to (its img_in pair reads the noise and the
    /// control latents), when one does. `fetched`: LoRAs named by Hub id are looked up too (fetched if need be; the
    /// session has them once it loaded them); otherwise only local files are read.
    pub(super) fn control_lora_width(&self, req: &Request, fetched: bool) -> Option<usize> {
        let base = self.base_in_channels;
        req.loras
            .iter()
            .filter_map(|s| match (s.path.is_file(), fetched) {
                (true, _) => crate::weights::lora::img_in_width(&s.path),
                (false, true) => {
                    crate::weights::lora::img_in_width(&crate::source::hub::lora_file(&s.path, false).ok()?)
                }
                (false, false) => None,
            })
            .find(|&w| w != base && w % base == 0)
    }

    /// The configs of a transformer a control LoRA widens to `width` inputs, refused where the widened layer
    /// cannot be built (GGUF files, `--quantize`'s cache).
    pub(super) fn control_lora_configs(&self, req: &Request, width: usize) -> Result<ModelConfigs> {
        if self.configs.family != Family::Flux1 {
            return Err(Error::Usage("control LoRAs are for FLUX.1 dev; this is a FLUX.2 model".into()));
        }
        if load::gguf_file(&self.files).is_some() || req.quantize.is_some() {
            return Err(Error::Usage(
                "a control LoRA widens the transformer's input layer: give a safetensors transformer, without \
                 --quantize"
                    .into(),
            ));
        }
        let mut configs = self.configs.clone();
        set_input_width(&mut configs, width);
        Ok(configs)
    }

    /// Each ControlNet's control image at the working size, encoded (a posterior sample, the generator's next
    /// draw) and packed, with its settings.
    pub(super) fn controlnet_inputs(
        &mut self,
        env: &Env,
        req: &Request,
        input: Option<&RgbImage>,
        plan: &Plan,
        gen: &mut dyn rng::NoiseSource,
    ) -> Result<Vec<controlnet::Active>> {
        let mut out = Vec::with_capacity(req.controlnets.len());
        for spec in &req.controlnets {
            let dir = self.controlnet_dir(&spec.model)?;
            let cfg = controlnet::read_config(&dir.join("config.json"))?;
            let img = control::image_of(&spec.image, req, input, plan, env, &mut self.depth)?;
            // XLabs ControlNets take the pixels (diffusers encodes nothing for them, so nothing is drawn).
            let pixels = cfg.conditioning_embedding_channels.is_some();
            let cond = match pixels {
                true => image_io::to_tensor(&img, env.device)?.to_dtype(env.dtype)?,
                false => self.encoded(env, &img, gen)?,
            };
            out.push(controlnet::Active {
                dir,
                cond,
                pixels,
                blocks: (cfg.base.num_layers, cfg.base.num_single_layers),
                mode: spec.mode.as_deref().map(controlnet::mode_index).transpose()?,
                scale: spec.scale,
                start: spec.start,
                end: spec.end,
            });
        }
        Ok(out)
    }

    /// The local folder of a `--controlnet` value, found (or fetched) once per session.
    fn controlnet_dir(&mut self, model: &std::path::Path) -> Result<std::path::PathBuf> {
        if let Some(dir) = self.controlnet_dirs.get(model) {
            return Ok(dir.clone());
        }
        let dir = controlnet::locate(model)?;
        self.controlnet_dirs.insert(model.to_path_buf(), dir.clone());
        Ok(dir)
    }

    /// The request's ControlNets, each folder loaded once and kept while requests name it.
    pub(super) fn load_controlnets(&mut self, env: &Env, req: &Request) -> Result<()> {
        let mut dirs: Vec<(std::path::PathBuf, Option<&str>)> = Vec::new();
        for spec in &req.controlnets {
            let dir = self.controlnet_dir(&spec.model)?;
            if !dirs.iter().any(|(d, _)| *d == dir) {
                dirs.push((dir, spec.mode.as_deref()));
            }
        }
        self.controlnets.retain(|l| dirs.iter().any(|(d, _)| *d == l.dir));
        for (dir, mode) in dirs {
            if self.controlnets.iter().any(|l| l.dir == dir) {
                continue;
            }
            let net = load::controlnet(&dir, &self.configs.transformer, mode, env.dtype, env.device)?;
            env.note(&format!("ControlNet {} loaded", dir.display()));
            self.controlnets.push(controlnet::Loaded { dir, net });
        }
        Ok(())
    }
}

/// A FLUX.1 transformer taking `width` input features per token; its output stays the latent's 4 × channels.
pub(super) fn set_input_width(configs: &mut ModelConfigs, width: usize) {
    configs.transformer.in_channels = width;
    configs.transformer.out_channels = Some(4 * configs.vae.latent_channels);
}
