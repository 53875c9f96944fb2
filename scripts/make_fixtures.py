#!/usr/bin/env python3
"""Build tiny random-weight FLUX.1 pipelines in the exact diffusers layout and record diffusers' own outputs.

Writes tests/fixtures/:
  <pipeline>/            model_index.json, transformer/, vae/, text_encoder/, text_encoder_2/, tokenizer/,
                         tokenizer_2/, scheduler/ exactly as FluxImg2ImgPipeline.save_pretrained writes them
  images/*.png           synthetic input images
  expected/<case>.png    FluxImg2ImgPipeline output for each case (CPU generator, float32)
  cases.json             every case's parameters, plus the sensitivity record: PSNR between the reference output
                         and the same run with another prompt / guidance / seed. Those must be far below the 45 dB
                         parity threshold, or a broken text encoder or RNG would still pass the parity tests.

  cases-modes.json       (--only modes) text-to-image (FluxPipeline) and true CFG (negative_prompt +
                         true_cfg_scale), each with what removing or changing the feature does to the reference
  cases-cuda-rng.json    (--only cuda-rng) the same pipeline fed the noise an H100's torch.Generator("cuda") gave
                         (../shared/rng-torch-cuda), the reference for --rng torch-cuda

Usage: python scripts/make_fixtures.py [--out tests/fixtures] [--only base,cuda-rng] [--shared ../shared]
Needs: torch, diffusers, transformers, tokenizers, pillow, numpy (see scripts/requirements.txt).
"""
import argparse
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxTransformer2DModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5Tokenizer

CORPUS = [
    "a photo of a cat sitting on a red sofa", "a watercolor painting of a mountain lake at sunrise",
    "portrait of an old man with a grey beard, oil on canvas", "a futuristic city at night with neon lights",
    "a bowl of fruit on a wooden table, still life", "a dog running on the beach, golden hour",
    "pixel art of a castle in the clouds", "a cozy cabin in a snowy forest", "sketch of a bicycle, pencil drawing",
    "an astronaut riding a horse on mars", "close-up of a sunflower with a bee", "a ship sailing through a storm",
    "make it look like a van gogh painting", "turn the sky purple and add stars", "a cyberpunk street market",
    "studio photograph of a red sports car", "a fantasy dragon flying over green hills", "minimalist poster, blue and white",
    "the quick brown fox jumps over the lazy dog 0123456789", "vintage film photo, grainy, warm tones",
]


def clip_tokenizer_files(folder: Path):
    """Train a tiny byte-level BPE with CLIP's conventions; specials last so EOS has the largest id (as in CLIP)."""
    tok = Tokenizer(models.BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = data["model"]["merges"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
    # CLIP's vocab holds every byte symbol both bare and with </w>; add the missing ones, then the specials.
    for sym in pre_tokenizers.ByteLevel.alphabet():
        for s in (sym, sym + "</w>"):
            if s not in vocab:
                vocab[s] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), model_max_length=77)


