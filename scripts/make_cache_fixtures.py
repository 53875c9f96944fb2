#!/usr/bin/env python3
"""diffusers' step caches (First-Block Cache, TaylorSeer) on the committed tiny pipelines: the references of
tests/integration/cache.rs.

Writes tests/fixtures/expected/cache-*.png and tests/fixtures/cases-cache.json. Each case runs one pipeline with
`transformer.enable_cache(FirstBlockCacheConfig(threshold))` or `TaylorSeerCacheConfig(max_order, cache_interval)`
(every other field at diffusers' default, bf16 Taylor factors included) and a CPU generator, and records:
  - `cache`: the value of our `--cache` flag that asks for the same hook;
  - `skipped`: what the hook skipped in diffusers' run (FBCache: the blocks after the first, in every pass it
    reused their residual; TaylorSeer: attention-module calls that were forecast), which our --json must repeat;
  - `sensitivity_psnr_db`: diffusers' output without the cache, with the case's other setting, and (true CFG)
    with one cache shared by both passes; each must stay below the 45 dB parity bar.

FLUX.2: diffusers 0.42.1's First-Block Cache raises TypeError on Flux2Transformer2DModel (its last single block
returns the joined [text; image] stream, which the tail hook subtracts the head block's (image, text) pair from).
The hook is used here with that one step read the only way its skip path can work: the tail residual is the last
block's output split at the image length, minus the head block's image and text outputs.

Thresholds are large (0.6–1.7) because the tiny random-weight transformers change their first block's residual by
40–1300 % between steps (real checkpoints: a few %); each chosen value skips some steps, and the two of a pair skip
different ones.

Usage: python scripts/make_cache_fixtures.py [--probe]   (after make_fixtures.py and make_klein_fixtures.py)
"""
import contextlib
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import center_crop_to_aspect, psnr  # noqa: E402
from diffusers import (FirstBlockCacheConfig, Flux2KleinPipeline, FluxImg2ImgPipeline, FluxPipeline,  # noqa: E402
                       TaylorSeerCacheConfig)
from diffusers.hooks import first_block_cache as fbc  # noqa: E402
from diffusers.hooks import taylorseer_cache as tsc  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
P1 = "a watercolor painting of a cat on a red sofa"

SKIPS = {"fb": 0, "ts": 0}


def _tail_forward(self, module, *args, **kwargs):
    """FBCBlockHook.new_forward, except that a tail block returning one joined stream (FLUX.2's single blocks) has
    its residual split at the image length (see the module docstring)."""
    state = self.state_manager.get_state()
    if not (self.is_tail and state.should_compute and self._metadata.return_encoder_hidden_states_index is None):
        return _ORIGINAL_BLOCK_FORWARD(self, module, *args, **kwargs)
    output = self.fn_ref.original_forward(*args, **kwargs)
    img, txt = state.head_block_output
    n = img.shape[1]
    state.tail_block_residuals = (output[:, -n:] - img, output[:, :-n] - txt)
    return output


_ORIGINAL_BLOCK_FORWARD = fbc.FBCBlockHook.new_forward
fbc.FBCBlockHook.new_forward = _tail_forward
_ORIGINAL_DECIDE = fbc.FBCHeadBlockHook._should_compute_remaining_blocks
_ORIGINAL_MEASURE = tsc.TaylorSeerCacheHook._measure_should_compute


def _count_decide(self, residual):
    compute = _ORIGINAL_DECIDE(self, residual)
    SKIPS["fb"] += not compute
    return compute


def _count_measure(self):
    compute, state = _ORIGINAL_MEASURE(self)
    SKIPS["ts"] += not compute
    return compute, state


fbc.FBCHeadBlockHook._should_compute_remaining_blocks = _count_decide
tsc.TaylorSeerCacheHook._measure_should_compute = _count_measure


def config(spec):
    """Our `--cache` value → diffusers' config."""
    kind, _, arg = spec.partition(":")
    if kind == "fbcache":
        return FirstBlockCacheConfig(threshold=float(arg)) if arg else FirstBlockCacheConfig()
    order, interval = (int(x) for x in arg.split(",")) if arg else (1, 5)
    return TaylorSeerCacheConfig(max_order=order, cache_interval=interval)


DEV = dict(model="tiny-dev", pipeline="FluxPipeline", prompt=P1, width=64, height=48, steps=12, guidance=3.5, seed=5,
           max_sequence_length=32)
SCHNELL_CFG = dict(model="tiny-schnell", pipeline="FluxPipeline", prompt=P1, width=48, height=48, steps=8, seed=8,
                   max_sequence_length=32, negative_prompt="a photo of a dog", true_cfg=2.5)
IMG2IMG = dict(model="tiny-dev", pipeline="FluxImg2ImgPipeline", prompt=P1, image="photo-96x64.png", width=64,
               height=48, strength=0.8, steps=12, guidance=3.5, seed=7, max_sequence_length=32)
KLEIN = dict(model="tiny-klein", pipeline="Flux2KleinPipeline", prompt=P1, width=64, height=64, steps=10, seed=42,
             max_sequence_length=32)
KLEIN_REF = {**{k: v for k, v in KLEIN.items() if k not in ("width", "height")}, "references": ["ref-100x70.png"],
             "seed": 3}
