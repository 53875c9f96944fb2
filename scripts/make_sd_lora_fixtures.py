#!/usr/bin/env python3
"""Tiny random Stable Diffusion LoRAs and diffusers' outputs with them, for the Rust tests (issue 20, item 5).

Reads the saved tiny-sd15 and tiny-sdxl pipelines (never rewrites them) and writes tests/fixtures/:
  loras/sd15-peft.safetensors, loras/sdxl-peft.safetensors    diffusers/PEFT names (unet., text_encoder.,
                           text_encoder_2.; lora_A/lora_B, no alphas: scale 1)
  loras/sd15-kohya.safetensors, loras/sdxl-kohya.safetensors  kohya names (lora_unet_, lora_te_ / lora_te1_ /
                           lora_te2_; lora_down/lora_up with an .alpha per module, alpha != rank)
  loras/sdxl-kohya-sgm.safetensors   the same SDXL pairs with the UNet in the original block names
                           (lora_unet_input_blocks_4_1_…), as sd-scripts writes SDXL LoRAs
  expected/sd-lora-<case>.png   StableDiffusion[XL]Pipeline with load_lora_weights + set_adapters(weight)
                           (and cross_attention_kwargs scale for --lora-scale)
  cases-sd-lora.json       each case and its sensitivity: PSNR of the reference against the same run without
                           the LoRA, with only its UNet half (no text-encoder pairs), and at scale 1

Every pair targets the UNet's attention (to_q/k/v/out.0), GEGLU feed-forward, proj_in/proj_out (1x1 convs in
tiny-sd15, linear in tiny-sdxl) and CLIP's q/k/v/out_proj/fc1/fc2.

Usage: python scripts/make_sd_lora_fixtures.py [--out tests/fixtures]
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

import diffusers
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import psnr  # noqa: E402
from make_sd_fixtures import text_model_alias, unet_ldm_name  # noqa: E402

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out")
CLIP_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
RANK = 4
PROMPT = "a photo of a cat sitting on a red sofa"


def modules(model, targets):
    """(diffusers module name, module) of every targeted linear / 1x1 conv."""
    for name, m in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                yield name, m


def pair(m, g, gain):
    """Random (down, up) shaped as the module: [r, in] / [out, r], or [r, in, 1, 1] / [out, r, 1, 1]."""
    if isinstance(m, torch.nn.Conv2d):
        i, o, extra = m.in_channels, m.out_channels, (1, 1)
    else:
        i, o, extra = m.in_features, m.out_features, ()
    down = torch.randn((RANK, i, *extra), generator=g) / i ** 0.5
    up = torch.randn((o, RANK, *extra), generator=g) * gain / RANK ** 0.5
    return down.contiguous(), up.contiguous()


def clip_name(name):
    """The module's name as real files spell it: transformers 4's `text_model.` prefix."""
    return name if name.startswith("text_model.") else "text_model." + name


def make(pipe, xl, seed):
    """{(component, module): (down, up, alpha)} for the UNet and each text encoder."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in modules(pipe.unet, UNET_TARGETS):
        out[("unet", name)] = (*pair(m, g, 0.6), float(RANK) / 2)
    encoders = [("text_encoder", pipe.text_encoder)] + ([("text_encoder_2", pipe.text_encoder_2)] if xl else [])
    for comp, enc in encoders:
        for name, m in modules(enc, CLIP_TARGETS):
            out[(comp, clip_name(name))] = (*pair(m, g, 0.8), float(RANK) / 2)
    return out


def peft_file(pairs, path, unet_only=False):
    sd = {}
    for (comp, name), (down, up, _) in pairs.items():
        if unet_only and comp != "unet":
            continue
        sd[f"{comp}.{name}.lora_A.weight"] = down
        sd[f"{comp}.{name}.lora_B.weight"] = up
    save_file(sd, str(path))


KOHYA_PREFIX = {False: {"unet": "lora_unet_", "text_encoder": "lora_te_"},
                True: {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}}


