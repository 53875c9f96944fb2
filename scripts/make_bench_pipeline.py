#!/usr/bin/env python3
"""A mid-sized random FLUX pipeline for benchmarks (not committed: ~300 MB).

Transformer: 4 double + 8 single blocks, 8 heads × 64 = 512 wide → ≈70M parameters. T5 and CLIP 256 wide, VAE with
FLUX.1's 4-block layout at 64-128-128-128 channels. Reuses the fixture generator's builders so the layout is the
real diffusers one.  Usage: python scripts/make_bench_pipeline.py OUT_DIR
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402

SPEC = dict(name="bench-70m", seed=5, clip_layout="vocab-merges",
            clip=dict(hidden=256, mlp=1024, layers=4, heads=4, act="quick_gelu", eps=1e-5, legacy_eos=True),
            t5=dict(d_model=256, d_kv=32, d_ff=1024, layers=4, heads=8, ff="gated-gelu"),
            transformer=dict(layers=4, single_layers=8, head_dim=64, heads=8, guidance=True, axes=[16, 24, 24],
                             gain=1.0),
            vae=dict(blocks=[64, 128, 128, 128], layers=2, act="silu", latent_channels=16, groups=32, scale=0.3611,
                     shift=0.1159, mid_attn=True),
            scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                           max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096))

if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    folder = mf.build_pipeline(SPEC, out)
    mf.make_image(out / "input-256.png", 256, 256, 11)
    n = sum(p.numel() for p in __import__("diffusers").FluxTransformer2DModel.from_pretrained(
        folder / "transformer").parameters())
    print(f"{folder}: transformer parameters {n / 1e6:.1f}M")
