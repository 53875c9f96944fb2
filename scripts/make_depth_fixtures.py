#!/usr/bin/env python3
"""A tiny random Depth Anything V2 and transformers' own outputs for it (src/models/depth_anything.rs's tests).

Writes tests/fixtures/:
  tiny-depth-anything/          DepthAnythingForDepthEstimation (DINOv2 backbone, DPT neck, relative head) from
                                save_pretrained (weights stored in float16 to keep the file small; the references
                                below run it in float32), and preprocessor_config.json from DPTImageProcessorPil
                                with Depth-Anything-V2's settings (keep aspect ratio, multiple of 14, bicubic, ImageNet mean/std)
                                except a 70-pixel lower bound instead of 518
  depth-vectors.safetensors     `interp.*`: torch's interpolate (bicubic, bilinear, aligned bilinear) of a small
                                random input; `predicted_depth` per case (the model's forward in float32; the processor's
                                pixel_values are recorded as a SHA-256 of their f32 bytes in depth-cases.json)
  expected/depth-*.png          pipeline("depth-estimation")(image)["depth"], converted to RGB as diffusers'
                                examples do
  depth-cases.json              the cases (plus one with the metric head: depth_estimation_type "metric",
                                max_depth 20, same weights), the processed size, and the sensitivity (PSNR dB) of the depth PNG and of
                                predicted_depth to: nearest instead of bilinear in the fusion upsampling, bilinear
                                instead of bicubic (or no) position-embedding interpolation, another input image

The backbone's 6x6 position grid (image_size 84) is resized to both a 5x8 and a 5x5 grid by the two inputs, so the
bicubic interpolation is exercised upwards and downwards. transformers uses DPTImageProcessorPil here (no
torchvision): PIL's bicubic resize, which the tool ports.
Usage: python scripts/make_depth_fixtures.py   (scripts/requirements.txt)
"""
import hashlib
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import psnr  # noqa: E402

import transformers  # noqa: E402
from transformers import (  # noqa: E402
    AutoImageProcessor,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    pipeline,
)
from transformers.models.depth_anything import modeling_depth_anything as mda  # noqa: E402
from transformers.models.dinov2 import modeling_dinov2 as md  # noqa: E402
from transformers.models.dpt.image_processing_pil_dpt import DPTImageProcessorPil  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
MODEL = FIX / "tiny-depth-anything"
# name, input image, the other image (resized to the input's size) for the input sensitivity
CASES = [
    ("depth-photo", "photo-96x64.png", "ref-100x70.png"),
    ("depth-gradient", "gradient-80x80.png", "ref-64x80.png"),
]


def build():
    if MODEL.exists():
        shutil.rmtree(MODEL)
    backbone = Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=4, patch_size=14,
                            image_size=84, layer_norm_eps=1e-6, layerscale_value=1.0, out_indices=[1, 2, 3, 4],
                            reshape_hidden_states=False)
    cfg = DepthAnythingConfig(backbone_config=backbone, patch_size=14, reassemble_hidden_size=16,
                              reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[8, 8, 16, 16],
                              fusion_hidden_size=8, head_hidden_size=8, head_in_index=-1,
                              depth_estimation_type="relative")
    torch.manual_seed(80)
    model = DepthAnythingForDepthEstimation(cfg).eval()
    g = torch.Generator().manual_seed(81)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                # layer scale: around its 1.0 init, but not all equal
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "position_embeddings" in name or "cls_token" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                # p[0] is the fan-in of a Linear / Conv2d (in · k · k); for a ConvTranspose2d ([in, out, k, k]) it
                # is out · k · k, which only sets the scale of these random weights
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * 1.5 / math.sqrt(fan_in))
        # a positive final bias keeps the relative head's ReLU mostly open, so the depth map has structure
        model.head.conv3.bias.fill_(0.5)
    model.half().save_pretrained(MODEL)
    # Depth-Anything-V2-Small-hf's preprocessor_config.json but for the size (518 there)
    proc = DPTImageProcessorPil(size={"height": 70, "width": 70}, keep_aspect_ratio=True, ensure_multiple_of=14,
                                resample=3, do_pad=False, image_mean=[0.485, 0.456, 0.406],
                                image_std=[0.229, 0.224, 0.225])
    proc.save_pretrained(MODEL)


def depth_png(pipe, img: Image.Image) -> tuple[Image.Image, torch.Tensor]:
    out = pipe(img)
    return out["depth"].convert("RGB"), out["predicted_depth"]


def raw_psnr(ref: torch.Tensor, other: torch.Tensor) -> float:
    """PSNR of predicted_depth with the reference's largest magnitude as the peak."""
    ref, other = ref.double(), other.double()
    mse = ((ref - other) ** 2).mean().item()
    peak = ref.abs().max().item()
    return float("inf") if mse == 0 else 10 * math.log10(peak * peak / mse)


class Variant:
    """Monkeypatches transformers' code for one sensitivity run, restoring it afterwards."""

    def __init__(self, kind: str):
        self.kind = kind

    def __enter__(self):
        self.saved_fusion = mda.DepthAnythingFeatureFusionLayer.forward
        self.saved_pos = md.Dinov2Embeddings.interpolate_pos_encoding
        if self.kind == "fusion_nearest":
            mda.DepthAnythingFeatureFusionLayer.forward = fusion_forward_nearest
        elif self.kind == "pos_bilinear":
            md.Dinov2Embeddings.interpolate_pos_encoding = pos_bilinear
        elif self.kind == "pos_dropped":
            md.Dinov2Embeddings.interpolate_pos_encoding = lambda self, emb, h, w: torch.zeros_like(emb[:1])
        return self

    def __exit__(self, *exc):
        mda.DepthAnythingFeatureFusionLayer.forward = self.saved_fusion
        md.Dinov2Embeddings.interpolate_pos_encoding = self.saved_pos