def kohya_file(pairs, path, xl, unet_only=False, unet_config=None):
    """`unet_config`: name the UNet's modules in the original (SGM/LDM) layout."""
    sd = {}
    for (comp, name), (down, up, alpha) in pairs.items():
        if unet_only and comp != "unet":
            continue
        if comp == "unet" and unet_config is not None:
            name = unet_ldm_name(name + ".weight", unet_config).removesuffix(".weight")
        key = KOHYA_PREFIX[xl][comp] + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down
        sd[f"{key}.lora_up.weight"] = up
        sd[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(sd, str(path))


CASES = [
    dict(name="sd15-lora-peft", model="tiny-sd15", lora="sd15-peft.safetensors", format="peft", weight=0.8, steps=5,
         width=48, height=64, seed=41, guidance=7.5),
    dict(name="sd15-lora-kohya", model="tiny-sd15", lora="sd15-kohya.safetensors", format="kohya", weight=1.0,
         steps=5, width=64, height=48, seed=42, guidance=7.5),
    dict(name="sdxl-lora-peft", model="tiny-sdxl", lora="sdxl-peft.safetensors", format="peft", weight=0.9, steps=5,
         width=64, height=48, seed=43, guidance=5.0),
    dict(name="sdxl-lora-kohya", model="tiny-sdxl", lora="sdxl-kohya.safetensors", format="kohya", weight=0.7,
         steps=5, width=48, height=64, seed=44, guidance=5.0),
    dict(name="sdxl-lora-kohya-sgm", model="tiny-sdxl", lora="sdxl-kohya-sgm.safetensors", format="kohya-sgm",
         weight=0.6, steps=5, width=64, height=64, seed=45, guidance=5.0),
    # --lora-scale: the call's cross_attention_kwargs scale, which also scales the text encoders' pairs.
    dict(name="sd15-lora-peft-scale", model="tiny-sd15", lora="sd15-peft.safetensors", format="peft", weight=1.0,
         lora_scale=0.4, steps=5, width=48, height=48, seed=46, guidance=7.5),
]


def run(folder: Path, case, lora: Path | None):
    xl = case["model"] == "tiny-sdxl"
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    kw = {} if xl else dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe = cls.from_pretrained(folder, **kw)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="a")
        pipe.set_adapters(["a"], adapter_weights=[case["weight"]])
    # After loading: diffusers strips `text_model.` from LoRA keys only when the encoder lacks that attribute.
    text_model_alias(pipe.text_encoder)
    extra = {"cross_attention_kwargs": {"scale": case["lora_scale"]}} if "lora_scale" in case and lora else {}
    with torch.no_grad():
        return pipe(**extra, prompt=PROMPT, num_inference_steps=case["steps"], guidance_scale=case["guidance"],
                    width=case["width"], height=case["height"],
                    generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="pil").images[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    a = ap.parse_args()
    out = Path(a.out)
    torch.set_num_threads(1)
    loras = out / "loras"
    tmp = Path("/tmp/sd-lora-fixtures")
    tmp.mkdir(exist_ok=True)
    for model, xl, seed in [("tiny-sd15", False, 5), ("tiny-sdxl", True, 6)]:
        cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
        pipe = cls.from_pretrained(out / model)
        pairs = make(pipe, xl, seed)
        stem = model.removeprefix("tiny-")
        peft_file(pairs, loras / f"{stem}-peft.safetensors")
        kohya_file(pairs, loras / f"{stem}-kohya.safetensors", xl)
        peft_file(pairs, tmp / f"{stem}-peft.safetensors", unet_only=True)
        kohya_file(pairs, tmp / f"{stem}-kohya.safetensors", xl, unet_only=True)
        if xl:
            kohya_file(pairs, loras / f"{stem}-kohya-sgm.safetensors", xl, unet_config=pipe.unet.config)
            kohya_file(pairs, tmp / f"{stem}-kohya-sgm.safetensors", xl, unet_only=True, unet_config=pipe.unet.config)
    records = []
    for case in CASES:
        folder = out / case["model"]
        ref = run(folder, case, loras / case["lora"])
        ref.save(out / "expected" / f"sd-lora-{case['name']}.png")
        sens = {"no_lora": psnr(ref, run(folder, case, None)),
                "unet_half_only": psnr(ref, run(folder, case, tmp / case["lora"]))}
        if "lora_scale" in case:
            plain = {k: v for k, v in case.items() if k != "lora_scale"}
            sens["lora_scale_1"] = psnr(ref, run(folder, plain, loras / case["lora"]))
        records.append({**case, "prompt": PROMPT, "scheduler": "euler",
                        "expected": f"expected/sd-lora-{case['name']}.png", "sensitivity_psnr_db": sens})
        print(json.dumps({"name": case["name"], "sensitivity_psnr_db": sens}), flush=True)
    meta = {"generator": "scripts/make_sd_lora_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (out / "cases-sd-lora.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