def t5_tokenizer():
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")])
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    vocab = [(p, s) for p, s in json.loads(tok.to_str())["model"]["vocab"]]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def reinit(module: torch.nn.Module, gain: float, seed: int):
    """Random weights large enough that every input (prompt, guidance, seed) visibly changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1:
                if "norm" in name and name.endswith("weight"):
                    p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                else:
                    p.copy_(0.05 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * gain / math.sqrt(fan_in))


def build_pipeline(spec: dict, out: Path) -> Path:
    torch.manual_seed(spec["seed"])
    folder = out / spec["name"]
    if folder.exists():
        shutil.rmtree(folder)
    tmp_tok = out / f".tok-{spec['name']}"
    tokenizer = clip_tokenizer_files(tmp_tok)
    tokenizer_2 = t5_tokenizer()
    c = spec["clip"]
    eos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    bos_id = tokenizer.convert_tokens_to_ids("<|startoftext|>")
    clip_cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=c["hidden"], intermediate_size=c["mlp"],
                              num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                              max_position_embeddings=77, hidden_act=c["act"], layer_norm_eps=c["eps"],
                              projection_dim=c["hidden"], bos_token_id=bos_id,
                              eos_token_id=2 if c["legacy_eos"] else eos_id, pad_token_id=eos_id)
    text_encoder = CLIPTextModel(clip_cfg)
    reinit(text_encoder, 1.0, spec["seed"] + 1)
    t = spec["t5"]
    t5_cfg = T5Config(vocab_size=len(tokenizer_2), d_model=t["d_model"], d_kv=t["d_kv"], d_ff=t["d_ff"],
                      num_layers=t["layers"], num_heads=t["heads"], relative_attention_num_buckets=8,
                      relative_attention_max_distance=20, feed_forward_proj=t["ff"], is_encoder_decoder=False,
                      use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    text_encoder_2 = T5EncoderModel(t5_cfg)
    reinit(text_encoder_2, 1.0, spec["seed"] + 2)
    x = spec["transformer"]
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * spec["vae"]["latent_channels"], num_layers=x["layers"],
        num_single_layers=x["single_layers"], attention_head_dim=x["head_dim"], num_attention_heads=x["heads"],
        joint_attention_dim=t["d_model"], pooled_projection_dim=c["hidden"], guidance_embeds=x["guidance"],
        axes_dims_rope=x["axes"])
    reinit(transformer, x["gain"], spec["seed"] + 3)
    v = spec["vae"]
    n = len(v["blocks"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * n,
                        up_block_types=["UpDecoderBlock2D"] * n, block_out_channels=v["blocks"],
                        layers_per_block=v["layers"], act_fn=v["act"], latent_channels=v["latent_channels"],
                        norm_num_groups=v["groups"], sample_size=64, scaling_factor=v["scale"],
                        shift_factor=v["shift"], use_quant_conv=False, use_post_quant_conv=False,
                        mid_block_add_attention=v["mid_attn"])
    reinit(vae, 1.0, spec["seed"] + 4)
    scheduler = FlowMatchEulerDiscreteScheduler(**spec["scheduler"])
    pipe = FluxImg2ImgPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)
    pipe.save_pretrained(folder, safe_serialization=True, max_shard_size=spec.get("shard", "10GB"))
    tok_dir = folder / "tokenizer"
    if spec["clip_layout"] == "vocab-merges":
        # The real FLUX.1 repos ship only vocab.json + merges.txt for CLIP.
        for f in tok_dir.iterdir():
            if f.name not in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
                f.unlink()
        for f in ("vocab.json", "merges.txt"):
            if not (tok_dir / f).exists():
                shutil.copy(tmp_tok / f, tok_dir / f)
    else:
        for f in ("vocab.json", "merges.txt"):
            (tok_dir / f).unlink(missing_ok=True)
        assert (tok_dir / "tokenizer.json").exists()
    shutil.rmtree(tmp_tok)
    return folder


def make_image(path: Path, w: int, h: int, seed: int):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / w, yy / h, 0.5 + 0.5 * np.sin((xx + yy) / 7.0)], -1) * 200 + 20
    cx, cy, r = w * 0.6, h * 0.4, min(w, h) / 4
    img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = [230, 40, 60]
    img += rng.normal(0, 6, img.shape)
    Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB").save(path)


def center_crop_to_aspect(img: Image.Image, width: int, height: int) -> Image.Image:
    """The crop flux-img2img applies when --width and --height have another aspect than the input."""
    w, h = img.size
    if w * height == h * width:
        return img
    if w * height > h * width:  # input is wider: keep full height
        cw = (2 * h * width + height) // (2 * height)
        left = (w - cw) // 2
        return img.crop((left, 0, left + cw, h))
    ch = (2 * w * height + width) // (2 * width)
    top = (h - ch) // 2
    return img.crop((0, top, w, top + ch))


def run(pipe, case, image_dir: Path, **override):
    c = {**case, **override}
    img = Image.open(image_dir / c["image"]).convert("RGB")
    img = center_crop_to_aspect(img, c["width"], c["height"])
    kwargs = dict(prompt=c["prompt"], image=img, height=c["height"], width=c["width"], strength=c["strength"],
                  num_inference_steps=c["steps"], generator=torch.Generator("cpu").manual_seed(c["seed"]),
                  max_sequence_length=c["max_sequence_length"], output_type="pil")
    if c.get("guidance") is not None:
        kwargs["guidance_scale"] = c["guidance"]
    return pipe(**kwargs).images[0]


def psnr(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


PIPELINES = [
    dict(name="tiny-dev", seed=1, clip_layout="tokenizer-json", shard="60KB",
         clip=dict(hidden=32, mlp=64, layers=2, heads=4, act="quick_gelu", eps=1e-5, legacy_eos=True),
         t5=dict(d_model=32, d_kv=8, d_ff=64, layers=2, heads=4, ff="gated-gelu"),
         transformer=dict(layers=1, single_layers=2, head_dim=16, heads=2, guidance=True, axes=[4, 6, 6], gain=1.5),
         vae=dict(blocks=[16, 32, 32, 32], layers=1, act="silu", latent_channels=16, groups=8, scale=0.3611,
                  shift=0.1159, mid_attn=True),
         scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)),
    dict(name="tiny-schnell", seed=2, clip_layout="vocab-merges",
         clip=dict(hidden=24, mlp=48, layers=1, heads=2, act="gelu", eps=1e-5, legacy_eos=False),
         t5=dict(d_model=24, d_kv=8, d_ff=40, layers=2, heads=3, ff="gated-silu"),
         transformer=dict(layers=2, single_layers=1, head_dim=8, heads=3, guidance=False, axes=[2, 2, 4], gain=1.5),
         vae=dict(blocks=[8, 16], layers=2, act="silu", latent_channels=8, groups=4, scale=0.5, shift=0.05,
                  mid_attn=False),
         scheduler=dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False, base_shift=0.5,
                        max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)),
]

IMAGES = {"gradient-80x80.png": (80, 80, 1), "wide-100x60.png": (100, 60, 2), "tall-48x64.png": (48, 64, 3),
          "photo-96x64.png": (96, 64, 4)}

P1 = "a watercolor painting of a cat on a red sofa"
P2 = "a futuristic city at night with neon lights"
CASES = [
    dict(name="dev-square", model="tiny-dev", image="gradient-80x80.png", prompt=P1, width=64, height=64,
         strength=0.75, steps=8, guidance=3.5, seed=42, max_sequence_length=64),
    dict(name="dev-crop-wide", model="tiny-dev", image="wide-100x60.png", prompt=P2, width=96, height=48,
         strength=0.6, steps=10, guidance=3.5, seed=7, max_sequence_length=32),
    dict(name="dev-full-strength", model="tiny-dev", image="photo-96x64.png", prompt=P1, width=48, height=32,
         strength=1.0, steps=6, guidance=5.0, seed=1234, max_sequence_length=512),
    dict(name="dev-low-strength", model="tiny-dev", image="photo-96x64.png", prompt=P2, width=96, height=64,
         strength=0.3, steps=10, guidance=2.5, seed=3, max_sequence_length=48),
    dict(name="schnell-same-size", model="tiny-schnell", image="tall-48x64.png", prompt=P2, width=48, height=64,
         strength=0.8, steps=4, guidance=None, seed=0, max_sequence_length=64),
    dict(name="schnell-wide", model="tiny-schnell", image="wide-100x60.png", prompt=P1, width=64, height=36,
         strength=0.5, steps=3, guidance=None, seed=99, max_sequence_length=20),
]


def gpu_noise(shared: Path, names):
    """A randn_tensor stand-in that returns the H100's vectors in order (the pipeline draws posterior noise, then
    the initial noise), so diffusers runs on the CPU with exactly the noise torch.Generator("cuda") gave."""
    queue = [np.fromfile(shared / "rng-torch-cuda" / n, dtype=np.float32) for n in names]

    def draw(shape, generator=None, device=None, dtype=None, layout=None):
        v = queue.pop(0)
        assert v.size == math.prod(shape), (shape, v.size)
        return torch.from_numpy(v.copy()).reshape(shape).to(dtype=dtype)
    return draw


def cuda_rng_cases(out: Path, shared: Path):
    """The dev-square case with the H100's seed-7 noise ([1,16,8,8] = tiny-dev's latents at 64x64)."""
    import diffusers.models.autoencoders.vae as vae_mod
    import diffusers.pipelines.flux.pipeline_flux_img2img as img2img_mod
    case = dict(CASES[0], name="dev-cuda-rng", seed=7, rng="torch-cuda", rng_gpu="132x2048")
    pipe = FluxImg2ImgPipeline.from_pretrained(out / case["model"], torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    saved = (vae_mod.randn_tensor, img2img_mod.randn_tensor)
    draw = gpu_noise(shared, ["seed7_small_0.f32", "seed7_small_1.f32"])
    vae_mod.randn_tensor = img2img_mod.randn_tensor = draw
    try:
        ref = run(pipe, case, out / "images")
    finally:
        vae_mod.randn_tensor, img2img_mod.randn_tensor = saved
    ref.save(out / "expected" / f"{case['name']}.png")
    # The CPU generator with the same seed: how far the reference is from what torch-cpu would give.
    case["sensitivity_psnr_db"] = {"rng": psnr(ref, run(pipe, case, out / "images"))}
    case["expected"] = f"expected/{case['name']}.png"
    (out / "cases-cuda-rng.json").write_text(json.dumps({"generator": "scripts/make_fixtures.py --only cuda-rng",
                                                         "cases": [case]}, indent=1) + "\n")
    print(json.dumps(case))


def make_masks(folder: Path):
    """Masks for the inpainting cases: an L rectangle, a coloured RGB blob (converted to L after resizing), a
    shifted rectangle (the sensitivity check), and PIL's Gaussian blur of the blob at two radii (the reference for
    --mask-blur)."""
    folder.mkdir(parents=True, exist_ok=True)
    rect = Image.new("L", (80, 80), 0)
    rect.paste(255, (20, 28, 56, 60))
    rect.save(folder / "rect-80x80.png")
    moved = Image.new("L", (80, 80), 0)
    moved.paste(255, (36, 8, 72, 40))
    moved.save(folder / "rect-moved-80x80.png")
    yy, xx = np.mgrid[0:60, 0:100]
    blob = (((xx - 60) / 26.0) ** 2 + ((yy - 26) / 17.0) ** 2 < 1.0)
    rgb = np.zeros((60, 100, 3), np.uint8)
    rgb[blob] = [250, 180, 40]  # luma 186: white after binarizing
    rgb[(xx < 22) & (yy > 40)] = [60, 200, 255]  # luma 169
    Image.fromarray(rgb, "RGB").save(folder / "blob-rgb-100x60.png")
    small = Image.new("L", (96, 64), 0)
    small.paste(255, (24, 14, 72, 50))
    small.save(folder / "small-96x64.png")
    small_moved = Image.new("L", (96, 64), 0)
    small_moved.paste(255, (4, 22, 52, 58))
    small_moved.save(folder / "small-moved-96x64.png")
    for r in (2, 5):
        Image.open(folder / "blob-rgb-100x60.png").filter(ImageFilter.GaussianBlur(r)).save(folder / f"blob-rgb-blur{r}.png")


MODE_CASES = [
    dict(name="t2i-dev", pipeline="FluxPipeline", model="tiny-dev", prompt=P1, width=64, height=48, steps=6,
         guidance=3.5, seed=5, max_sequence_length=64),
    dict(name="t2i-schnell", pipeline="FluxPipeline", model="tiny-schnell", prompt=P2, width=44, height=36, steps=4,
         guidance=None, seed=6, max_sequence_length=32),
    dict(name="cfg-img2img-dev", pipeline="FluxImg2ImgPipeline", model="tiny-dev", image="photo-96x64.png", prompt=P1,
         width=64, height=48, strength=0.8, steps=6, guidance=3.5, seed=7, max_sequence_length=64,
         negative_prompt="blurry, low quality, pixel art", true_cfg=4.0),
    dict(name="cfg-t2i-schnell", pipeline="FluxPipeline", model="tiny-schnell", prompt=P2, width=40, height=40,
         steps=3, guidance=None, seed=8, max_sequence_length=32, negative_prompt="a watercolor of a cat", true_cfg=2.5),
    dict(name="inpaint-dev-rect", pipeline="FluxInpaintPipeline", model="tiny-dev", image="gradient-80x80.png",
         mask="rect-80x80.png", moved_mask="rect-moved-80x80.png", prompt=P2, width=64, height=64, strength=0.85,
         steps=8, guidance=3.5, seed=4, max_sequence_length=64),
    dict(name="inpaint-schnell-rgb", pipeline="FluxInpaintPipeline", model="tiny-schnell", image="wide-100x60.png",
         mask="blob-rgb-100x60.png", moved_mask="rect-moved-80x80.png", prompt=P1, width=64, height=36, strength=1.0,
         steps=4, guidance=None, seed=12, max_sequence_length=32),
    dict(name="inpaint-dev-blur", pipeline="FluxInpaintPipeline", model="tiny-dev", image="wide-100x60.png",
         mask="blob-rgb-100x60.png", mask_blur=5, moved_mask="rect-moved-80x80.png", prompt=P1, width=96, height=48,
         strength=0.7, steps=6, guidance=4.0, seed=13, max_sequence_length=32),
    dict(name="inpaint-dev-crop", pipeline="FluxInpaintPipeline", model="tiny-dev", image="photo-96x64.png",
         mask="small-96x64.png", moved_mask="small-moved-96x64.png", mask_crop=8, prompt=P2, width=64, height=48,
         strength=0.9, steps=6, guidance=3.5, seed=14, max_sequence_length=32),
    dict(name="kontext-dev", pipeline="FluxKontextPipeline", model="tiny-dev", image="photo-96x64.png",
         other_image="gradient-80x80.png", reference_size="input", prompt=P1, width=64, height=48, steps=6,
         guidance=2.5, seed=9, max_sequence_length=64),
    dict(name="kontext-dev-cfg", pipeline="FluxKontextPipeline", model="tiny-dev", image="wide-100x60.png",
         other_image="gradient-80x80.png", reference_size="input", prompt=P2, width=48, height=32, steps=4,
         guidance=3.0, seed=10, max_sequence_length=32, negative_prompt="oil painting", true_cfg=3.0),
    dict(name="kontext-dev-auto", pipeline="FluxKontextPipeline", model="tiny-dev", image="tall-48x64.png",
         other_image="gradient-80x80.png", reference_size="auto", prompt=P1, width=48, height=64, steps=3,
         guidance=2.5, seed=11, max_sequence_length=32),
]


def run_mode(pipes, case, image_dir: Path, **override):
    """One mode case through its diffusers pipeline with a CPU generator."""
    c = {**case, **override}
    pipe = pipes[(c["pipeline"], c["model"])]
    kwargs = dict(prompt=c["prompt"], height=c["height"], width=c["width"], num_inference_steps=c["steps"],
                  generator=torch.Generator("cpu").manual_seed(c["seed"]), max_sequence_length=c["max_sequence_length"],
                  output_type="pil")
    if c.get("guidance") is not None:
        kwargs["guidance_scale"] = c["guidance"]
    if c["pipeline"] == "FluxKontextPipeline":
        # The CLI's explicit size and --reference-size: the output is exactly width x height (max_area = W*H);
        # "input" keeps the reference at its own size floored to 16, "auto" snaps it to Kontext's resolutions.
        kwargs.update(image=Image.open(image_dir / c["image"]).convert("RGB"), max_area=c["width"] * c["height"],
                      _auto_resize=c["reference_size"] == "auto")
    elif c["pipeline"] == "FluxInpaintPipeline":
        img = Image.open(image_dir / c["image"]).convert("RGB")
        mask = Image.open(image_dir.parent / "masks" / c["mask"])
        if c.get("mask_blur"):
            mask = pipe.mask_processor.blur(mask, blur_factor=c["mask_blur"])
        if c.get("mask_crop"):
            kwargs.update(padding_mask_crop=c["mask_crop"])
        else:
            # The CLI's crop resize mode, applied to image and mask alike.
            img = center_crop_to_aspect(img, c["width"], c["height"])
            mask = center_crop_to_aspect(mask, c["width"], c["height"])
        kwargs.update(image=img, mask_image=mask, strength=c["strength"])
    elif c.get("image"):
        img = Image.open(image_dir / c["image"]).convert("RGB")
        kwargs.update(image=center_crop_to_aspect(img, c["width"], c["height"]), strength=c["strength"])
    if c.get("negative_prompt") is not None:
        kwargs.update(negative_prompt=c["negative_prompt"], true_cfg_scale=c["true_cfg"])
    return pipe(**kwargs).images[0]


def mode_cases(out: Path):
    import diffusers
    make_masks(out / "masks")
    pipes = {}
    for case in MODE_CASES:
        key = (case["pipeline"], case["model"])
        if key not in pipes:
            pipes[key] = getattr(diffusers, case["pipeline"]).from_pretrained(out / case["model"], torch_dtype=torch.float32)
            pipes[key].set_progress_bar_config(disable=True)
    records = []
    for case in MODE_CASES:
        ref = run_mode(pipes, case, out / "images")
        ref.save(out / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run_mode(pipes, case, out / "images", prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run_mode(pipes, case, out / "images", seed=case["seed"] + 1))}
        if case.get("negative_prompt") is not None:
            sens["no_true_cfg"] = psnr(ref, run_mode(pipes, case, out / "images", negative_prompt=None))
            sens["negative_prompt"] = psnr(ref, run_mode(pipes, case, out / "images", negative_prompt="a dog running"))
        if case.get("moved_mask"):
            moved = run_mode(pipes, case, out / "images", mask=case["moved_mask"])
            sens["mask"] = psnr(ref, moved.resize(ref.size)) if moved.size != ref.size else psnr(ref, moved)
        if case.get("other_image"):
            # Another reference, and none at all (what dropping the reference tokens would give).
            sens["reference_image"] = psnr(ref, run_mode(pipes, case, out / "images", image=case["other_image"]))
            t2i = dict(case, pipeline="FluxPipeline", image=None)
            pipes.setdefault(("FluxPipeline", case["model"]), diffusers.FluxPipeline(**pipes[(case["pipeline"], case["model"])].components))
            sens["no_reference"] = psnr(ref, run_mode(pipes, t2i, out / "images"))
        arr = np.asarray(ref)
        rec = {**case, "expected": f"expected/{case['name']}.png", "sensitivity_psnr_db": sens,
               "saturated_fraction": float(np.mean((arr == 0) | (arr == 255)))}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "sensitivity_psnr_db", "saturated_fraction")}))
    meta = {"generator": "scripts/make_fixtures.py --only modes", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": records}
    (out / "cases-modes.json").write_text(json.dumps(meta, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests" / "fixtures"))
    ap.add_argument("--only", default="base", help="comma-separated groups: base, modes, cuda-rng")
    ap.add_argument("--shared", default=str(Path(__file__).resolve().parent.parent.parent / "shared"))
    args = ap.parse_args()
    out = Path(args.out)
    groups = set(args.only.split(","))
    torch.set_num_threads(2)
    if "cuda-rng" in groups:
        cuda_rng_cases(out, Path(args.shared))
    if "modes" in groups:
        mode_cases(out)
    if "base" in groups:
        base_cases(out)


def base_cases(out: Path):
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "expected").mkdir(parents=True, exist_ok=True)
    for name, (w, h, seed) in IMAGES.items():
        make_image(out / "images" / name, w, h, seed)
    for spec in PIPELINES:
        build_pipeline(spec, out)
    torch.set_num_threads(2)
    records = []
    for case in CASES:
        # Load back from disk so the reference sees exactly the files the Rust side reads.
        pipe = FluxImg2ImgPipeline.from_pretrained(out / case["model"], torch_dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        ref = run(pipe, case, out / "images")
        ref.save(out / "expected" / f"{case['name']}.png")
        sens = {"prompt": psnr(ref, run(pipe, case, out / "images", prompt="pixel art of a castle in the clouds")),
                "seed": psnr(ref, run(pipe, case, out / "images", seed=case["seed"] + 1))}
        if case["guidance"] is not None:
            sens["guidance"] = psnr(ref, run(pipe, case, out / "images", guidance=case["guidance"] + 2.0))
        arr = np.asarray(ref)
        rec = {**case, "expected": f"expected/{case['name']}.png", "sensitivity_psnr_db": sens,
               "saturated_fraction": float(np.mean((arr == 0) | (arr == 255))), "pixel_std": float(arr.std())}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "sensitivity_psnr_db", "saturated_fraction", "pixel_std")}))
    meta = {"generator": "scripts/make_fixtures.py", "torch": torch.__version__,
            "diffusers": __import__("diffusers").__version__, "transformers": __import__("transformers").__version__,
            "cases": records}
    (out / "cases.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
