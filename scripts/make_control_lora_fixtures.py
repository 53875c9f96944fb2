#!/usr/bin/env python3
"""A tiny FLUX.1 Control LoRA for tiny-dev and diffusers' FluxControl*Pipeline outputs with it.

FLUX.1-Canny-dev-lora and FLUX.1-Depth-dev-lora turn FLUX.1-dev into a Control model: a LoRA pair (with a bias on
lora_B) on every linear layer, embedders included; an x_embedder pair whose input is twice the model's (the noise
latents, then the control image's), so the layer is widened with zero columns first; and replacement RMSNorm
scales for every query/key norm. diffusers' converter from BFL names hard-codes FLUX.1-dev's 19/38 blocks, so the
reference loads the PEFT-named copy; the BFL-named copy holds the same numbers (qkv and linear1 pairs fused, the
final modulation's halves swapped), as black-forest-labs ships them.

Writes tests/fixtures/:
  loras/control-lora-peft.safetensors   diffusers/PEFT names (transformer.…lora_A/lora_B(.bias), …norm_q.weight)
  loras/control-lora-bfl.safetensors    BFL names (img_in.lora_A.weight, ….norm.query_norm.scale)
  expected/control-lora-*.png           FluxControlPipeline / FluxControlImg2ImgPipeline outputs (CPU, f32)
  cases-control-lora.json               the cases, with each one's sensitivity: another control image, the LoRA at
                                        half weight, the norms not replaced, no lora_B biases, prompt and seed

Usage: python scripts/make_control_lora_fixtures.py   (scripts/requirements.txt, peft, opencv-python-headless)
"""
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from convert_to_bfl import transformer_to_bfl  # noqa: E402
from make_fixtures import center_crop_to_aspect, psnr  # noqa: E402

import diffusers  # noqa: E402
from diffusers import FluxControlImg2ImgPipeline, FluxControlPipeline  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
RANK = 4
NORMS = ("norm_q", "norm_k", "norm_added_q", "norm_added_k")
# Modules whose pairs share one lora_A: BFL fuses them into one layer (qkv, linear1).
SHARED = [("attn.to_q", "attn.to_k", "attn.to_v"), ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
          ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]

CASES = [
    dict(name="control-lora-t2i", pipeline="FluxControlPipeline", control="control-gradient-80x80.png",
         other_control="control-photo-80x80.png", prompt="a red fox sitting in a snowy forest, digital painting",
         width=64, height=64, steps=6, guidance=10.0, seed=61, max_sequence_length=32),
    dict(name="control-lora-img2img", pipeline="FluxControlImg2ImgPipeline", image="photo-96x64.png",
         control="control-photo-96x64.png", other_control="control-wide-96x64.png",
         prompt="a bowl of ramen on a wooden table, studio photo", width=64, height=48, strength=0.8, steps=6,
         guidance=10.0, seed=62, max_sequence_length=32),
]


def make_lora(transformer) -> dict:
    """diffusers-named pairs for every linear layer (shared lora_A where BFL fuses), x_embedder at twice its input,
    random norm scales."""
    g = torch.Generator().manual_seed(63)
    sd = {}
    linears = {n: m for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)}
    shared_a = {}
    for name, mod in linears.items():
        inp = mod.in_features * (2 if name == "x_embedder" else 1)
        block, _, leaf = name.rpartition(".attn.") if ".attn." in name else (name.rpartition(".")[0], "", "")
        key = None
        for group in SHARED:
            for member in group:
                if name.endswith(member) and (group != SHARED[2] or name.startswith("single_")):
                    key = (name[: -len(member)], group)
        if key is not None and key in shared_a:
            a = shared_a[key]
        else:
            gain = 2.0 if name == "x_embedder" else 1.0
            a = torch.randn(RANK, inp, generator=g) * gain / inp ** 0.5
            if name == "x_embedder":
                # A strong control half, so that another control image moves the output far below the bar.
                a[:, mod.in_features:] *= 6.0
            if key is not None:
                shared_a[key] = a
        scale = 0.6 if name == "x_embedder" else 0.15
        sd[f"transformer.{name}.lora_A.weight"] = a.clone()
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(mod.out_features, RANK, generator=g) * scale
        sd[f"transformer.{name}.lora_B.bias"] = torch.randn(mod.out_features, generator=g) * 0.05
    for name, p in transformer.named_parameters():
        if any(f".{n}." in name for n in NORMS):
            sd[f"transformer.{name}"] = 1.0 + 0.5 * torch.randn(p.shape, generator=g)
    return sd


