#!/usr/bin/env python3
"""diffusers' FluxControlNet*Pipeline outputs on tiny-dev with the tiny ControlNets of make_controlnet_fixtures.py.

Writes tests/fixtures/:
  expected/controlnet-*.png  FluxControlNetPipeline (text-to-image, true CFG, two ControlNets, XLabs),
                             FluxControlNetImg2ImgPipeline (Canny control, a start/end window, XLabs) and
                             FluxControlNetInpaintPipeline (the Union ControlNet in a mode) outputs, CPU generator,
                             float32
  cases-controlnet.json      the cases in cases-modes.json's format plus each ControlNet's flags, each with its
                             sensitivity: PSNR of diffusers' own output against the same run with another control
                             image, another scale, no ControlNet, another Union mode, prompt or seed

Usage: python scripts/make_controlnet_pipeline_fixtures.py   (scripts/requirements.txt, plus
opencv-python-headless; run make_controlnet_fixtures.py first)
"""
import inspect
import json
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_control_fixtures import canny  # noqa: E402
from make_fixtures import center_crop_to_aspect, psnr  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (FluxControlNetImg2ImgPipeline, FluxControlNetInpaintPipeline,  # noqa: E402
                       FluxControlNetModel, FluxControlNetPipeline, FluxMultiControlNetModel, FluxPipeline)

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
P1 = "a red fox sitting in a snowy forest, digital painting"
P2 = "a bowl of ramen on a wooden table, studio photo"

# Each ControlNet: model folder, control image (a file in images/ or canny:LOW,HIGH of the input), Union mode,
# scale, start, end.
CN = lambda model, control, scale=1.0, mode=None, start=0.0, end=1.0: dict(  # noqa: E731
    model=model, control=control, mode=mode, scale=scale, start=start, end=end)

