#!/usr/bin/env python3
"""A tiny FLUX.1 Control pipeline, OpenCV Canny references, and diffusers' FluxControl*Pipeline outputs.

Writes tests/fixtures/:
  tiny-control/          tiny-dev's text encoders, tokenizers, VAE and scheduler (copied: git stores the same blobs
                         once) with a Control transformer: tiny-dev's weights, x_embedder widened to in_channels =
                         2 x 4 x latent (noise, then the control image's latents), as FLUX.1-Canny/Depth-dev are to
                         FLUX.1-dev; model_index says FluxControlPipeline
  canny/*.png, canny.json  cv2.Canny(RGB image, low, high) (what controlnet_aux's CannyDetector and diffusers'
                         Control examples run) on the fixture images at several thresholds, as white-on-black RGB
  images/control-*.png   control images of the cases
  expected/control-*.png FluxControlPipeline (text-to-image), FluxControlImg2ImgPipeline and
                         FluxControlInpaintPipeline outputs (CPU generator, float32)
  cases-control.json     the cases in cases-modes.json's format, each with its sensitivity: PSNR of diffusers' own
                         output against the same run with another control image, prompt, seed or mask

Usage: python scripts/make_control_fixtures.py   (scripts/requirements.txt, plus opencv-python-headless)
"""
import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import center_crop_to_aspect, psnr, reinit  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (FluxControlImg2ImgPipeline, FluxControlInpaintPipeline, FluxControlPipeline,  # noqa: E402
                       FluxTransformer2DModel)

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
P1 = "a red fox sitting in a snowy forest, digital painting"
P2 = "a bowl of ramen on a wooden table, studio photo"

CANNY = [("gradient-80x80.png", 100, 200), ("photo-96x64.png", 100, 200), ("photo-96x64.png", 30, 90),
         ("wide-100x60.png", 50, 150), ("ref-100x70.png", 200, 100), ("ref-64x80.png", 0, 0),
         ("tall-48x64.png", 60.7, 180.2)]

CASES = [
    dict(name="control-t2i", pipeline="FluxControlPipeline", model="tiny-control", control="control-gradient-80x80.png",
         other_control="control-photo-80x80.png", prompt=P1, width=64, height=64, steps=6, guidance=10.0, seed=31,
         max_sequence_length=64),
    dict(name="control-img2img-canny", pipeline="FluxControlImg2ImgPipeline", model="tiny-control",
         image="photo-96x64.png", canny=[50, 150], other_canny=[200, 250], prompt=P2, width=64, height=48,
         strength=0.8, steps=6, guidance=30.0, seed=32, max_sequence_length=32),
    dict(name="control-inpaint", pipeline="FluxControlInpaintPipeline", model="tiny-control",
         image="gradient-80x80.png", mask="rect-80x80.png", moved_mask="rect-moved-80x80.png",
         control="control-gradient-80x80.png", other_control="control-photo-80x80.png", prompt=P2, width=64,
         height=64, strength=0.9, steps=6, guidance=10.0, seed=33, max_sequence_length=32),
]


def canny(img: Image.Image, low, high) -> Image.Image:
    edges = cv2.Canny(np.asarray(img.convert("RGB")), low, high)
    return Image.fromarray(np.stack([edges] * 3, -1), "RGB")


def build_control() -> Path:
    src, dst = FIX / "tiny-dev", FIX / "tiny-control"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("transformer"))
    dev = FluxTransformer2DModel.from_pretrained(src / "transformer")
    cfg = {k: v for k, v in dict(dev.config).items() if not k.startswith("_")}
    packed = cfg["in_channels"]
    cfg.update(in_channels=2 * packed, out_channels=packed)
    control = FluxTransformer2DModel.from_config(cfg)
    missing, _ = control.load_state_dict({k: v for k, v in dev.state_dict().items()
                                          if not k.startswith("x_embedder.")}, strict=False)
    assert sorted(missing) == ["x_embedder.bias", "x_embedder.weight"], missing
    reinit(control.x_embedder, 1.0, 62)
    with torch.no_grad():
        # A strong control half, so that swapping the control image moves the output far below the 45 dB bar.
        control.x_embedder.weight[:, packed:] *= 8.0
    control.save_pretrained(dst / "transformer", safe_serialization=True)
    index = json.loads((dst / "model_index.json").read_text())
    index["_class_name"] = "FluxControlPipeline"
    (dst / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dst


def canny_references():
    out = FIX / "canny"
    out.mkdir(exist_ok=True)
    records = []
    for image, low, high in CANNY:
        name = f"{Path(image).stem}-{low}-{high}.png"
        canny(Image.open(FIX / "images" / image), low, high).save(out / name)
        records.append(dict(image=image, low=low, high=high, expected=f"canny/{name}"))
    meta = {"generator": "scripts/make_control_fixtures.py", "opencv": cv2.__version__, "cases": records}
    (FIX / "canny.json").write_text(json.dumps(meta, indent=1) + "\n")


def run(pipes, case, **override):
    c = {**case, **override}
    pipe = pipes[c["pipeline"]]
    kw = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
              height=c["height"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              max_sequence_length=c["max_sequence_length"], output_type="pil")
    img = lambda name: Image.open(FIX / "images" / name).convert("RGB")  # noqa: E731
    if c.get("image"):
        src = img(c["image"])
        control = canny(src, *c["canny"]) if c.get("canny") else img(c["control"])
        # The CLI's crop to the working aspect, for the input, its mask and its control image alike.
        kw.update(image=center_crop_to_aspect(src, c["width"], c["height"]), strength=c["strength"],
                  control_image=center_crop_to_aspect(control, c["width"], c["height"]))
        if c.get("mask"):
            mask = Image.open(FIX / "masks" / c["mask"])
            kw["mask_image"] = center_crop_to_aspect(mask, c["width"], c["height"])
    else:
        kw["control_image"] = img(c["control"])
    return pipe(**kw).images[0]


def main():
    torch.set_num_threads(2)
    canny_references()
    photo = Image.open(FIX / "images" / "photo-96x64.png").convert("RGB").resize((80, 80), Image.LANCZOS)
    canny(Image.open(FIX / "images" / "gradient-80x80.png"), 60, 160).save(FIX / "images" / "control-gradient-80x80.png")
    canny(photo, 60, 160).save(FIX / "images" / "control-photo-80x80.png")
    base = FluxControlPipeline.from_pretrained(build_control(), torch_dtype=torch.float32)
    pipes = {"FluxControlPipeline": base,
             "FluxControlImg2ImgPipeline": FluxControlImg2ImgPipeline(**base.components),
             "FluxControlInpaintPipeline": FluxControlInpaintPipeline(**base.components)}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    records = []
    for case in CASES:
        ref = run(pipes, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run(pipes, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipes, case, seed=case["seed"] + 1))}
        if case.get("other_control"):
            sens["control_image"] = psnr(ref, run(pipes, case, control=case["other_control"]))
        if case.get("other_canny"):
            sens["canny_thresholds"] = psnr(ref, run(pipes, case, canny=case["other_canny"]))
        if case.get("moved_mask"):
            sens["mask"] = psnr(ref, run(pipes, case, mask=case["moved_mask"]))
        rec = {**case, "expected": f"expected/{case['name']}.png", "size": list(ref.size),
               "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}))
    meta = {"generator": "scripts/make_control_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-control.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
