#!/usr/bin/env python3
"""Tiny random-weight FLUX.2 [klein] pipelines in the exact diffusers layout, and diffusers' own outputs.

Writes tests/fixtures/:
  tiny-klein/        Flux2KleinPipeline, is_distilled=true (klein 4B-like: Qwen3 with GQA and heads·head_dim ≠
                     hidden, tied embeddings, 28 layers; 4-block VAE with 4 latent channels)
  tiny-klein-base/   is_distilled=false (the base models: true CFG with the empty negative prompt); other sizes in
                     every axis (no GQA, 30 layers, untied lm_head, 8 latent channels, mlp_ratio 2.5, other RoPE
                     thetas and axes), so nothing in the Rust side can hard-code a number
  images/ref-*.png, masks/klein-*.png   references (sides not multiples of 16: the crop is exercised) and masks
  expected/klein-*.png, cases-klein.json   Flux2KleinPipeline (text-to-image, one and two references) and
                     Flux2KleinInpaintPipeline (with and without a reference) outputs for a CPU generator, and
                     `--strength` on klein (our SDEdit extension): Flux2KleinInpaintPipeline with an all-white mask,
                     which is exactly "noise the input to the strength, keep it as a reference, denoise"
  loras/klein-peft.safetensors, loras/klein-aitk.safetensors   random LoRAs for tiny-klein in diffusers/PEFT names and
                     ai-toolkit's (`diffusion_model.` + BFL names, fused qkv), loaded by Flux2KleinPipeline.load_lora_weights
Each case records how far diffusers' own output moves when the prompt, the seed, a reference, the mask, CFG or the
LoRA changes (sensitivity_psnr_db); the tests hold those far below the 45 dB parity bar.

Usage: python scripts/make_klein_fixtures.py   (needs the packages of scripts/requirements.txt)
"""
import json
import math
import shutil
import sys
from pathlib import Path

import torch
from PIL import Image, ImageOps
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import make_image, psnr, reinit  # noqa: E402
from diffusers import (AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinInpaintPipeline,  # noqa: E402
                       Flux2KleinPipeline, Flux2Transformer2DModel)
from transformers import Qwen2Tokenizer, Qwen3Config, Qwen3ForCausalLM  # noqa: E402

FIX = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

CORPUS = ["a photo of a cat sitting on a red sofa", "a watercolor painting of a mountain lake at sunrise",
          "portrait of an old man with a grey beard", "a futuristic city at night with neon lights",
          "the quick brown fox jumps over the lazy dog 0123456789", "put the hat from the second image on the cat",
          "user assistant system think"]

# Qwen3's chat template, reduced to the branches a single user message reaches (system block, user turns, the
# generation prompt with thinking switched off). The pipeline renders it with enable_thinking=False.
QWEN3_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

PIPELINES = [
    dict(name="tiny-klein", distilled=True, seed=20,
         qwen=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=28, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16, rope_theta=1000000.0, tie_word_embeddings=True),
         vae=dict(block_out_channels=(16, 32, 32, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8),
         transformer=dict(num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
                          mlp_ratio=3.0, axes_dims_rope=(8, 4, 2, 2), rope_theta=2000)),
    dict(name="tiny-klein-base", distilled=False, seed=21,
         qwen=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=30, num_attention_heads=3,
                   num_key_value_heads=3, head_dim=8, rope_theta=10000.0, tie_word_embeddings=False),
         vae=dict(block_out_channels=(8, 16, 16, 16), layers_per_block=2, latent_channels=8, norm_num_groups=8),
         transformer=dict(num_layers=1, num_single_layers=3, attention_head_dim=12, num_attention_heads=3,
                          mlp_ratio=2.5, axes_dims_rope=(6, 2, 2, 2), rope_theta=3000)),
]

IMAGES = {"ref-100x70.png": (100, 70, 31), "ref-64x80.png": (64, 80, 32),
          # Under 64 pixels high: fine as an input to inpaint (only references must be >= 64), 80x48 out.
          "small-88x60.png": (88, 60, 33)}
# Other content of the same sizes (the pattern turned and its colours inverted): the reference-swap sensitivity.
ALTERNATES = {"ref-alt-100x70.png": "ref-100x70.png", "ref-alt-64x80.png": "ref-64x80.png"}

CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level BPE trained on a toy corpus, with Qwen's special and added tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(CORPUS * 5, trainer)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in data["model"]["merges"]]
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]:
        vocab[s] = len(vocab)
    t = Qwen2Tokenizer(vocab=vocab, merges=merges, errors="replace", unk_token=None, bos_token=None,
                       eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=131072)
    t.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    t.add_tokens([AddedToken(x, special=False, normalized=False) for x in ["<think>", "</think>"]])
    t.chat_template = QWEN3_TEMPLATE
    return t


