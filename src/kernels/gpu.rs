//! The CUDA side of the fused backend: the embedded manifest and artifacts, each device's compute capability,
//! module loading (once per device and artifact, cached), device addresses, output allocation and
//! `cuLaunchKernel` through cudarc. Takes an op whose kernels [`super::fused`] chose and loaded, gives its output
//! storage; everything worked out before the launch (variant, grid, argument order) lives in [`super::manifest`]
//! and [`super::launch`], where the CPU tests reach it. In builds without the `cuda` feature this module keeps
//! only the names the rest refers to, and no fused kernel can be chosen.

use super::manifest::{Gpu, Manifest, Variant};
use candle_core::{Device, Tensor};

#[cfg(feature = "cuda")]
pub use imp::{run, Loaded};

/// A kernel loaded for one device. None can exist in a build without CUDA.
#[cfg(not(feature = "cuda"))]
pub enum Loaded {}

#[cfg(not(feature = "cuda"))]
impl Loaded {
    pub fn variant(&self) -> &'static Variant {
        match *self {}
    }
}

/// The embedded manifest (CUDA builds), parsed once.
pub fn manifest() -> Result<&'static Manifest, String> {
    #[cfg(feature = "cuda")]
    return imp::manifest();
    #[cfg(not(feature = "cuda"))]
    Err("this build has no CUDA support".into())
}

/// The GPU behind `device` (compute capability, opt-in shared memory per block); None on the CPU.
pub fn info(device: &Device) -> Option<Gpu> {
    #[cfg(feature = "cuda")]
    return imp::info(device);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = device;
        None
    }
}

/// The device address of `t`'s first element; None unless it is a CUDA tensor of a float type.
pub fn address(t: &Tensor) -> Option<u64> {
    #[cfg(feature = "cuda")]
    return imp::address(t);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = t;
        None
    }
}

