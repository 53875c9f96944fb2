#!/usr/bin/env python3
"""One FluxImg2ImgPipeline run as a whole process, for side-by-side timing with the CLI (same flags' meaning).
Usage: run_diffusers.py MODEL IMAGE OUT PROMPT STRENGTH STEPS GUIDANCE SEED WIDTH HEIGHT"""
import sys

import torch
from PIL import Image
from diffusers import FluxImg2ImgPipeline

model, image, out, prompt, strength, steps, guidance, seed, width, height = sys.argv[1:11]
pipe = FluxImg2ImgPipeline.from_pretrained(model, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
img = pipe(prompt=prompt, image=Image.open(image).convert("RGB"), strength=float(strength),
           num_inference_steps=int(steps), guidance_scale=float(guidance), width=int(width), height=int(height),
           generator=torch.Generator("cpu").manual_seed(int(seed))).images[0]
img.save(out)
