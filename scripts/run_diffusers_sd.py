#!/usr/bin/env python3
"""One StableDiffusionPipeline text-to-image run as a whole process, for side-by-side timing with the CLI.
Usage: run_diffusers_sd.py MODEL OUT PROMPT STEPS GUIDANCE SEED WIDTH HEIGHT"""
import sys

import torch
from diffusers import StableDiffusionPipeline

model, out, prompt, steps, guidance, seed, width, height = sys.argv[1:9]
pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32, safety_checker=None)
pipe.set_progress_bar_config(disable=True)
img = pipe(prompt=prompt, num_inference_steps=int(steps), guidance_scale=float(guidance), width=int(width),
           height=int(height), generator=torch.Generator("cpu").manual_seed(int(seed))).images[0]
img.save(out)
