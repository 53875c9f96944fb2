"""Flash attention forward: unmasked softmax(q·kᵀ·scale)·v without an S×S tensor.

Contract (matches `kernels::attention` in src/kernels/mod.rs):
  q, k, v : [B, H, S, D] contiguous, dtype T (bf16 / f16 / f32), the same for all three
  out     : [B, S, H·D] contiguous, dtype T: out[b, s, h·D + d] (heads interleaved back, no transpose after)
  scale   : f32, multiplies q·kᵀ before the softmax
Scores, the running max / sum (online softmax) and the output accumulator are f32. As in the composed path,
the probabilities are rounded to T before the p·v product (tensor cores take T operands); for T = f32 both dots
run in IEEE f32 (no TF32). D is a constexpr (HEAD_D); the block is padded to BLOCK_D (a power of two ≥ 16) with
masks, so any D ≤ 256 compiles. S is a runtime value: partial query and key blocks are masked.
Grid: (cdiv(S, BLOCK_M), B·H, 1).
"""

import triton
import triton.language as tl


@triton.jit
def attention_fwd(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    S,
    H,
    scale,
    HEAD_D: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    base = bh * S * HEAD_D  # start of this (batch, head)'s [S, D] block in q, k, v
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    m_ok = offs_m < S

    q = tl.load(
        q_ptr + base + offs_m[:, None] * HEAD_D + offs_d[None, :], mask=m_ok[:, None] & d_ok[None, :], other=0.0
    )
    qk_scale = scale * 1.4426950408889634  # exp(x) = exp2(x·log2 e)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    kt_ptrs = k_ptr + base + offs_n[None, :] * HEAD_D + offs_d[:, None]  # [BLOCK_D, BLOCK_N]: kᵀ
    v_ptrs = v_ptr + base + offs_n[:, None] * HEAD_D + offs_d[None, :]  # [BLOCK_N, BLOCK_D]
    # Whole key blocks first (no key mask), then the ragged last one.
    n_full = (S // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        kt = tl.load(kt_ptrs + start_n * HEAD_D, mask=d_ok[:, None], other=0.0)
        v = tl.load(v_ptrs + start_n * HEAD_D, mask=d_ok[None, :], other=0.0)
        qk = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new
    if n_full < S:
        n_ok = (n_full + offs_n) < S
        kt = tl.load(kt_ptrs + n_full * HEAD_D, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        v = tl.load(v_ptrs + n_full * HEAD_D, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        qk = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        qk = tl.where(n_ok[None, :], qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    b = bh // H
    h = bh % H
    # out[b, s, h·D + d]
    o_ptrs = out_ptr + (b * S + offs_m[:, None]) * (H * HEAD_D) + h * HEAD_D + offs_d[None, :]
    tl.store(o_ptrs, out.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])


# ---- build and test description (read by scripts/kernels.py; part of the hashed source) ----

KERNELS = {
    "attention_fwd": {
        "fn": attention_fwd,
        # (name, type): "*T" = pointer to the data dtype; constexprs are not parameters.
        "params": [("q", "*T"), ("k", "*T"), ("v", "*T"), ("out", "*T"), ("S", "i32"), ("H", "i32"), ("scale", "fp32")],
        # No int needs to be a multiple of 16: every stride is a multiple of HEAD_D, a constexpr.
        "align_ints": [],
        "grid": ["cdiv(S, BLOCK_M)", "B * H", "1"],
    },
}

# Compiled head dims: 128 (FLUX.1, FLUX.2 klein), 16 (the test pipelines' transformers), 32 (the test pipelines'
# VAE mid-block attention: one head of C = 32 channels). Any other D ≤ 256 compiles from this source by adding it
# here (64 costs ~0.6 MB of artifacts for bf16 + f16 and no current model uses it); the real VAE's D = 512 is over
# the limit and stays on the composed (chunked) path.
HEAD_DIMS = {"bf16": (16, 32, 128), "fp16": (16, 32, 128), "fp32": (16, 32)}


def config(d, dtype, arch):
    """Block sizes, warps and pipeline stages for head dim `d`, dtype and arch class.

    Shared memory per block: sm80 164 KiB, sm86 / sm89 / ptx (the PTX may also run on consumer Blackwell) 99 KiB,
    sm90 227 KiB; the build checks each variant against its class. f32 (IEEE dots, FMA loops rather than tensor
    cores: correctness for --dtype f32, not speed) uses 32×32 blocks, which keep its code small.
    """
    if dtype == "fp32":
        bm, bn, warps, stages = 32, 32, 4, 2
    elif d <= 32:
        bm, bn, warps, stages = 64, 64, 4, 2 if arch in ("sm86", "sm89", "ptx") else 3
    else:
        bm, bn, warps, stages = 128, 64, 8, 2 if arch in ("sm86", "sm89", "ptx") else 3
    return {
        "constexprs": {
            "HEAD_D": d,
            "BLOCK_D": max(16, triton.next_power_of_2(d)),
            "BLOCK_M": bm,
            "BLOCK_N": bn,
            "PRECISION": "ieee" if dtype == "fp32" else "tf32",  # ignored for bf16 / f16 operands
        },
        "num_warps": warps,
        "num_stages": stages,
    }


def variants():
    return [
        {"name": f"{dt}.d{d}", "dtype": dt, "aligned": True, "config": lambda arch, d=d, dt=dt: config(d, dt, arch)}
        for dt, dims in HEAD_DIMS.items()
        for d in dims
    ]


def launch(q, k, v, scale, cfg):
    """Python launch (interpreter tests): the same grid and parameters the manifest gives a Rust launcher."""
    import torch

    B, H, S, D = q.shape
    c = cfg["constexprs"]
    assert D == c["HEAD_D"]
    out = torch.empty((B, S, H * D), dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(S, c["BLOCK_M"]), B * H, 1)
    attention_fwd[grid](q, k, v, out, S, H, scale, **c, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    return out


def reference(q, k, v, scale):
    """The maths in f64: softmax(q·kᵀ·scale)·v → [B, S, H·D]."""
    import torch

    B, H, S, D = q.shape
    s = torch.einsum("bhqd,bhkd->bhqk", q.double(), k.double()) * scale
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhqk,bhkd->bhqd", p, v.double())
    return o.transpose(1, 2).reshape(B, S, H * D)


def composed(q, k, v, scale):
    """mod.rs's candle composition in the input dtype (scores in T, softmax in f32, p rounded to T)."""
    import torch

    B, H, S, D = q.shape
    s = (q @ k.transpose(-1, -2)) * scale
    p = torch.softmax(s.float(), dim=-1).to(q.dtype)
    return (p @ v).transpose(1, 2).reshape(B, S, H * D)
