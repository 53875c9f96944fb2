"""The CLI flags of fixture cases from tests/fixtures/cases-*.json, for scripts/gpu-check.sh's `modes` phase: each
selected case becomes one line, fields split by \\x1f: name, expected PNG, then the flags (without --device, --dtype,
--kernels and -o, which the caller adds). The flags follow the Rust tests' case_args (modes, fill, control, redux,
cache, klein, sd, controlnet), so a case means here what it means there.
usage: gpu_cases.py FIXTURES FILE:CASE [FILE:CASE ...]    (FILE without cases- and .json: sd:sd15-t2i-default)"""
import json
import os
import sys

FLAGS = [
    ("--prompt", "prompt"), ("--width", "width"), ("--height", "height"), ("--steps", "steps"), ("--seed", "seed"),
    ("--max-sequence-length", "max_sequence_length"), ("--guidance", "guidance"), ("--strength", "strength"),
    ("--negative-prompt", "negative_prompt"), ("--true-cfg", "true_cfg"), ("--mask-blur", "mask_blur"),
    ("--mask-crop", "mask_crop"), ("--reference-size", "reference_size"), ("--scheduler", "scheduler"),
    ("--start-step", "start_step"), ("--clip-skip", "clip_skip"), ("--cache", "cache"),
]


def flags(fx, case, prompt):
    img = lambda name: os.path.join(fx, "images", name)
    a = ["--model", os.path.join(fx, case["model"])]
    if "prompt" not in case and prompt is not None:
        a += ["--prompt", prompt]
    for flag, key in FLAGS:
        if case.get(key) is not None:
            v = case[key]
            a += [flag, v if isinstance(v, str) else json.dumps(v)]
    refs = list(case.get("references") or [])
    # As klein_args: without an input image, the first reference is the image (FLUX.2 reference editing).
    image = case.get("image") or (refs.pop(0) if refs else None)
    if image:
        a += ["--image", img(image)]
    if case.get("mask"):
        a += ["--mask", os.path.join(fx, "masks", case["mask"])]
    for r in refs:
        a += ["--reference", img(r)]
    if case.get("outpaint"):
        a += ["--outpaint", ",".join(str(m) for m in case["outpaint"])]
    if case.get("control"):
        a += ["--control", img(case["control"])]
    if case.get("canny"):
        lo, hi = case["canny"]
        a += ["--control-from", "canny", "--canny-low", str(lo), "--canny-high", str(hi)]
    for name, weight in case.get("redux") or []:
        a += ["--redux", f"{img(name)}:{weight}"]
    if case.get("redux"):
        a += ["--redux-model", os.path.join(fx, "tiny-redux")]
    modes = ["canny", "tile", "depth", "blur", "pose", "gray", "lq"]
    for cn in case.get("controlnets") or []:
        a += ["--controlnet", os.path.join(fx, cn["model"])]
        if cn["control"].startswith("canny:"):
            lo, hi = cn["control"][6:].split(",")
            a += ["--control-from", "canny", "--canny-low", lo, "--canny-high", hi]
        else:
            a += ["--control", img(cn["control"])]
        a += ["--control-mode", "none" if cn["mode"] is None else modes[cn["mode"]]]
        a += ["--control-scale", str(cn["scale"]), "--control-start", str(cn["start"]), "--control-end", str(cn["end"])]
    for name, weight in case.get("loras") or []:
        a += ["--lora", f"{os.path.join(fx, name)}:{weight}"]
    if case.get("pipeline") == "FluxKontextPipeline":
        a.append("--kontext")
    return a + ["--rng", "torch-cpu", "-q"]


def main():
    fx = sys.argv[1]
    for spec in sys.argv[2:]:
        file, name = spec.split(":", 1)
        doc = json.load(open(os.path.join(fx, f"cases-{file}.json")))
        case = next(c for c in doc["cases"] if c["name"] == name)
        print("\x1f".join([f"{file}:{name}", os.path.join(fx, case["expected"])] + flags(fx, case, doc.get("prompt"))))


main()
