"""LayerNorm (no affine) then adaptive modulation: LN(x)·(1 + scale) + shift.

Contract (matches `kernels::layer_norm_modulate` in src/kernels/mod.rs):
  x       : [B, S, D] contiguous, dtype T (bf16 / f16 / f32)
  scale   : [B, D] dtype T, row stride `mod_stride` elements (D when contiguous; 3n·D for a chunk of a modulation
            output [B, 3n·D] passed as a view: the pointer at the chunk's first element)
  shift   : [B, D] dtype T, the same row stride `mod_stride`
  out     : [B, S, D] contiguous, dtype T
  eps     : f32
Mean and variance are f32 over the row (two passes: mean, then Σ(x − mean)², so no cancellation); the output is
(x − mean)·rstd·(1 + scale) + shift in f32, rounded once to T. D is a runtime value, looped over in BLOCK chunks.
Grid: (B·S, 1, 1), one program per row.
"""

import triton
import triton.language as tl


@triton.jit
def layer_norm_modulate(
    x_ptr,
    scale_ptr,
    shift_ptr,
    out_ptr,
    S,
    D,
    mod_stride,
    eps,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // S
    x_row = x_ptr + row * D
    o_row = out_ptr + row * D
    sc_row = scale_ptr + b * mod_stride
    sh_row = shift_ptr + b * mod_stride
    cols = tl.arange(0, BLOCK)

    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(0, D, BLOCK):
        c = off + cols
        acc += tl.load(x_row + c, mask=c < D, other=0.0).to(tl.float32)
    mean = tl.sum(acc, 0) / D
    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(0, D, BLOCK):
        c = off + cols
        xc = tl.where(c < D, tl.load(x_row + c, mask=c < D, other=0.0).to(tl.float32) - mean, 0.0)
        acc += xc * xc
    var = tl.sum(acc, 0) / D
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    for off in range(0, D, BLOCK):
        c = off + cols
        m = c < D
        xv = tl.load(x_row + c, mask=m, other=0.0).to(tl.float32)
        sc = tl.load(sc_row + c, mask=m, other=0.0).to(tl.float32)
        sh = tl.load(sh_row + c, mask=m, other=0.0).to(tl.float32)
        y = (xv - mean) * rstd * (1.0 + sc) + sh
        tl.store(o_row + c, y.to(out_ptr.dtype.element_ty), mask=m)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "layer_norm_modulate": {
        "fn": layer_norm_modulate,
        "params": [
            ("x", "*T"),
            ("scale", "*T"),
            ("shift", "*T"),
            ("out", "*T"),
            ("S", "i32"),
            ("D", "i32"),
            ("mod_stride", "i32"),
            ("eps", "fp32"),
        ],
        "align_ints": ["D", "mod_stride"],
        "grid": ["B * S", "1", "1"],
    },
}


def config(dtype, arch):
    return {"constexprs": {"BLOCK": 1024}, "num_warps": 4, "num_stages": 1}


def variants():
    """bf16 / f16 / f32, each assuming 16-byte-aligned pointers and the ALIGN ints multiples of 16 (every FLUX and
    FLUX.2 width is); a launcher falls back to the candle composition for other shapes."""
    return [
        {"name": f"{dt}.a16", "dtype": dt, "aligned": True, "config": lambda arch, dt=dt: config(dt, arch)}
        for dt in ("bf16", "fp16", "fp32")
    ]


def launch(x, scale, shift, eps, cfg):
    import torch

    B, S, D = x.shape
    assert scale.stride(1) == 1 and shift.stride(1) == 1 and scale.stride(0) == shift.stride(0)
    out = torch.empty_like(x)
    layer_norm_modulate[(B * S, 1, 1)](
        x, scale, shift, out, S, D, scale.stride(0), eps, **cfg["constexprs"], num_warps=cfg["num_warps"]
    )
    return out


def reference(x, scale, shift, eps):
    x64 = x.double()
    mean = x64.mean(-1, keepdim=True)
    var = ((x64 - mean) ** 2).mean(-1, keepdim=True)
    n = (x64 - mean) / (var + eps).sqrt()
    return n * (1 + scale.double().unsqueeze(1)) + shift.double().unsqueeze(1)


def composed(x, scale, shift, eps):
    """mod.rs's composition: f32 stats, normalised rounded to T, modulation in T."""
    xf = x.float()
    c = xf - xf.mean(-1, keepdim=True)
    var = (c * c).mean(-1, keepdim=True)
    n = (c / (var + eps).sqrt()).to(x.dtype)
    return n * (scale.unsqueeze(1) + 1) + shift.unsqueeze(1)
