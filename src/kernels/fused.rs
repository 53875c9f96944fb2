//! The fused CUDA backend (`--kernels fused`): each hot operation as one candle `CustomOp` ([`super::ops`]) whose
//! `cuda_fwd` launches a Triton kernel compiled ahead of time (sources, interpreter tests, cubins and their
//! manifest under kernels/triton/; its README gives each kernel's contract).
//!
//! Takes the operation's tensors, gives `Ok(Some(output))` when a compiled variant fits them, or `Ok(None)` when
//! none does — a head dim without a variant (the real VAE's 512), f32 where only bf16/f16 exist, a misaligned
//! pointer or a width that is not a multiple of 16, a compute capability below 8.0, a module the driver would not
//! load — and the dispatcher in [`super`] then runs the composition: a fused run never fails for want of a
//! kernel. Every call is counted per operation (launched, or composed with the reason); [`summary`] is the line
//! the session prints after an edit under `--kernels fused`, so a run can show that its kernels really launched.

use super::gpu::{self, Loaded};
use super::launch;
use super::manifest::Miss;
use super::ops::{self, Addrs, Fused};
use super::Angles;
use candle_core::{DType, Device, Layout, Result, Tensor};
use std::collections::BTreeMap;
use std::sync::Mutex;

/// (kernel, dtype, head dim) combinations the models can ask for that no compiled variant serves, on purpose: f32
/// attention at D = 128 (the f32 kernels use IEEE FMA loops, for correctness rather than speed, and are compiled
/// for the test pipelines' small heads only). They run the composition; the manifest test keeps this list true.
pub const KNOWN_GAPS: &[(&str, DType, Option<usize>)] = &[("attention_fwd", DType::F32, Some(128))];

/// Why `--kernels fused` cannot run on `device`: a one-line message naming the fix, or None when it can (a CUDA
/// device: operations without a fitting kernel run the composition there).
pub fn unavailable(device: &Device) -> Option<String> {
    (!device.is_cuda()).then(|| {
        "--kernels fused needs a CUDA device; on the CPU use --kernels auto (its own f32 kernels) or composed".into()
    })
}

/// Launches and fallbacks of one operation since the last [`reset_stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub launched: u64,
    /// Calls that ran the composition, by reason.
    pub composed: BTreeMap<String, u64>,
}

static STATS: Mutex<BTreeMap<&'static str, Tally>> = Mutex::new(BTreeMap::new());

pub(super) fn count(op: &'static str, miss: Option<&Miss>) {
    let mut stats = STATS.lock().unwrap_or_else(|e| e.into_inner());
    let t = stats.entry(op).or_default();
    match miss {
        None => t.launched += 1,
        Some(m) => *t.composed.entry(m.to_string()).or_default() += 1,
    }
}