def build(spec: dict) -> Path:
    torch.manual_seed(spec["seed"])
    folder = FIX / spec["name"]
    if folder.exists():
        shutil.rmtree(folder)
    tokenizer = qwen_tokenizer()
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "a cat"}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=False)
    assert rendered == CHAT.format("a cat"), rendered  # what the Rust side hard-codes
    q = spec["qwen"]
    te = Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tokenizer), max_position_embeddings=1024, rms_norm_eps=1e-6,
                                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                      **q)).eval()
    reinit(te, 1.0, spec["seed"] + 1)
    v = spec["vae"]
    vae = AutoencoderKLFlux2(sample_size=64, **v)
    # Gain 2 (and a wide first RoPE axis, which carries the references' time offsets): references visibly steer
    # the result, so dropping, swapping or reordering them moves diffusers' output well below the parity bar.
    reinit(vae, 2.0, spec["seed"] + 2)
    with torch.no_grad():
        # Random batch-norm statistics: the defaults (0, 1) would hide a missing normalisation.
        g = torch.Generator().manual_seed(spec["seed"] + 3)
        vae.bn.running_mean.copy_(0.3 * torch.randn(4 * v["latent_channels"], generator=g))
        vae.bn.running_var.copy_(0.5 + torch.rand(4 * v["latent_channels"], generator=g))
    transformer = Flux2Transformer2DModel(patch_size=1, in_channels=4 * v["latent_channels"],
                                          joint_attention_dim=3 * q["hidden_size"], timestep_guidance_channels=256,
                                          eps=1e-6, guidance_embeds=False, **spec["transformer"])
    # Gain 3: strong enough that prompt and references visibly steer a 2-block model.
    reinit(transformer, 3.0, spec["seed"] + 4)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True,
                                                base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                                                max_image_seq_len=4096, time_shift_type="exponential")
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=te, tokenizer=tokenizer,
                              transformer=transformer, is_distilled=spec["distilled"])
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


def make_masks():
    rect = Image.new("L", (100, 70), 0)
    rect.paste(255, (20, 10, 70, 50))
    rect.save(FIX / "masks" / "klein-rect-100x70.png")
    moved = Image.new("L", (100, 70), 0)
    moved.paste(255, (50, 24, 96, 66))
    moved.save(FIX / "masks" / "klein-moved-100x70.png")
    for name, box in (("klein-small-88x60.png", (10, 8, 50, 40)), ("klein-small-moved-88x60.png", (40, 20, 84, 56))):
        small = Image.new("L", (88, 60), 0)
        small.paste(255, box)
        small.save(FIX / "masks" / name)


K = dict(model="tiny-klein", prompt="a watercolor painting of a cat on a red sofa", steps=4, seed=42,
         max_sequence_length=32)
B = dict(K, model="tiny-klein-base", steps=3, seed=7)

# references: Flux2KleinPipeline's image list. image + mask: Flux2KleinInpaintPipeline (reference: its
# image_reference). image + strength without a mask: the SDEdit extension (the inpaint pipeline, white mask).
CASES = [
    dict(K, name="klein-t2i", width=96, height=64,
         sensitivity=dict(prompt=dict(prompt="a photo of a dog"), seed=dict(seed=43))),
    dict(K, name="klein-t2i-full-length", width=64, height=64, max_sequence_length=512, seed=5,
         sensitivity=dict(prompt=dict(prompt="a photo of a dog"))),
    dict(K, name="klein-ref", references=["ref-100x70.png"],
         sensitivity=dict(prompt=dict(prompt="a photo of a dog"), reference_image=dict(references=["ref-alt-100x70.png"]),
                          no_reference=dict(references=[], width=96, height=64))),
    dict(K, name="klein-two-refs", references=["ref-100x70.png", "ref-64x80.png"], width=64, height=64,
         sensitivity=dict(second_reference=dict(references=["ref-100x70.png"]),
                          order=dict(references=["ref-64x80.png", "ref-100x70.png"]))),
    dict(K, name="klein-inpaint", image="ref-100x70.png", mask="klein-rect-100x70.png", references=["ref-64x80.png"],
         strength=0.6, sensitivity=dict(mask=dict(mask="klein-moved-100x70.png"), no_reference=dict(references=[]),
                                        prompt=dict(prompt="a photo of a dog"))),
    dict(K, name="klein-inpaint-noref", image="photo-96x64.png", mask="small-96x64.png", strength=0.9, seed=3,
         sensitivity=dict(mask=dict(mask="small-moved-96x64.png"), prompt=dict(prompt="a photo of a dog"))),
    dict(K, name="klein-inpaint-small", image="small-88x60.png", mask="klein-small-88x60.png", strength=0.8, seed=9,
         sensitivity=dict(mask=dict(mask="klein-small-moved-88x60.png"), prompt=dict(prompt="a photo of a dog"))),
    dict(K, name="klein-sdedit", image="ref-100x70.png", strength=0.7,
         sensitivity=dict(strength=dict(strength=1.0), prompt=dict(prompt="a photo of a dog"))),
    dict(B, name="klein-base-t2i-cfg", width=64, height=64, guidance=4.0,
         sensitivity=dict(no_cfg=dict(guidance=1.0), prompt=dict(prompt="a photo of a dog"))),
    dict(B, name="klein-base-ref-cfg", references=["ref-64x80.png"], guidance=2.5,
         sensitivity=dict(no_cfg=dict(guidance=1.0), reference_image=dict(references=["ref-alt-64x80.png"]))),
]


