//! The compiled Triton kernels against their sources and the Rust launcher, on the CPU (no GPU, no `cuda` feature):
//!
//! - the manifest's recorded sha256 of every kernels/triton/*.py matches the file (and every such file is listed),
//!   every artifact exists with its recorded sha256 and size, and compiled/ holds nothing unlisted — a kernel
//!   edited without `scripts/kernels.py build` fails here;
//! - every variant the manifest lists is chosen by the selection for some launch the ops make, and that launch
//!   works out (parameter names and types in order, grid rule evaluable within the axis limits), so no artifact
//!   is unreachable or unlaunchable; and every (kernel, dtype, head dim) the models ask for has a variant on every
//!   GPU class from sm_80 up, save the documented gaps;
//! - the selection rule itself (capability → cubin / PTX / none, dtype, head dim, alignment, shared memory), the
//!   grid rules and the group norm split, by hand-worked cases.

use super::launch::{finish, Spec, Value};
use super::manifest::{pick_arch, Arg, Format, Gpu, GridExpr, Manifest, Miss, Variant};
use super::ops::{self, Addrs, ColsAct, Fused, Planned};
use candle_core::{DType, Device, Tensor};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(repo().join("kernels/triton/compiled/manifest.json")).expect("manifest.json");
    Manifest::parse(&text).expect("manifest.json parses into the launcher's types")
}

