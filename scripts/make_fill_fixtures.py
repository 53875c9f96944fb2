#!/usr/bin/env python3
"""A tiny FLUX.1 Fill pipeline and diffusers' FluxFillPipeline outputs: inpainting and outpainting.

Writes tests/fixtures/:
  tiny-fill/             tiny-dev's text encoders, tokenizers, VAE and scheduler (copied: git stores the same
                         blobs once) with a Fill transformer: tiny-dev's weights, x_embedder widened to
                         in_channels = 4·latent (noise) + 4·latent (masked image) + 4·f² (the packed pixel mask),
                         out_channels = 4·latent, as FLUX.1-Fill-dev is to FLUX.1-dev; model_index says
                         FluxFillPipeline
  bfl-tiny-fill/         the same transformer as a Black Forest Labs single file (convert_to_bfl.py) and as a
                         community-style Q8_0 GGUF (convert_to_gguf.py): Fill is told by its input width there too
  expected/fill-*.png    FluxFillPipeline's output per case (CPU generator, float32)
  cases-fill.json        the cases in cases-modes.json's format, with each case's sensitivity: PSNR of
                         diffusers' own output against the same run with the mask moved, another prompt and
                         another seed (outpainting: other margins)

Outpainting is not a diffusers pipeline: the cases build the canvas and mask as `--outpaint` documents
(README, src/image_io/outpaint.rs), run FluxFillPipeline on them and compose the result over the canvas as the
tool does; the Rust test also checks that the input's pixels beyond the seam come back unchanged.

Usage: python scripts/make_fill_fixtures.py   (needs scripts/requirements.txt)
"""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import center_crop_to_aspect, psnr, reinit  # noqa: E402

import diffusers  # noqa: E402
from diffusers import FluxFillPipeline, FluxTransformer2DModel  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
P1 = "a red fox sitting in a snowy forest, digital painting"
P2 = "a bowl of ramen on a wooden table, studio photo"

CASES = [
    dict(name="fill-rect", pipeline="FluxFillPipeline", model="tiny-fill", image="gradient-80x80.png",
         mask="rect-80x80.png", moved_mask="rect-moved-80x80.png", prompt=P1, width=64, height=64, steps=6,
         guidance=30.0, seed=21, max_sequence_length=64),
    dict(name="fill-strength", pipeline="FluxFillPipeline", model="tiny-fill", image="photo-96x64.png",
         mask="small-96x64.png", moved_mask="small-moved-96x64.png", prompt=P2, width=64, height=48,
         strength=0.8, steps=6, guidance=10.0, seed=22, max_sequence_length=32),
    dict(name="fill-outpaint", pipeline="FluxFillPipeline", model="tiny-fill", image="tall-48x64.png",
         outpaint=[16, 0, 16, 8], other_outpaint=[0, 16, 32, 0], prompt=P2, steps=5, guidance=30.0, seed=23,
         max_sequence_length=32),
]


