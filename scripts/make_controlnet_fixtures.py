#!/usr/bin/env python3
"""Tiny random InstantX-layout FLUX.1 ControlNets (plain and Union) and diffusers' model-level outputs.

Writes tests/fixtures/:
  tiny-controlnet/        diffusers FluxControlNetModel matching tiny-dev's transformer widths (1 double block,
                          1 single block: the transformer's 2 single blocks then read sample 0 twice, diffusers'
                          ceil interval), every weight random (zero-init blocks would make it a no-op)
  tiny-controlnet-union/  the same with num_mode=7 (controlnet_mode_embedder)
  tiny-controlnet-schnell/  an InstantX-layout one for tiny-schnell (no guidance embedder), for pipeline cases
  tiny-controlnet-xlabs/  an XLabs-layout one: the control image in pixels through input_hint_block, no single blocks
  controlnet-vectors.safetensors  inputs (packed latents, packed control latents, T5/CLIP stand-ins, ids, σ,
                          guidance) and tiny-dev's velocity: without ControlNet, with each ControlNet at scale 1 and
                          0.5, and with the Union one in mode 2
Sensitivity (PSNR of the controlled velocity against the plain one) is printed and stored in the file's metadata.

Usage: python scripts/make_controlnet_fixtures.py   (scripts/requirements.txt)
"""
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import reinit  # noqa: E402

from diffusers import FluxControlNetModel, FluxTransformer2DModel  # noqa: E402

OUT_SCALE = 0.05
FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def psnr(a: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR of `a` against `ref` with the reference's value range as the peak (velocities are not pixels)."""
    mse = torch.mean((a.double() - ref.double()) ** 2).item()
    peak = (ref.max() - ref.min()).item()
    return float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse)


