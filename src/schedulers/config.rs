//! Scheduler configs as diffusers reads them: the class that runs (`Other.from_config(pipe.scheduler.config)`)
//! takes the fields of the checkpoint's `scheduler_config.json` it knows and its own defaults for the rest. Fields
//! the file lacks do not carry the checkpoint class's defaults over (diffusers drops them through
//! `_use_default_values`): an SD 1.5 checkpoint, whose PNDM config has no `timestep_spacing`, runs PNDM and DDIM
//! with "leading" spacing but Euler, LMS and DPM-Solver with their own "linspace".

use serde::Deserialize;
use serde_json::{Map, Value};

/// The schedulers `--scheduler` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum SchedulerKind {
    Pndm,
    Ddim,
    Lms,
    Euler,
    EulerA,
    DpmPp2m,
    DpmPp2mKarras,
}

crate::named_enum!(
    SchedulerKind,
    "scheduler",
    [
        Pndm = "pndm",
        Ddim = "ddim",
        Lms = "lms",
        Euler = "euler",
        EulerA = "euler-a",
        DpmPp2m = "dpmpp-2m",
        DpmPp2mKarras = "dpmpp-2m-karras"
    ]
);

impl SchedulerKind {
    /// The diffusers class that runs it.
    pub fn class(self) -> &'static str {
        match self {
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Lms => "LMSDiscreteScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerA => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmPp2m | SchedulerKind::DpmPp2mKarras => "DPMSolverMultistepScheduler",
        }
    }

    /// The sampler's name as AUTOMATIC1111 writes it in image metadata.
    pub fn a1111(self) -> &'static str {
        match self {
            SchedulerKind::Pndm => "PLMS",
            SchedulerKind::Ddim => "DDIM",
            SchedulerKind::Lms => "LMS",
            SchedulerKind::Euler => "Euler",
            SchedulerKind::EulerA => "Euler a",
            SchedulerKind::DpmPp2m => "DPM++ 2M",
            SchedulerKind::DpmPp2mKarras => "DPM++ 2M Karras",
        }
    }

    /// The kind a checkpoint's own config runs: its class (DPM-Solver with Karras sigmas as its own kind).
    pub fn of_config(class: &str, raw: &Map<String, Value>) -> Option<Self> {
        let karras = raw.get("use_karras_sigmas").and_then(Value::as_bool).unwrap_or(false);
        Some(match class {
            "PNDMScheduler" => SchedulerKind::Pndm,
            "DDIMScheduler" => SchedulerKind::Ddim,
            "LMSDiscreteScheduler" => SchedulerKind::Lms,
            "EulerDiscreteScheduler" => SchedulerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SchedulerKind::EulerA,
            "DPMSolverMultistepScheduler" if karras => SchedulerKind::DpmPp2mKarras,
            "DPMSolverMultistepScheduler" => SchedulerKind::DpmPp2m,
            _ => return None,
        })
    }
}

/// Each class's `__init__` defaults for the fields these schedulers read (diffusers 0.42), as JSON.
const CLASS_DEFAULTS: [(&str, &str); 6] = [
    (
        "PNDMScheduler",
        r#"{"skip_prk_steps": false, "set_alpha_to_one": false, "prediction_type": "epsilon",
            "timestep_spacing": "leading", "steps_offset": 0}"#,
    ),
    (
        "DDIMScheduler",
        r#"{"clip_sample": true, "set_alpha_to_one": true, "steps_offset": 0, "prediction_type": "epsilon",
            "thresholding": false, "clip_sample_range": 1.0, "timestep_spacing": "leading",
            "rescale_betas_zero_snr": false}"#,
    ),
    (
        "LMSDiscreteScheduler",
        r#"{"use_karras_sigmas": false, "use_exponential_sigmas": false, "use_beta_sigmas": false,
            "prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0}"#,
    ),
    (
        "EulerDiscreteScheduler",
        r#"{"prediction_type": "epsilon", "interpolation_type": "linear", "use_karras_sigmas": false,
            "use_exponential_sigmas": false, "use_beta_sigmas": false, "sigma_min": null, "sigma_max": null,
            "timestep_spacing": "linspace", "timestep_type": "discrete", "steps_offset": 0,
            "rescale_betas_zero_snr": false, "final_sigmas_type": "zero"}"#,
    ),
    (
        "EulerAncestralDiscreteScheduler",
        r#"{"prediction_type": "epsilon", "timestep_spacing": "linspace", "steps_offset": 0,
            "rescale_betas_zero_snr": false}"#,
    ),
    (
        "DPMSolverMultistepScheduler",
        r#"{"solver_order": 2, "prediction_type": "epsilon", "thresholding": false,
            "algorithm_type": "dpmsolver++", "solver_type": "midpoint", "lower_order_final": true,
            "euler_at_final": false, "use_karras_sigmas": false, "use_exponential_sigmas": false,
            "use_beta_sigmas": false, "use_lu_lambdas": false, "use_flow_sigmas": false,
            "final_sigmas_type": "zero", "lambda_min_clipped": null, "variance_type": null,
            "timestep_spacing": "linspace", "steps_offset": 0, "rescale_betas_zero_snr": false}"#,
    ),
];