CASES = [
    dict(name="controlnet-t2i", pipeline="FluxControlNetPipeline", prompt=P1, width=64, height=64, steps=6,
         guidance=3.5, seed=41, max_sequence_length=64,
         controlnets=[CN("tiny-controlnet", "control-gradient-80x80.png", 0.8)],
         other_control="control-photo-80x80.png", other_scale=0.4),
    dict(name="controlnet-t2i-cfg", pipeline="FluxControlNetPipeline", prompt=P2, width=96, height=64, steps=5,
         guidance=3.5, seed=42, max_sequence_length=32, negative_prompt="blurry, low quality", true_cfg=2.5,
         controlnets=[CN("tiny-controlnet", "control-photo-96x64.png", 1.0, end=0.6)],
         other_control="control-wide-96x64.png"),
    dict(name="controlnet-img2img-canny", pipeline="FluxControlNetImg2ImgPipeline", image="photo-96x64.png",
         prompt=P2, width=64, height=48, strength=0.85, steps=7, guidance=3.5, seed=43, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet", "canny:50,150", 1.2, start=0.2, end=0.9)], other_scale=0.6),
    dict(name="controlnet-inpaint-union", pipeline="FluxControlNetInpaintPipeline", image="gradient-80x80.png",
         mask="rect-80x80.png", prompt=P1, width=64, height=64, strength=0.9, steps=6, guidance=3.5, seed=44,
         max_sequence_length=32, controlnets=[CN("tiny-controlnet-union", "control-gradient-80x80.png", 0.9, 2)],
         other_control="control-photo-80x80.png", moved_mask="rect-moved-80x80.png"),
    dict(name="controlnet-union-t2i", pipeline="FluxControlNetPipeline", prompt=P1, width=64, height=64, steps=6,
         guidance=4.0, seed=46, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet-union", "control-photo-80x80.png", 1.0, 0)], other_mode=2),
    dict(name="controlnet-xlabs-t2i", pipeline="FluxControlNetPipeline", prompt=P2, width=64, height=64, steps=6,
         guidance=3.5, seed=47, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet-xlabs", "control-gradient-80x80.png", 0.9)],
         other_control="control-photo-80x80.png", other_scale=0.5),
    dict(name="controlnet-xlabs-img2img", pipeline="FluxControlNetImg2ImgPipeline", image="wide-100x60.png",
         prompt=P1, width=80, height=48, strength=0.75, steps=8, guidance=3.5, seed=48, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet-xlabs", "canny:60,160", 1.0, start=0.1, end=0.7)], other_scale=0.4),
    dict(name="controlnet-schnell-t2i", pipeline="FluxControlNetPipeline", model="tiny-schnell", prompt=P2, width=72,
         height=48, steps=4, guidance=0.0, seed=49, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet-schnell", "control-photo-96x64.png", 1.0)],
         other_control="control-wide-96x64.png", other_scale=0.5),
    dict(name="controlnet-schnell-inpaint", pipeline="FluxControlNetInpaintPipeline", model="tiny-schnell",
         image="gradient-80x80.png", mask="rect-80x80.png", prompt=P1, width=64, height=64, strength=0.8, steps=4,
         guidance=0.0, seed=50, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet-schnell", "canny:50,150", 0.8, end=0.75)], other_scale=0.3,
         moved_mask="rect-moved-80x80.png"),
    dict(name="controlnet-multi", pipeline="FluxControlNetPipeline", prompt=P2, width=64, height=64, steps=6,
         guidance=3.5, seed=45, max_sequence_length=32,
         controlnets=[CN("tiny-controlnet", "control-gradient-80x80.png", 0.7),
                      CN("tiny-controlnet-union", "control-photo-80x80.png", 0.5, 4, 0.0, 0.8)],
         other_control="control-photo-80x80.png"),
]


def img(name):
    return Image.open(FIX / "images" / name).convert("RGB")


def control_image(spec, src, w, h):
    if spec["control"].startswith("canny:"):
        low, high = (float(t) for t in spec["control"][6:].split(","))
        c = canny(src, low, high)
    else:
        c = img(spec["control"])
    # The CLI brings a control image to the working size as it does the input: crop to the aspect, then resize.
    return center_crop_to_aspect(c, w, h) if src is not None else c


def run(bases, nets, case, **override):
    c = {**case, **override}
    base = bases[c.get("model", "tiny-dev")]
    specs = c["controlnets"]
    src = img(c["image"]) if c.get("image") else None
    controls = [control_image(s, src, c["width"], c["height"]) for s in specs]
    models = [nets[s["model"]] for s in specs]
    multi = len(specs) > 1
    controlnet = FluxMultiControlNetModel(models) if multi else models[0]
    cls = {"FluxControlNetPipeline": FluxControlNetPipeline,
           "FluxControlNetImg2ImgPipeline": FluxControlNetImg2ImgPipeline,
           "FluxControlNetInpaintPipeline": FluxControlNetInpaintPipeline}[c["pipeline"]]
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls(**{k: v for k, v in base.components.items() if k in accepted}, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    pick = lambda k: [s[k] for s in specs] if multi else specs[0][k]  # noqa: E731
    kw = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
              height=c["height"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              max_sequence_length=c["max_sequence_length"], output_type="pil",
              control_image=controls if multi else controls[0],
              controlnet_conditioning_scale=pick("scale"), control_guidance_start=pick("start"),
              control_guidance_end=pick("end"))
    modes = [s["mode"] for s in specs]
    if any(m is not None for m in modes):
        kw["control_mode"] = modes if multi else modes[0]
    if c.get("true_cfg"):
        kw.update(negative_prompt=c["negative_prompt"], true_cfg_scale=c["true_cfg"])
    if src is not None:
        kw.update(image=center_crop_to_aspect(src, c["width"], c["height"]), strength=c["strength"])
    if c.get("mask"):
        mask = Image.open(FIX / "masks" / c["mask"])
        kw["mask_image"] = center_crop_to_aspect(mask, c["width"], c["height"])
    return pipe(**kw).images[0]


def with_first(case, **change):
    specs = [dict(case["controlnets"][0], **change)] + case["controlnets"][1:]
    return dict(controlnets=specs)


def main():
    torch.set_num_threads(2)
    photo = img("photo-96x64.png")
    canny(photo, 60, 160).save(FIX / "images" / "control-photo-96x64.png")
    canny(img("wide-100x60.png").resize((96, 64), Image.LANCZOS), 40, 120).save(
        FIX / "images" / "control-wide-96x64.png")
    base = {m: FluxPipeline.from_pretrained(FIX / m, torch_dtype=torch.float32) for m in ("tiny-dev", "tiny-schnell")}
    nets = {n: FluxControlNetModel.from_pretrained(FIX / n, torch_dtype=torch.float32)
            for n in ("tiny-controlnet", "tiny-controlnet-union", "tiny-controlnet-xlabs", "tiny-controlnet-schnell")}
    records = []
    for case in CASES:
        ref = run(base, nets, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run(base, nets, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(base, nets, case, seed=case["seed"] + 1)),
                "no_controlnet": psnr(ref, run(base, nets, case, **with_first(case, scale=0.0)))}
        if case.get("other_control"):
            sens["control_image"] = psnr(ref, run(base, nets, case, **with_first(case, control=case["other_control"])))
        if case.get("other_scale") is not None:
            sens["control_scale"] = psnr(ref, run(base, nets, case, **with_first(case, scale=case["other_scale"])))
        if case.get("other_mode") is not None:
            sens["control_mode"] = psnr(ref, run(base, nets, case, **with_first(case, mode=case["other_mode"])))
        if case.get("moved_mask"):
            sens["mask"] = psnr(ref, run(base, nets, case, mask=case["moved_mask"]))
        rec = {"model": "tiny-dev", **case, "expected": f"expected/{case['name']}.png", "size": list(ref.size),
               "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}), flush=True)
    meta = {"generator": "scripts/make_controlnet_pipeline_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-controlnet.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