/// `v` loaded on `device` (cached: the first call per device and artifact loads the module).
pub fn load(device: &Device, v: &'static Variant) -> Result<Loaded, String> {
    #[cfg(feature = "cuda")]
    return imp::load(device, v);
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (device, v);
        Err("this build has no CUDA support".into())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::super::launch::{finish, Launch, Value};
    use super::super::manifest::{Arg, Format, Gpu, KernelDType, Manifest, Variant};
    use super::super::ops::{Addrs, Fused};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        sys, CudaFunction, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg, SyncOnDrop,
    };
    use candle_core::cuda_backend::cudarc::nvrtc::Ptx;
    use candle_core::cuda_backend::{CudaStorageSlice as S, DeviceId, WrapErr};
    use candle_core::{bail, CudaDevice, CudaStorage, DType, Device, Layout, Result, Shape, Storage, Tensor};
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    // ARTIFACTS: every file under kernels/triton/compiled/ except the manifest, by repo-relative path (build.rs).
    include!(concat!(env!("OUT_DIR"), "/triton_artifacts.rs"));

    /// A kernel function loaded on one device, with the manifest entry it came from.
    #[derive(Clone)]
    pub struct Loaded {
        variant: &'static Variant,
        func: CudaFunction,
    }

    impl Loaded {
        pub fn variant(&self) -> &'static Variant {
            self.variant
        }
    }

    pub fn manifest() -> std::result::Result<&'static Manifest, String> {
        static M: OnceLock<std::result::Result<Manifest, String>> = OnceLock::new();
        let text = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/triton/compiled/manifest.json"));
        M.get_or_init(|| Manifest::parse(text)).as_ref().map_err(Clone::clone)
    }

    pub fn info(device: &Device) -> Option<Gpu> {
        static GPUS: OnceLock<Mutex<HashMap<DeviceId, Option<Gpu>>>> = OnceLock::new();
        let Device::Cuda(d) = device else { return None };
        let mut gpus = GPUS.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        *gpus.entry(d.id()).or_insert_with(|| {
            let ctx = d.cuda_stream().context().clone();
            let (major, minor) = ctx.compute_capability().ok()?;
            let optin = sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN;
            let max_shared = ctx.attribute(optin).ok()?;
            Some(Gpu { capability: (10 * major + minor) as u32, max_shared: max_shared as u32 })
        })
    }

    /// A float slice's base address, and the guard that orders the stream after its last write.
    fn base<'a>(slice: &'a S, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
        Ok(match slice {
            S::BF16(s) => s.device_ptr(stream),
            S::F16(s) => s.device_ptr(stream),
            S::F32(s) => s.device_ptr(stream),
            _ => bail!("fused kernels take bf16, f16 or f32 tensors"),
        })
    }

    fn base_mut<'a>(slice: &'a mut S, stream: &'a CudaStream) -> Result<(u64, SyncOnDrop<'a>)> {
        Ok(match slice {
            S::BF16(s) => s.device_ptr_mut(stream),
            S::F16(s) => s.device_ptr_mut(stream),
            S::F32(s) => s.device_ptr_mut(stream),
            _ => bail!("fused kernels write bf16, f16 or f32 tensors"),
        })
    }

    pub fn address(t: &Tensor) -> Option<u64> {
        let (storage, layout) = t.storage_and_layout();
        let Storage::Cuda(s) = &*storage else { return None };
        let stream = s.device.cuda_stream();
        let (addr, _guard) = base(&s.slice, &stream).ok()?;
        Some(addr + (layout.start_offset() * t.dtype().size_in_bytes()) as u64)
    }

    pub fn load(device: &Device, v: &'static Variant) -> std::result::Result<Loaded, String> {
        type Cache = Mutex<HashMap<(DeviceId, &'static str), std::result::Result<CudaFunction, String>>>;
        static MODULES: OnceLock<Cache> = OnceLock::new();
        let Device::Cuda(d) = device else { return Err("not a CUDA device".into()) };
        let mut modules = MODULES.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
        let func = modules.entry((d.id(), v.file.as_str())).or_insert_with(|| load_module(d, v)).clone()?;
        Ok(Loaded { variant: v, func })
    }

    /// The embedded bytes of `v`'s artifact, checked against the manifest's size and sha256, so a stale build
    /// cannot launch an artifact the manifest does not describe.
    fn embedded(v: &Variant) -> std::result::Result<&'static [u8], String> {
        use sha2::{Digest, Sha256};
        let bytes = ARTIFACTS.iter().find(|(f, _)| *f == v.file).map(|(_, b)| *b);
        let bytes = bytes.ok_or_else(|| format!("{} is not embedded in this build", v.file))?;
        let hex: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        if bytes.len() as u64 != v.bytes || hex != v.sha256 {
            return Err(format!("{}: embedded bytes differ from the manifest", v.file));
        }
        Ok(bytes)
    }

    /// Loads the artifact's module (PTX with the NUL `cuModuleLoadData` reads it up to), its function, and the
    /// opt-in shared memory above 48 KiB when the variant needs it.
    fn load_module(d: &CudaDevice, v: &Variant) -> std::result::Result<CudaFunction, String> {
        let mut image = embedded(v)?.to_vec();
        if v.format == Format::Ptx {
            image.push(0);
        }
        let ctx = d.cuda_stream().context().clone();
        let module = ctx.load_module(Ptx::from_binary(image)).map_err(|e| format!("{}: {e}", v.file))?;
        let func = module.load_function(&v.symbol).map_err(|e| format!("{}: {}: {e}", v.file, v.symbol))?;
        if v.shared_bytes > 48 * 1024 {
            let attr = sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
            func.set_attribute(attr, v.shared_bytes as i32).map_err(|e| format!("{}: shared memory: {e}", v.file))?;
        }
        Ok(func)
    }

    /// Uninitialised device memory for `n` elements of `dtype` (every kernel writes each output element).
    fn alloc(dev: &CudaDevice, dtype: DType, n: usize) -> Result<CudaStorage> {
        // SAFETY: the buffer is fully written by the kernel before anything reads it.
        let slice = unsafe {
            match dtype {
                DType::BF16 => S::BF16(dev.alloc(n)?),
                DType::F16 => S::F16(dev.alloc(n)?),
                DType::F32 => S::F32(dev.alloc(n)?),
                d => bail!("fused kernels write bf16, f16 or f32, not {d:?}"),
            }
        };
        Ok(CudaStorage { slice, device: dev.clone() })
    }

    /// Runs `op` on `inputs`: allocates the output (and the workspace), takes every address, plans the launches
    /// with them and launches each with the kernel `op` was built with, in order on candle's stream.
    pub fn run<O: Fused>(op: &O, inputs: &[(&CudaStorage, &Layout)]) -> Result<(CudaStorage, Shape)> {
        let dev = &inputs[0].0.device;
        let dtype = inputs[0].0.dtype();
        let stream = dev.cuda_stream();
        let layouts: Vec<&Layout> = inputs.iter().map(|(_, l)| *l).collect();
        let shape = op.out_shape(&layouts)?;
        let mut out = alloc(dev, dtype, shape.elem_count())?;
        let n_work = op.workspace(&layouts);
        // SAFETY: the first launch writes every workspace value the second reads.
        let mut work = (n_work > 0).then(|| unsafe { dev.alloc::<f32>(n_work) }).transpose()?;
        {
            let mut guards = Vec::with_capacity(inputs.len() + 2);
            let mut addrs = Addrs::default();
            for (s, l) in inputs {
                let (p, g) = base(&s.slice, &stream)?;
                addrs.inputs.push(p + (l.start_offset() * s.dtype().size_in_bytes()) as u64);
                guards.push(g);
            }
            let (p, g) = base_mut(&mut out.slice, &stream)?;
            addrs.out = p;
            guards.push(g);
            if let Some(w) = work.as_mut() {
                let (p, g) = w.device_ptr_mut(&stream);
                addrs.workspace = p;
                guards.push(g);
            }
            let planned =
                op.launches(&layouts, &addrs).map_err(|m| candle_core::Error::Msg(format!("{}: {m}", op.op())))?;
            if planned.len() != op.kernels().len() {
                bail!("{}: {} launches planned, {} kernels loaded", op.op(), planned.len(), op.kernels().len());
            }
            for (p, k) in planned.iter().zip(op.kernels()) {
                if KernelDType::of(dtype) != Some(k.variant.dtype) || k.variant.kernel != p.kernel {
                    bail!("{}: {} was loaded for {}, not {dtype:?}", op.op(), k.variant.kernel, p.kernel);
                }
                let launch = finish(k.variant, &p.spec).map_err(candle_core::Error::Msg)?;
                launch_one(&stream, &k.func, &launch)?;
            }
        }
        Ok((out, shape))
    }

    /// One `cuLaunchKernel`: the values in parameter order (pointers as u64, i32, f32), hidden scratch pointers
    /// null unless the variant needs scratch memory (then a fresh aligned buffer, as Triton's own launcher does).
    fn launch_one(stream: &std::sync::Arc<CudaStream>, func: &CudaFunction, launch: &Launch) -> Result<()> {
        if launch.is_empty() {
            return Ok(());
        }
        enum Raw {
            U64(u64),
            I32(i32),
            F32(f32),
        }
        let mut scratch = Vec::new();
        let mut raw = Vec::with_capacity(launch.values.len());
        for v in &launch.values {
            raw.push(match *v {
                Value::Arg(Arg::Ptr(p)) => Raw::U64(p),
                Value::Arg(Arg::I32(i)) => Raw::I32(i),
                Value::Arg(Arg::F32(f)) => Raw::F32(f),
                Value::Scratch { bytes: 0, .. } => Raw::U64(0),
                Value::Scratch { bytes, align } => {
                    let buf = stream.alloc_zeros::<u8>((bytes + align) as usize).w()?;
                    let p = buf.device_ptr(stream).0;
                    scratch.push(buf);
                    Raw::U64(p.div_ceil(align) * align)
                }
            });
        }
        let mut b = stream.launch_builder(func);
        for r in &raw {
            match r {
                Raw::U64(p) => b.arg(p),
                Raw::I32(i) => b.arg(i),
                Raw::F32(f) => b.arg(f),
            };
        }
        let cfg =
            LaunchConfig { grid_dim: launch.grid, block_dim: launch.block, shared_mem_bytes: launch.shared_bytes };
        // SAFETY: the arguments follow the manifest's parameter list for this artifact (types checked in `finish`),
        // every pointer is a live buffer of the contract's size on this stream, and the block and shared memory
        // are the artifact's own.
        unsafe { b.launch(cfg) }.w()?;
        drop(scratch);
        Ok(())
    }

    /// The CUDA build's own embedded copy (runs in `cargo test --features cuda`, with or without a GPU): the
    /// manifest parses and every artifact it names is embedded with its recorded bytes.
    #[cfg(test)]
    #[test]
    fn every_artifact_is_embedded_as_the_manifest_says() {
        let m = manifest().expect("the embedded manifest parses");
        let bad: Vec<String> = m.variants.iter().filter_map(|v| embedded(v).err()).collect();
        assert!(bad.is_empty(), "{}", bad.join("\n"));
        assert_eq!(ARTIFACTS.len(), m.variants.len(), "embedded files the manifest does not list");
    }
}