def klein_loras(transformer):
    """A random rank-4 LoRA over attention, MLP, modulation and embedder layers of tiny-klein, as diffusers/PEFT
    names and as ai-toolkit's BFL names (double-block q/k/v fused: one A for all three, B stacked)."""
    g = torch.Generator().manual_seed(40)
    shapes = {k[: -len(".weight")]: tuple(v.shape) for k, v in transformer.state_dict().items() if k.endswith(".weight")}
    rnd = lambda *shape: torch.randn(shape, generator=g) * 0.3  # noqa: E731
    peft, aitk = {}, {}
    r = 4
    for n in range(2):
        d, b = f"transformer_blocks.{n}", f"double_blocks.{n}"
        a_img, a_txt = rnd(r, shapes[f"{d}.attn.to_q"][1]), rnd(r, shapes[f"{d}.attn.add_q_proj"][1])
        bs_img = [rnd(shapes[f"{d}.attn.to_{x}"][0], r) for x in "qkv"]
        bs_txt = [rnd(shapes[f"{d}.attn.add_{x}_proj"][0], r) for x in "qkv"]
        for x, bb in zip("qkv", bs_img):
            peft[f"transformer.{d}.attn.to_{x}.lora_A.weight"], peft[f"transformer.{d}.attn.to_{x}.lora_B.weight"] = a_img, bb
        for x, bb in zip("qkv", bs_txt):
            peft[f"transformer.{d}.attn.add_{x}_proj.lora_A.weight"] = a_txt
            peft[f"transformer.{d}.attn.add_{x}_proj.lora_B.weight"] = bb
        aitk[f"diffusion_model.{b}.img_attn.qkv.lora_A.weight"] = a_img
        aitk[f"diffusion_model.{b}.img_attn.qkv.lora_B.weight"] = torch.cat(bs_img, 0)
        aitk[f"diffusion_model.{b}.txt_attn.qkv.lora_A.weight"] = a_txt
        aitk[f"diffusion_model.{b}.txt_attn.qkv.lora_B.weight"] = torch.cat(bs_txt, 0)
        for dm, bm in (("attn.to_out.0", "img_attn.proj"), ("ff.linear_in", "img_mlp.0"), ("ff_context.linear_out", "txt_mlp.2")):
            o, i = shapes[f"{d}.{dm}"]
            A, Bm = rnd(r, i), rnd(o, r)
            peft[f"transformer.{d}.{dm}.lora_A.weight"], peft[f"transformer.{d}.{dm}.lora_B.weight"] = A, Bm
            aitk[f"diffusion_model.{b}.{bm}.lora_A.weight"], aitk[f"diffusion_model.{b}.{bm}.lora_B.weight"] = A, Bm
    for dm, bm in (("single_transformer_blocks.1.attn.to_qkv_mlp_proj", "single_blocks.1.linear1"),
                   ("single_transformer_blocks.0.attn.to_out", "single_blocks.0.linear2"),
                   ("double_stream_modulation_img.linear", "double_stream_modulation_img.lin"),
                   ("context_embedder", "txt_in")):
        o, i = shapes[dm]
        A, Bm = rnd(r, i), rnd(o, r)
        peft[f"transformer.{dm}.lora_A.weight"], peft[f"transformer.{dm}.lora_B.weight"] = A, Bm
        aitk[f"diffusion_model.{bm}.lora_A.weight"], aitk[f"diffusion_model.{bm}.lora_B.weight"] = A, Bm
    return peft, aitk