def to_bfl(sd: dict, n_double: int, n_single: int) -> dict:
    """The same LoRA in BFL names: lora_B/bias through the weight converter (qkv/linear1 stacked, final
    modulation swapped), lora_A taken once per fused layer, norms renamed."""
    strip = lambda suffix: {k[len("transformer."):-len(suffix)] + ".weight": v  # noqa: E731
                            for k, v in sd.items() if k.endswith(suffix)}
    # The weight converter also wants the norms and biases; stand-ins go in, and only pairs are kept.
    norm_in = {k[len("transformer."):]: v for k, v in sd.items() if any(f".{n}." in k for n in NORMS)}
    bias = {k.replace(".weight", ".bias"): v for k, v in strip(".lora_B.bias").items()}
    b = transformer_to_bfl({**strip(".lora_B.weight"), **bias, **norm_in}, n_double, n_single)
    a_src = strip(".lora_A.weight")
    zeros = {k.replace(".weight", ".bias"): torch.zeros(v.shape[0]) for k, v in a_src.items()}
    a = transformer_to_bfl({**a_src, **zeros, **norm_in}, n_double, n_single)
    out = {}
    for k, v in b.items():
        module, what = k.rsplit(".", 1)
        if what != "scale":
            out[f"{module}.lora_B.{what}"] = v.contiguous()
    for k, v in a.items():
        module, what = k.rsplit(".", 1)
        if what == "weight":
            # A fused layer's lora_A came out stacked once per part; every part's is the same.
            out[f"{module}.lora_A.weight"] = v[:RANK].contiguous()
    # The converter swaps the final modulation's output halves: right for lora_B, not for lora_A's rank rows.
    out["final_layer.adaLN_modulation.1.lora_A.weight"] = a_src["norm_out.linear.weight"].contiguous()
    norms = {k[len("transformer."):]: v for k, v in sd.items() if any(f".{n}." in k for n in NORMS)}
    conv = transformer_to_bfl_norms(norms, n_double, n_single)
    out.update(conv)
    return out


def transformer_to_bfl_norms(norms: dict, n_double: int, n_single: int) -> dict:
    o = {}
    for n in range(n_double):
        d, b = f"transformer_blocks.{n}.attn", f"double_blocks.{n}"
        o[f"{b}.img_attn.norm.query_norm.scale"] = norms[f"{d}.norm_q.weight"]
        o[f"{b}.img_attn.norm.key_norm.scale"] = norms[f"{d}.norm_k.weight"]
        o[f"{b}.txt_attn.norm.query_norm.scale"] = norms[f"{d}.norm_added_q.weight"]
        o[f"{b}.txt_attn.norm.key_norm.scale"] = norms[f"{d}.norm_added_k.weight"]
    for n in range(n_single):
        d, b = f"single_transformer_blocks.{n}.attn", f"single_blocks.{n}"
        o[f"{b}.norm.query_norm.scale"] = norms[f"{d}.norm_q.weight"]
        o[f"{b}.norm.key_norm.scale"] = norms[f"{d}.norm_k.weight"]
    assert len(o) == len(norms)
    return {k: v.contiguous() for k, v in o.items()}


def pipelines(lora: dict, weight: float = 1.0):
    base = FluxControlPipeline.from_pretrained(FIX / "tiny-dev", torch_dtype=torch.float32)
    base.load_lora_weights({k: v.clone() for k, v in lora.items()}, adapter_name="control")
    if weight != 1.0:
        base.set_adapters(["control"], [weight])
    pipes = {"FluxControlPipeline": base,
             "FluxControlImg2ImgPipeline": FluxControlImg2ImgPipeline(
                 **{k: v for k, v in base.components.items()
                    if k in ("scheduler", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                             "transformer")})}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    return pipes


def run(pipes, case, **override):
    c = {**case, **override}
    img = lambda name: Image.open(FIX / "images" / name).convert("RGB")  # noqa: E731
    kw = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"], width=c["width"],
              height=c["height"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
              max_sequence_length=c["max_sequence_length"], output_type="pil")
    if c.get("image"):
        kw.update(image=center_crop_to_aspect(img(c["image"]), c["width"], c["height"]), strength=c["strength"],
                  control_image=center_crop_to_aspect(img(c["control"]), c["width"], c["height"]))
    else:
        kw["control_image"] = img(c["control"])
    return pipes[c["pipeline"]](**kw).images[0]


def main():
    torch.set_num_threads(2)
    probe = FluxControlPipeline.from_pretrained(FIX / "tiny-dev", torch_dtype=torch.float32).transformer
    lora = make_lora(probe)
    cfg = probe.config
    (FIX / "loras").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in lora.items()}, FIX / "loras" / "control-lora-peft.safetensors")
    save_file(to_bfl(lora, cfg.num_layers, cfg.num_single_layers), FIX / "loras" / "control-lora-bfl.safetensors")
    pipes = pipelines(lora)
    half = pipelines(lora, 0.5)
    plain_norms = pipelines({k: v for k, v in lora.items() if not any(f".{n}." in k for n in NORMS)})
    no_bias = pipelines({k: v for k, v in lora.items() if not k.endswith("lora_B.bias")})
    records = []
    for case in CASES:
        ref = run(pipes, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run(pipes, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipes, case, seed=case["seed"] + 1)),
                "control_image": psnr(ref, run(pipes, case, control=case["other_control"])),
                "lora_weight": psnr(ref, run(half, case)),
                "norms": psnr(ref, run(plain_norms, case)),
                "lora_bias": psnr(ref, run(no_bias, case))}
        rec = {**case, "model": "tiny-dev", "expected": f"expected/{case['name']}.png", "size": list(ref.size),
               "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}), flush=True)
    meta = {"generator": "scripts/make_control_lora_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-control-lora.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
