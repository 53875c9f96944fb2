#!/usr/bin/env python3
"""Random LoRAs for the tiny-dev pipeline in every common FLUX naming, and diffusers' img2img outputs with them.

Writes tests/fixtures/loras/*.safetensors and tests/fixtures/cases-lora.json (+ expected/lora-*.png):
  peft.safetensors       diffusers/PEFT names (transformer.<module>.lora_A/B), every module kind incl. the
                         separately-ranked q/k/v parts of fused BFL layers, norm_out.linear, embedders; a CLIP part;
                         one uniform alpha (8, rank 4: scale 2)
  kohya.safetensors      sd-scripts names (lora_unet_double_blocks_0_img_attn_qkv.lora_down/up/alpha), alphas per
                         module, linear1 included; embedders and final_layer included too (diffusers drops them:
                         the reference shows that); lora_te1_ CLIP part
  comfy.safetensors      BFL names behind diffusion_model. with lora_down/lora_up/alpha (ComfyUI), CLIP under
                         text_encoders.clip_l.transformer.
  xlabs.safetensors      XLabs processor names (no alpha)
  peft-default.safetensors, bfl-lora-ab.safetensors   the same numbers as peft / comfy, spelled with PEFT's
                         `.default` and BFL `lora_A/lora_B`: diffusers loads these as no-ops; flux-img2img applies them
                         (tests check they equal peft / comfy)
  sdxl.safetensors, rank-mismatch.safetensors, partial.safetensors   bad inputs
Reference: FluxImg2ImgPipeline.load_lora_weights on a fresh pipeline per case, set_adapters weights and
joint_attention_kwargs scale as the case says. diffusers' kohya converter hard-codes FLUX.1's full-size linear1
split (3072,3072,3072,12288); on the tiny model linear1 is split the same way by hand before loading (the
notes' verified recipe), which is exactly what diffusers does at full size.

Usage: python scripts/make_lora_fixtures.py
"""
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import center_crop_to_aspect, psnr  # noqa: E402
from diffusers import FluxImg2ImgPipeline  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
OUT = FIX / "loras"
BASE = FluxImg2ImgPipeline.from_pretrained(FIX / "tiny-dev", torch_dtype=torch.float32)
BASE.set_progress_bar_config(disable=True)
T = {k: v for k, v in BASE.transformer.state_dict().items()}
H = BASE.transformer.inner_dim
ND, NS = BASE.transformer.config.num_layers, BASE.transformer.config.num_single_layers
CLIP_LAYERS = BASE.text_encoder.config.num_hidden_layers
CLIP_H, CLIP_M = BASE.text_encoder.config.hidden_size, BASE.text_encoder.config.intermediate_size