def fusion_forward_nearest(self, hidden_state, residual=None, size=None):
    """DepthAnythingFeatureFusionLayer.forward with its align_corners bilinear upsampling made nearest."""
    F = torch.nn.functional
    if residual is not None:
        if hidden_state.shape != residual.shape:
            residual = F.interpolate(residual, size=hidden_state.shape[2:], mode="bilinear", align_corners=False)
        hidden_state = hidden_state + self.residual_layer1(residual)
    hidden_state = self.residual_layer2(hidden_state)
    kw = {"scale_factor": 2} if size is None else {"size": size}
    hidden_state = F.interpolate(hidden_state, **kw, mode="nearest")
    return self.projection(hidden_state)


def pos_bilinear(self, embeddings, height, width):
    """Dinov2Embeddings.interpolate_pos_encoding with bilinear in place of bicubic."""
    n = self.position_embeddings.shape[1] - 1
    side = int(n**0.5)
    dim = embeddings.shape[-1]
    ph, pw = self.patch_embeddings.patch_size
    grid = self.position_embeddings[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = torch.nn.functional.interpolate(grid.float(), size=(height // ph, width // pw), mode="bilinear",
                                           align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((self.position_embeddings[:, :1], grid), dim=1)


def metric_case(model, proc, tensors) -> dict:
    """The same weights with the metric head (sigmoid × max_depth) on the first case's picture."""
    name, image, _ = CASES[0]
    cfg = model.config.to_dict()
    cfg.update(depth_estimation_type="metric", max_depth=20)
    metric = DepthAnythingForDepthEstimation(type(model.config).from_dict(cfg)).eval()
    metric.load_state_dict(model.state_dict())
    img = Image.open(FIX / "images" / image).convert("RGB")
    with torch.no_grad():
        depth = metric(pixel_values=proc(images=img, return_tensors="pt")["pixel_values"]).predicted_depth
    key = f"{name}.metric_predicted_depth"
    tensors[key] = depth.contiguous()
    relative = tensors[f"{name}.predicted_depth"]
    return dict(case=name, depth_estimation_type="metric", max_depth=20, vector=key,
                sensitivity_depth_psnr_db=dict(relative_head=raw_psnr(depth, relative)))


def interp_vectors(tensors):
    """torch's F.interpolate in the three modes the port uses, one random input to sizes up, down and mixed."""
    x = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(82))
    tensors["interp.input"] = x
    for name, mode, aligned in [("bicubic", "bicubic", False), ("bilinear", "bilinear", False),
                                ("bilinear_aligned", "bilinear", True)]:
        for h, w in [(7, 9), (3, 4), (2, 13)]:
            y = torch.nn.functional.interpolate(x, size=(h, w), mode=mode, align_corners=aligned)
            tensors[f"interp.{name}.{h}x{w}"] = y.contiguous()


def main():
    build()
    model = DepthAnythingForDepthEstimation.from_pretrained(MODEL, dtype=torch.float32).eval()
    proc = AutoImageProcessor.from_pretrained(MODEL)
    pipe = pipeline("depth-estimation", model=model, image_processor=proc, device="cpu")
    tensors = {}
    cases = []
    for name, image, other_image in CASES:
        img = Image.open(FIX / "images" / image).convert("RGB")
        with torch.no_grad():
            pixels = proc(images=img, return_tensors="pt")["pixel_values"]
            depth = model(pixel_values=pixels).predicted_depth
        png, _ = depth_png(pipe, img)
        png.save(FIX / "expected" / f"{name}.png")
        tensors[f"{name}.predicted_depth"] = depth.contiguous()
        sens_png, sens_raw = {}, {}
        for kind in ["fusion_nearest", "pos_bilinear", "pos_dropped"]:
            with Variant(kind), torch.no_grad():
                alt_png, _ = depth_png(pipe, img)
                alt_depth = model(pixel_values=pixels).predicted_depth
            sens_png[kind] = psnr(png, alt_png)
            sens_raw[kind] = raw_psnr(depth, alt_depth)
        other = Image.open(FIX / "images" / other_image).convert("RGB").resize(img.size, Image.BICUBIC)
        alt_png, _ = depth_png(pipe, other)
        sens_png["other_image"] = psnr(png, alt_png)
        with torch.no_grad():
            alt_pixels = proc(images=other, return_tensors="pt")["pixel_values"]
            sens_raw["other_image"] = raw_psnr(depth, model(pixel_values=alt_pixels).predicted_depth)
        grey = np.asarray(png)[..., 0]
        cases.append(dict(
            name=name, image=image, other_image=other_image, expected=f"expected/{name}.png",
            processed_size=[pixels.shape[3], pixels.shape[2]],
            # the image processor's output, f32 little-endian bytes in [1, 3, H, W] order (kept as a digest only)
            pixel_values_sha256=hashlib.sha256(pixels.numpy().astype("<f4").tobytes()).hexdigest(), depth_size=[depth.shape[2], depth.shape[1]],
            depth_min=float(depth.min()), depth_max=float(depth.max()),
            grey_levels_used=int(len(np.unique(grey))),
            sensitivity_png_psnr_db=sens_png, sensitivity_depth_psnr_db=sens_raw,
        ))
        print(name, cases[-1])
    metric = metric_case(model, proc, tensors)
    interp_vectors(tensors)
    save_file(tensors, FIX / "depth-vectors.safetensors")
    meta = dict(generator="scripts/make_depth_fixtures.py", torch=torch.__version__,
                transformers=transformers.__version__, image_processor=type(proc).__name__,
                model="tiny-depth-anything", vectors="depth-vectors.safetensors", cases=cases, metric=metric)
    (FIX / "depth-cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