/// Fields every class has, with the defaults they share.
const COMMON_DEFAULTS: &str = r#"{"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
    "beta_schedule": "linear", "trained_betas": null}"#;

fn defaults_of(class: &str) -> Option<Map<String, Value>> {
    let (_, json) = CLASS_DEFAULTS.iter().find(|(c, _)| *c == class)?;
    let mut m: Map<String, Value> = serde_json::from_str(COMMON_DEFAULTS).expect("valid table");
    m.extend(serde_json::from_str::<Map<String, Value>>(json).expect("valid table"));
    Some(m)
}

fn default_steps() -> usize {
    1000
}

/// The fields the schedulers read, after the merge; absent ones at neutral values.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Settings {
    #[serde(default = "default_steps")]
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: String,
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default)]
    pub prediction_type: String,
    #[serde(default)]
    pub timestep_spacing: String,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub set_alpha_to_one: bool,
    #[serde(default)]
    pub skip_prk_steps: bool,
    #[serde(default)]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default)]
    pub use_karras_sigmas: bool,
    #[serde(default)]
    pub sigma_min: Option<f64>,
    #[serde(default)]
    pub sigma_max: Option<f64>,
    #[serde(default)]
    pub final_sigmas_type: Option<String>,
    #[serde(default)]
    pub lower_order_final: bool,
    #[serde(default)]
    pub euler_at_final: bool,
    #[serde(default)]
    pub solver_order: Option<usize>,
    /// Settings these ports do not implement, with the value that asks for them (refused by [`Settings::check`]).
    #[serde(skip)]
    unsupported: Vec<String>,
}

fn one() -> f64 {
    1.0
}

/// Values of fields no port implements (anything but these is refused with the field named).
const NEUTRAL: [(&str, &str); 13] = [
    ("thresholding", "false"),
    ("rescale_betas_zero_snr", "false"),
    ("use_exponential_sigmas", "false"),
    ("use_beta_sigmas", "false"),
    ("use_lu_lambdas", "false"),
    ("use_flow_sigmas", "false"),
    ("interpolation_type", "\"linear\""),
    ("timestep_type", "\"discrete\""),
    ("algorithm_type", "\"dpmsolver++\""),
    ("solver_type", "\"midpoint\""),
    ("variance_type", "null"),
    ("lambda_min_clipped", "null"),
    ("use_dynamic_shifting", "false"),
];

impl Settings {
    /// The config `kind` runs with, from the checkpoint's raw `scheduler_config.json`.
    pub fn for_kind(raw: &Map<String, Value>, kind: SchedulerKind) -> std::result::Result<Self, String> {
        // Kind.from_config: the file's fields it knows over its own defaults.
        let mut merged = defaults_of(kind.class()).expect("every kind has a class");
        for (k, v) in raw {
            if merged.contains_key(k) {
                merged.insert(k.clone(), v.clone());
            }
        }
        // The Karras variants are what diffusers users pick with use_karras_sigmas.
        match kind {
            SchedulerKind::DpmPp2mKarras => merged.insert("use_karras_sigmas".into(), Value::Bool(true)),
            SchedulerKind::DpmPp2m => merged.insert("use_karras_sigmas".into(), Value::Bool(false)),
            _ => None,
        };
        let mut s: Settings = serde_json::from_value(Value::Object(merged.clone())).map_err(|e| e.to_string())?;
        s.unsupported = NEUTRAL
            .iter()
            .filter_map(|(k, neutral)| {
                let v = merged.get(*k)?;
                let ok = *v == serde_json::from_str::<Value>(neutral).expect("valid")
                    || (*k == "lambda_min_clipped" && v.as_f64().is_some_and(|x| x == f64::NEG_INFINITY));
                (!ok).then(|| format!("{k} = {v}"))
            })
            .collect();
        Ok(s)
    }

    /// Refuses settings these ports do not implement, naming them.
    pub fn check(&self, kind: SchedulerKind) -> std::result::Result<(), String> {
        if let Some(u) = self.unsupported.first() {
            return Err(format!("{} with {u} is not supported", kind.class()));
        }
        if !matches!(self.prediction_type.as_str(), "epsilon" | "v_prediction") {
            return Err(format!(
                "prediction_type {:?} is not supported (epsilon or v_prediction)",
                self.prediction_type
            ));
        }
        if !matches!(self.timestep_spacing.as_str(), "leading" | "trailing" | "linspace") {
            return Err(format!("timestep_spacing {:?} is not supported", self.timestep_spacing));
        }
        if self.solver_order.is_some_and(|o| o != 2) {
            return Err("DPMSolverMultistepScheduler with solver_order other than 2 is not supported".into());
        }
        Ok(())
    }

    /// v-prediction (SD 2.x 768 models) rather than noise prediction.
    pub fn v_prediction(&self) -> bool {
        self.prediction_type == "v_prediction"
    }
}
