#!/usr/bin/env python3
"""A third tiny pipeline unlike both fixtures (3-block VAE with GELU, 4 latent channels, head dim 12, CLIP gelu_new,
non-gated ReLU T5, vocab+merges tokenizer) and diffusers' outputs for two cases, for checking parity on a config
the tests never saw. usage: python scripts/make_extra_pipeline.py OUT_DIR; then run the CLI with the flags in
OUT_DIR/cases.json and compare against OUT_DIR/ref{0,1}.png."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
from pathlib import Path
import make_fixtures as mf
import torch
from diffusers import FluxImg2ImgPipeline
out = Path(sys.argv[1] if len(sys.argv) > 1 else "extra-check")
out.mkdir(parents=True, exist_ok=True)
spec = dict(name="tiny-odd", seed=5, clip_layout="vocab-merges",
     clip=dict(hidden=16, mlp=40, layers=2, heads=2, act="gelu_new", eps=1e-5, legacy_eos=False),
     t5=dict(d_model=20, d_kv=6, d_ff=36, layers=1, heads=2, ff="relu"),
     transformer=dict(layers=2, single_layers=1, head_dim=12, heads=2, guidance=True, axes=[4, 4, 4], gain=1.5),
     vae=dict(blocks=[8, 16, 16], layers=1, act="gelu", latent_channels=4, groups=4, scale=0.7, shift=-0.02, mid_attn=True),
     scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                    max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096))
folder = mf.build_pipeline(spec, out)
mf.make_image(out / "in.png", 90, 50, 9)
pipe = FluxImg2ImgPipeline.from_pretrained(folder)
cases = [dict(image="in.png", prompt="a small red boat on a lake", width=88, height=40, strength=0.43, steps=7, guidance=4.0, seed=31337, max_sequence_length=24),
         dict(image="in.png", prompt="snow", width=48, height=48, strength=0.9, steps=5, guidance=2.0, seed=2**31+5, max_sequence_length=9)]
for i, c in enumerate(cases):
    mf.run(pipe, c, out).save(out / f"ref{i}.png")
json.dump(cases, open(out / "cases.json", "w"))
print("ok", folder)
