"""GroupNorm over [B, C, H, W] with per-channel affine, optionally followed by SiLU (the VAE's norm + activation).

Contract (matches `kernels::GroupNorm::forward(x, silu)` in src/kernels/mod.rs):
  x      : [B, C, H, W] contiguous, dtype T (bf16 / f16 / f32); G groups of cpg = C/G consecutive channels, so group
           g of batch b is the contiguous range [(b·G + g)·L, (b·G + g + 1)·L) with L = cpg·H·W
  weight : [C] dtype T;  bias : [C] dtype T
  out    : [B, C, H, W] contiguous, dtype T
  eps    : f32;  apply_silu : i32 (0: y, else y·sigmoid(y))
Mean and variance are f32 and scale to any L (a 1024² decode has 4·2²⁰ elements per group) without one block holding
a group: two kernels.
  1. group_norm_partial, grid (B·G, nsplit, 1): program (bg, j) reads elements [j·chunk, min((j+1)·chunk, L)) of
     group bg and writes its mean and M2 = Σ(x − mean)² (two passes over the chunk, f32) to
     part[(bg·nsplit + j)·2 + {0, 1}] (an f32 workspace of B·G·nsplit·2 values that the caller allocates).
  2. group_norm_apply, grid (B·C, cdiv(H·W, BLOCK), 1): merges the group's nsplit partials (Chan et al.: mean =
     Σnⱼ·meanⱼ/L, M2 = Σ M2ⱼ + nⱼ·(meanⱼ − mean)², with nⱼ = clamp(L − j·chunk, 0, chunk)), then
     y = x·a + b with a = weight[c]/√(var + eps), b = bias[c] − mean·a, optional SiLU, rounded once to T.
Host rule (both kernels get the same nsplit and chunk): 1 ≤ nsplit ≤ SPLIT_BLOCK and nsplit·chunk ≥ L; the
launcher in this file uses nsplit = min(SPLIT_BLOCK, cdiv(L, 32768)), chunk = cdiv(cdiv(L, nsplit), BLOCK)·BLOCK,
then nsplit = cdiv(L, chunk) (so chunk is a multiple of BLOCK and no split is empty).
"""

import triton
import triton.language as tl


@triton.jit
def group_norm_partial(x_ptr, part_ptr, group_len, chunk, nsplit, BLOCK: tl.constexpr):
    bg = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1)
    base = x_ptr + bg * group_len
    start = j * chunk
    end = tl.minimum(start + chunk, group_len)
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(start, end, BLOCK):
        c = off + cols
        acc += tl.load(base + c, mask=c < end, other=0.0).to(tl.float32)
    n = tl.maximum(end - start, 1).to(tl.float32)
    mean = tl.sum(acc, 0) / n
    acc = tl.zeros([BLOCK], tl.float32)
    for off in range(start, end, BLOCK):
        c = off + cols
        m = c < end
        xc = tl.where(m, tl.load(base + c, mask=m, other=0.0).to(tl.float32) - mean, 0.0)
        acc += xc * xc
    m2 = tl.sum(acc, 0)
    slot = part_ptr + (bg * nsplit + j) * 2
    tl.store(slot, mean)
    tl.store(slot + 1, m2)


