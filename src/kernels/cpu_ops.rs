//! The CPU backend at the tensor level: contiguous CPU f32 tensors in (the dispatcher in [`super`] sends nothing
//! else), their data handed to the slice kernels of [`super::cpu`], a fresh CPU f32 tensor out.

use super::cpu;
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
    let (b, c, h, w) = x.dims4()?;
    let (x, g, bb) = (Owned::new(x)?, Owned::new(weight)?, Owned::new(bias)?);
    let y = cpu::group_norm(x.view()?.s(), c, h * w, groups, g.view()?.s(), bb.view()?.s(), eps, silu);
    out(y, (b, c, h, w))
}

pub fn upsample2x(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let y = cpu::upsample2x(Owned::new(x)?.view()?.s(), h, w);
    out(y, (b, c, 2 * h, 2 * w))
}

pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    let y = cpu::gelu_tanh(Owned::new(x)?.view()?.s());
    out(y, x.shape())
}

pub fn gelu_tanh_cols(x: &Tensor, col: usize, width: usize) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    let y = cpu::gelu_tanh_cols(Owned::new(x)?.view()?.s(), w, col, width);
    out(y, (b, s, width))
}

pub fn layer_norm_modulate(x: &Tensor, scale: &Tensor, shift: &Tensor, eps: f64) -> Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    let (x, sc, sh) = (Owned::new(x)?, Owned::new(scale)?, Owned::new(shift)?);
    let y = cpu::layer_norm_modulate(x.view()?.s(), d, s, sc.view()?.s(), sh.view()?.s(), eps);
    out(y, (b, s, d))
}

pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let (b, s, d) = x.dims3()?;
    let (x, y, g) = (Owned::new(x)?, Owned::new(y)?, Owned::new(gate)?);
    let r = cpu::gated_residual(x.view()?.s(), y.view()?.s(), g.view()?.s(), d, s);
    out(r, (b, s, d))
}

pub fn qk_norm_rope(
    x: &Tensor,
    col: usize,
    heads: usize,
    weight: &Tensor,
    eps: f64,
    (cos, sin): (&Tensor, &Tensor),
) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    let d = weight.dim(0)?;
    let (x, wt, c, sn) = (Owned::new(x)?, Owned::new(weight)?, Owned::new(cos)?, Owned::new(sin)?);
    let (c, sn) = (c.view()?, sn.view()?);
    let y = cpu::qk_norm_rope(x.view()?.s(), w, col, b, s, heads, d, wt.view()?.s(), eps, c.s(), sn.s());
    out(y, (b, heads, s, d))
}

pub fn heads_first(x: &Tensor, col: usize, heads: usize, d: usize) -> Result<Tensor> {
    let (b, s, w) = x.dims3()?;
    let y = cpu::heads_first(Owned::new(x)?.view()?.s(), w, col, b, s, heads, d);
    out(y, (b, heads, s, d))
}

pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, s, d) = q.dims4()?;
    let (q, k, v) = (Owned::new(q)?, Owned::new(k)?, Owned::new(v)?);
    let y = cpu::attention(q.view()?.s(), k.view()?.s(), v.view()?.s(), b, h, s, d, scale as f32);
    out(y, (b, s, h * d))
}
