#!/usr/bin/env python3
"""Converts a diffusers-layout FLUX pipeline's transformer and VAE into Black Forest Labs' original single-file
formats (flux1-dev.safetensors / ae.safetensors), following spec section 10 and diffusers' own converter in
reverse. Used to build the test fixtures for `--transformer` / `--vae`; independent of the Rust tables.

usage: python scripts/convert_to_bfl.py PIPELINE_DIR OUT_DIR
FLUX.1 writes OUT_DIR/flux1.safetensors (BFL names), flux1-comfy.safetensors (ComfyUI's model.diffusion_model.
prefix, bf16 stored weights), flux1-noguidance.safetensors (guidance_in removed: schnell-like), ae.safetensors.
FLUX.2 (klein) writes flux-2-klein.safetensors, flux-2-klein-comfy.safetensors and flux2_ae.safetensors; the BFL
transformer is checked by converting it back with diffusers' own `convert_flux2_transformer_checkpoint_to_diffusers`.
(Qwen3 single files keep transformers' names: the tiny pipeline's text_encoder/model.safetensors is one already.)
"""
import json
import os
import sys

import torch
from safetensors.torch import load_file, save_file


def load_component(d, stem):
    idx = os.path.join(d, f"{stem}.safetensors.index.json")
    if os.path.exists(idx):
        out = {}
        for f in sorted(set(json.load(open(idx))["weight_map"].values())):
            out.update(load_file(os.path.join(d, f)))
        return out
    return load_file(os.path.join(d, f"{stem}.safetensors"))


class Tracked(dict):
    """A state dict that remembers which keys were read, so the conversion can prove it used every tensor."""

    def __init__(self, d):
        super().__init__(d)
        self.used = set()

    def __getitem__(self, k):
        self.used.add(k)
        return super().__getitem__(k)


