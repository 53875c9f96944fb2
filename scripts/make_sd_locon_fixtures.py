#!/usr/bin/env python3
"""A tiny kohya LoCon for tiny-sd15 (pairs on the UNet's 3x3 convolutions too) and diffusers' output with it.

LoCon adds, to the usual linear pairs, convolution pairs: lora_down [r, in, kh, kw] with the base layer's kernel and
lora_up [out, r, 1, 1]. diffusers (through PEFT) applies them to the resnets' conv1/conv2/conv_shortcut, the
down/upsamplers and conv_in/conv_out. Reads tests/fixtures/tiny-sd15 (never rewrites it) and writes:
  loras/sd15-locon.safetensors   kohya names with an .alpha per module (alpha != rank)
  expected/sd-lora-sd15-locon.png  StableDiffusionPipeline + load_lora_weights, weight 0.9, Euler
  cases-sd-locon.json            the case and its sensitivity: without the LoRA, and with its linear pairs only
                                 (the convolution pairs removed)
Usage: python scripts/make_sd_locon_fixtures.py [--out tests/fixtures]"""
import argparse, json, sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import psnr  # noqa: E402
from make_sd_fixtures import text_model_alias  # noqa: E402

RANK = 4
PROMPT = "a photo of a cat sitting on a red sofa"
CASE = dict(name="sd15-locon", model="tiny-sd15", lora="sd15-locon.safetensors", format="kohya-locon", weight=0.9,
            steps=5, width=48, height=64, seed=47, guidance=7.5)


def pairs(unet, g):
    """{module: (down, up, alpha, is_conv)} for every linear and convolution of the UNet but the time embedding."""
    out = {}
    for name, m in unet.named_modules():
        if "time_emb" in name or not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if isinstance(m, torch.nn.Conv2d):
            kh, kw = m.kernel_size
            down = torch.randn((RANK, m.in_channels, kh, kw), generator=g) / (m.in_channels * kh * kw) ** 0.5
            up = torch.randn((m.out_channels, RANK, 1, 1), generator=g) * 0.6 / RANK ** 0.5
            out[name] = (down, up, RANK / 2, kh * kw > 1)
        else:
            down = torch.randn((RANK, m.in_features), generator=g) / m.in_features ** 0.5
            up = torch.randn((m.out_features, RANK), generator=g) * 0.6 / RANK ** 0.5
            out[name] = (down, up, RANK / 2, False)
    return out


def kohya(p, path, convs=True):
    sd = {}
    for name, (down, up, alpha, wide) in p.items():
        if wide and not convs:
            continue
        key = "lora_unet_" + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = down.contiguous()
        sd[f"{key}.lora_up.weight"] = up.contiguous()
        sd[f"{key}.alpha"] = torch.tensor(float(alpha))
    save_file(sd, str(path))


def run(folder, lora):
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    if lora is not None:
        pipe.load_lora_weights(str(lora), adapter_name="a")
        pipe.set_adapters(["a"], adapter_weights=[CASE["weight"]])
    text_model_alias(pipe.text_encoder)
    with torch.no_grad():
        return pipe(prompt=PROMPT, num_inference_steps=CASE["steps"], guidance_scale=CASE["guidance"],
                    width=CASE["width"], height=CASE["height"],
                    generator=torch.Generator("cpu").manual_seed(CASE["seed"]), output_type="pil").images[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures")
    out = Path(ap.parse_args().out)
    torch.set_num_threads(1)
    folder = out / CASE["model"]
    p = pairs(StableDiffusionPipeline.from_pretrained(folder).unet, torch.Generator().manual_seed(9))
    kohya(p, out / "loras" / CASE["lora"])
    kohya(p, Path("/tmp/sd15-locon-linear.safetensors"), convs=False)
    ref = run(folder, out / "loras" / CASE["lora"])
    ref.save(out / "expected" / "sd-lora-sd15-locon.png")
    sens = {"no_lora": psnr(ref, run(folder, None)),
            "linear_pairs_only": psnr(ref, run(folder, Path("/tmp/sd15-locon-linear.safetensors")))}
    print(json.dumps(sens))
    meta = {"generator": "scripts/make_sd_locon_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "cases": [{**CASE, "prompt": PROMPT, "scheduler": "euler", "expected": "expected/sd-lora-sd15-locon.png",
                       "wide_conv_pairs": sum(1 for v in p.values() if v[3]), "sensitivity_psnr_db": sens}]}
    (out / "cases-sd-locon.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
