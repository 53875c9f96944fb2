//! The hot operations that have a Triton kernel, each as one candle `CustomOp` with two backends:
//!
//! - `cpu_fwd`: the hand-written f32 kernel of [`super::cpu`] (SwiGLU, which the CPU backend runs composed, has a
//!   plain loop here as its reference). Contiguous CPU f32 storage in, a fresh CPU f32 buffer out.
//! - `cuda_fwd` (CUDA builds): the compiled Triton kernel the op was built with ([`Fused::kernels`], chosen and
//!   loaded by [`super::fused`] before the op is applied), launched by [`super::gpu::run`].
//!
//! Each op also says, as plain data, how it launches ([`Fused::launches`]): which kernel(s), the head dim, and the
//! arguments by the contract names of kernels/triton/README.md, computed from the inputs' layouts and device
//! addresses. The same function serves the choice of a variant (with the inputs' real addresses and a placeholder
//! for the fresh output) and the launch itself, and the tests run it against the manifest on the CPU.

use super::cpu;
use super::gpu::Loaded;
use super::launch::Spec;
use super::manifest::Miss;
use candle_core::backend::BackendStorage;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape};

/// Device addresses of one launch: the inputs (in the op's input order), the fresh output, the f32 workspace
/// (group norm's partial statistics; 0 when the op has none).
#[derive(Debug, Clone, Default)]
pub struct Addrs {
    pub inputs: Vec<u64>,
    pub out: u64,
    pub workspace: u64,
}

/// One launch an op makes: the Triton kernel, its head dim (the head-dim kernels) and its arguments.
#[derive(Debug, Clone)]
pub struct Planned {
    pub kernel: &'static str,
    pub head_dim: Option<usize>,
    pub spec: Spec,
}

/// What the fused backend needs to know about an op besides its maths.
pub trait Fused {
    /// The operation's name in reports (`--kernels fused` notes, the GPU check).
    fn op(&self) -> &'static str;
    /// The output shape for inputs of these layouts.
    fn out_shape(&self, l: &[&Layout]) -> Result<Shape>;
    /// f32 workspace elements the launches share (0: none).
    fn workspace(&self, _l: &[&Layout]) -> usize {
        0
    }
    /// The launches, in order, for inputs of these layouts at these addresses.
    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss>;
    /// Inputs that are f32 whatever the data dtype (RoPE angles); every other input has the data dtype.
    fn f32_inputs(&self) -> &'static [usize] {
        &[]
    }
    /// The loaded kernels, one per launch (empty when the op runs on the CPU).
    fn kernels(&self) -> &[Loaded];
    fn kernels_mut(&mut self) -> &mut Vec<Loaded>;
}

/// The two accessors of an op's `kernels` field.
macro_rules! kernels_field {
    () => {
        fn kernels(&self) -> &[Loaded] {
            &self.kernels
        }

        fn kernels_mut(&mut self) -> &mut Vec<Loaded> {
            &mut self.kernels
        }
    };
}

/// A contiguous f32 input's data.
fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => bail!("{op}: the CPU kernel takes contiguous tensors"),
        _ => bail!("{op}: the CPU kernel takes f32 tensors, not {:?}", s.dtype()),
    }
}

fn out(v: Vec<f32>, shape: impl Into<Shape>) -> Result<(CpuStorage, Shape)> {
    Ok((CpuStorage::F32(v), shape.into()))
}

/// Row stride of a [B, D] modulation chunk whose rows are contiguous: its batch stride (a view into a wider
/// modulation output), or D when there is one row (any stride works for b = 0, and D keeps the alignment test
/// honest). None when a row is not contiguous.
pub fn row_stride(l: &Layout) -> Option<usize> {
    let (dims, st) = (l.dims(), l.stride());
    match (dims, st) {
        ([1, d], _) => Some(*d),
        ([_, d], [s0, s1]) if *s1 == 1 || *d == 1 => Some(*s0),
        _ => None,
    }
}

fn layout_err<T>(ok: bool, v: T) -> std::result::Result<T, Miss> {
    if ok {
        Ok(v)
    } else {
        Err(Miss::Layout)
    }
}

/// Unmasked scaled dot-product attention: q, k, v [B, H, S, D] → [B, S, H·D].
pub struct Attention {
    pub scale: f64,
    pub kernels: Vec<Loaded>,
}