@triton.jit
def group_norm_apply(
    x_ptr,
    part_ptr,
    weight_ptr,
    bias_ptr,
    out_ptr,
    C,
    HW,
    cpg,
    group_len,
    chunk,
    nsplit,
    eps,
    apply_silu,
    BLOCK: tl.constexpr,
    SPLIT_BLOCK: tl.constexpr,
):
    bc = tl.program_id(0).to(tl.int64)
    ch = bc % C
    bg = bc // cpg
    js = tl.arange(0, SPLIT_BLOCK)
    j_ok = js < nsplit
    slots = part_ptr + (bg * nsplit + js) * 2
    means = tl.load(slots, mask=j_ok, other=0.0)
    m2s = tl.load(slots + 1, mask=j_ok, other=0.0)
    ns = tl.minimum(tl.maximum(group_len - js * chunk, 0), chunk).to(tl.float32)
    ns = tl.where(j_ok, ns, 0.0)
    total = group_len.to(tl.float32)
    mean = tl.sum(ns * means, 0) / total
    dm = means - mean
    var = tl.sum(m2s + ns * dm * dm, 0) / total
    rstd = tl.div_rn(1.0, tl.sqrt_rn(var + eps))
    a = tl.load(weight_ptr + ch).to(tl.float32) * rstd
    b = tl.load(bias_ptr + ch).to(tl.float32) - mean * a

    c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = c < HW
    xv = tl.load(x_ptr + bc * HW + c, mask=m, other=0.0).to(tl.float32)
    y = xv * a + b
    if apply_silu != 0:
        y = y / (1.0 + tl.exp(-y))
    tl.store(out_ptr + bc * HW + c, y.to(out_ptr.dtype.element_ty), mask=m)


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "group_norm_partial": {
        "fn": group_norm_partial,
        "params": [("x", "*T"), ("part", "*fp32"), ("group_len", "i32"), ("chunk", "i32"), ("nsplit", "i32")],
        "align_ints": ["group_len", "chunk"],
        "grid": ["B * G", "nsplit", "1"],
    },
    "group_norm_apply": {
        "fn": group_norm_apply,
        "params": [
            ("x", "*T"),
            ("part", "*fp32"),
            ("weight", "*T"),
            ("bias", "*T"),
            ("out", "*T"),
            ("C", "i32"),
            ("HW", "i32"),
            ("cpg", "i32"),
            ("group_len", "i32"),
            ("chunk", "i32"),
            ("nsplit", "i32"),
            ("eps", "fp32"),
            ("apply_silu", "i32"),
        ],
        "align_ints": ["HW"],
        "grid": ["B * C", "cdiv(HW, BLOCK)", "1"],
    },
}

SPLIT_TARGET = 32768  # elements per split that the launcher aims for


def config(dtype, arch):
    return {"constexprs": {"BLOCK": 1024, "SPLIT_BLOCK": 64}, "num_warps": 4, "num_stages": 1}


def variants():
    """bf16 / f16 / f32, each twice: assuming 16-byte-aligned pointers and multiples of 16 (a16), and assuming
    nothing (any) — a VAE level of an image whose side is not a multiple of 32 has H·W not a multiple of 16."""
    return [
        {
            "name": f"{dt}.{'a16' if al else 'any'}",
            "dtype": dt,
            "aligned": al,
            "config": lambda arch, dt=dt: config(dt, arch),
        }
        for dt in ("bf16", "fp16", "fp32")
        for al in (True, False)
    ]


def splits(group_len, block, split_block, target=SPLIT_TARGET):
    """(nsplit, chunk) by the host rule in the module docstring."""
    nsplit = min(split_block, triton.cdiv(group_len, target))
    chunk = triton.cdiv(triton.cdiv(group_len, nsplit), block) * block
    return triton.cdiv(group_len, chunk), chunk


def launch(x, groups, weight, bias, eps, silu, cfg, target=SPLIT_TARGET):
    import torch

    B, C, H, W = x.shape
    c = cfg["constexprs"]
    cpg = C // groups
    L = cpg * H * W
    nsplit, chunk = splits(L, c["BLOCK"], c["SPLIT_BLOCK"], target)
    part = torch.empty(B * groups * nsplit * 2, dtype=torch.float32)
    group_norm_partial[(B * groups, nsplit, 1)](x, part, L, chunk, nsplit, BLOCK=c["BLOCK"], num_warps=cfg["num_warps"])
    out = torch.empty_like(x)
    grid = (B * C, triton.cdiv(H * W, c["BLOCK"]), 1)
    group_norm_apply[grid](
        x, part, weight, bias, out, C, H * W, cpg, L, chunk, nsplit, eps, int(silu), **c, num_warps=cfg["num_warps"]
    )
    return out, nsplit


def reference(x, groups, weight, bias, eps, silu):
    import torch

    B, C, H, W = x.shape
    g = x.double().reshape(B, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    n = ((g - mean) / (var + eps).sqrt()).reshape(B, C, H, W)
    y = n * weight.double().view(1, C, 1, 1) + bias.double().view(1, C, 1, 1)
    return torch.nn.functional.silu(y) if silu else y


def composed(x, groups, weight, bias, eps, silu):
    """mod.rs's composition: f32 stats, normalised rounded to T, affine and SiLU in T."""
    import torch

    B, C, H, W = x.shape
    g = x.float().reshape(B, groups, -1)
    c = g - g.mean(-1, keepdim=True)
    var = (c * c).mean(-1, keepdim=True)
    n = (c / (var + eps).sqrt()).reshape(B, C, H, W).to(x.dtype)
    y = n * weight.view(1, C, 1, 1) + bias.view(1, C, 1, 1)
    return torch.nn.functional.silu(y.float()).to(x.dtype) if silu else y
