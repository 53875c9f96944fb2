#!/usr/bin/env python3
"""`--control-from depth` end to end: the depth map transformers' `pipeline("depth-estimation")` makes with the tiny
Depth Anything (scripts/make_depth_fixtures.py) as the control image of diffusers' FluxControlImg2ImgPipeline
(tiny-control) and of FluxControlNetImg2ImgPipeline with the Union ControlNet in its depth mode.

Writes tests/fixtures/expected/depth-control-*.png and cases-control-depth.json (the cases, each with its
sensitivity: the Canny edges of the input in place of its depth map, the prompt, the seed).

Usage: python scripts/make_depth_control_fixtures.py   (scripts/requirements.txt, opencv-python-headless; run
make_depth_fixtures.py and make_controlnet_fixtures.py first)
"""
import inspect
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import pipeline

sys.path.insert(0, str(Path(__file__).parent))
from make_control_fixtures import canny  # noqa: E402
from make_fixtures import center_crop_to_aspect, psnr  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (FluxControlImg2ImgPipeline, FluxControlNetImg2ImgPipeline,  # noqa: E402
                       FluxControlNetModel, FluxPipeline)

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CASES = [
    dict(name="depth-control-img2img", pipeline="FluxControlImg2ImgPipeline", model="tiny-control",
         image="photo-96x64.png", prompt="a bowl of ramen on a wooden table, studio photo", width=64, height=48,
         strength=0.85, steps=6, guidance=10.0, seed=71, max_sequence_length=32),
    dict(name="depth-controlnet-union", pipeline="FluxControlNetImg2ImgPipeline", model="tiny-dev",
         controlnet="tiny-controlnet-union", control_mode=2, image="wide-100x60.png",
         prompt="a red fox sitting in a snowy forest, digital painting", width=80, height=48, strength=0.9, steps=6,
         guidance=3.5, seed=72, max_sequence_length=32),
]


def run(pipes, depth, case, control="depth", **override):
    c = {**case, **override}
    src = Image.open(FIX / "images" / c["image"]).convert("RGB")
    ctl = depth(src)["depth"].convert("RGB") if control == "depth" else canny(src, 100, 200)
    kw = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
              height=c["height"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              max_sequence_length=c["max_sequence_length"], output_type="pil", strength=c["strength"],
              image=center_crop_to_aspect(src, c["width"], c["height"]),
              control_image=center_crop_to_aspect(ctl, c["width"], c["height"]))
    if c.get("control_mode") is not None:
        kw["control_mode"] = c["control_mode"]
    return pipes[c["pipeline"]](**kw).images[0]


def main():
    torch.set_num_threads(2)
    # In float32: the fixture stores the weights in float16, which the pipeline would otherwise compute in.
    depth = pipeline("depth-estimation", model=str(FIX / "tiny-depth-anything"), device="cpu", dtype=torch.float32)
    control = FluxControlImg2ImgPipeline.from_pretrained(FIX / "tiny-control", torch_dtype=torch.float32)
    base = FluxPipeline.from_pretrained(FIX / "tiny-dev", torch_dtype=torch.float32)
    net = FluxControlNetModel.from_pretrained(FIX / "tiny-controlnet-union", torch_dtype=torch.float32)
    accepted = inspect.signature(FluxControlNetImg2ImgPipeline.__init__).parameters
    cn = FluxControlNetImg2ImgPipeline(**{k: v for k, v in base.components.items() if k in accepted}, controlnet=net)
    pipes = {"FluxControlImg2ImgPipeline": control, "FluxControlNetImg2ImgPipeline": cn}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    records = []
    for case in CASES:
        ref = run(pipes, depth, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"canny_instead_of_depth": psnr(ref, run(pipes, depth, case, control="canny")),
                "prompt": psnr(ref, run(pipes, depth, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipes, depth, case, seed=case["seed"] + 1))}
        rec = {**case, "expected": f"expected/{case['name']}.png", "size": list(ref.size),
               "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}), flush=True)
    meta = {"generator": "scripts/make_depth_control_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-control-depth.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
