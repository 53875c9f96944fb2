#!/usr/bin/env python3
"""The Triton kernels in kernels/triton/: interpreter tests, ahead-of-time build, manifest check.

  python scripts/kernels.py test   [--only OP ...]   every kernel in TRITON_INTERPRET=1 (CPU, no GPU) against a
                                                     float64 torch reference, f32 / bf16 / f16, ragged shapes
  python scripts/kernels.py build  [--jobs N]        compile every variant for sm_80 / 86 / 89 / 90 (cubin) and
                                                     PTX, write kernels/triton/compiled/ and its manifest.json
  python scripts/kernels.py check                    the manifest's source and artifact hashes match the files
                                                     (needs neither Triton nor torch)

Set up (outside the repository): python3 -m venv /work/venvs/kernels &&
/work/venvs/kernels/bin/pip install -r scripts/requirements-kernels.txt
"""

import argparse
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KDIR = REPO / "kernels" / "triton"
CDIR = KDIR / "compiled"
MANIFEST = CDIR / "manifest.json"
# One module per op: every kernels/triton/*.py not starting with "_" (so a new kernel file cannot be left out).
MODULES = sorted(p.stem for p in KDIR.glob("*.py") if not p.name.startswith("_"))
SCHEMA = 1


def rel(p):
    return Path(p).resolve().relative_to(REPO).as_posix()


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def source_files():
    """Every .py file in kernels/triton/ (the kernels and _targets.py), sorted by repo-relative path."""
    return sorted(KDIR.glob("*.py"), key=rel)


def source_hashes():
    return {rel(p): sha256(p) for p in source_files()}


# --------------------------------------------------------------------------------------------------------- check


def cmd_check(_args):
    if not MANIFEST.exists():
        print(f"missing {rel(MANIFEST)}: run scripts/kernels.py build")
        return 1
    m = json.loads(MANIFEST.read_text())
    bad = []
    want = source_hashes()
    if m.get("sources") != want:
        for path in sorted(set(want) | set(m.get("sources", {}))):
            got, exp = want.get(path), m.get("sources", {}).get(path)
            if got != exp:
                bad.append(f"source {path}: manifest {exp or 'absent'}, file {got or 'absent'}")
    listed = set()
    for v in m["variants"]:
        f = REPO / v["file"]
        listed.add(v["file"])
        if not f.exists():
            bad.append(f"artifact {v['file']} missing")
        elif sha256(f) != v["sha256"]:
            bad.append(f"artifact {v['file']}: sha256 differs from the manifest")
    on_disk = {rel(p) for p in CDIR.rglob("*") if p.is_file() and p != MANIFEST}
    for extra in sorted(on_disk - listed):
        bad.append(f"artifact {extra} is not in the manifest")
    for line in bad:
        print("STALE:", line)
    if bad:
        print(f"{len(bad)} problem(s): rebuild with scripts/kernels.py build")
        return 1
    total = sum((REPO / v["file"]).stat().st_size for v in m["variants"])
    print(f"manifest ok: {len(want)} sources, {len(m['variants'])} artifacts, {total} bytes")
    return 0


# --------------------------------------------------------------------------------------------------------- build


def _import_kernels():
    sys.path.insert(0, str(KDIR))
    return {name: importlib.import_module(name) for name in MODULES}, importlib.import_module("_targets")


def _constexpr_names(fn):
    return [p.name for p in fn.params if p.is_constexpr]


def _param_names(fn):
    return [p.name for p in fn.params if not p.is_constexpr]


PTX_PARAM = re.compile(r"\.param\s+\.(\w+)(?:\s+\.ptr\s+\.global\s+\.align\s+\d+)?\s+(\w+)")


def _ptx_entry_params(ptx, symbol):
    """The .param types of the .entry `symbol` in PTX text, in order."""
    m = re.search(r"\.entry\s+" + re.escape(symbol) + r"\s*\((.*?)\)", ptx, re.S)
    if not m:
        raise RuntimeError(f"no .entry {symbol} in the PTX")
    return [t for t, _ in PTX_PARAM.findall(m.group(1))]


def _jobs(mods):
    """Every (module, kernel, variant) to compile, in a fixed order."""
    out = []
    for mname in MODULES:
        mod = mods[mname]
        for kname, k in mod.KERNELS.items():
            for var in mod.variants():
                out.append((mname, kname, var["name"]))
    return out


