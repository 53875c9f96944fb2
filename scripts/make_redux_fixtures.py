#!/usr/bin/env python3
"""A tiny FLUX.1 Redux prior and diffusers' FluxPriorReduxPipeline + Flux pipelines' outputs.

Writes tests/fixtures/:
  tiny-redux/            FluxPriorReduxPipeline's own parts, as black-forest-labs/FLUX.1-Redux-dev lays them out:
                         image_encoder/ (a tiny random SiglipVisionModel), feature_extractor/
                         (SiglipImageProcessor, bicubic to the encoder's size), image_embedder/ (ReduxImageEncoder
                         from the SigLIP width to tiny-dev's T5 width), model_index.json
  expected/redux-*.png   FluxPipeline / FluxImg2ImgPipeline / FluxInpaintPipeline on tiny-dev fed the prior's
                         prompt_embeds and pooled_prompt_embeds (the prior encodes the prompt with tiny-dev's text
                         encoders; one weight per image as prompt_embeds_scale and pooled_prompt_embeds_scale)
  cases-redux.json       the cases in cases-modes.json's format plus `redux` [[image, weight], ...], each with its
                         sensitivity: no Redux image, another image, another weight, the prompt, the seed

transformers uses SiglipImageProcessorPil here (no torchvision): PIL's bicubic resize, which the tool ports.
Usage: python scripts/make_redux_fixtures.py   (scripts/requirements.txt)
"""
import json
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import center_crop_to_aspect, psnr, reinit  # noqa: E402

import diffusers  # noqa: E402
from diffusers import FluxImg2ImgPipeline, FluxInpaintPipeline, FluxPipeline, FluxPriorReduxPipeline  # noqa: E402
from diffusers.pipelines.flux.modeling_flux import ReduxImageEncoder  # noqa: E402
from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
P1 = "a red fox sitting in a snowy forest, digital painting"
P2 = "a bowl of ramen on a wooden table, studio photo"
B = dict(model="tiny-dev", steps=4, guidance=3.5, max_sequence_length=512)

CASES = [
    dict(B, name="redux-t2i", pipeline="FluxPipeline", redux=[["ref-100x70.png", 1.0]], prompt=P1, width=64,
         height=48, seed=41, other=[["ref-alt-100x70.png", 1.0]]),
    dict(B, name="redux-img2img-two", pipeline="FluxImg2ImgPipeline", image="photo-96x64.png",
         redux=[["ref-100x70.png", 0.7], ["ref-64x80.png", 0.5]], prompt=P2, width=64, height=48, strength=0.8,
         seed=42, other=[["ref-100x70.png", 0.7], ["ref-alt-64x80.png", 0.5]]),
    dict(B, name="redux-inpaint", pipeline="FluxInpaintPipeline", image="gradient-80x80.png", mask="rect-80x80.png",
         redux=[["ref-64x80.png", 1.0]], prompt=P2, width=64, height=64, strength=0.9, seed=43,
         other=[["ref-alt-64x80.png", 1.0]]),
]


def build() -> Path:
    out = FIX / "tiny-redux"
    if out.exists():
        shutil.rmtree(out)
    torch.manual_seed(70)
    cfg = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=128, patch_size=8, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    encoder = SiglipVisionModel(cfg)
    reinit(encoder, 2.0, 71)
    t5 = json.loads((FIX / "tiny-dev" / "text_encoder_2" / "config.json").read_text())
    embedder = ReduxImageEncoder(redux_dim=cfg.hidden_size, txt_in_features=t5["d_model"])
    reinit(embedder, 1.0, 72)
    with torch.no_grad():
        # 256 image tokens beside 512 T5 tokens: loud enough that dropping or swapping the image moves the output
        # far below the 45 dB bar.
        embedder.redux_down.weight *= 30.0
    processor = SiglipImageProcessor(size={"height": 128, "width": 128}, resample=Image.BICUBIC)
    prior = FluxPriorReduxPipeline(image_encoder=encoder, feature_extractor=processor, image_embedder=embedder)
    prior.save_pretrained(out, safe_serialization=True)
    return out


def run(pipes, prior, case, **override):
    c = {**case, **override}
    img = lambda name: Image.open(FIX / "images" / name).convert("RGB")  # noqa: E731
    kw = dict(num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"], height=c["height"],
              generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="pil")
    if c["redux"]:
        images, weights = [img(i) for i, _ in c["redux"]], [float(w) for _, w in c["redux"]]
        p = prior(image=images, prompt=c["prompt"], prompt_embeds_scale=weights, pooled_prompt_embeds_scale=weights)
        kw.update(prompt_embeds=p.prompt_embeds, pooled_prompt_embeds=p.pooled_prompt_embeds)
    else:
        kw.update(prompt=c["prompt"], max_sequence_length=c["max_sequence_length"])
    if c.get("image"):
        kw.update(image=center_crop_to_aspect(img(c["image"]), c["width"], c["height"]), strength=c["strength"])
    if c.get("mask"):
        mask = Image.open(FIX / "masks" / c["mask"])
        kw["mask_image"] = center_crop_to_aspect(mask, c["width"], c["height"])
    return pipes[c["pipeline"]](**kw).images[0]


def main():
    torch.set_num_threads(2)
    folder = build()
    base = FluxPipeline.from_pretrained(FIX / "tiny-dev", torch_dtype=torch.float32)
    prior = FluxPriorReduxPipeline.from_pretrained(folder, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                                   text_encoder_2=base.text_encoder_2, tokenizer_2=base.tokenizer_2,
                                                   torch_dtype=torch.float32)
    pipes = {"FluxPipeline": base, "FluxImg2ImgPipeline": FluxImg2ImgPipeline(**base.components),
             "FluxInpaintPipeline": FluxInpaintPipeline(**base.components)}
    for p in [*pipes.values(), prior]:
        p.set_progress_bar_config(disable=True)
    records = []
    for case in CASES:
        ref = run(pipes, prior, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        weights = [[i, w * 0.4] for i, w in case["redux"]]
        sens = {"no_redux": psnr(ref, run(pipes, prior, case, redux=[])),
                "redux_image": psnr(ref, run(pipes, prior, case, redux=case["other"])),
                "weight": psnr(ref, run(pipes, prior, case, redux=weights)),
                "prompt": psnr(ref, run(pipes, prior, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipes, prior, case, seed=case["seed"] + 1))}
        rec = {**{k: v for k, v in case.items() if k != "other"}, "expected": f"expected/{case['name']}.png",
               "size": list(ref.size), "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}))
    meta = {"generator": "scripts/make_redux_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-redux.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