def build_fill() -> Path:
    """tiny-dev with a Fill transformer (x_embedder widened, the rest of tiny-dev's weights kept)."""
    src, dst = FIX / "tiny-dev", FIX / "tiny-fill"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("transformer"))
    dev = FluxTransformer2DModel.from_pretrained(src / "transformer")
    cfg = dict(dev.config)
    latent = json.loads((src / "vae" / "config.json").read_text())
    f = 2 ** (len(latent["block_out_channels"]) - 1)
    packed = 4 * latent["latent_channels"]
    cfg.update(in_channels=2 * packed + 4 * f * f, out_channels=packed)
    fill = FluxTransformer2DModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
    state = {k: v for k, v in dev.state_dict().items() if not k.startswith("x_embedder.")}
    missing, _ = fill.load_state_dict(state, strict=False)
    assert sorted(missing) == ["x_embedder.bias", "x_embedder.weight"], missing
    reinit(fill.x_embedder, 1.0, 61)
    fill.save_pretrained(dst / "transformer", safe_serialization=True)
    index = json.loads((dst / "model_index.json").read_text())
    index["_class_name"] = "FluxFillPipeline"
    (dst / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    return dst


def outpaint_canvas(img: Image.Image, margins, feather: int = 8, multiple: int = 16):
    """The --outpaint canvas and mask (the Rust side's definition): the input placed at (left, top) on a mid-grey
    canvas grown by the margins, the right and bottom margins then grown to make the canvas a multiple of
    `multiple` (the input is never cropped); the mask white over the new area and ramping linearly over `feather`
    pixels into the input along every grown side."""
    left, top, right, bottom = margins
    w, h = img.size
    right += -(w + left + right) % multiple
    bottom += -(h + top + bottom) % multiple
    cw, ch = w + left + right, h + top + bottom
    canvas = Image.new("RGB", (cw, ch), (128, 128, 128))
    canvas.paste(img, (left, top))
    yy, xx = np.mgrid[0:ch, 0:cw].astype(np.float64)
    # Distance into the input from each grown side (inf for sides that did not grow).
    inf = np.full_like(xx, np.inf)
    d = np.minimum.reduce([
        xx - left + 0.5 if left else inf,
        yy - top + 0.5 if top else inf,
        left + w - xx - 0.5 if right else inf,
        top + h - yy - 0.5 if bottom else inf,
    ])
    inside = (xx >= left) & (xx < left + w) & (yy >= top) & (yy < top + h)
    m = np.where(inside, np.clip(1.0 - d / feather, 0.0, 1.0) if feather else 0.0, 1.0)
    mask = Image.fromarray(np.round(m * 255).astype(np.uint8), "L")
    return canvas, mask


def run(pipe, case, **override):
    c = {**case, **override}
    img = Image.open(FIX / "images" / c["image"]).convert("RGB")
    kw = dict(prompt=c["prompt"], num_inference_steps=c["steps"], guidance_scale=c["guidance"],
              generator=torch.Generator("cpu").manual_seed(c["seed"]), max_sequence_length=c["max_sequence_length"],
              output_type="pil")
    if c.get("outpaint"):
        img, mask = outpaint_canvas(img, c["outpaint"])
        kw.update(width=img.size[0], height=img.size[1])
    else:
        mask = Image.open(FIX / "masks" / c["mask"])
        img = center_crop_to_aspect(img, c["width"], c["height"])
        mask = center_crop_to_aspect(mask, c["width"], c["height"])
        kw.update(width=c["width"], height=c["height"])
    if c.get("strength") is not None:
        kw["strength"] = c["strength"]
    out = pipe(image=img, mask_image=mask, **kw).images[0]
    return compose(out, img, mask) if c.get("outpaint") else out


def compose(out: Image.Image, canvas: Image.Image, mask: Image.Image) -> Image.Image:
    """Outpainting's result over its canvas (the Rust side's overlay, with its rounding): the input's pixels
    exactly where the soft mask is 0."""
    g, o = np.asarray(out, np.uint32), np.asarray(canvas, np.uint32)
    m = np.asarray(mask, np.uint32)[..., None]
    return Image.fromarray(((g * m + o * (255 - m) + 127) // 255).astype(np.uint8), "RGB")


def single_files(folder: Path):
    import subprocess
    import tempfile
    scripts, out = Path(__file__).parent, FIX / "bfl-tiny-fill"
    out.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, scripts / "convert_to_bfl.py", folder, tmp], check=True)
        shutil.copy(Path(tmp) / "flux1.safetensors", out / "flux1-fill.safetensors")
    subprocess.run([sys.executable, scripts / "convert_to_gguf.py", out / "flux1-fill.safetensors",
                    out / "flux1-fill-Q8_0.gguf", "Q8_0"], check=True)


def main():
    torch.set_num_threads(2)
    folder = build_fill()
    single_files(folder)
    pipe = FluxFillPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    records = []
    for case in CASES:
        ref = run(pipe, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run(pipe, case, prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipe, case, seed=case["seed"] + 1))}
        if case.get("moved_mask"):
            sens["mask"] = psnr(ref, run(pipe, case, mask=case["moved_mask"]))
        if case.get("other_outpaint"):
            other = run(pipe, case, outpaint=case["other_outpaint"])
            sens["margins"] = psnr(ref, other) if other.size == ref.size else 0.0
        rec = {**case, "expected": f"expected/{case['name']}.png", "size": list(ref.size),
               "sensitivity_psnr_db": sens}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}))
    meta = {"generator": "scripts/make_fill_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (FIX / "cases-fill.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
