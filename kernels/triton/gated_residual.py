"""Gated residual: x + gate·y.

Contract (matches `kernels::gated_residual` in src/kernels/mod.rs):
  x, y : [B, S, D] contiguous, dtype T (bf16 / f16 / f32)
  gate : [B, D] dtype T, row stride `gate_stride` elements (D when contiguous; a chunk of a modulation output
         may be passed as a view)
  out  : [B, S, D] contiguous, dtype T
x + gate·y is computed in f32 and rounded once to T.
Grid: (B·S, cdiv(D, BLOCK), 1).
"""

import triton
import triton.language as tl


@triton.jit
def gated_residual(
    x_ptr,
    y_ptr,
    gate_ptr,
    out_ptr,
    S,
    D,
    gate_stride,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < D
    b = row // S
    xv = tl.load(x_ptr + row * D + c, mask=m, other=0.0).to(tl.float32)
    yv = tl.load(y_ptr + row * D + c, mask=m, other=0.0).to(tl.float32)
    g = tl.load(gate_ptr + b * gate_stride + c, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * D + c, (xv + g * yv).to(out_ptr.dtype.element_ty), mask=m)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "gated_residual": {
        "fn": gated_residual,
        "params": [
            ("x", "*T"),
            ("y", "*T"),
            ("gate", "*T"),
            ("out", "*T"),
            ("S", "i32"),
            ("D", "i32"),
            ("gate_stride", "i32"),
        ],
        "align_ints": ["D", "gate_stride"],
        "grid": ["B * S", "cdiv(D, BLOCK)", "1"],
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


def launch(x, y, gate, cfg):
    import torch

    B, S, D = x.shape
    assert gate.stride(1) == 1
    out = torch.empty_like(x)
    blk = cfg["constexprs"]["BLOCK"]
    gated_residual[(B * S, triton.cdiv(D, blk), 1)](
        x, y, gate, out, S, D, gate.stride(0), **cfg["constexprs"], num_warps=cfg["num_warps"]
    )
    return out


def reference(x, y, gate):
    return x.double() + gate.double().unsqueeze(1) * y.double()


def composed(x, y, gate):
    return x + y * gate.unsqueeze(1)
