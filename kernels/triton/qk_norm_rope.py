"""Per-head RMSNorm (learned weight) and RoPE for queries or keys read straight from a fused qkv projection.

Contract (matches `kernels::qk_norm_rope` in src/kernels/mod.rs):
  x      : [B, S, W] contiguous, dtype T (bf16 / f16 / f32); head h of the queries (or keys) is columns
           col + h·D .. col + (h+1)·D of each row
  weight : [D] contiguous, dtype T (the RMSNorm scale)
  cos    : [S, D/2] contiguous, f32 (one angle per pair (2i, 2i+1); the rows for this sequence, i.e. the pointer
           at the first position's row)
  sin    : [S, D/2] contiguous, f32
  out    : [B, H, S, D] contiguous, dtype T
  eps    : f32
For each (b, s, h): r = 1/√(mean(x²) + eps) in f32 over the head's D values; n = x·r·weight; then for each pair
(a, b) = (n[2i], n[2i+1]): out[2i] = a·cos − b·sin, out[2i+1] = b·cos + a·sin, rounded once to T.
D is a constexpr (HEAD_D, even); BLOCK_H heads per program.
Grid: (B·S, cdiv(H, BLOCK_H), 1).
"""

import triton
import triton.language as tl


@triton.jit
def qk_norm_rope(
    x_ptr,
    weight_ptr,
    cos_ptr,
    sin_ptr,
    out_ptr,
    S,
    H,
    W,
    col,
    eps,
    HEAD_D: tl.constexpr,
    HALF_BLOCK: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    b = row // S
    s = row % S
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    BLOCK_D: tl.constexpr = 2 * HALF_BLOCK
    HALF: tl.constexpr = HEAD_D // 2
    d = tl.arange(0, BLOCK_D)
    i = tl.arange(0, HALF_BLOCK)
    ok = (h[:, None] < H) & (d[None, :] < HEAD_D)
    # Whole head rows [BLOCK_H, BLOCK_D] (contiguous, vector loads), then viewed as pairs [BLOCK_H, HALF_BLOCK, 2].
    xv = tl.load(x_ptr + row * W + col + h[:, None] * HEAD_D + d[None, :], mask=ok, other=0.0).to(tl.float32)
    ms = tl.sum(xv * xv, 1) / HEAD_D
    r = tl.div_rn(1.0, tl.sqrt_rn(ms + eps))
    wv = tl.load(weight_ptr + d, mask=d < HEAD_D, other=0.0).to(tl.float32)
    n = xv * r[:, None] * wv[None, :]
    a, bb = tl.split(tl.reshape(n, [BLOCK_H, HALF_BLOCK, 2]))
    c = tl.load(cos_ptr + s * HALF + i, mask=i < HALF, other=0.0)[None, :]
    sn = tl.load(sin_ptr + s * HALF + i, mask=i < HALF, other=0.0)[None, :]
    y = tl.reshape(tl.join(a * c - bb * sn, bb * c + a * sn), [BLOCK_H, BLOCK_D])
    dst = out_ptr + ((b * H + h[:, None]) * S + s) * HEAD_D + d[None, :]
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=ok)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "qk_norm_rope": {
        "fn": qk_norm_rope,
        "params": [
            ("x", "*T"),
            ("weight", "*T"),
            ("cos", "*fp32"),
            ("sin", "*fp32"),
            ("out", "*T"),
            ("S", "i32"),
            ("H", "i32"),
            ("W", "i32"),
            ("col", "i32"),
            ("eps", "fp32"),
        ],
        "align_ints": ["W", "col"],
        "grid": ["B * S", "cdiv(H, BLOCK_H)", "1"],
    },
}

HEAD_DIMS = (16, 128)  # FLUX.1 / FLUX.2 klein: 128; the test pipelines: 16


def config(d, dtype, arch):
    return {
        "constexprs": {
            "HEAD_D": d,
            "HALF_BLOCK": max(1, triton.next_power_of_2(d // 2)),
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


def launch(x, col, heads, weight, eps, cos, sin, cfg):
    import torch

    B, S, W = x.shape
    c = cfg["constexprs"]
    D = c["HEAD_D"]
    assert weight.shape == (D,) and cos.shape == (S, D // 2) and cos.dtype == torch.float32
    out = torch.empty((B, heads, S, D), dtype=x.dtype)
    grid = (B * S, triton.cdiv(heads, c["BLOCK_H"]), 1)
    qk_norm_rope[grid](x, weight, cos, sin, out, S, heads, W, col, eps, **c, num_warps=cfg["num_warps"])
    return out


def reference(x, col, heads, weight, eps, cos, sin):
    B, S, W = x.shape
    D = weight.shape[0]
    xf = x[..., col : col + heads * D].double().reshape(B, S, heads, D).transpose(1, 2)
    n = xf / ((xf * xf).mean(-1, keepdim=True) + eps).sqrt() * weight.double()
    a, b = n[..., 0::2], n[..., 1::2]
    c, s = cos.double(), sin.double()
    out = n.clone()
    out[..., 0::2] = a * c - b * s
    out[..., 1::2] = b * c + a * s
    return out


def composed(x, col, heads, weight, eps, cos, sin):
    """mod.rs's composition: the same maths in f32 tensor ops (divide by √(ms + eps)), rounded once to T."""
    import torch

    B, S, W = x.shape
    D = weight.shape[0]
    xf = x[..., col : col + heads * D].float().reshape(B, S, heads, D).transpose(1, 2)
    n = xf / ((xf * xf).mean(-1, keepdim=True) + eps).sqrt() * weight.float()
    a, b = n[..., 0::2], n[..., 1::2]
    out = torch.stack([a * cos - b * sin, b * cos + a * sin], -1).reshape(B, heads, S, D)
    return out.to(x.dtype)
