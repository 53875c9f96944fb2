#!/usr/bin/env python3
"""One FluxPipeline text-to-image run as a whole process with one of diffusers' step caches, for side-by-side timing
with `flux-img2img --cache` (scripts/bench_cache.sh). CACHE is our flag's value: none, fbcache[:THRESHOLD] or
taylorseer[:ORDER,INTERVAL] (FirstBlockCacheConfig / TaylorSeerCacheConfig, other fields at diffusers' defaults).
Prints the pipeline call's seconds (the denoising loop and decode; loading excluded) as `denoise SECONDS`.
Usage: run_diffusers_cache.py MODEL OUT PROMPT STEPS GUIDANCE SEED WIDTH HEIGHT MAX_SEQUENCE_LENGTH CACHE"""
import sys
import time

import torch
from diffusers import FirstBlockCacheConfig, FluxPipeline, TaylorSeerCacheConfig

model, out, prompt, steps, guidance, seed, width, height, msl, cache = sys.argv[1:11]
pipe = FluxPipeline.from_pretrained(model, torch_dtype=torch.float32)
pipe.set_progress_bar_config(disable=True)
kind, _, arg = cache.partition(":")
if kind == "fbcache":
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=float(arg)) if arg else FirstBlockCacheConfig())
elif kind == "taylorseer":
    order, interval = (int(x) for x in arg.split(",")) if arg else (1, 5)
    pipe.transformer.enable_cache(TaylorSeerCacheConfig(max_order=order, cache_interval=interval))
elif kind != "none":
    sys.exit(f"unknown cache {cache}")
t0 = time.perf_counter()
img = pipe(prompt=prompt, num_inference_steps=int(steps), guidance_scale=float(guidance), width=int(width),
           height=int(height), max_sequence_length=int(msl),
           generator=torch.Generator("cpu").manual_seed(int(seed))).images[0]
print(f"denoise {time.perf_counter() - t0:.3f}")
img.save(out)
