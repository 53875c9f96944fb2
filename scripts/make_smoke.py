#!/usr/bin/env python3
"""The pipeline `flux-img2img smoke` embeds: a very small random-weight FLUX.1 pipeline in diffusers layout (dev-like:
guidance embedding, 16 latent channels, 4-block VAE, so the real FLUX.1 code paths run), an input image, and
diffusers' FluxImg2ImgPipeline outputs for it in float32 and bfloat16 (CPU generator; torch 2.15 draws bf16 noise
as rounded float32 noise for these sizes, as flux-img2img does).

Writes assets/smoke/: the pipeline folders, input.png, expected-f32.png, expected-bf16.png and case.json (the
run's parameters, and how far the reference moves when the prompt or seed changes).

Usage: python scripts/make_smoke.py   (needs scripts/requirements.txt)
"""
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import build_pipeline, make_image, psnr  # noqa: E402
from diffusers import FluxImg2ImgPipeline  # noqa: E402

SPEC = dict(name="smoke", seed=11, clip_layout="tokenizer-json",
            clip=dict(hidden=32, mlp=64, layers=1, heads=2, act="quick_gelu", eps=1e-5, legacy_eos=True),
            t5=dict(d_model=32, d_kv=8, d_ff=48, layers=1, heads=4, ff="gated-gelu"),
            transformer=dict(layers=1, single_layers=1, head_dim=16, heads=2, guidance=True, axes=[4, 6, 6], gain=1.5),
            vae=dict(blocks=[8, 16, 16, 16], layers=1, act="silu", latent_channels=16, groups=4, scale=0.3611,
                     shift=0.1159, mid_attn=True),
            scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096))
CASE = dict(prompt="a watercolor painting of a cat on a red sofa", width=64, height=64, strength=0.8, steps=6,
            guidance=3.5, seed=7, max_sequence_length=32)


def run(pipe, image, dtype, **override):
    c = {**CASE, **override}
    return pipe(prompt=c["prompt"], image=image, height=c["height"], width=c["width"], strength=c["strength"],
                num_inference_steps=c["steps"], guidance_scale=c["guidance"], max_sequence_length=c["max_sequence_length"],
                generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="pil").images[0]


def main():
    assets = Path(__file__).resolve().parent.parent / "assets"
    assets.mkdir(exist_ok=True)
    out = build_pipeline(SPEC, assets)  # assets/smoke/, replaced if present
    make_image(out / "input.png", 64, 64, 5)
    image = Image.open(out / "input.png").convert("RGB")
    torch.set_num_threads(2)
    record = dict(CASE)
    for name, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
        pipe = FluxImg2ImgPipeline.from_pretrained(out, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        ref = run(pipe, image, dtype)
        ref.save(out / f"expected-{name}.png")
        if name == "f32":
            record["sensitivity_psnr_db"] = {"prompt": psnr(ref, run(pipe, image, dtype, prompt="pixel art of a castle")),
                                             "seed": psnr(ref, run(pipe, image, dtype, seed=8))}
            f32_ref = ref
        else:
            record["bf16_vs_f32_psnr_db"] = psnr(ref, f32_ref)
    record["generator"] = "scripts/make_smoke.py"
    record["torch"] = torch.__version__
    record["diffusers"] = __import__("diffusers").__version__
    (out / "case.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