impl Fused for Attention {
    fn op(&self) -> &'static str {
        "attention"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        let (b, h, s, d) = l[0].shape().dims4()?;
        Ok((b, s, h * d).into())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, h, s, d) = l[0].shape().dims4().map_err(|_| Miss::Layout)?;
        layout_err(l.iter().all(|li| li.is_contiguous() && li.dims() == l[0].dims()), ())?;
        let spec = Spec::new().ptr("q", a.inputs[0]).ptr("k", a.inputs[1]).ptr("v", a.inputs[2]).ptr("out", a.out);
        let spec = spec.int("S", s).int("H", h).float("scale", self.scale as f32).sym("B", b);
        spec.check_size(&[b * h * s * d])?;
        Ok(vec![Planned { kernel: "attention_fwd", head_dim: Some(d), spec }])
    }

    kernels_field!();
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        lq: &Layout,
        k: &CpuStorage,
        lk: &Layout,
        v: &CpuStorage,
        lv: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, h, s, d) = lq.shape().dims4()?;
        if lk.dims() != lq.dims() || lv.dims() != lq.dims() {
            bail!("attention: q {:?}, k {:?}, v {:?}", lq.dims(), lk.dims(), lv.dims());
        }
        let (q, k, v) = (f32s(q, lq, "attention")?, f32s(k, lk, "attention")?, f32s(v, lv, "attention")?);
        out(cpu::attention(q, k, v, b, h, s, d, self.scale as f32), (b, s, h * d))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// `LayerNorm(x)·(1 + scale) + shift`: x [B, S, D], scale and shift [B, D] (rows may be views into a wider
/// modulation output on CUDA; the CPU kernel takes them contiguous).
pub struct LayerNormModulate {
    pub eps: f64,
    pub kernels: Vec<Loaded>,
}

impl Fused for LayerNormModulate {
    fn op(&self) -> &'static str {
        "layer_norm_modulate"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        Ok(l[0].shape().clone())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, s, d) = l[0].shape().dims3().map_err(|_| Miss::Layout)?;
        let (st, sh) = (row_stride(l[1]), row_stride(l[2]));
        let shapes_ok = l[1].dims() == [b, d] && l[2].dims() == [b, d];
        let stride = layout_err(l[0].is_contiguous() && shapes_ok && st.is_some() && st == sh, st.unwrap_or(0))?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("scale", a.inputs[1]).ptr("shift", a.inputs[2]);
        let spec = spec.ptr("out", a.out).int("S", s).int("D", d).int("mod_stride", stride);
        let spec = spec.float("eps", self.eps as f32).sym("B", b);
        spec.check_size(&[b * s * d, b * stride])?;
        Ok(vec![Planned { kernel: "layer_norm_modulate", head_dim: None, spec }])
    }

    kernels_field!();
}

impl CustomOp3 for LayerNormModulate {
    fn name(&self) -> &'static str {
        "fused-layer-norm-modulate"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        scale: &CpuStorage,
        ls: &Layout,
        shift: &CpuStorage,
        lh: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, d) = lx.shape().dims3()?;
        if ls.dims() != [b, d] || lh.dims() != [b, d] {
            bail!("layer_norm_modulate: x {:?}, scale {:?}, shift {:?}", lx.dims(), ls.dims(), lh.dims());
        }
        let what = "layer_norm_modulate";
        let (x, sc, sh) = (f32s(x, lx, what)?, f32s(scale, ls, what)?, f32s(shift, lh, what)?);
        out(cpu::layer_norm_modulate(x, d, s, sc, sh, self.eps), (b, s, d))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// `x + gate·y`: x, y [B, S, D], gate [B, D] (a row view on CUDA, contiguous for the CPU kernel).
pub struct GatedResidual {
    pub kernels: Vec<Loaded>,
}