def build(base: FluxTransformer2DModel, name: str, num_mode, seed: int, xlabs: bool = False) -> FluxControlNetModel:
    c = base.config
    # XLabs: the control image in pixel space through input_hint_block (÷8), then 2×2 patches, and no single
    # blocks, as XLabs-AI's converted checkpoints are.
    hint = dict(conditioning_embedding_channels=c.in_channels // 4, patch_size=2) if xlabs else {}
    net = FluxControlNetModel(
        in_channels=c.in_channels, num_layers=1, num_single_layers=0 if xlabs else 1,
        attention_head_dim=c.attention_head_dim,
        num_attention_heads=c.num_attention_heads, joint_attention_dim=c.joint_attention_dim,
        pooled_projection_dim=c.pooled_projection_dim, guidance_embeds=c.guidance_embeds,
        axes_dims_rope=list(c.axes_dims_rope), num_mode=num_mode, **hint)
    reinit(net, 2.0, seed)
    with torch.no_grad():
        # A strong control input, so that swapping the control image moves a pipeline's output far below the bar.
        net.controlnet_x_embedder.weight.mul_(4.0)
        # Sharper attention (larger q·k after the RMS norms), so that one token (the Union mode's) can steer it.
        for key, p in net.named_parameters():
            if ".norm_q." in key or ".norm_k." in key or "norm_added_q" in key or "norm_added_k" in key:
                p.mul_(3.0)
        # Residuals of the main stream's size rather than far above it: the main transformer's output norm would
        # otherwise hide the conditioning scale.
        for block in [*net.controlnet_blocks, *net.controlnet_single_blocks]:
            block.weight.mul_(OUT_SCALE)
            block.bias.mul_(OUT_SCALE)
    if num_mode is not None:
        # Embedding rows are read as tokens, not multiplied: give them the scale of context_embedder's output.
        with torch.no_grad():
            net.controlnet_mode_embedder.weight.mul_(4 * math.sqrt(net.inner_dim))
    net.save_pretrained(FIX / name, safe_serialization=True)
    return net


def velocity(base, inp, net=None, scale=1.0, mode=None, cond="cond"):
    kw = {}
    if net is not None:
        blocks, singles = net(hidden_states=inp["latents"], controlnet_cond=inp[cond], controlnet_mode=mode,
                              conditioning_scale=scale, encoder_hidden_states=inp["txt"],
                              pooled_projections=inp["pooled"], timestep=inp["t"], img_ids=inp["img_ids"],
                              txt_ids=inp["txt_ids"], guidance=inp["guidance"], return_dict=False)
        kw = dict(controlnet_block_samples=blocks, controlnet_single_block_samples=singles,
                  controlnet_blocks_repeat=net.input_hint_block is not None)
    return base(hidden_states=inp["latents"], encoder_hidden_states=inp["txt"], pooled_projections=inp["pooled"],
                timestep=inp["t"], img_ids=inp["img_ids"], txt_ids=inp["txt_ids"], guidance=inp["guidance"],
                return_dict=False, **kw)[0]


def main():
    torch.manual_seed(0)
    base = FluxTransformer2DModel.from_pretrained(FIX / "tiny-dev" / "transformer", torch_dtype=torch.float32)
    plain = build(base, "tiny-controlnet", None, 51)
    union = build(base, "tiny-controlnet-union", 7, 52)
    xlabs = build(base, "tiny-controlnet-xlabs", None, 53, xlabs=True)
    # One for tiny-schnell's widths (no guidance embedder, 2 double blocks reading one sample): pipeline cases only.
    schnell = FluxTransformer2DModel.from_pretrained(FIX / "tiny-schnell" / "transformer", torch_dtype=torch.float32)
    build(schnell, "tiny-controlnet-schnell", None, 54)
    g = torch.Generator().manual_seed(5)
    h, w, st = 4, 6, 8
    c = base.config
    img_ids = torch.zeros(h, w, 3)
    img_ids[..., 1] = torch.arange(h)[:, None]
    img_ids[..., 2] = torch.arange(w)[None, :]
    inp = dict(latents=torch.randn(1, h * w, c.in_channels, generator=g),
               cond=torch.randn(1, h * w, c.in_channels, generator=g),
               txt=torch.randn(1, st, c.joint_attention_dim, generator=g),
               pooled=torch.randn(1, c.pooled_projection_dim, generator=g),
               t=torch.tensor([0.7]), guidance=torch.tensor([3.5]),
               img_ids=img_ids.reshape(h * w, 3), txt_ids=torch.zeros(st, 3))
    other = dict(inp, cond=torch.randn(1, h * w, c.in_channels, generator=g))
    # XLabs' control input: pixels in [-1, 1] of the image the latents would come from (16 px per token).
    inp["pixels"] = torch.rand(1, 3, 16 * h, 16 * w, generator=g) * 2 - 1
    other["pixels"] = torch.rand(1, 3, 16 * h, 16 * w, generator=g) * 2 - 1
    with torch.no_grad():
        out = {k: v.contiguous() for k, v in inp.items()}
        out["other_cond"] = other["cond"]
        out["other_pixels"] = other["pixels"]
        out["xlabs"] = velocity(base, inp, xlabs, 0.8, cond="pixels")
        out["xlabs_other"] = velocity(base, other, xlabs, 0.8, cond="pixels")
        out["plain"] = velocity(base, inp)
        out["controlnet"] = velocity(base, inp, plain)
        out["controlnet_half"] = velocity(base, inp, plain, 0.5)
        out["controlnet_other"] = velocity(base, other, plain)
        out["union_mode2"] = velocity(base, inp, union, 1.0, torch.tensor([[2]]))
        out["union_mode0"] = velocity(base, inp, union, 1.0, torch.tensor([[0]]))
    meta = {}
    for k in ["controlnet", "controlnet_half", "controlnet_other", "union_mode2", "union_mode0", "xlabs"]:
        meta[f"sensitivity_{k}_vs_plain_db"] = f"{psnr(out[k], out['plain']):.2f}"
    meta["sensitivity_control_image_db"] = f"{psnr(out['controlnet_other'], out['controlnet']):.2f}"
    meta["sensitivity_xlabs_control_image_db"] = f"{psnr(out['xlabs_other'], out['xlabs']):.2f}"
    meta["sensitivity_union_mode_db"] = f"{psnr(out['union_mode0'], out['union_mode2']):.2f}"
    print(meta)
    save_file(out, FIX / "controlnet-vectors.safetensors", metadata=meta)


if __name__ == "__main__":
    main()