/// Forgets the counts (the session does this before each edit).
pub fn reset_stats() {
    STATS.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The counts per operation since the last reset.
pub fn stats() -> BTreeMap<&'static str, Tally> {
    STATS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// One line: `fused kernels: attention 57 launched, 2 composed (no variant for head dim 512); …`.
pub fn summary() -> String {
    let parts: Vec<String> = stats()
        .into_iter()
        .map(|(op, t)| {
            let composed: u64 = t.composed.values().sum();
            let why: Vec<String> = t.composed.keys().cloned().collect();
            match composed {
                0 => format!("{op} {} launched", t.launched),
                n => format!("{op} {} launched, {n} composed ({})", t.launched, why.join("; ")),
            }
        })
        .collect();
    format!("fused kernels: {}", if parts.is_empty() { "none called".into() } else { parts.join("; ") })
}

/// The kernels of `op` for `inputs`, chosen from the manifest for their GPU, dtype, head dim and actual addresses
/// (the output's and workspace's stand at 0: fresh allocations are aligned), validated as a launch and loaded.
fn choose<O: Fused>(op: &O, inputs: &[&Tensor]) -> std::result::Result<Vec<Loaded>, Miss> {
    let device = inputs[0].device();
    let gpu = gpu::info(device).ok_or_else(|| Miss::Load("no CUDA device".into()))?;
    let manifest = gpu::manifest().map_err(Miss::Load)?;
    let dtype = inputs[0].dtype();
    for (i, t) in inputs.iter().enumerate() {
        let want = if op.f32_inputs().contains(&i) { DType::F32 } else { dtype };
        if t.dtype() != want || t.elem_count() == 0 {
            return Err(Miss::Layout);
        }
    }
    let addrs: Option<Vec<u64>> = inputs.iter().map(|t| gpu::address(t)).collect();
    let addrs = Addrs { inputs: addrs.ok_or(Miss::Layout)?, out: 0, workspace: 0 };
    let layouts: Vec<&Layout> = inputs.iter().map(|t| t.layout()).collect();
    let mut kernels = Vec::new();
    for p in op.launches(&layouts, &addrs)? {
        p.spec.check_size(&[])?;
        let v = manifest.select(gpu, p.kernel, dtype, p.head_dim, &p.spec.args)?;
        launch::finish(v, &p.spec).map_err(Miss::Launch)?;
        kernels.push(gpu::load(device, v).map_err(Miss::Load)?);
    }
    Ok(kernels)
}

/// `op` applied by `run` with its kernels when they fit `inputs`; None (counted with the reason) otherwise.
fn apply<O: Fused>(mut op: O, inputs: &[&Tensor], run: impl FnOnce(&O) -> Result<Tensor>) -> Result<Option<Tensor>> {
    match choose(&op, inputs) {
        Ok(kernels) => {
            *op.kernels_mut() = kernels;
            let y = run(&op)?;
            count(op.op(), None);
            Ok(Some(y))
        }
        Err(miss) => {
            count(op.op(), Some(&miss));
            Ok(None)
        }
    }
}

/// `scale` and `shift` as the kernel reads them: rows with one shared stride (views into a modulation output stay
/// views), else contiguous copies.
fn shared_rows(a: &Tensor, b: &Tensor) -> Result<(Tensor, Tensor)> {
    let (sa, sb) = (ops::row_stride(a.layout()), ops::row_stride(b.layout()));
    if sa.is_some() && sa == sb {
        return Ok((a.clone(), b.clone()));
    }
    Ok((a.contiguous()?, b.contiguous()?))
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Option<Tensor>> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let op = ops::Attention { scale, kernels: vec![] };
    apply(op, &[&q, &k, &v], |op| q.apply_op3_no_bwd(&k, &v, op))
}

pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    let x = x.contiguous()?;
    let (scale, shift) = shared_rows(scale, shift)?;
    let op = ops::LayerNormModulate { eps, kernels: vec![] };
    apply(op, &[&x, &scale, &shift], |op| x.apply_op3_no_bwd(&scale, &shift, op))
}

pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Option<Tensor>> {
    let (x, y) = (x.contiguous()?, y.contiguous()?);
    let gate = if ops::row_stride(gate.layout()).is_some() { gate.clone() } else { gate.contiguous()? };
    let op = ops::GatedResidual { kernels: vec![] };
    apply(op, &[&x, &y, &gate], |op| x.apply_op3_no_bwd(&y, &gate, op))
}

pub fn qk_norm_rope(
    x: &Tensor,
    (col, heads): (usize, usize),
    weight: &Tensor,
    eps: f64,
    angles: &Angles,
) -> Result<Option<Tensor>> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    let op = ops::QkNormRope { col, heads, eps, kernels: vec![] };
    apply(op, &[&x, &weight, &angles.rot], |op| x.apply_op3_no_bwd(&weight, &angles.rot, op))
}

pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Option<Tensor>> {
    let x = x.contiguous()?;
    apply(ops::HeadsFirst { col, heads, d, kernels: vec![] }, &[&x], |op| x.apply_op1_no_bwd(op))
}

pub fn gelu_tanh(x: &Tensor) -> Result<Option<Tensor>> {
    let x = x.contiguous()?;
    apply(ops::GeluTanh { kernels: vec![] }, &[&x], |op| x.apply_op1_no_bwd(op))
}

/// GELU-tanh (`ColsAct::Gelu`) or SwiGLU of a column range.
pub fn cols(x: &Tensor, act: ops::ColsAct, col: usize, width: usize) -> Result<Option<Tensor>> {
    let x = x.contiguous()?;
    apply(ops::Cols { act, col, width, kernels: vec![] }, &[&x], |op| x.apply_op1_no_bwd(op))
}

pub fn group_norm(
    x: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Option<Tensor>> {
    let (x, weight, bias) = (x.contiguous()?, weight.contiguous()?, bias.contiguous()?);
    let op = ops::GroupNormOp { groups, eps, silu, kernels: vec![] };
    apply(op, &[&x, &weight, &bias], |op| x.apply_op3_no_bwd(&weight, &bias, op))
}
