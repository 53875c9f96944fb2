#!/usr/bin/env python3
"""A mid-sized random SD 1.x pipeline for the CPU benchmark (not committed: ~400 MB).

UNet with SD 1.5's block layout at 128-256-384-384 channels (2 resnets per block, 8 heads, ≈90M parameters), CLIP
512 wide with 6 layers, VAE with SD's 4-block layout at 64-128-256-256, the SD 1.5 PNDM scheduler config. Reuses
the fixture generator's builders.  Usage: python scripts/make_sd_bench_pipeline.py OUT_DIR
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_sd_fixtures as sf  # noqa: E402
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel  # noqa: E402

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(50)
    tok = sf.clip_tokenizer_files(out / ".tok")
    te = sf.clip(tok, 512, 6, 8, 2048, "quick_gelu", 51)
    unet = UNet2DConditionModel(sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
                                block_out_channels=(128, 256, 384, 384), cross_attention_dim=512, attention_head_dim=8)
    sf.reinit(unet, 1.0, 52)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[64, 128, 256, 256],
                        layers_per_block=2, latent_channels=4, norm_num_groups=32, scaling_factor=0.18215)
    sf.reinit(vae, 1.0, 53)
    sched = PNDMScheduler(**sf.SD_BETAS, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(out / "bench-sd", safe_serialization=True)
    n = sum(p.numel() for p in unet.parameters())
    print(f"{out / 'bench-sd'}: UNet parameters {n / 1e6:.1f}M")