def bfl_map():
    """BFL module → diffusers modules whose rows it concatenates."""
    m = {}
    for i in range(ND):
        d = f"transformer_blocks.{i}."
        m[f"double_blocks.{i}.img_attn.qkv"] = [d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"]
        m[f"double_blocks.{i}.txt_attn.qkv"] = [d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"]
        m[f"double_blocks.{i}.img_attn.proj"] = [d + "attn.to_out.0"]
        m[f"double_blocks.{i}.txt_attn.proj"] = [d + "attn.to_add_out"]
        m[f"double_blocks.{i}.img_mlp.0"] = [d + "ff.net.0.proj"]
        m[f"double_blocks.{i}.img_mlp.2"] = [d + "ff.net.2"]
        m[f"double_blocks.{i}.txt_mlp.0"] = [d + "ff_context.net.0.proj"]
        m[f"double_blocks.{i}.txt_mlp.2"] = [d + "ff_context.net.2"]
        m[f"double_blocks.{i}.img_mod.lin"] = [d + "norm1.linear"]
        m[f"double_blocks.{i}.txt_mod.lin"] = [d + "norm1_context.linear"]
    for i in range(NS):
        s = f"single_transformer_blocks.{i}."
        m[f"single_blocks.{i}.linear1"] = [s + "attn.to_q", s + "attn.to_k", s + "attn.to_v", s + "proj_mlp"]
        m[f"single_blocks.{i}.linear2"] = [s + "proj_out"]
        m[f"single_blocks.{i}.modulation.lin"] = [s + "norm.linear"]
    m["img_in"], m["txt_in"] = ["x_embedder"], ["context_embedder"]
    for b, d in [("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")]:
        m[f"{b}.in_layer"], m[f"{b}.out_layer"] = [f"time_text_embed.{d}.linear_1"], [f"time_text_embed.{d}.linear_2"]
    m["final_layer.linear"], m["final_layer.adaLN_modulation.1"] = ["proj_out"], ["norm_out.linear"]
    return m


BMAP = bfl_map()
BLOCK_MODULES = [k for k in BMAP if k.startswith(("double_blocks", "single_blocks"))]
EDGE_MODULES = [k for k in BMAP if not k.startswith(("double_blocks", "single_blocks"))]


def shape(module):
    return T[module + ".weight"].shape


def fused_shape(bfl):
    outs = [shape(x)[0] for x in BMAP[bfl]]
    return sum(outs), shape(BMAP[bfl][0])[1]


def rnd(rows, cols, g, gain=0.35):
    return torch.randn(rows, cols, generator=g) * gain


def clip_modules():
    for n in range(CLIP_LAYERS):
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield f"text_model.encoder.layers.{n}.self_attn.{p}", (CLIP_H, CLIP_H)
        yield f"text_model.encoder.layers.{n}.mlp.fc1", (CLIP_M, CLIP_H)
        yield f"text_model.encoder.layers.{n}.mlp.fc2", (CLIP_H, CLIP_M)


def peft_lora(seed, r=4, alpha=8.0):
    """Every diffusers module gets its own random rank-r LoRA (fused BFL layers thus get independent q/k/v parts)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for bfl, mods in BMAP.items():
        for m in mods:
            o, i = shape(m)
            sd[f"transformer.{m}.lora_A.weight"] = rnd(r, i, g)
            sd[f"transformer.{m}.lora_B.weight"] = rnd(o, r, g)
            sd[f"transformer.{m}.alpha"] = torch.tensor(alpha)
    for m, (o, i) in clip_modules():
        sd[f"text_encoder.{m}.lora_A.weight"] = rnd(r, i, g)
        sd[f"text_encoder.{m}.lora_B.weight"] = rnd(o, r, g)
        sd[f"text_encoder.{m}.alpha"] = torch.tensor(alpha)
    return sd


def kohya_lora(seed, prefix, te_prefix, r=2):
    """One fused LoRA per BFL module (kohya naming when prefix is lora_unet_, ComfyUI's when diffusion_model.)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    alphas = [1.0, 2.0, 0.5, 4.0, 3.0]
    for k, bfl in enumerate(BMAP):
        o, i = fused_shape(bfl)
        key = prefix + (bfl.replace(".", "_") if prefix == "lora_unet_" else bfl)
        sd[key + ".lora_down.weight"] = rnd(r, i, g)
        sd[key + ".lora_up.weight"] = rnd(o, r, g)
        sd[key + ".alpha"] = torch.tensor(alphas[k % len(alphas)])
    for k, (m, (o, i)) in enumerate(clip_modules()):
        key = te_prefix + (m.replace(".", "_") if te_prefix == "lora_te1_" else m)
        sd[key + ".lora_down.weight"] = rnd(r, i, g)
        sd[key + ".lora_up.weight"] = rnd(o, r, g)
        sd[key + ".alpha"] = torch.tensor(alphas[(k + 2) % len(alphas)])
    return sd


def xlabs_lora(seed, r=4):
    g = torch.Generator().manual_seed(seed)
    sd = {}

    def put(key, rows, cols):
        sd[key + ".down.weight"], sd[key + ".up.weight"] = rnd(r, cols, g), rnd(rows, r, g)
    for i in range(ND):
        put(f"double_blocks.{i}.processor.qkv_lora1", 3 * H, H)
        put(f"double_blocks.{i}.processor.qkv_lora2", 3 * H, H)
        put(f"double_blocks.{i}.processor.proj_lora1", H, H)
        put(f"double_blocks.{i}.processor.proj_lora2", H, H)
    for i in range(NS):
        put(f"single_blocks.{i}.processor.qkv_lora", 3 * H, H)
        put(f"single_blocks.{i}.processor.proj_lora", H, fused_shape(f"single_blocks.{i}.linear2")[1])
    return sd


def load_kohya(pipe, sd, name):
    """pipe.load_lora_weights for a kohya/ComfyUI dict whose linear1 the tiny model cannot split: everything else
    through diffusers' converter, linear1 split by hand exactly as the converter does at full size."""
    # diffusers' kohya converter scales the text-encoder tensors it is given in place: a second load of the same
    # dict would apply alpha/rank twice. Every load gets copies.
    sd = {k: v.clone() for k, v in sd.items()}
    linear1 = {k: v for k, v in sd.items() if "linear1" in k}
    conv = FluxImg2ImgPipeline.lora_state_dict({k: v for k, v in sd.items() if "linear1" not in k})
    conv = conv[0] if isinstance(conv, tuple) else conv
    for i in range(NS):
        base = [k for k in linear1 if f"single_blocks_{i}_linear1" in k or f"single_blocks.{i}.linear1" in k]
        if not base:
            continue
        down = linear1[[k for k in base if "lora_down" in k][0]]
        up = linear1[[k for k in base if "lora_up" in k][0]]
        alpha = linear1[[k for k in base if k.endswith(".alpha")][0]].item()
        sc = alpha / down.shape[0]
        sdn, su = sc, 1.0
        while sdn * 2 < su:
            sdn, su = sdn * 2, su / 2
        mlp = up.shape[0] - 3 * H
        for part, b in zip(["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"], torch.split(up * su, [H, H, H, mlp], 0)):
            conv[f"transformer.single_transformer_blocks.{i}.{part}.lora_A.weight"] = down * sdn
            conv[f"transformer.single_transformer_blocks.{i}.{part}.lora_B.weight"] = b
    pipe.load_lora_weights(conv, adapter_name=name)


CASE = dict(model="tiny-dev", image="gradient-80x80.png", prompt="a watercolor painting of a cat on a red sofa",
            width=64, height=64, strength=0.8, steps=6, guidance=3.5, seed=21, max_sequence_length=32)


def render(pipe, scale=None, **override):
    c = {**CASE, **override}
    img = center_crop_to_aspect(Image.open(FIX / "images" / c["image"]).convert("RGB"), c["width"], c["height"])
    kw = dict(prompt=c["prompt"], image=img, height=c["height"], width=c["width"], strength=c["strength"],
              num_inference_steps=c["steps"], guidance_scale=c["guidance"], max_sequence_length=c["max_sequence_length"],
              generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="pil")
    if scale is not None:
        kw["joint_attention_kwargs"] = {"scale": scale}
    return pipe(**kw).images[0]


def main():
    torch.set_num_threads(2)
    OUT.mkdir(parents=True, exist_ok=True)
    files = {"peft": peft_lora(31), "kohya": kohya_lora(32, "lora_unet_", "lora_te1_"),
             "comfy": kohya_lora(33, "diffusion_model.", "text_encoders.clip_l.transformer."), "xlabs": xlabs_lora(34)}
    for name, sd in files.items():
        save_file({k: v.contiguous() for k, v in sd.items()}, OUT / f"{name}.safetensors")
    # Same numbers, other spellings (diffusers ignores these; flux-img2img applies them).
    save_file({k.replace(".lora_A.", ".lora_A.default.").replace(".lora_B.", ".lora_B.default."): v.contiguous()
               for k, v in files["peft"].items()}, OUT / "peft-default.safetensors")
    save_file({k.replace("lora_down", "lora_A").replace("lora_up", "lora_B"): v.contiguous()
               for k, v in files["comfy"].items()}, OUT / "bfl-lora-ab.safetensors")
    # Bad inputs.
    g = torch.Generator().manual_seed(35)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": rnd(4, 320, g),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": rnd(320, 4, g),
               "lora_unet_down_blocks_0_attentions_0_proj_in.alpha": torch.tensor(4.0)}, OUT / "sdxl.safetensors")
    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": rnd(4, H, g),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": rnd(H, 3, g)}, OUT / "rank-mismatch.safetensors")
    partial = {k: v for k, v in files["peft"].items() if "transformer_blocks.0.attn.to_out.0" in k}
    partial.update({"transformer.transformer_blocks.7.attn.to_q.lora_A.weight": rnd(4, H, g),
                    "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": rnd(H, 4, g)})
    save_file({k: v.contiguous() for k, v in partial.items()}, OUT / "partial.safetensors")

    loaders = {"peft": lambda p, n: p.load_lora_weights(dict(files["peft"]), adapter_name=n),
               "kohya": lambda p, n: load_kohya(p, files["kohya"], n),
               "comfy": lambda p, n: load_kohya(p, files["comfy"], n),
               "xlabs": lambda p, n: p.load_lora_weights(dict(files["xlabs"]), adapter_name=n)}
    cases = [dict(name="lora-peft", loras=[["peft", 1.0]]), dict(name="lora-kohya", loras=[["kohya", 1.0]]),
             dict(name="lora-comfy", loras=[["comfy", 1.0]]), dict(name="lora-xlabs", loras=[["xlabs", 1.0]]),
             dict(name="lora-kohya-scale", loras=[["kohya", 1.0]], lora_scale=0.7),
             dict(name="lora-combined", loras=[["peft", 0.7], ["kohya", 1.3]], lora_scale=0.6)]
    plain = render(BASE)
    records = []
    for case in cases:
        pipe = copy.deepcopy(BASE)
        for name, _ in case["loras"]:
            loaders[name](pipe, name)
        pipe.set_adapters([n for n, _ in case["loras"]], adapter_weights=[w for _, w in case["loras"]])
        ref = render(pipe, case.get("lora_scale"))
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"no_lora": psnr(ref, plain),
                "seed": psnr(ref, render(pipe, case.get("lora_scale"), seed=CASE["seed"] + 1))}
        if any(n != "xlabs" for n, _ in case["loras"]):
            # The CLIP part must matter too: the same LoRAs with their text-encoder halves left out.
            from diffusers.loaders.lora_base import disable_lora_for_text_encoder
            disable_lora_for_text_encoder(pipe.text_encoder)
            sens["no_text_encoder_lora"] = psnr(ref, render(pipe, case.get("lora_scale")))
        rec = {**CASE, **case, "expected": f"expected/{case['name']}.png", "sensitivity_psnr_db": sens}
        rec["loras"] = [[f"loras/{n}.safetensors", w] for n, w in case["loras"]]
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "sensitivity_psnr_db")}))
    meta = {"generator": "scripts/make_lora_fixtures.py", "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__, "peft": __import__("peft").__version__, "cases": records}
    (FIX / "cases-lora.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