impl Fused for GatedResidual {
    fn op(&self) -> &'static str {
        "gated_residual"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        Ok(l[0].shape().clone())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, s, d) = l[0].shape().dims3().map_err(|_| Miss::Layout)?;
        let ok = l[0].is_contiguous() && l[1].is_contiguous() && l[1].dims() == l[0].dims() && l[2].dims() == [b, d];
        let stride = layout_err(ok, row_stride(l[2]))?.ok_or(Miss::Layout)?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("y", a.inputs[1]).ptr("gate", a.inputs[2]).ptr("out", a.out);
        let spec = spec.int("S", s).int("D", d).int("gate_stride", stride).sym("B", b);
        spec.check_size(&[b * s * d, b * stride])?;
        Ok(vec![Planned { kernel: "gated_residual", head_dim: None, spec }])
    }

    kernels_field!();
}

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "fused-gated-residual"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        y: &CpuStorage,
        ly: &Layout,
        gate: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, d) = lx.shape().dims3()?;
        if ly.dims() != lx.dims() || lg.dims() != [b, d] {
            bail!("gated_residual: x {:?}, y {:?}, gate {:?}", lx.dims(), ly.dims(), lg.dims());
        }
        let what = "gated_residual";
        let (x, y, g) = (f32s(x, lx, what)?, f32s(y, ly, what)?, f32s(gate, lg, what)?);
        out(cpu::gated_residual(x, y, g, d, s), (b, s, d))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// Per-head RMSNorm and RoPE of columns `col..col+heads·D` of x [B, S, W] → [B, H, S, D]. Inputs: x, the RMSNorm
/// weight [D], and the f32 angles as one tensor [2, S, D/2] (cos then sin; a position range of it is a view whose
/// halves are each contiguous, which is what the kernel's two pointers read).
pub struct QkNormRope {
    pub col: usize,
    pub heads: usize,
    pub eps: f64,
    pub kernels: Vec<Loaded>,
}

impl QkNormRope {
    /// (B, S, W, D) and the element offset from cos to sin in the angles, checked against each other.
    fn dims(&self, lx: &Layout, lw: &Layout, la: &Layout) -> Result<(usize, usize, usize, usize, usize)> {
        let (b, s, w) = lx.shape().dims3()?;
        let d = lw.shape().dims1()?;
        let st = la.stride();
        if d % 2 != 0 || self.col + self.heads * d > w || la.dims() != [2, s, d / 2] || st[1] != d / 2 || st[2] != 1 {
            bail!(
                "qk_norm_rope: x {:?} col {} heads {}, weight {:?}, angles {:?} {st:?}",
                lx.dims(),
                self.col,
                self.heads,
                lw.dims(),
                la.dims()
            );
        }
        Ok((b, s, w, d, st[0]))
    }
}

impl Fused for QkNormRope {
    fn op(&self) -> &'static str {
        "qk_norm_rope"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        let (b, s, _, d, _) = self.dims(l[0], l[1], l[2])?;
        Ok((b, self.heads, s, d).into())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, s, w, d, sin_at) = self.dims(l[0], l[1], l[2]).map_err(|_| Miss::Layout)?;
        layout_err(l[0].is_contiguous() && l[1].is_contiguous(), ())?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("weight", a.inputs[1]).ptr("cos", a.inputs[2]);
        let spec = spec.ptr("sin", a.inputs[2] + 4 * sin_at as u64).ptr("out", a.out);
        let spec = spec.int("S", s).int("H", self.heads).int("W", w).int("col", self.col);
        let spec = spec.float("eps", self.eps as f32).sym("B", b);
        spec.check_size(&[b * s * w, b * self.heads * s * d, 2 * sin_at])?;
        Ok(vec![Planned { kernel: "qk_norm_rope", head_dim: Some(d), spec }])
    }

    fn f32_inputs(&self) -> &'static [usize] {
        &[2]
    }

    kernels_field!();
}

impl CustomOp3 for QkNormRope {
    fn name(&self) -> &'static str {
        "fused-qk-norm-rope"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        angles: &CpuStorage,
        la: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, s, width, d, sin_at) = self.dims(lx, lw, la)?;
        let (x, w) = (f32s(x, lx, "qk_norm_rope")?, f32s(w, lw, "qk_norm_rope")?);
        let CpuStorage::F32(a) = angles else { bail!("qk_norm_rope: the angles are f32, not {:?}", angles.dtype()) };
        let o = la.start_offset();
        let (cos, sin) = (&a[o..o + s * d / 2], &a[o + sin_at..o + sin_at + s * d / 2]);
        let y = cpu::qk_norm_rope(x, width, self.col, b, s, self.heads, d, w, self.eps, cos, sin);
        out(y, (b, self.heads, s, d))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}

/// Columns `col..col+heads·d` of x [B, S, W] → [B, H, S, d] (the values, a copy).
pub struct HeadsFirst {
    pub col: usize,
    pub heads: usize,
    pub d: usize,
    pub kernels: Vec<Loaded>,
}

