"""SwiGLU of FLUX.2's feed-forward: silu(a)·b for the two halves [a | b] of a projection's columns.

Contract (matches `swiglu` in src/models/flux2.rs: `x.narrow(-1, col, width).silu() * x.narrow(-1, col + width,
width)`, the SiLU on the FIRST half):
  x   : [B, S, W] contiguous, dtype T (bf16 / f16 / f32); a = columns col..col+width, b = col+width..col+2·width
  out : [B, S, width] contiguous, dtype T
silu(a)·b = a·b / (1 + e^(−a)) in f32, rounded once to T.
Grid: (B·S, cdiv(width, BLOCK), 1).
"""

import triton
import triton.language as tl


@triton.jit
def swiglu_cols(x_ptr, out_ptr, W, col, width, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < width
    src = x_ptr + row * W + col + c
    a = tl.load(src, mask=m, other=0.0).to(tl.float32)
    b = tl.load(src + width, mask=m, other=0.0).to(tl.float32)
    y = a / (1.0 + tl.exp(-a)) * b
    tl.store(out_ptr + row * width + c, y.to(out_ptr.dtype.element_ty), mask=m)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "swiglu_cols": {
        "fn": swiglu_cols,
        "params": [("x", "*T"), ("out", "*T"), ("W", "i32"), ("col", "i32"), ("width", "i32")],
        "align_ints": ["W", "col", "width"],
        "grid": ["B * S", "cdiv(width, BLOCK)", "1"],
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


def launch(x, col, width, cfg):
    import torch

    B, S, W = x.shape
    out = torch.empty((B, S, width), dtype=x.dtype)
    grid = (B * S, triton.cdiv(width, cfg["constexprs"]["BLOCK"]), 1)
    swiglu_cols[grid](x, out, W, col, width, **cfg["constexprs"], num_warps=cfg["num_warps"])
    return out


def reference(x, col, width):
    import torch

    a = x[..., col : col + width].double()
    b = x[..., col + width : col + 2 * width].double()
    return torch.nn.functional.silu(a) * b


def composed(x, col, width):
    """flux2.rs's composition: silu in T (per element in f32, rounded), then the product rounded again."""
    import torch

    a = x[..., col : col + width]
    b = x[..., col + width : col + 2 * width]
    return torch.nn.functional.silu(a.float()).to(x.dtype) * b