def transformer_to_bfl(sd, n_double, n_single):
    sd = Tracked(sd)
    o = {}

    def both(bfl, diff):
        for p in ("weight", "bias"):
            if f"{diff}.{p}" in sd:
                o[f"{bfl}.{p}"] = sd[f"{diff}.{p}"]

    both("img_in", "x_embedder")
    both("txt_in", "context_embedder")
    for bfl, diff in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        both(f"{bfl}.in_layer", f"time_text_embed.{diff}.linear_1")
        both(f"{bfl}.out_layer", f"time_text_embed.{diff}.linear_2")
    for n in range(n_double):
        d, b = f"transformer_blocks.{n}", f"double_blocks.{n}"
        both(f"{b}.img_mod.lin", f"{d}.norm1.linear")
        both(f"{b}.txt_mod.lin", f"{d}.norm1_context.linear")
        for p in ("weight", "bias"):
            o[f"{b}.img_attn.qkv.{p}"] = torch.cat([sd[f"{d}.attn.to_{x}.{p}"] for x in "qkv"], 0)
            o[f"{b}.txt_attn.qkv.{p}"] = torch.cat([sd[f"{d}.attn.add_{x}_proj.{p}"] for x in "qkv"], 0)
        o[f"{b}.img_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        o[f"{b}.img_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        o[f"{b}.txt_attn.norm.query_norm.scale"] = sd[f"{d}.attn.norm_added_q.weight"]
        o[f"{b}.txt_attn.norm.key_norm.scale"] = sd[f"{d}.attn.norm_added_k.weight"]
        both(f"{b}.img_attn.proj", f"{d}.attn.to_out.0")
        both(f"{b}.txt_attn.proj", f"{d}.attn.to_add_out")
        both(f"{b}.img_mlp.0", f"{d}.ff.net.0.proj")
        both(f"{b}.img_mlp.2", f"{d}.ff.net.2")
        both(f"{b}.txt_mlp.0", f"{d}.ff_context.net.0.proj")
        both(f"{b}.txt_mlp.2", f"{d}.ff_context.net.2")
    for n in range(n_single):
        d, b = f"single_transformer_blocks.{n}", f"single_blocks.{n}"
        both(f"{b}.modulation.lin", f"{d}.norm.linear")
        for p in ("weight", "bias"):
            o[f"{b}.linear1.{p}"] = torch.cat(
                [sd[f"{d}.attn.to_q.{p}"], sd[f"{d}.attn.to_k.{p}"], sd[f"{d}.attn.to_v.{p}"], sd[f"{d}.proj_mlp.{p}"]], 0
            )
        o[f"{b}.norm.query_norm.scale"] = sd[f"{d}.attn.norm_q.weight"]
        o[f"{b}.norm.key_norm.scale"] = sd[f"{d}.attn.norm_k.weight"]
        both(f"{b}.linear2", f"{d}.proj_out")
    both("final_layer.linear", "proj_out")
    for p in ("weight", "bias"):
        scale, shift = sd[f"norm_out.linear.{p}"].chunk(2, 0)  # diffusers (scale, shift) -> BFL (shift, scale)
        o[f"final_layer.adaLN_modulation.1.{p}"] = torch.cat([shift, scale], 0)
    unused = set(sd) - sd.used
    assert not unused, f"diffusers tensors not converted: {sorted(unused)}"
    return o


def transformer2_to_bfl(sd, n_double, n_single):
    """FLUX.2: shared modulations, SwiGLU MLPs (linear_in/out), single blocks already fused, no biases."""
    sd = Tracked(sd)
    o = {}
    for bfl, diff in (("img_in", "x_embedder"), ("txt_in", "context_embedder"),
                      ("time_in.in_layer", "time_guidance_embed.timestep_embedder.linear_1"),
                      ("time_in.out_layer", "time_guidance_embed.timestep_embedder.linear_2"),
                      ("double_stream_modulation_img.lin", "double_stream_modulation_img.linear"),
                      ("double_stream_modulation_txt.lin", "double_stream_modulation_txt.linear"),
                      ("single_stream_modulation.lin", "single_stream_modulation.linear"),
                      ("final_layer.linear", "proj_out")):
        o[f"{bfl}.weight"] = sd[f"{diff}.weight"]
    scale, shift = sd["norm_out.linear.weight"].chunk(2, 0)  # diffusers (scale, shift) -> BFL (shift, scale)
    o["final_layer.adaLN_modulation.1.weight"] = torch.cat([shift, scale], 0)
    for n in range(n_double):
        d, b = f"transformer_blocks.{n}", f"double_blocks.{n}"
        o[f"{b}.img_attn.qkv.weight"] = torch.cat([sd[f"{d}.attn.to_{x}.weight"] for x in "qkv"], 0)
        o[f"{b}.txt_attn.qkv.weight"] = torch.cat([sd[f"{d}.attn.add_{x}_proj.weight"] for x in "qkv"], 0)
        for bfl, diff in (("img_attn.norm.query_norm.scale", "attn.norm_q.weight"),
                          ("img_attn.norm.key_norm.scale", "attn.norm_k.weight"),
                          ("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight"),
                          ("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight"),
                          ("img_attn.proj.weight", "attn.to_out.0.weight"), ("txt_attn.proj.weight", "attn.to_add_out.weight"),
                          ("img_mlp.0.weight", "ff.linear_in.weight"), ("img_mlp.2.weight", "ff.linear_out.weight"),
                          ("txt_mlp.0.weight", "ff_context.linear_in.weight"),
                          ("txt_mlp.2.weight", "ff_context.linear_out.weight")):
            o[f"{b}.{bfl}"] = sd[f"{d}.{diff}"]
    for n in range(n_single):
        d, b = f"single_transformer_blocks.{n}", f"single_blocks.{n}"
        for bfl, diff in (("linear1.weight", "attn.to_qkv_mlp_proj.weight"), ("linear2.weight", "attn.to_out.weight"),
                          ("norm.query_norm.scale", "attn.norm_q.weight"), ("norm.key_norm.scale", "attn.norm_k.weight")):
            o[f"{b}.{bfl}"] = sd[f"{d}.{diff}"]
    unused = set(sd) - sd.used
    assert not unused, f"diffusers tensors not converted: {sorted(unused)}"
    return o


def vae_to_bfl(sd, n_blocks):
    o = {}
    for k, v in sd.items():
        if k.startswith(("quant_conv.", "post_quant_conv.", "bn.")):
            # FLUX.2's VAE: the quant convs live inside encoder/decoder in BFL's file; the batch-norm stats as they are.
            prefix = {"quant_conv": "encoder.", "post_quant_conv": "decoder.", "bn": ""}[k.split(".")[0]]
            o[prefix + k] = v.contiguous()
            continue
        half, rest = k.split(".", 1)
        parts = rest.split(".")
        if parts[0] == "conv_norm_out":
            rest = "norm_out." + ".".join(parts[1:])
        elif parts[0] == "down_blocks" and parts[2] == "resnets":
            rest = f"down.{parts[1]}.block.{parts[3]}." + ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
        elif parts[0] == "down_blocks" and parts[2] == "downsamplers":
            rest = f"down.{parts[1]}.downsample." + ".".join(parts[4:])
        elif parts[0] == "up_blocks":
            b = n_blocks - 1 - int(parts[1])
            if parts[2] == "resnets":
                rest = f"up.{b}.block.{parts[3]}." + ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
            else:
                rest = f"up.{b}.upsample." + ".".join(parts[4:])
        elif parts[0] == "mid_block":
            inner = ".".join(parts[1:])
            for d, b in (("resnets.0", "block_1"), ("resnets.1", "block_2"), ("attentions.0.group_norm", "attn_1.norm"),
                         ("attentions.0.to_q", "attn_1.q"), ("attentions.0.to_k", "attn_1.k"),
                         ("attentions.0.to_v", "attn_1.v"), ("attentions.0.to_out.0", "attn_1.proj_out")):
                if inner.startswith(d):
                    if d.startswith("attentions.0.to_") and inner.endswith("weight"):
                        v = v[:, :, None, None]  # Linear -> 1x1 conv, as BFL stores it
                    inner = b + inner[len(d):]
                    break
            rest = "mid." + inner
        o[f"{half}.{rest}"] = v.contiguous()
    return o


def flux2(src, out, tcfg, vcfg):
    sd = load_component(os.path.join(src, "transformer"), "diffusion_pytorch_model")
    original = {k: v.clone() for k, v in sd.items()}
    bfl = {k: v.contiguous() for k, v in transformer2_to_bfl(sd, tcfg["num_layers"], tcfg["num_single_layers"]).items()}
    from diffusers.loaders.single_file_utils import convert_flux2_transformer_checkpoint_to_diffusers
    back = convert_flux2_transformer_checkpoint_to_diffusers({k: v.clone() for k, v in bfl.items()})
    assert sorted(back) == sorted(original) and all(torch.equal(back[k], original[k]) for k in back), "round trip"
    save_file(bfl, os.path.join(out, "flux-2-klein.safetensors"))
    save_file({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in bfl.items()},
              os.path.join(out, "flux-2-klein-comfy.safetensors"))
    vae = load_component(os.path.join(src, "vae"), "diffusion_pytorch_model")
    save_file(vae_to_bfl(vae, len(vcfg["block_out_channels"])), os.path.join(out, "flux2_ae.safetensors"))


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    tcfg = json.load(open(os.path.join(src, "transformer/config.json")))
    vcfg = json.load(open(os.path.join(src, "vae/config.json")))
    if tcfg.get("_class_name", "").startswith("Flux2"):
        return flux2(src, out, tcfg, vcfg)
    sd = load_component(os.path.join(src, "transformer"), "diffusion_pytorch_model")
    bfl = {k: v.contiguous() for k, v in transformer_to_bfl(sd, tcfg["num_layers"], tcfg["num_single_layers"]).items()}
    save_file(bfl, os.path.join(out, "flux1.safetensors"))
    save_file({f"model.diffusion_model.{k}": v.to(torch.bfloat16) for k, v in bfl.items()},
              os.path.join(out, "flux1-comfy.safetensors"))
    save_file({k: v for k, v in bfl.items() if not k.startswith("guidance_in.")},
              os.path.join(out, "flux1-noguidance.safetensors"))
    vae = load_component(os.path.join(src, "vae"), "diffusion_pytorch_model")
    save_file(vae_to_bfl(vae, len(vcfg["block_out_channels"])), os.path.join(out, "ae.safetensors"))


if __name__ == "__main__":
    main()