impl Fused for HeadsFirst {
    fn op(&self) -> &'static str {
        "heads_first"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        let (b, s, _) = l[0].shape().dims3()?;
        Ok((b, self.heads, s, self.d).into())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, s, w) = l[0].shape().dims3().map_err(|_| Miss::Layout)?;
        layout_err(l[0].is_contiguous() && self.col + self.heads * self.d <= w, ())?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("out", a.out);
        let spec = spec.int("S", s).int("H", self.heads).int("W", w).int("col", self.col).sym("B", b);
        spec.check_size(&[b * s * w, b * self.heads * s * self.d])?;
        Ok(vec![Planned { kernel: "heads_first", head_dim: Some(self.d), spec }])
    }

    kernels_field!();
}

impl CustomOp1 for HeadsFirst {
    fn name(&self) -> &'static str {
        "fused-heads-first"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, s, w) = lx.shape().dims3()?;
        if self.col + self.heads * self.d > w {
            bail!("heads_first: columns {}..{} of {w}", self.col, self.col + self.heads * self.d);
        }
        let y = cpu::heads_first(f32s(x, lx, "heads_first")?, w, self.col, b, s, self.heads, self.d);
        out(y, (b, self.heads, s, self.d))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1)])
    }
}

/// GELU-tanh of every element (any shape).
pub struct GeluTanh {
    pub kernels: Vec<Loaded>,
}

impl Fused for GeluTanh {
    fn op(&self) -> &'static str {
        "gelu_tanh"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        Ok(l[0].shape().clone())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let n = layout_err(l[0].is_contiguous(), l[0].shape().elem_count())?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("out", a.out).int("n", n);
        Ok(vec![Planned { kernel: "gelu_tanh", head_dim: None, spec }])
    }

    kernels_field!();
}

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "fused-gelu-tanh"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        out(cpu::gelu_tanh(f32s(x, lx, "gelu_tanh")?), lx.shape().clone())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1)])
    }
}

/// Which activation a column op applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColsAct {
    /// GELU-tanh of columns `col..col+width`.
    Gelu,
    /// FLUX.2's SwiGLU: silu(columns `col..col+width`) · (the `width` columns after them).
    Swiglu,
}

/// An activation of a column range of x [B, S, W] → [B, S, width] (the MLP part of a fused projection).
pub struct Cols {
    pub act: ColsAct,
    pub col: usize,
    pub width: usize,
    pub kernels: Vec<Loaded>,
}

impl Cols {
    /// Columns the activation reads past `col`.
    fn span(&self) -> usize {
        match self.act {
            ColsAct::Gelu => self.width,
            ColsAct::Swiglu => 2 * self.width,
        }
    }
}

impl Fused for Cols {
    fn op(&self) -> &'static str {
        match self.act {
            ColsAct::Gelu => "gelu_tanh_cols",
            ColsAct::Swiglu => "swiglu",
        }
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        let (b, s, _) = l[0].shape().dims3()?;
        Ok((b, s, self.width).into())
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, s, w) = l[0].shape().dims3().map_err(|_| Miss::Layout)?;
        layout_err(l[0].is_contiguous() && self.col + self.span() <= w, ())?;
        let spec = Spec::new().ptr("x", a.inputs[0]).ptr("out", a.out);
        let spec = spec.int("W", w).int("col", self.col).int("width", self.width).sym("B", b).sym("S", s);
        spec.check_size(&[b * s * w])?;
        let kernel = if self.act == ColsAct::Gelu { "gelu_tanh_cols" } else { "swiglu_cols" };
        Ok(vec![Planned { kernel, head_dim: None, spec }])
    }

    kernels_field!();
}

impl CustomOp1 for Cols {
    fn name(&self) -> &'static str {
        "fused-column-activation"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, s, w) = lx.shape().dims3()?;
        if self.col + self.span() > w {
            bail!("{}: columns {}..{} of {w}", self.op(), self.col, self.col + self.span());
        }
        let x = f32s(x, lx, self.op())?;
        let y = match self.act {
            ColsAct::Gelu => cpu::gelu_tanh_cols(x, w, self.col, self.width),
            ColsAct::Swiglu => swiglu_cols(x, w, self.col, self.width),
        };
        out(y, (b, s, self.width))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1)])
    }
}

