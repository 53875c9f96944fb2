"""Heads to the front: columns col..col+H·D of x [B, S, W] → [B, H, S, D] (the values of a fused qkv projection,
which get no norm or RoPE).

Contract (matches `kernels::heads_first` in src/kernels/mod.rs):
  x   : [B, S, W] contiguous, dtype T (bf16 / f16 / f32)
  out : [B, H, S, D] contiguous, dtype T; out[b, h, s, d] = x[b, s, col + h·D + d] (a copy)
D is a constexpr (HEAD_D), padded to BLOCK_D with masks; BLOCK_H heads per program.
Grid: (B·S, cdiv(H, BLOCK_H), 1).
"""

import triton
import triton.language as tl


@triton.jit
def heads_first(x_ptr, out_ptr, S, H, W, col, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // S
    s = row % S
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    ok = (h[:, None] < H) & (d[None, :] < HEAD_D)
    v = tl.load(x_ptr + row * W + col + h[:, None] * HEAD_D + d[None, :], mask=ok)
    tl.store(out_ptr + ((b * H + h[:, None]) * S + s) * HEAD_D + d[None, :], v, mask=ok)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "heads_first": {
        "fn": heads_first,
        "params": [("x", "*T"), ("out", "*T"), ("S", "i32"), ("H", "i32"), ("W", "i32"), ("col", "i32")],
        "align_ints": ["W", "col"],
        "grid": ["B * S", "cdiv(H, BLOCK_H)", "1"],
    },
}

HEAD_DIMS = (16, 128)  # FLUX.1 / FLUX.2 klein: 128; the test pipelines: 16


def config(d, dtype, arch):
    return {
        "constexprs": {
            "HEAD_D": d,
            "BLOCK_D": max(16, triton.next_power_of_2(d)),
            "BLOCK_H": max(1, min(16, 1024 // d)),
        },
        "num_warps": 4,
        "num_stages": 1,
    }


def variants():
    return [
        {"name": f"{dt}.d{d}", "dtype": dt, "aligned": True, "config": lambda arch, d=d, dt=dt: config(d, dt, arch)}
        for dt in ("bf16", "fp16", "fp32")
        for d in HEAD_DIMS
    ]


def launch(x, col, heads, d, cfg):
    import torch

    B, S, W = x.shape
    c = cfg["constexprs"]
    assert d == c["HEAD_D"]
    out = torch.empty((B, heads, S, d), dtype=x.dtype)
    heads_first[(B * S, triton.cdiv(heads, c["BLOCK_H"]), 1)](x, out, S, heads, W, col, **c, num_warps=cfg["num_warps"])
    return out


def reference(x, col, heads, d):
    B, S, W = x.shape
    return x[..., col : col + heads * d].reshape(B, S, heads, d).transpose(1, 2).contiguous()
