//! Model-level parity with diffusers: tiny-dev's transformer with the tiny InstantX and Union ControlNets of
//! scripts/make_controlnet_fixtures.py, same inputs, f32 on the CPU. Each check also states how far the feature
//! moves diffusers' own output (the sensitivity stored with the vectors), which must be far below the bar.

use super::{ControlInput, FluxControlNet};
use crate::config::{read_json, ControlNetConfig, TransformerConfig};
use crate::models::hooks::{NoCache, Residuals};
use crate::models::linear::{DenseWeights, QuantStats, Weights};
use crate::models::transformer::{FluxTransformer, Inputs};
use crate::weights::flux_keys::{transformer_map, Layout};
use crate::weights::{CheckedWeights, NameMap};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const BAR_DB: f64 = 45.0;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn weights(dir: &Path) -> (CheckedWeights, Weights) {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    files.sort();
    let cw = CheckedWeights::open("transformer", &files).unwrap();
    let map: NameMap = Arc::new(transformer_map(&Layout::Diffusers, crate::config::Family::Flux1));
    let w = Weights::Dense(DenseWeights {
        lora: None,
        vb: cw.var_builder(DType::F32, &Device::Cpu, Some(map.clone())),
        cpu: cw.var_builder(DType::F32, &Device::Cpu, Some(map)),
        quant: None,
        stats: Arc::new(QuantStats::default()),
        sink: None,
        bias: true,
    });
    (cw, w)
}

fn controlnet(name: &str) -> FluxControlNet {
    let dir = fixtures().join(name);
    let cfg: ControlNetConfig = read_json(&dir.join("config.json")).unwrap();
    let (cw, w) = weights(&dir);
    let net = FluxControlNet::new(&cfg, 4 * cfg.base.inner_dim(), w).unwrap();
    cw.finish().unwrap();
    net
}

/// PSNR of `a` against `reference`, the reference's value range as the peak (as the fixture script measures).
fn psnr(a: &Tensor, reference: &Tensor) -> f64 {
    let mse = (a - reference).unwrap().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap() as f64;
    let peak = (reference.max_all().unwrap().to_scalar::<f32>().unwrap()
        - reference.min_all().unwrap().to_scalar::<f32>().unwrap()) as f64;
    10.0 * (peak * peak / mse).log10()
}

struct Case {
    v: HashMap<String, Tensor>,
    meta: HashMap<String, String>,
    base: FluxTransformer,
}

impl Case {
    fn load() -> Self {
        let path = fixtures().join("controlnet-vectors.safetensors");
        let v = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = st_meta.metadata().clone().unwrap_or_default();
        let dir = fixtures().join("tiny-dev/transformer");
        let cfg: TransformerConfig = read_json(&dir.join("config.json")).unwrap();
        let (_cw, w) = weights(&dir);
        let base = FluxTransformer::new(&cfg, 4 * cfg.inner_dim(), w).unwrap();
        Self { v, meta, base }
    }

    fn t(&self, k: &str) -> &Tensor {
        &self.v[k]
    }

    /// The sensitivity the fixture script measured (dB); asserts it is far below the bar.
    fn sensitivity(&self, key: &str) -> f64 {
        let db: f64 = self.meta[key].parse().unwrap();
        assert!(db < BAR_DB - 3.0, "{key}: the feature moves diffusers' output only to {db:.2} dB");
        db
    }

    fn velocity(&self, net: Option<(&FluxControlNet, &str, Option<usize>, f64)>) -> Tensor {
        let (img_ids, txt_ids) = (self.t("img_ids").unsqueeze(0).unwrap(), self.t("txt_ids").unsqueeze(0).unwrap());
        let inp = Inputs {
            img_ids: &img_ids,
            txt: self.t("txt"),
            txt_ids: &txt_ids,
            pooled: Some(self.t("pooled")),
            guidance: Some(self.t("guidance")),
        };
        let res: Option<Residuals> = net.map(|(n, cond, mode, scale)| {
            let ctl = ControlInput { cond: self.t(cond), mode, scale };
            n.forward(self.t("latents"), self.t("t"), &inp, &ctl).unwrap()
        });
        self.base.forward_controlled(self.t("latents"), self.t("t"), &inp, &mut NoCache, res.as_ref()).unwrap()
    }

    fn check(&self, name: &str, got: &Tensor, sensitivity_key: &str) {
        let db = psnr(got, self.t(name));
        let s = self.sensitivity(sensitivity_key);
        eprintln!("{name}: {db:.2} dB vs diffusers (sensitivity {s:.2} dB)");
        assert!(db >= BAR_DB, "{name}: {db:.2} dB < {BAR_DB} dB");
    }
}

#[test]
fn instantx_controlnet_matches_diffusers() {
    let c = Case::load();
    let net = controlnet("tiny-controlnet");
    assert!(!net.is_union());
    c.check("controlnet", &c.velocity(Some((&net, "cond", None, 1.0))), "sensitivity_controlnet_vs_plain_db");
    c.check("controlnet_half", &c.velocity(Some((&net, "cond", None, 0.5))), "sensitivity_controlnet_half_vs_plain_db");
    c.check("controlnet_other", &c.velocity(Some((&net, "other_cond", None, 1.0))), "sensitivity_control_image_db");
    // Scale 0 is the plain transformer.
    let zero = c.velocity(Some((&net, "cond", None, 0.0)));
    assert!(psnr(&zero, c.t("plain")) >= BAR_DB);
}

#[test]
fn union_controlnet_matches_diffusers() {
    let c = Case::load();
    let net = controlnet("tiny-controlnet-union");
    assert!(net.is_union());
    c.check("union_mode2", &c.velocity(Some((&net, "cond", Some(2), 1.0))), "sensitivity_union_mode_db");
    c.check("union_mode0", &c.velocity(Some((&net, "cond", Some(0), 1.0))), "sensitivity_union_mode0_vs_plain_db");
}

#[test]
fn xlabs_controlnet_matches_diffusers() {
    let c = Case::load();
    let net = controlnet("tiny-controlnet-xlabs");
    assert!(net.takes_pixels() && !net.is_union());
    c.check("xlabs", &c.velocity(Some((&net, "pixels", None, 0.8))), "sensitivity_xlabs_vs_plain_db");
    c.check("xlabs_other", &c.velocity(Some((&net, "other_pixels", None, 0.8))), "sensitivity_xlabs_control_image_db");
}
