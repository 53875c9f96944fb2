//! A linear layer with its bias in the GEMM (fused backend, CUDA, bf16/f16): x [.., K] · Wᵀ [O, K] + b [O] →
//! [.., O] in one cuBLASLt call, the bias added by the GEMM's epilogue in f32 before the one rounding to the model
//! dtype (what torch's `F.linear` does on CUDA).
//!
//! Why: candle's `Linear` adds the bias as a separate broadcast kernel whose per-element index arithmetic (64-bit
//! divisions over the dims) made `badd_bf16` 47 % of a fused 1024² FLUX.1-dev step's GPU time on an H200 (ncu, the
//! profile phase of scripts/gpu-check.sh), more than the GEMMs themselves. Returns None (counted with the reason, as
//! the Triton kernels are) when the call does not fit — the CPU, f32 (cuBLASLt would run it in TF32), rows not
//! 16-byte multiples or misaligned pointers — and the caller runs candle's `Linear`.

use super::fused::count;
use super::manifest::Miss;
use candle_core::{bail, CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

/// `x·Wᵀ + b` through cuBLASLt, or None (counted) when it does not apply.
pub fn linear_bias(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Option<Tensor>> {
    let (x, w, b) = (x.contiguous()?, w.contiguous()?, b.contiguous()?);
    match fits(&x, &w, &b) {
        Ok(()) => {
            let y = x.apply_op3_no_bwd(&w, &b, &LinearBias)?;
            count(OP, None);
            Ok(Some(y))
        }
        Err(miss) => {
            count(OP, Some(&miss));
            Ok(None)
        }
    }
}

const OP: &str = "linear_bias";

/// Whether cuBLASLt takes these tensors: CUDA, bf16/f16 throughout, W [O, K] and b [O] matching x's K, rows and
/// pointers aligned to 16 bytes (what its fast kernels and the bias epilogue want).
fn fits(x: &Tensor, w: &Tensor, b: &Tensor) -> std::result::Result<(), Miss> {
    if !x.device().is_cuda() {
        return Err(Miss::Load("no CUDA device".into()));
    }
    let dtype = x.dtype();
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Miss::DType(format!("{dtype:?}").to_lowercase()));
    }
    let (o, k) = w.dims2().map_err(|_| Miss::Layout)?;
    if w.dtype() != dtype || b.dtype() != dtype || b.dims() != [o] || x.dims().last() != Some(&k) || x.elem_count() == 0
    {
        return Err(Miss::Layout);
    }
    let aligned = |t: &Tensor| super::gpu::address(t).is_some_and(|a| a % 16 == 0);
    if k % 8 != 0 || o % 8 != 0 || !(aligned(x) && aligned(w) && aligned(b)) {
        return Err(Miss::Alignment);
    }
    Ok(())
}

/// The candle op: inputs x, W, b as [`fits`] checked them.
struct LinearBias;

impl CustomOp3 for LinearBias {
    fn name(&self) -> &'static str {
        "cublaslt-linear-bias"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        bail!("linear_bias runs on CUDA only (the caller checks the device)")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        x: &candle_core::CudaStorage,
        lx: &Layout,
        w: &candle_core::CudaStorage,
        lw: &Layout,
        b: &candle_core::CudaStorage,
        lb: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        imp::run(x, lx, w, lw, b, lb)
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::cuda_backend::cudarc::cublaslt::{CudaBlasLT, Matmul, MatmulConfig};
    use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr};
    use candle_core::cuda_backend::{CudaDType, CudaStorageSlice as S, DeviceId};
    use candle_core::{bail, CudaDevice, CudaStorage, Layout, Result, Shape};
    use half::{bf16, f16};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};

    /// One cuBLASLt handle (and its workspace) per device, on candle's stream, made at first use.
    fn handle(dev: &CudaDevice) -> Result<Arc<CudaBlasLT>> {
        static HANDLES: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaBlasLT>>>> = OnceLock::new();
        let mut map = HANDLES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = map.get(&dev.id()) {
            return Ok(h.clone());
        }
        let h = Arc::new(CudaBlasLT::new(dev.cuda_stream()).map_err(|e| candle_core::Error::Cuda(Box::new(e)))?);
        map.insert(dev.id(), h.clone());
        Ok(h)
    }

    /// The contiguous view a layout describes.
    fn view<'a, T: DeviceRepr>(s: &'a CudaSlice<T>, l: &Layout) -> Result<CudaView<'a, T>> {
        match l.contiguous_offsets() {
            Some((a, b)) => Ok(s.slice(a..b)),
            None => bail!("linear_bias wants contiguous inputs"),
        }
    }

    pub fn run(
        x: &CudaStorage,
        lx: &Layout,
        w: &CudaStorage,
        lw: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (o, k) = lw.shape().dims2()?;
        let rows = lx.shape().elem_count() / k;
        let dev = &x.device;
        let out = match (&x.slice, &w.slice, &b.slice) {
            (S::BF16(xs), S::BF16(ws), S::BF16(bs)) => {
                let y = gemm::<bf16>(dev, [view(xs, lx)?, view(ws, lw)?, view(bs, lb)?], rows, k, o)?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }
            (S::F16(xs), S::F16(ws), S::F16(bs)) => {
                let y = gemm::<f16>(dev, [view(xs, lx)?, view(ws, lw)?, view(bs, lb)?], rows, k, o)?;
                CudaStorage::wrap_cuda_slice(y, dev.clone())
            }
            _ => bail!("linear_bias takes bf16 or f16 tensors of one dtype"),
        };
        let mut dims = lx.dims().to_vec();
        *dims.last_mut().expect("x has a last dim") = o;
        Ok((out, Shape::from(dims)))
    }

    /// Y [rows, O] (row-major) = X [rows, K] · Wᵀ + b. Column-major, as cuBLAS sees it: Yᵀ (O×rows) = op(W) (O×K,
    /// W stored K×O, transposed) · Xᵀ (K×rows), and the epilogue adds b to each of Yᵀ's O rows.
    fn gemm<T: CudaDType + DeviceRepr>(
        dev: &CudaDevice,
        [x, w, b]: [CudaView<'_, T>; 3],
        rows: usize,
        k: usize,
        o: usize,
    ) -> Result<CudaSlice<T>>
    where
        CudaBlasLT: Matmul<T>,
    {
        let lt = handle(dev)?;
        // SAFETY: every element is written by the GEMM (beta = 0 never reads it).
        let mut y = unsafe { dev.alloc::<T>(rows * o)? };
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: o as u64,
            n: rows as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: o as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        // SAFETY: the views hold o·k, rows·k and o elements and y rows·o, as the configuration reads and writes.
        unsafe { lt.matmul(cfg, &w, &x, &mut y, Some(&b), None) }.map_err(|e| candle_core::Error::Cuda(Box::new(e)))?;
        Ok(y)
    }
}
