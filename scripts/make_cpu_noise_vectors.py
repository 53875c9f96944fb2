#!/usr/bin/env python3
"""torch CPU randn in bf16/fp16 (first/last values, the next call, the sum) for sizes that are and are not multiples of
16: the reference for the reduced-precision CPU noise of the installed torch (2.15 draws "current"-era noise).

Usage: python scripts/make_cpu_noise_vectors.py  (writes era3.json in the current folder)
"""
import torch, json
torch.set_num_threads(1)
out={}
for dt in ("bfloat16","float16"):
    for n in (262144, 1000, 37, 20, 5):
        for seed in (0, 42):
            g=torch.Generator("cpu").manual_seed(seed)
            v=torch.randn(n,generator=g,dtype=getattr(torch,dt)).float()
            # second call on the same generator, as the pipeline's noise draw
            w=torch.randn(n,generator=g,dtype=getattr(torch,dt)).float()
            out[f"{dt}_{n}_{seed}"]={"first":v[:8].tolist(),"last":v[-8:].tolist(),"second_first":w[:4].tolist(), "sum":float(v.double().sum())}
print(torch.__version__)
json.dump(out,open("era3.json","w"))