def lora_cases(pipes):
    """diffusers with each LoRA file on a fresh copy of tiny-klein (weights 0.8 and 1.0); no LoRA: the sensitivity."""
    import copy
    from safetensors.torch import save_file
    _, klein = pipes["tiny-klein"]
    peft, aitk = klein_loras(klein.transformer)
    (FIX / "loras").mkdir(exist_ok=True)
    for name, sd in (("klein-peft", peft), ("klein-aitk", aitk)):
        save_file({k: v.clone().contiguous() for k, v in sd.items()}, FIX / "loras" / f"{name}.safetensors")
    records = []
    for file, sd, weight in (("klein-peft", peft, 0.8), ("klein-aitk", aitk, 1.0)):
        name = file.replace("klein-", "klein-lora-")
        case = dict(K, name=name, references=["ref-100x70.png"], loras=[[f"loras/{file}.safetensors", weight]])
        pipe = copy.deepcopy(klein)
        pipe.load_lora_weights({k: v.clone() for k, v in sd.items()}, adapter_name="l")
        pipe.set_adapters(["l"], adapter_weights=[weight])
        ref = run({"tiny-klein": (None, pipe)}, case)
        ref.save(FIX / "expected" / f"{name}.png")
        rec = {**case, "pipeline": "Flux2KleinPipeline", "expected": f"expected/{name}.png", "size": list(ref.size),
               "sensitivity_psnr_db": {"no_lora": psnr(ref, run(pipes, case))}}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "sensitivity_psnr_db")}))
    return records


def run(pipes, case):
    inpaint, klein = pipes[case["model"]]
    img = lambda name: Image.open(FIX / "images" / name).convert("RGB")  # noqa: E731
    kw = dict(prompt=case["prompt"], num_inference_steps=case["steps"], max_sequence_length=case["max_sequence_length"],
              generator=torch.Generator("cpu").manual_seed(case["seed"]), output_type="pil")
    if case.get("guidance") is not None:
        kw["guidance_scale"] = case["guidance"]
    refs = [img(r) for r in case.get("references", [])]
    if case.get("image"):
        src = img(case["image"])
        mask = (Image.open(FIX / "masks" / case["mask"]) if case.get("mask")
                else Image.new("L", src.size, 255))
        if len(refs) > 1:
            raise ValueError("the inpaint pipeline takes one reference")
        return inpaint(image=src, mask_image=mask, image_reference=refs[0] if refs else None,
                       strength=case["strength"], guidance_scale=case.get("guidance") or 1.0,
                       **{k: v for k, v in kw.items() if k != "guidance_scale"}).images[0]
    for k in ("width", "height"):
        if case.get(k):
            kw[k] = case[k]
    return klein(image=refs or None, **kw).images[0]


def main():
    torch.set_num_threads(2)
    for name, (w, h, seed) in IMAGES.items():
        make_image(FIX / "images" / name, w, h, seed)
    for name, src in ALTERNATES.items():
        ImageOps.invert(Image.open(FIX / "images" / src).convert("RGB").rotate(180)).save(FIX / "images" / name)
    make_masks()
    pipes = {}
    for spec in PIPELINES:
        folder = build(spec)
        # Load back from disk so the reference sees exactly the files the Rust side reads.
        klein = Flux2KleinPipeline.from_pretrained(folder, torch_dtype=torch.float32)
        klein.set_progress_bar_config(disable=True)
        inpaint = Flux2KleinInpaintPipeline(**klein.components, is_distilled=spec["distilled"])
        inpaint.set_progress_bar_config(disable=True)
        pipes[spec["name"]] = (inpaint, klein)
    records = []
    for case in CASES:
        ref = run(pipes, case)
        ref.save(FIX / "expected" / f"{case['name']}.png")
        rec = {k: v for k, v in case.items() if k != "sensitivity"}
        rec["pipeline"] = "Flux2KleinInpaintPipeline" if case.get("image") else "Flux2KleinPipeline"
        rec["expected"] = f"expected/{case['name']}.png"
        rec["size"] = list(ref.size)
        rec["sensitivity_psnr_db"] = {what: psnr(ref, run(pipes, {**case, **change}))
                                      for what, change in case["sensitivity"].items()}
        records.append(rec)
        print(json.dumps({k: rec[k] for k in ("name", "size", "sensitivity_psnr_db")}))
    records.extend(lora_cases(pipes))
    import diffusers
    import transformers
    meta = {"generator": "scripts/make_klein_fixtures.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "transformers": transformers.__version__, "cases": records}
    (FIX / "cases-klein.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