/// silu(a)·b per row, a = columns col..col+width, b the next `width` (the CPU reference of the SwiGLU kernel; the
/// CPU backend itself runs candle's two ops, as the FLUX.2 parity figures were measured with).
fn swiglu_cols(x: &[f32], row_stride: usize, col: usize, width: usize) -> Vec<f32> {
    x.chunks(row_stride)
        .flat_map(|row| {
            let (a, b) = (&row[col..col + width], &row[col + width..col + 2 * width]);
            a.iter().zip(b).map(|(&a, &b)| a / (1.0 + cpu::exp(-a)) * b)
        })
        .collect()
}

/// Elements per block of the group norm kernels (`BLOCK`) and the most splits a group may have (`SPLIT_BLOCK`);
/// the manifest test checks both against the compiled variants.
pub const GN_BLOCK: usize = 1024;
pub const GN_SPLIT_BLOCK: usize = 64;

/// GroupNorm of x [B, C, H, W] (groups of C/G consecutive channels) with per-channel affine and an optional SiLU.
/// Inputs: x, weight [C], bias [C].
pub struct GroupNormOp {
    pub groups: usize,
    pub eps: f64,
    pub silu: bool,
    pub kernels: Vec<Loaded>,
}

/// The split of a group of `len` elements (kernels/triton/README.md's host rule): `(nsplit, chunk)` with
/// 1 ≤ nsplit ≤ 64, chunk a multiple of the block and no split empty.
pub fn group_split(len: usize) -> (usize, usize) {
    let nsplit = GN_SPLIT_BLOCK.min(len.div_ceil(32768)).max(1);
    let chunk = len.div_ceil(nsplit).div_ceil(GN_BLOCK) * GN_BLOCK;
    (len.div_ceil(chunk), chunk)
}

impl GroupNormOp {
    /// (B, C, H·W, group length), checked.
    fn dims(&self, l: &[&Layout]) -> Result<(usize, usize, usize, usize)> {
        let (b, c, h, w) = l[0].shape().dims4()?;
        if c % self.groups != 0 || l[1].dims() != [c] || l[2].dims() != [c] {
            bail!(
                "group norm: x {:?} in {} groups, weight {:?}, bias {:?}",
                l[0].dims(),
                self.groups,
                l[1].dims(),
                l[2].dims()
            );
        }
        Ok((b, c, h * w, c / self.groups * h * w))
    }
}

impl Fused for GroupNormOp {
    fn op(&self) -> &'static str {
        "group_norm"
    }

    fn out_shape(&self, l: &[&Layout]) -> Result<Shape> {
        Ok(l[0].shape().clone())
    }

    fn workspace(&self, l: &[&Layout]) -> usize {
        self.dims(l).map_or(0, |(b, _, _, len)| b * self.groups * group_split(len).0 * 2)
    }

    fn launches(&self, l: &[&Layout], a: &Addrs) -> std::result::Result<Vec<Planned>, Miss> {
        let (b, c, hw, len) = self.dims(l).map_err(|_| Miss::Layout)?;
        layout_err(l.iter().all(|l| l.is_contiguous()), ())?;
        let (nsplit, chunk) = group_split(len);
        let part = Spec::new().ptr("x", a.inputs[0]).ptr("part", a.workspace);
        let part = part.int("group_len", len).int("chunk", chunk).int("nsplit", nsplit);
        let part = part.sym("B", b).sym("G", self.groups);
        let apply = Spec::new().ptr("x", a.inputs[0]).ptr("part", a.workspace).ptr("weight", a.inputs[1]);
        let apply = apply.ptr("bias", a.inputs[2]).ptr("out", a.out).int("C", c).int("HW", hw);
        let apply = apply.int("cpg", c / self.groups).int("group_len", len).int("chunk", chunk);
        let apply = apply.int("nsplit", nsplit).float("eps", self.eps as f32).int("apply_silu", self.silu as usize);
        let apply = apply.sym("B", b);
        apply.check_size(&[b * c * hw, nsplit * chunk])?;
        Ok(vec![
            Planned { kernel: "group_norm_partial", head_dim: None, spec: part },
            Planned { kernel: "group_norm_apply", head_dim: None, spec: apply },
        ])
    }

    kernels_field!();
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "fused-group-norm"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
        bias: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw, _) = self.dims(&[lx, lw, lb])?;
        let (x, w, bias) = (f32s(x, lx, "group norm")?, f32s(w, lw, "group norm")?, f32s(bias, lb, "group norm")?);
        out(cpu::group_norm(x, c, hw, self.groups, w, bias, self.eps, self.silu), lx.shape().clone())
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        super::gpu::run(self, &[(s1, l1), (s2, l2), (s3, l3)])
    }
}