fn sha256(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    Some(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("compiled/ exists").flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn manifest_matches_the_kernel_sources_and_artifacts() {
    let m = manifest();
    let root = repo();
    let mut bad = Vec::new();
    let mut on_disk: Vec<String> = std::fs::read_dir(root.join("kernels/triton"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "py"))
        .map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = m.sources.keys().cloned().collect();
    if on_disk != listed {
        bad.push(format!("kernels/triton/*.py {on_disk:?} but the manifest lists {listed:?}"));
    }
    for (path, want) in &m.sources {
        match sha256(&root.join(path)) {
            Some(got) if &got == want => {}
            got => bad.push(format!("source {path}: manifest {want}, file {got:?}")),
        }
    }
    for v in &m.variants {
        let f = root.join(&v.file);
        let size = std::fs::metadata(&f).map(|md| md.len()).ok();
        if size != Some(v.bytes) || sha256(&f).as_deref() != Some(v.sha256.as_str()) {
            bad.push(format!("artifact {}: manifest {} bytes {}, file {size:?} bytes", v.file, v.bytes, v.sha256));
        }
    }
    let mut all = Vec::new();
    files_under(&root.join("kernels/triton/compiled"), &mut all);
    let files: BTreeSet<&str> = m.variants.iter().map(|v| v.file.as_str()).collect();
    for p in all {
        let rel = p.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
        if rel != "kernels/triton/compiled/manifest.json" && !files.contains(rel.as_str()) {
            bad.push(format!("{rel} is not in the manifest"));
        }
    }
    assert!(bad.is_empty(), "stale Triton artifacts: rebuild with scripts/kernels.py build\n{}", bad.join("\n"));
}

/// The manifest's own promises the launcher relies on: each variant's target is among `targets`, its shared
/// memory within the target's limit, one CTA of 32·warps threads, no scratch memory, and group norm built with the
/// block sizes the host rule in `ops` assumes.
#[test]
fn variants_keep_the_launch_contract() {
    let m = manifest();
    let mut bad = Vec::new();
    for v in &m.variants {
        let name = format!("{} {} {}", v.kernel, v.variant, v.arch);
        match m.targets.iter().find(|t| t.arch == v.arch) {
            Some(t) if t.capability == v.capability && t.emit == v.format && v.shared_bytes <= t.max_shared => {}
            t => bad.push(format!("{name}: target {t:?}")),
        }
        if v.num_ctas != 1 || v.threads_per_block != 32 * v.num_warps {
            bad.push(format!("{name}: {} CTAs, {} threads, {} warps", v.num_ctas, v.threads_per_block, v.num_warps));
        }
        let hidden: Vec<_> = v.params.iter().filter(|p| p.hidden).collect();
        if hidden.len() != 2
            || hidden.iter().any(|p| p.bytes_per_program != 0)
            || !v.params.iter().rev().take(2).all(|p| p.hidden)
        {
            bad.push(format!("{name}: hidden params {hidden:?}"));
        }
        let gn = |k: &str| v.constexprs.get(k).and_then(|c| c.as_u64());
        if v.op == "group_norm" && (gn("BLOCK") != Some(ops::GN_BLOCK as u64))
            || v.kernel == "group_norm_apply" && gn("SPLIT_BLOCK") != Some(ops::GN_SPLIT_BLOCK as u64)
        {
            bad.push(format!("{name}: group norm blocks {:?}", v.constexprs));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// A CPU tensor standing in for a GPU one: only its layout matters to the planning.
fn t(shape: &[usize]) -> Tensor {
    Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap()
}

/// Addresses as a GPU would give them: 256-byte aligned allocations, plus each view's offset in `elem` bytes.
fn addrs(inputs: &[&Tensor], elem: usize) -> Addrs {
    let base = |i: usize| 0x7f00_0000_0000u64 + (i as u64) * 0x100_0000;
    let inputs = inputs.iter().enumerate().map(|(i, t)| base(i) + (t.layout().start_offset() * elem) as u64);
    Addrs { inputs: inputs.collect(), out: base(100), workspace: base(101) }
}

/// One sample launch of each op, at small shapes, covering every kernel and compiled head dim (group norm with an
/// aligned and an unaligned plane size).
fn samples() -> Vec<(Box<dyn Fused>, Vec<Tensor>)> {
    let mut v: Vec<(Box<dyn Fused>, Vec<Tensor>)> = Vec::new();
    for d in [16, 32, 128] {
        let q = t(&[1, 2, 33, d]);
        v.push((Box::new(ops::Attention { scale: 0.1, kernels: vec![] }), vec![q.clone(), q.clone(), q]));
    }
    let m = t(&[2, 3 * 48]);
    let (x, sc, sh) = (t(&[2, 5, 48]), m.narrow(1, 48, 48).unwrap(), m.narrow(1, 0, 48).unwrap());
    v.push((Box::new(ops::LayerNormModulate { eps: 1e-6, kernels: vec![] }), vec![x.clone(), sc, sh]));
    let gate = m.narrow(1, 96, 48).unwrap();
    v.push((Box::new(ops::GatedResidual { kernels: vec![] }), vec![x.clone(), x, gate]));
    for d in [16, 128] {
        let (x, w) = (t(&[1, 5, 6 * d + 16]), t(&[d]));
        let angles = t(&[2, 9, d / 2]).narrow(1, 4, 5).unwrap();
        let op = ops::QkNormRope { col: 2 * d, heads: 2, eps: 1e-6, kernels: vec![] };
        v.push((Box::new(op), vec![x.clone(), w, angles]));
        v.push((Box::new(ops::HeadsFirst { col: 4 * d, heads: 2, d, kernels: vec![] }), vec![x]));
    }
    v.push((Box::new(ops::GeluTanh { kernels: vec![] }), vec![t(&[4, 16])]));
    for act in [ColsAct::Gelu, ColsAct::Swiglu] {
        v.push((Box::new(ops::Cols { act, col: 16, width: 32, kernels: vec![] }), vec![t(&[1, 5, 96])]));
    }
    for (h, w) in [(8, 8), (3, 5)] {
        let op = ops::GroupNormOp { groups: 8, eps: 1e-6, silu: true, kernels: vec![] };
        v.push((Box::new(op), vec![t(&[1, 32, h, w]), t(&[32]), t(&[32])]));
    }
    v
}

fn plan(op: &dyn Fused, inputs: &[Tensor], elem: usize) -> Vec<Planned> {
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let layouts: Vec<_> = inputs.iter().map(|t| t.layout()).collect();
    op.launches(&layouts, &addrs(&refs, elem)).unwrap_or_else(|m| panic!("{}: {m}", op.op()))
}

const GPUS: [u32; 7] = [80, 86, 87, 89, 90, 100, 120];

fn gpu(capability: u32) -> Gpu {
    Gpu { capability, max_shared: 227 * 1024 }
}

#[test]
fn every_variant_is_chosen_for_some_launch_and_launches() {
    let m = manifest();
    let mut used = BTreeSet::new();
    let mut bad = Vec::new();
    for (op, inputs) in samples() {
        for dtype in [DType::BF16, DType::F16, DType::F32] {
            for p in plan(op.as_ref(), &inputs, dtype.size_in_bytes()) {
                for cc in GPUS {
                    match m.select(gpu(cc), p.kernel, dtype, p.head_dim, &p.spec.args) {
                        Ok(v) => match finish(v, &p.spec) {
                            Ok(_) => _ = used.insert(v.file.clone()),
                            Err(e) => bad.push(e),
                        },
                        Err(miss) if super::fused::KNOWN_GAPS.contains(&(p.kernel, dtype, p.head_dim)) => {
                            assert_eq!(miss, Miss::HeadDim(p.head_dim.unwrap_or(0)), "{} {dtype:?}", p.kernel);
                        }
                        Err(miss) => bad.push(format!("{} {dtype:?} {:?} on {cc}: {miss}", p.kernel, p.head_dim)),
                    }
                }
            }
        }
    }
    let unused: Vec<_> = m.variants.iter().filter(|v| !used.contains(&v.file)).map(|v| &v.file).collect();
    assert!(bad.is_empty(), "launches the manifest cannot serve:\n{}", bad.join("\n"));
    assert!(unused.is_empty(), "variants no launch selects: {unused:?}");
}

fn aligned_args() -> Vec<(&'static str, Arg)> {
    vec![("q", Arg::Ptr(0x1000)), ("k", Arg::Ptr(0x2000)), ("v", Arg::Ptr(0x3000)), ("out", Arg::Ptr(0x4000))]
}

#[test]
fn capability_picks_the_cubin_then_the_ptx_then_nothing() {
    let m = manifest();
    let of = |kernel: &str, variant: &str| -> Vec<&Variant> {
        m.variants.iter().filter(|v| v.kernel == kernel && v.variant == variant).collect()
    };
    let attn = of("attention_fwd", "bf16.d128");
    assert_eq!(attn.len(), 5, "four cubins and the PTX");
    for (cc, want) in [
        (80, Some("sm80")),
        (86, Some("sm86")),
        (87, Some("sm86")), // Jetson Orin: the newest cubin of its major not newer than it
        (89, Some("sm89")),
        (90, Some("sm90")),
        (91, Some("ptx")), // sm_90a is arch-specific: no other 9.x may load it
        (100, Some("ptx")),
        (120, Some("ptx")),
        (75, None),
        (61, None),
    ] {
        assert_eq!(pick_arch(cc, &attn).as_deref(), want, "capability {cc}");
    }
    let v = m.select(gpu(90), "attention_fwd", DType::BF16, Some(128), &aligned_args()).unwrap();
    assert_eq!((v.format, v.target.as_str(), v.shared_bytes), (Format::Cubin, "sm_90a", 131072));
    let v = m.select(gpu(120), "attention_fwd", DType::F16, Some(128), &aligned_args()).unwrap();
    assert_eq!((v.format, v.file.as_str()), (Format::Ptx, "kernels/triton/compiled/ptx/attention_fwd.fp16.d128.ptx"));
    let miss = m.select(gpu(75), "attention_fwd", DType::F16, Some(128), &aligned_args()).unwrap_err();
    assert_eq!(miss, Miss::Capability(75));
    assert_eq!(miss.to_string(), "compute capability 7.5 < 8.0");
}

#[test]
fn dtype_head_dim_alignment_and_shared_memory_decide_or_refuse() {
    let m = manifest();
    let sel = |g: Gpu, k: &str, dt, d, args: &[(&'static str, Arg)]| m.select(g, k, dt, d, args).map(|v| &v.variant);
    let a = aligned_args();
    assert_eq!(sel(gpu(90), "attention_fwd", DType::F64, Some(16), &a), Err(Miss::DType("f64".into())));
    // f32 attention exists for D = 16 and 32 only; the real VAE's D = 512 has no variant in any dtype.
    assert_eq!(sel(gpu(90), "attention_fwd", DType::F32, Some(32), &a).map(String::as_str), Ok("fp32.d32"));
    assert_eq!(sel(gpu(90), "attention_fwd", DType::F32, Some(128), &a), Err(Miss::HeadDim(128)));
    assert_eq!(sel(gpu(90), "attention_fwd", DType::BF16, Some(512), &a), Err(Miss::HeadDim(512)));
    // A pointer off 16 bytes (a bf16 view starting at an odd element) and no unaligned variant: the composition.
    let mut off = a.clone();
    off[1] = ("k", Arg::Ptr(0x2002));
    assert_eq!(sel(gpu(90), "attention_fwd", DType::BF16, Some(16), &off), Err(Miss::Alignment));
    // An int the aligned variant assumes a multiple of 16.
    let lnm = |d: i32, stride: i32| {
        let spec = Spec::new().ptr("x", 0).ptr("scale", 0x100).ptr("shift", 0x200).ptr("out", 0x300);
        let mut spec = spec.int("S", 7).float("eps", 1e-6);
        spec.args.extend([("D", Arg::I32(d)), ("mod_stride", Arg::I32(stride))]);
        spec.args
    };
    assert_eq!(
        sel(gpu(86), "layer_norm_modulate", DType::F16, None, &lnm(48, 144)).map(String::as_str),
        Ok("fp16.a16")
    );
    assert_eq!(sel(gpu(86), "layer_norm_modulate", DType::F16, None, &lnm(40, 120)), Err(Miss::Alignment));
    assert_eq!(sel(gpu(86), "layer_norm_modulate", DType::F16, None, &lnm(48, 40)), Err(Miss::Alignment));
    // Group norm has unaligned variants: an odd plane size takes them instead of the composition.
    let gn = |hw: i32| {
        let spec = Spec::new().ptr("x", 0).ptr("part", 0x100).ptr("weight", 0x200).ptr("bias", 0x300);
        let mut spec = spec.ptr("out", 0x400).int("C", 32).int("cpg", 4).int("group_len", 4 * hw as usize);
        spec.args.push(("HW", Arg::I32(hw)));
        spec.args
    };
    assert_eq!(sel(gpu(89), "group_norm_apply", DType::BF16, None, &gn(64)).map(String::as_str), Ok("bf16.a16"));
    assert_eq!(sel(gpu(89), "group_norm_apply", DType::BF16, None, &gn(15)).map(String::as_str), Ok("bf16.any"));
    // Shared memory beyond what the GPU grants a block (the sm80 cubin wants 96 KiB).
    let small = Gpu { capability: 80, max_shared: 64 * 1024 };
    assert_eq!(sel(small, "attention_fwd", DType::BF16, Some(128), &a), Err(Miss::SharedMemory(98304)));
}

#[test]
fn flux_attention_launches_as_the_readme_says() {
    // FLUX.1-dev at 1024²: B = 1, H = 24, S = 4608, D = 128, on an H100 / H200 (sm_90a cubin).
    let m = manifest();
    let q = t(&[1, 24, 4608, 128]);
    let op = ops::Attention { scale: 1.0 / 128f64.sqrt(), kernels: vec![] };
    let p = plan(&op, &[q.clone(), q.clone(), q], 2).remove(0);
    let v = m.select(gpu(90), p.kernel, DType::BF16, p.head_dim, &p.spec.args).unwrap();
    let l = finish(v, &p.spec).unwrap();
    assert_eq!((l.grid, l.block, l.shared_bytes), ((36, 24, 1), (256, 1, 1), 131072));
    let a = addrs(&[], 2);
    let base = 0x7f00_0000_0000u64;
    let want = [
        Value::Arg(Arg::Ptr(base)),
        Value::Arg(Arg::Ptr(base + 0x100_0000)),
        Value::Arg(Arg::Ptr(base + 0x200_0000)),
        Value::Arg(Arg::Ptr(a.out)),
        Value::Arg(Arg::I32(4608)),
        Value::Arg(Arg::I32(24)),
        Value::Arg(Arg::F32((1.0 / 128f64.sqrt()) as f32)),
        Value::Scratch { bytes: 0, align: 1 },
        Value::Scratch { bytes: 0, align: 1 },
    ];
    assert_eq!(l.values, want);
}

#[test]
fn launches_carry_views_strides_and_offsets() {
    // A modulation chunk as a view of [B, 3·D]: the row stride is 3·D and the pointer sits at the chunk.
    let m = t(&[2, 3 * 48]);
    let (x, sc, sh) = (t(&[2, 5, 48]), m.narrow(1, 48, 48).unwrap(), m.narrow(1, 0, 48).unwrap());
    let p = plan(&ops::LayerNormModulate { eps: 1e-6, kernels: vec![] }, &[x, sc, sh], 2).remove(0);
    let get = |n: &str| p.spec.args.iter().find(|(k, _)| *k == n).unwrap().1;
    assert_eq!(get("mod_stride"), Arg::I32(144));
    assert_eq!(get("scale"), Arg::Ptr(0x7f00_0000_0000 + 0x100_0000 + 96));
    // The RoPE rows of positions 4..9 of a 9-row table: cos at row 4, sin one table further.
    let angles = t(&[2, 9, 8]).narrow(1, 4, 5).unwrap();
    let op = ops::QkNormRope { col: 32, heads: 2, eps: 1e-6, kernels: vec![] };
    let p = plan(&op, &[t(&[1, 5, 112]), t(&[16]), angles], 4).remove(0);
    let get = |n: &str| p.spec.args.iter().find(|(k, _)| *k == n).unwrap().1;
    let cos = 0x7f00_0000_0000 + 2 * 0x100_0000 + 4 * 8 * 4;
    assert_eq!((get("cos"), get("sin")), (Arg::Ptr(cos), Arg::Ptr(cos + 9 * 8 * 4)));
    // A layout the kernel cannot read is refused at planning, before any choice is made.
    let strided = t(&[1, 5, 112]).transpose(1, 2).unwrap().transpose(1, 2).unwrap().narrow(1, 0, 4).unwrap();
    assert!(strided.is_contiguous(), "a row range stays contiguous");
    let ragged = t(&[1, 112, 5]).transpose(1, 2).unwrap();
    let layouts = [ragged.layout()];
    let miss = ops::HeadsFirst { col: 0, heads: 2, d: 16, kernels: vec![] }.launches(&layouts, &addrs(&[&ragged], 2));
    assert_eq!(miss.unwrap_err(), Miss::Layout);
}

#[test]
fn sizes_past_i32_are_refused() {
    let big = Spec::new().int("n", 1 << 31);
    assert_eq!(big.check_size(&[]), Err(Miss::TooLarge));
    assert_eq!(Spec::new().int("n", (1 << 31) - 1).check_size(&[1 << 31]), Err(Miss::TooLarge));
    assert_eq!(Spec::new().int("n", (1 << 31) - 1).check_size(&[5]), Ok(()));
}

#[test]
fn group_norm_splits_follow_the_host_rule() {
    assert_eq!(ops::group_split(4 << 20), (64, 65536)); // a 1024² decode's 128-channel level, 32 groups
    assert_eq!(ops::group_split(36864), (2, 18432));
    assert_eq!(ops::group_split(15), (1, 1024));
    for len in (1..200_000).step_by(997).chain([1 << 20, 3 << 22, (1 << 31) - 1]) {
        let (nsplit, chunk) = ops::group_split(len);
        assert!((1..=64).contains(&nsplit) && chunk % ops::GN_BLOCK == 0, "{len}: {nsplit} × {chunk}");
        assert!(nsplit * chunk >= len && (nsplit - 1) * chunk < len, "{len}: {nsplit} × {chunk}, a split empty");
    }
}

#[test]
fn grid_rules_parse_and_evaluate() {
    let e = |s: &str| GridExpr::try_from(s.to_string());
    let sym = |s: &str| match s {
        "S" => Some(4608),
        "B" => Some(2),
        "H" => Some(24),
        _ => None,
    };
    assert_eq!(e("cdiv(S, 128)").unwrap().eval(&sym), Ok(36));
    assert_eq!(e("B * H").unwrap().eval(&sym), Ok(48));
    assert_eq!(e("(B + 1) * cdiv(S - 1, 64) - 3").unwrap().eval(&sym), Ok(3 * 72 - 3));
    assert_eq!(e("B * H").unwrap().symbols(), vec!["B", "H"]);
    assert!(e("cdiv(S 128)").is_err() && e("B * ").is_err() && e("S % 2").is_err() && e("B H").is_err());
    assert!(e("nsplit").unwrap().eval(&sym).unwrap_err().contains("nsplit"));
}

#[test]
fn fused_is_refused_on_the_cpu_and_counts_what_ran() {
    let err = super::Kernels::Fused.check(&Device::Cpu).unwrap_err();
    assert!(err.starts_with("--kernels fused needs a CUDA device") && !err.contains('\n'), "{err}");
    // On the CPU no kernel can be chosen: a fused call gives None (the composition runs) and is counted.
    super::fused::reset_stats();
    let x = t(&[2, 4, 32]);
    assert!(super::fused::gelu_tanh(&x).unwrap().is_none());
    assert!(super::fused::summary().starts_with("fused kernels: gelu_tanh 0 launched, 1 composed (not loaded: "));
    super::fused::reset_stats();
    assert_eq!(super::fused::summary(), "fused kernels: none called");
}