KLEIN_CFG = dict(model="tiny-klein-base", pipeline="Flux2KleinPipeline", prompt=P1, width=64, height=64, steps=8,
                 seed=7, max_sequence_length=32, guidance=4.0)

# (case, its cache, the other setting its sensitivity runs)
CASES = [
    ("cache-dev-fb-a", DEV, "fbcache:0.6", "fbcache:0.9"),
    ("cache-dev-fb-b", DEV, "fbcache:0.9", "fbcache:0.6"),
    ("cache-dev-ts-a", DEV, "taylorseer", "taylorseer:2,3"),
    ("cache-dev-ts-b", DEV, "taylorseer:2,3", "taylorseer"),
    ("cache-schnell-cfg-fb", SCHNELL_CFG, "fbcache:0.8", "fbcache:1.1"),
    ("cache-schnell-cfg-ts", SCHNELL_CFG, "taylorseer:1,2", "taylorseer"),
    ("cache-dev-img2img-fb", IMG2IMG, "fbcache:0.6", "fbcache:0.9"),
    ("cache-klein-fb-a", KLEIN, "fbcache:1.2", "fbcache:1.6"),
    ("cache-klein-fb-b", KLEIN, "fbcache:1.6", "fbcache:1.2"),
    ("cache-klein-ts-a", KLEIN, "taylorseer", "taylorseer:2,3"),
    ("cache-klein-ts-b", KLEIN, "taylorseer:2,3", "taylorseer"),
    ("cache-klein-ref-fb", KLEIN_REF, "fbcache:1.2", "fbcache:1.6"),
    ("cache-klein-cfg-fb", KLEIN_CFG, "fbcache:1.3", "fbcache:1.7"),
    ("cache-klein-cfg-ts", KLEIN_CFG, "taylorseer:2,2", "taylorseer"),
]

_PIPES = {}


def pipe(case):
    key = (case["pipeline"], case["model"])
    if key not in _PIPES:
        cls = {"FluxPipeline": FluxPipeline, "FluxImg2ImgPipeline": FluxImg2ImgPipeline,
               "Flux2KleinPipeline": Flux2KleinPipeline}[case["pipeline"]]
        p = cls.from_pretrained(FIX / case["model"], torch_dtype=torch.float32)
        p.set_progress_bar_config(disable=True)
        _PIPES[key] = p
    return _PIPES[key]


def call(case):
    p = pipe(case)
    kw = dict(prompt=case["prompt"], num_inference_steps=case["steps"], generator=torch.Generator("cpu").manual_seed(case["seed"]),
              max_sequence_length=case["max_sequence_length"], output_type="pil")
    for k in ("width", "height"):
        if case.get(k):
            kw[k] = case[k]
    if case.get("guidance") is not None:
        kw["guidance_scale"] = case["guidance"]
    if case.get("negative_prompt") is not None:
        kw.update(negative_prompt=case["negative_prompt"], true_cfg_scale=case["true_cfg"])
    if case.get("references"):
        kw["image"] = [Image.open(FIX / "images" / r).convert("RGB") for r in case["references"]]
    if case.get("image"):
        img = Image.open(FIX / "images" / case["image"]).convert("RGB")
        kw.update(image=center_crop_to_aspect(img, case["width"], case["height"]), strength=case["strength"])
        # FluxImg2ImgPipeline names no cache context (one pass per step, no CFG): give its one.
        with p.transformer.cache_context("cond"):
            return p(**kw).images[0]
    return p(**kw).images[0]


def run(case, cache=None, shared=False):
    """diffusers' image of `case` with `cache` (None: uncached), and what the hook skipped; `shared`: both CFG passes
    in one cache context (what separate caches guard against)."""
    p = pipe(case)
    SKIPS.update(fb=0, ts=0)
    if cache is None:
        return call(case), 0
    p.transformer.enable_cache(config(cache))
    try:
        if shared:
            original = p.transformer.cache_context
            p.transformer.cache_context = lambda name: original("cond")
        img = call(case)
    finally:
        if shared:
            del p.transformer.cache_context
        p.transformer.disable_cache()
    if cache.startswith("fbcache"):
        # Each skipped pass skips every block but the first.
        t = p.transformer
        return img, SKIPS["fb"] * (len(t.transformer_blocks) + len(t.single_transformer_blocks) - 1)
    return img, SKIPS["ts"]


def main():
    torch.set_num_threads(2)
    probe = "--probe" in sys.argv
    records = []
    for name, case, cache, other in CASES:
        ref, skipped = run(case, cache)
        sens = {"uncached": psnr(ref, run(case)[0]), "other_setting": psnr(ref, run(case, other)[0])}
        if case.get("negative_prompt") or case["model"] == "tiny-klein-base":
            sens["one_cache_for_both_passes"] = psnr(ref, run(case, cache, shared=True)[0])
        rec = {**case, "name": name, "cache": cache, "other_setting": other, "skipped": skipped,
               "expected": f"expected/{name}.png", "sensitivity_psnr_db": sens}
        print(json.dumps({k: rec[k] for k in ("name", "cache", "skipped", "sensitivity_psnr_db")}), flush=True)
        if probe:
            continue
        ref.save(FIX / "expected" / f"{name}.png")
        records.append(rec)
    if probe:
        return
    import diffusers
    meta = {"generator": "scripts/make_cache_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-cache.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