def _compile_one(job):
    """Compile one (module, kernel, variant) for every target. Runs in a worker process."""
    mname, kname, vname = job
    mods, targets = _import_kernels()
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    mod = mods[mname]
    k = mod.KERNELS[kname]
    fn = k["fn"]
    var = next(v for v in mod.variants() if v["name"] == vname)
    dtype = var["dtype"]
    names = _param_names(fn)
    declared = [n for n, _ in k["params"]]
    if [n.removesuffix("_ptr") for n in names] != declared:
        raise RuntimeError(f"{kname}: KERNELS params {declared} do not match the function's {names}")
    types = [t.replace("T", dtype) if t.startswith("*T") else t for _, t in k["params"]]
    results = []
    for tgt in targets.TARGETS:
        cfg = var["config"](tgt["config"])
        cexpr = {n: cfg["constexprs"][n] for n in _constexpr_names(fn)}
        sig = dict(zip(names, types))
        sig.update({n: "constexpr" for n in cexpr})
        attrs = {}
        if var["aligned"]:
            for i, (n, t) in enumerate(k["params"]):
                if t.startswith("*") or n in k["align_ints"]:
                    attrs[(fn.arg_names.index(names[i]),)] = [["tt.divisibility", 16]]
        opts = dict(targets.OPTIONS, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        ck = triton.compile(
            ASTSource(fn, sig, cexpr, attrs), target=GPUTarget("cuda", tgt["capability"], 32), options=opts
        )
        md = ck.metadata
        ptx = ck.asm["ptx"]
        data = ck.asm["cubin"] if tgt["emit"] == "cubin" else ptx.encode()
        ptx_types = _ptx_entry_params(ptx, md.name)
        hidden = [
            ("global_scratch", md.global_scratch_size, md.global_scratch_align),
            ("profile_scratch", md.profile_scratch_size, md.profile_scratch_align),
        ]
        if len(ptx_types) != len(names) + len(hidden):
            raise RuntimeError(
                f"{kname}.{vname}.{tgt['arch']}: the PTX entry has {len(ptx_types)} parameters, expected "
                f"{len(names)} + {len(hidden)} hidden"
            )
        params = []
        for (n, t), pt in zip(zip(declared, types), ptx_types):
            params.append({"name": n, "type": t, "ptx": pt})
        for (n, size, align), pt in zip(hidden, ptx_types[len(names) :]):
            params.append(
                {"name": n, "type": "*i8", "ptx": pt, "hidden": True, "bytes_per_program": size, "align": align}
            )
        if md.shared > tgt["max_shared"]:
            raise RuntimeError(
                f"{kname}.{vname}.{tgt['arch']}: {md.shared} bytes of shared memory > {tgt['max_shared']}"
            )
        for unsupported in ("launch_cooperative_grid", "launch_pdl"):
            if getattr(md, unsupported):
                raise RuntimeError(f"{kname}.{vname}: {unsupported} is set; the launch recipe does not cover it")
        if md.num_ctas != 1 or getattr(md, "tmem_size", 0) or md.tensordesc_meta:
            raise RuntimeError(f"{kname}.{vname}: clusters / tensor memory / TMA descriptors are not covered")
        ver = re.search(r"^\.version\s+(\S+)", ptx, re.M).group(1)
        tline = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        sub = {n: str(v) for n, v in cexpr.items() if isinstance(v, int)}
        grid = [re.sub(r"\b[A-Z_][A-Z0-9_]*\b", lambda m: sub.get(m.group(0), m.group(0)), g) for g in k["grid"]]
        results.append(
            {
                "data": data,
                "entry": {
                    "op": mname,
                    "kernel": kname,
                    "variant": vname,
                    "arch": tgt["arch"],
                    "format": tgt["emit"],
                    "target": tline,
                    "capability": tgt["capability"],
                    "ptx_version": ver,
                    "symbol": md.name,
                    "dtype": dtype,
                    "aligned": var["aligned"],
                    # what the aligned specialisation assumes: these pointers are 16-byte aligned, these ints are
                    # multiples of 16 (a launcher checks them, else takes an "any" variant or the composition)
                    "requires": {
                        "ptr_align_16_bytes": (
                            [n for n, t in k["params"] if t.startswith("*")] if var["aligned"] else []
                        ),
                        "int_multiple_of_16": list(k["align_ints"]) if var["aligned"] else [],
                    },
                    "constexprs": cexpr,
                    "params": params,
                    "num_warps": md.num_warps,
                    "threads_per_block": 32 * md.num_warps,
                    "num_stages": md.num_stages,
                    "num_ctas": md.num_ctas,
                    "shared_bytes": md.shared,
                    "grid": grid,
                    "grid_symbolic": list(k["grid"]),
                },
            }
        )
    return job, results


def _manifest_text(manifest):
    """Pretty at the top, one line per variant: compact, and a rebuild's diff shows one line per changed artifact."""
    head = {k: v for k, v in manifest.items() if k != "variants"}
    text = json.dumps(head, indent=1)[:-2] + ',\n "variants": [\n'
    text += ",\n".join("  " + json.dumps(e, separators=(",", ":")) for e in manifest["variants"])
    out = text + "\n ]\n}\n"
    assert json.loads(out) == manifest
    return out


def cmd_build(args):
    sys.path.insert(0, str(KDIR))
    targets = importlib.import_module("_targets")  # no Triton import yet: the knobs below must come first
    for key, val in targets.ENV.items():
        os.environ[key] = val
    cache = tempfile.mkdtemp(prefix="triton-cache-")
    os.environ["TRITON_CACHE_DIR"] = cache  # a fresh cache: every artifact is compiled by this run
    import triton

    if triton.__version__ != targets.TRITON_VERSION:
        print(f"Triton {triton.__version__} is installed; the build needs exactly {targets.TRITON_VERSION}")
        return 1
    bindir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptxas = bindir / targets.PTXAS
    os.environ["TRITON_PTXAS_PATH"] = str(ptxas)
    os.environ["TRITON_PTXAS_BLACKWELL_PATH"] = str(ptxas)
    import subprocess

    ptxas_version = re.search(r"release (\S+), V(\S+)", subprocess.check_output([str(ptxas), "--version"]).decode())
    mods, _ = _import_kernels()
    jobs = _jobs(mods)
    t0 = time.time()
    print(f"compiling {len(jobs)} kernel variants × {len(targets.TARGETS)} targets with Triton {triton.__version__}")
    if args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            done = pool.map(_compile_one, jobs)
    else:
        done = [_compile_one(j) for j in jobs]
    shutil.rmtree(cache, ignore_errors=True)

    staging = Path(tempfile.mkdtemp(prefix="compiled-", dir=KDIR))
    entries = []
    try:
        for (mname, kname, vname), results in done:
            for r in results:
                e = r["entry"]
                ext = "cubin" if e["format"] == "cubin" else "ptx"
                relfile = Path(e["arch"]) / f"{kname}.{vname}.{ext}"
                out = staging / relfile
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(r["data"])
                e["file"] = rel(CDIR / relfile)
                e["sha256"] = hashlib.sha256(r["data"]).hexdigest()
                e["bytes"] = len(r["data"])
                if e["format"] == "cubin":
                    e["ptxas"] = ptxas_version.group(2)
                entries.append(e)
        names = [e["file"] for e in entries]
        if len(set(names)) != len(names):
            raise RuntimeError("two variants map to the same artifact file")
        manifest = {
            "schema": SCHEMA,
            "triton_version": triton.__version__,
            "ptxas_cuda_version": ptxas_version.group(1),
            "options": targets.OPTIONS,
            "sources": source_hashes(),
            "targets": targets.TARGETS,
            "variants": entries,
        }
        (staging / "manifest.json").write_text(_manifest_text(manifest))
        shutil.rmtree(CDIR, ignore_errors=True)
        staging.rename(CDIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(e["bytes"] for e in entries)
    print(f"wrote {len(entries)} artifacts ({total} bytes) and {rel(MANIFEST)} in {time.time() - t0:.0f} s")
    return cmd_check(args)


# ---------------------------------------------------------------------------------------------------------- test
#
# Each case runs a kernel in the interpreter (the same constexprs as its compiled variants) and compares it with
# the exact maths in float64. The error measure is
#     err = max |kernel − reference| / max |reference|
# in units of the dtype's unit roundoff u (f32 2⁻²⁴, f16 2⁻¹¹, bf16 2⁻⁸): rounding a result once to the dtype gives
# err ≤ 1 u. The "composed" column is the same measure for the candle composition in src/kernels/mod.rs (mirrored
# in torch in each kernel file), the path the kernel replaces on CUDA.

U = {"fp32": 2.0**-24, "fp16": 2.0**-11, "bf16": 2.0**-8}

# Tolerances in u. Measured worst over every case below with --seeds 6 (the default runs seeds 0 and 1), kernel vs
# the float64 reference; "composed" is the same measure for the composition the kernel replaces:
#
#   op                   bf16: kernel / composed   f16: kernel / composed   f32: kernel / composed
#   attention                  0.88 /  7.37              0.84 /  7.16            15.7 / 16.0
#   layer_norm_modulate        0.89 /  1.92              0.65 /  1.96            2.91 / 3.15
#   gated_residual             0.93 /  1.06              0.95 /  1.40            1.27 / 1.27
#   qk_norm_rope               0.90 /  0.90              0.91 /  0.91            3.14 / 3.29
#   heads_first                0    /  —                 0    /  —               0    / —
#   gelu_tanh                  0.64 /  0.64              0.69 /  0.69            1.31 / 1.31
#   gelu_tanh_cols             0.38 /  0.38              0.38 /  0.38            0.65 / 0.59
#   swiglu                     0.84 /  1.09              0.69 /  1.27            1.97 / 1.97
#   group_norm                 0.89 /  2.23              0.85 /  2.43            4.80 / 3.32
#
# bf16 / f16: every kernel computes in f32 and rounds once, so the bound is 1 u (the final rounding) plus the f32
# error before it (≪ 0.01 u of bf16/f16): tolerance 1.25 u. Attention also rounds the probabilities to T before
# the p·v dot, as the composition and tensor cores do: measured 0.88 u, tolerance 1.5 u. f32: the f32 arithmetic
# chain itself, about 1.5× the worst measured. The interpreter computes with numpy's IEEE f32; on the device exp /
# exp2 lower to ex2.approx (relative error ≤ 2⁻²²), `/` to div.full (≤ 2 ulp) and dots accumulate in another
# order: invisible at bf16 / f16 (≪ 0.01 u), but worth a few u in f32 — a device test should allow ~4 u more there.
TOL = {
    "attention": {"fp32": 24, "fp16": 1.5, "bf16": 1.5},
    "layer_norm_modulate": {"fp32": 4.5, "fp16": 1.25, "bf16": 1.25},
    "gated_residual": {"fp32": 2, "fp16": 1.25, "bf16": 1.25},
    "qk_norm_rope": {"fp32": 5, "fp16": 1.25, "bf16": 1.25},
    "heads_first": {"fp32": 0, "fp16": 0, "bf16": 0},  # a copy: exact
    "gelu_tanh": {"fp32": 2, "fp16": 1.25, "bf16": 1.25},
    "gelu_tanh_cols": {"fp32": 2, "fp16": 1.25, "bf16": 1.25},
    "swiglu": {"fp32": 3, "fp16": 1.25, "bf16": 1.25},
    "group_norm": {"fp32": 7, "fp16": 1.25, "bf16": 1.25},
}


def _patch_interpreter():
    """Triton 3.9's interpreter multiplies bf16 dot operands as their uint16 bit patterns (np.matmul on the raw
    storage). Tensor cores multiply the bf16 values exactly and accumulate in f32: emulate that by widening bf16
    operands to f32 (exact) before the interpreter's matmul. Only the test harness is patched, not a kernel."""
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter as interp

    orig = interp.InterpreterBuilder.create_dot

    def widen(h):
        if h.get_element_ty() == tl.bfloat16:
            return interp.TensorHandle((h.data.astype(np.uint32) << 16).view(np.float32), tl.float32)
        return h

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        return orig(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    interp.InterpreterBuilder.create_dot = create_dot

    # Its f32 → bf16 cast truncates (round toward zero); the GPU rounds to nearest even (cvt.rn.bf16.f32), and so
    # does torch. Emulate the GPU.
    orig_cast = interp.InterpreterBuilder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bits = np.ascontiguousarray(src.data, dtype=np.float32).view(np.uint32)
            rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
                np.uint16
            )
            nan = np.isnan(src.data)
            out = np.where(nan, np.uint16(0x7FC0), rounded).astype(np.uint16)
            return interp.TensorHandle(out, tl.bfloat16)
        return orig_cast(self, src, dst_type)

    interp.InterpreterBuilder.cast_impl = cast_impl  # create_fp_trunc & co. call self.cast_impl


class Results:
    def __init__(self):
        self.rows = []
        self.worst = {}
        self.failed = 0

    def add(self, op, dtype, shape, got, ref, comp):
        import torch

        scale = ref.abs().max().item() or 1.0
        err = (got.double() - ref).abs().max().item() / scale / U[dtype]
        cerr = (comp.double() - ref).abs().max().item() / scale / U[dtype] if comp is not None else float("nan")
        finite = bool(torch.isfinite(got.double()).all())
        ok = finite and err <= TOL[op][dtype]
        self.failed += not ok
        key = (op, dtype)
        w = self.worst.setdefault(key, [0.0, 0.0])
        w[0] = max(w[0], err)
        w[1] = max(w[1], cerr) if cerr == cerr else w[1]
        self.rows.append(
            f"{'ok ' if ok else 'FAIL'} {op:20s} {dtype:5s} {shape:34s} err {err:7.3f} u   composed {cerr:7.3f} u"
        )
        print(self.rows[-1], flush=True)


def _dt(name):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def _configs(mod, dtype, **kw):
    """The distinct constexpr configs a module's variants of `dtype` compile with (over all targets)."""
    import _targets

    seen, out = set(), []
    for v in mod.variants():
        if v["dtype"] != dtype or ("d" in kw and v["name"] != f"{dtype}.d{kw['d']}"):
            continue
        for t in _targets.TARGETS:
            cfg = v["config"](t["config"])
            key = json.dumps(cfg["constexprs"], sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(cfg)
    return out


def test_attention(res, mods, dtypes, seeds):
    import torch

    A = mods["attention"]
    shapes = [(2, 2, 1), (2, 2, 17), (1, 2, 77), (2, 1, 130), (1, 1, 300)]
    for dtype in dtypes:
        for d in A.HEAD_DIMS[dtype]:
            for cfg in _configs(A, dtype, d=d):
                for B, H, S in shapes:
                    for seed in seeds:
                        g = torch.Generator().manual_seed(seed)
                        q, k, v = (torch.randn(B, H, S, d, generator=g) for _ in range(3))
                        q = q * (1 + 3 * (seed % 2))  # odd seeds: peaked softmax, many running-max updates
                        q, k, v = (t.to(_dt(dtype)) for t in (q, k, v))
                        scale = d**-0.5
                        got = A.launch(q, k, v, scale, cfg)
                        c = cfg["constexprs"]
                        res.add(
                            "attention",
                            dtype,
                            f"B{B} H{H} S{S} D{d} bm{c['BLOCK_M']} bn{c['BLOCK_N']} s{seed}",
                            got,
                            A.reference(q, k, v, scale),
                            A.composed(q, k, v, scale),
                        )


def test_layer_norm_modulate(res, mods, dtypes, seeds):
    import torch

    L = mods["layer_norm_modulate"]
    for dtype in dtypes:
        (cfg,) = _configs(L, dtype)
        for B, S, D in [(1, 1, 32), (2, 17, 130), (2, 5, 3072)]:
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                x = (torch.randn(B, S, D, generator=g) * 2 + 3 * (seed % 2)).to(_dt(dtype))  # odd: mean offset
                mod = (torch.randn(B, 6 * D, generator=g) * 0.5).to(_dt(dtype))
                scale, shift = mod[:, D : 2 * D], mod[:, 0:D]  # views with row stride 6·D, as chunks() gives
                got = L.launch(x, scale, shift, 1e-6, cfg)
                res.add(
                    "layer_norm_modulate",
                    dtype,
                    f"B{B} S{S} D{D} s{seed}",
                    got,
                    L.reference(x, scale, shift, 1e-6),
                    L.composed(x, scale, shift, 1e-6),
                )


def test_gated_residual(res, mods, dtypes, seeds):
    import torch

    G = mods["gated_residual"]
    for dtype in dtypes:
        (cfg,) = _configs(G, dtype)
        for B, S, D in [(1, 1, 16), (2, 17, 130), (1, 3, 3072)]:
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                x, y = (torch.randn(B, S, D, generator=g).to(_dt(dtype)) for _ in range(2))
                gate = torch.randn(B, 3 * D, generator=g).to(_dt(dtype))[:, D : 2 * D]
                got = G.launch(x, y, gate, cfg)
                res.add(
                    "gated_residual",
                    dtype,
                    f"B{B} S{S} D{D} s{seed}",
                    got,
                    G.reference(x, y, gate),
                    G.composed(x, y, gate),
                )


def _qkv(B, S, heads, d, extra, dtype, g):
    import torch

    W = 3 * heads * d + extra
    return (torch.randn(B, S, W, generator=g) * 3).to(_dt(dtype)), W


def test_qk_norm_rope(res, mods, dtypes, seeds):
    import torch

    Q = mods["qk_norm_rope"]
    for dtype in dtypes:
        for d in Q.HEAD_DIMS:
            (cfg,) = _configs(Q, dtype, d=d)
            for B, S, heads in [(1, 1, 1), (2, 17, 3), (1, 7, 19)]:
                for seed in seeds:
                    g = torch.Generator().manual_seed(seed)
                    x, W = _qkv(B, S, heads, d, 40, dtype, g)
                    weight = (torch.rand(d, generator=g) + 0.5).to(_dt(dtype))
                    ang = torch.rand(S, d // 2, generator=g, dtype=torch.float64) * 100
                    cos, sin = ang.cos().float(), ang.sin().float()
                    for col in (0, heads * d):
                        got = Q.launch(x, col, heads, weight, 1e-6, cos, sin, cfg)
                        res.add(
                            "qk_norm_rope",
                            dtype,
                            f"B{B} S{S} H{heads} D{d} W{W} col{col} s{seed}",
                            got,
                            Q.reference(x, col, heads, weight, 1e-6, cos, sin),
                            Q.composed(x, col, heads, weight, 1e-6, cos, sin),
                        )


def test_heads_first(res, mods, dtypes, seeds):
    import torch

    F = mods["heads_first"]
    for dtype in dtypes:
        for d in F.HEAD_DIMS:
            (cfg,) = _configs(F, dtype, d=d)
            for B, S, heads in [(1, 1, 1), (2, 17, 3), (1, 7, 19)]:
                g = torch.Generator().manual_seed(seeds[0])
                x, W = _qkv(B, S, heads, d, 40, dtype, g)
                col = 2 * heads * d
                got = F.launch(x, col, heads, d, cfg)
                ref = F.reference(x, col, heads, d)
                res.add("heads_first", dtype, f"B{B} S{S} H{heads} D{d} W{W} col{col}", got, ref.double(), None)


def test_gelu(res, mods, dtypes, seeds):
    import torch

    M = mods["gelu_tanh"]
    for dtype in dtypes:
        (cfg,) = _configs(M, dtype)
        for n in (1, 1000, 5000):
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                # σ = 4 puts values deep in the negative tail, where the output underflows; the measure is relative
                # to the largest output, so a lone element (n = 1) is drawn with σ = 1
                x = (torch.randn(n, generator=g) * (4 if n > 1 else 1)).to(_dt(dtype))
                res.add("gelu_tanh", dtype, f"n{n} s{seed}", M.launch_flat(x, cfg), M.reference(x), M.composed(x))
        for B, S, W, col, width in [(1, 1, 16, 0, 16), (2, 17, 300, 37, 130), (1, 3, 3000, 200, 2500)]:
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                x = (torch.randn(B, S, W, generator=g) * 4).to(_dt(dtype))
                sl = x[..., col : col + width]
                res.add(
                    "gelu_tanh_cols",
                    dtype,
                    f"B{B} S{S} W{W} col{col} width{width} s{seed}",
                    M.launch_cols(x, col, width, cfg),
                    M.reference(sl),
                    M.composed(sl),
                )


def test_swiglu(res, mods, dtypes, seeds):
    import torch

    M = mods["swiglu"]
    for dtype in dtypes:
        (cfg,) = _configs(M, dtype)
        for B, S, W, col, width in [(1, 1, 2, 0, 1), (2, 17, 500, 64, 200), (1, 3, 3000, 96, 1300)]:
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                x = (torch.randn(B, S, W, generator=g) * 3).to(_dt(dtype))
                res.add(
                    "swiglu",
                    dtype,
                    f"B{B} S{S} W{W} col{col} width{width} s{seed}",
                    M.launch(x, col, width, cfg),
                    M.reference(x, col, width),
                    M.composed(x, col, width),
                )


def test_group_norm(res, mods, dtypes, seeds):
    import torch

    N = mods["group_norm"]
    cases = [  # B, C, H, W, groups, split target (small ones force several ragged splits)
        (1, 16, 8, 8, 8, N.SPLIT_TARGET),
        (2, 32, 17, 13, 8, N.SPLIT_TARGET),
        (1, 8, 40, 40, 2, 1500),
        (1, 4, 130, 131, 1, 2000),
    ]
    for dtype in dtypes:
        (cfg,) = _configs(N, dtype)
        for B, C, H, W, groups, target in cases:
            for seed in seeds:
                g = torch.Generator().manual_seed(seed)
                # odd seeds: a mean offset plus a ramp down the rows, so the splits of a group have different means
                ramp = torch.linspace(-6, 6, H).view(1, 1, H, 1) * (seed % 2)
                x = (torch.randn(B, C, H, W, generator=g) * 2 + 4 * (seed % 2) + ramp).to(_dt(dtype))
                weight = (torch.rand(C, generator=g) + 0.5).to(_dt(dtype))
                bias = torch.randn(C, generator=g).to(_dt(dtype))
                for silu in (False, True):
                    got, nsplit = N.launch(x, groups, weight, bias, 1e-6, silu, cfg, target)
                    res.add(
                        "group_norm",
                        dtype,
                        f"B{B} C{C} {H}x{W} G{groups} splits{nsplit} silu{int(silu)} s{seed}",
                        got,
                        N.reference(x, groups, weight, bias, 1e-6, silu),
                        N.composed(x, groups, weight, bias, 1e-6, silu),
                    )


TESTS = {  # every module must have one: cmd_test refuses to run otherwise
    "attention": test_attention,
    "layer_norm_modulate": test_layer_norm_modulate,
    "gated_residual": test_gated_residual,
    "qk_norm_rope": test_qk_norm_rope,
    "heads_first": test_heads_first,
    "gelu_tanh": test_gelu,
    "swiglu": test_swiglu,
    "group_norm": test_group_norm,
}


def cmd_test(args):
    os.environ["TRITON_INTERPRET"] = "1"  # before Triton is imported: @triton.jit then builds interpreted kernels
    import torch

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _patch_interpreter()
    mods, _ = _import_kernels()
    untested = sorted(set(MODULES) - set(TESTS))
    if untested:
        print(f"no test for kernel module(s) {untested}: add one to TESTS in scripts/kernels.py")
        return 1
    dtypes = args.dtype or ["fp32", "bf16", "fp16"]
    seeds = list(range(args.seeds))
    res = Results()
    t0 = time.time()
    for name in args.only or list(TESTS):
        t = time.time()
        TESTS[name](res, mods, dtypes, seeds)
        print(f"-- {name}: {time.time() - t:.1f} s", flush=True)
    print("\nworst error per op and dtype (u = unit roundoff of the dtype), with the tolerance:")
    for (op, dt), (err, cerr) in sorted(res.worst.items()):
        print(f"  {op:20s} {dt:5s} kernel {err:8.3f} u   composed {cerr:8.3f} u   tolerance {TOL[op][dt]} u")
    print(f"\n{len(res.rows) - res.failed} passed, {res.failed} failed ({time.time() - t0:.0f} s)")
    return 1 if res.failed else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test", help="run every kernel in the Triton interpreter against torch")
    t.add_argument("--only", nargs="*", choices=list(TESTS))
    t.add_argument("--dtype", nargs="*", choices=["fp32", "bf16", "fp16"])
    t.add_argument("--seeds", type=int, default=2, help="random inputs per case (odd seeds: harder inputs)")
    b = sub.add_parser("build", help="compile every variant and write kernels/triton/compiled/")
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    sub.add_parser("check", help="verify the manifest's hashes against the sources and artifacts")
    args = ap.parse_args()
    sys.exit({"test": cmd_test, "build": cmd_build, "check": cmd_check}[args.cmd](args))


if __name__ == "__main__":
    main()
