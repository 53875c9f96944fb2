//! The CPU backend at the tensor level: CPU f32 tensors in (the dispatcher in [`super`] sends nothing else), made
//! contiguous, their data handed to the slice kernels of [`super::cpu`], a fresh CPU f32 tensor out. The operations
//! that also have a fused kernel go through their `CustomOp` ([`super::ops`]), whose `cpu_fwd` is that kernel; the
//! convolution and the upsampling, which have none, call the kernels directly.

use super::cpu;
use super::ops::{self, ColsAct};
use candle_core::{CpuStorage, Device, Result, Storage, StorageRef, Tensor};

/// A contiguous CPU f32 tensor's data, borrowed.
struct F32View<'a> {
    guard: StorageRef<'a>,
    start: usize,
    end: usize,
}

impl F32View<'_> {
    fn s(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.end],
            _ => unreachable!("F32View is only built over CPU f32 storage"),
        }
    }
}

/// `t` made contiguous, kept alive beside a view of its data.
struct Owned(Tensor);

impl Owned {
    fn new(t: &Tensor) -> Result<Self> {
        Ok(Self(t.contiguous()?))
    }

    fn view(&self) -> Result<F32View<'_>> {
        let (guard, layout) = self.0.storage_and_layout();
        let (start, end) = layout.contiguous_offsets().expect("made contiguous");
        if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
            candle_core::bail!(
                "the CPU kernels take CPU f32 tensors, not {:?} on {:?}",
                self.0.dtype(),
                self.0.device()
            );
        }
        Ok(F32View { guard, start, end })
    }
}

fn out(v: Vec<f32>, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    Tensor::from_vec(v, shape, &Device::Cpu)
}

pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, stride: usize, pad: usize) -> Result<Tensor> {
    let (b, c_in, h, w) = x.dims4()?;
    let (c_out, _, kh, kw) = weight.dims4()?;
    let shape = cpu::ConvShape { batch: b, c_in, h, w, c_out, kh, kw, stride, pad };
    let (ho, wo) = shape.out_hw();
    let (x, weight, bias) = (Owned::new(x)?, Owned::new(weight)?, bias.map(Owned::new).transpose()?);
    let bv = bias.as_ref().map(Owned::view).transpose()?;
    let y = cpu::conv2d(x.view()?.s(), weight.view()?.s(), bv.as_ref().map(F32View::s), shape);
    out(y, (b, c_out, ho, wo))
}

pub fn group_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, groups: usize, eps: f64, silu: bool) -> Result<Tensor> {
    let op = ops::GroupNormOp { groups, eps, silu, kernels: vec![] };
    x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let y = cpu::upsample2x(Owned::new(x)?.view()?.s(), h, w);
    out(y, (b, c, 2 * h, 2 * w))
}

pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ops::GeluTanh { kernels: vec![] })
}

pub fn gelu_tanh_cols(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ops::Cols { act: ColsAct::Gelu, col, width, kernels: vec![] })
}

/// SwiGLU through its custom op's CPU reference loop (the CPU backend itself runs the composition).
pub fn swiglu(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ops::Cols { act: ColsAct::Swiglu, col, width, kernels: vec![] })
}

pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let op = ops::LayerNormModulate { eps, kernels: vec![] };
    x.contiguous()?.apply_op3_no_bwd(&scale.contiguous()?, &shift.contiguous()?, &op)
}

pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op3_no_bwd(&y.contiguous()?, &gate.contiguous()?, &ops::GatedResidual { kernels: vec![] })
}

/// `angles`: f32 [2, S, D/2], cos then sin (see [`super::Angles`]).
pub fn qk_norm_rope(
    x: &Tensor,
    col: usize,
    heads: usize,
    weight: &Tensor,
    eps: f64,
    angles: &Tensor,
) -> Result<Tensor> {
    let op = ops::QkNormRope { col, heads, eps, kernels: vec![] };
    x.contiguous()?.apply_op3_no_bwd(&weight.contiguous()?, angles, &op)
}

pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&ops::HeadsFirst { col, heads, d, kernels: vec![] })
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let op = ops::Attention { scale, kernels: vec![] };
    q.contiguous()?.apply_op3_no_bwd(&k.contiguous()?, &v.contiguous()?, &op)
}
