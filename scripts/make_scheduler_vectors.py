#!/usr/bin/env python3
"""Reference vectors for src/schedulers: diffusers' discrete schedulers run on small deterministic inputs.

For each case (a checkpoint's scheduler config as a file holds it, the scheduler that runs it, the step count and the
first step), writes what `Scheduler.from_config(config)` computes: timesteps, sigmas, init_noise_sigma, and a whole
denoising loop on a [1, 2, 3, 3] sample whose "model output" is 0.5 * scale_model_input(x) + e_k with e_k drawn
from torch.Generator("cpu").manual_seed(1000 + k): every scaled input and every step's result. Euler ancestral's
step noise comes from torch.Generator("cpu").manual_seed(7), as a pipeline passes its generator. img2img cases
start at index `begin` after add_noise at that timestep, as the img2img pipelines do. Also LMS coefficients.

Usage: python scripts/make_scheduler_vectors.py [--out tests/fixtures/schedulers.json]
"""
import argparse
import json
import math
from pathlib import Path

import torch
import diffusers
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, LMSDiscreteScheduler, PNDMScheduler)

# scheduler_config.json as the Hub repos ship them (SD 1.5: PNDM without timestep_spacing; SD 2.1: DDIM
# v-prediction; SDXL: Euler with trailing-free leading spacing).
SD15 = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
        "trained_betas": None, "clip_sample": False}
SD21 = {"_class_name": "DDIMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
        "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}
SDXL = {"_class_name": "EulerDiscreteScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "interpolation_type": "linear", "num_train_timesteps": 1000,
        "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
        "steps_offset": 1, "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False}
LINEAR_TRAILING = {"_class_name": "DDIMScheduler", "beta_schedule": "linear", "timestep_spacing": "trailing",
                   "clip_sample": True, "set_alpha_to_one": True}
COSINE = {"_class_name": "DPMSolverMultistepScheduler", "beta_schedule": "squaredcos_cap_v2",
          "final_sigmas_type": "sigma_min"}

KINDS = {"pndm": (PNDMScheduler, {}), "ddim": (DDIMScheduler, {}), "lms": (LMSDiscreteScheduler, {}),
         "euler": (EulerDiscreteScheduler, {}), "euler-a": (EulerAncestralDiscreteScheduler, {}),
         "dpmpp-2m": (DPMSolverMultistepScheduler, {"use_karras_sigmas": False}),
         "dpmpp-2m-karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True})}

CASES = [(name, cfg, kind, steps, begin)
         for name, cfg in [("sd15", SD15), ("sd21", SD21), ("sdxl", SDXL)]
         for kind in KINDS
         for steps, begin in [(10, 0), (7, 3)]]
CASES += [("linear-trailing", LINEAR_TRAILING, k, 6, 0) for k in ("ddim", "pndm", "euler", "lms", "dpmpp-2m")]
CASES += [("cosine", COSINE, k, 5, 0) for k in ("dpmpp-2m", "euler")]
CASES += [("sd15-linspace", dict(SD15, timestep_spacing="linspace"), k, 9, 2) for k in ("pndm", "ddim", "euler")]
CASES += [("sd15-prk", dict(SD15, skip_prk_steps=False), "pndm", 8, 0)]
CASES += [("sdxl-karras", dict(SDXL, use_karras_sigmas=True), k, 8, 0) for k in ("euler", "lms")]
CASES += [("sd15-long", SD15, "dpmpp-2m-karras", 20, 0)]


def flat(t):
    """float32 values, 9 significant digits (enough to give each float32 back exactly)."""
    return [float(f"{v:.9g}") for v in t.flatten().tolist()]


def run(cfg, kind, steps, begin):
    cls, extra = KINDS[kind]
    config = {k: v for k, v in cfg.items()}
    # Kind.from_config(pipe.scheduler.config), pipe.scheduler being the checkpoint's own class read from the file.
    registered = getattr(diffusers, config["_class_name"]).from_config(config).config
    sched = cls.from_config(registered, **extra)
    sched.set_timesteps(steps)
    out = {"timesteps": [float(t) for t in sched.timesteps.tolist()],
           "init_noise_sigma": float(f"{float(sched.init_noise_sigma):.9g}")}
    if hasattr(sched, "sigmas") and isinstance(sched.sigmas, torch.Tensor) and len(sched.sigmas) <= steps + 2:
        out["sigmas"] = flat(sched.sigmas)
    x0 = torch.randn((1, 2, 3, 3), generator=torch.Generator().manual_seed(5))
    noise = torch.randn((1, 2, 3, 3), generator=torch.Generator().manual_seed(6))
    timesteps = sched.timesteps
    if begin > 0:
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(begin)
        x = sched.add_noise(x0, noise, timesteps[begin:begin + 1])
    else:
        x = noise * sched.init_noise_sigma
    out["start"] = flat(x)
    gen = torch.Generator().manual_seed(7)
    scaled, results = [], []
    for k, t in enumerate(timesteps[begin:]):
        xin = sched.scale_model_input(x, t)
        e = torch.randn((1, 2, 3, 3), generator=torch.Generator().manual_seed(1000 + k))
        mo = 0.5 * xin + e
        kwargs = {"generator": gen} if kind == "euler-a" else {}
        x = sched.step(mo, t, x, **kwargs).prev_sample
        scaled.append(flat(xin))
        results.append(flat(x))
    out.update(scaled=scaled, results=results, x0=flat(x0), noise=flat(noise))
    return out


def lms_coefficients():
    s = LMSDiscreteScheduler.from_config(SD15)
    s.set_timesteps(12)
    rows = []
    for t in (0, 1, 2, 5, 11):
        order = min(t + 1, 4)
        rows.append({"t": t, "order": order, "coeffs": [s.get_lms_coefficient(order, t, c) for c in range(order)]})
    return {"config": SD15, "steps": 12, "rows": rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "tests/fixtures/schedulers.json"))
    args = ap.parse_args()
    cases = []
    for name, cfg, kind, steps, begin in CASES:
        case = {"name": f"{name}-{kind}-{steps}-{begin}", "config": cfg, "kind": kind, "steps": steps,
                "begin": begin}
        case.update(run(cfg, kind, steps, begin))
        cases.append(case)
    meta = {"generator": "scripts/make_scheduler_vectors.py", "torch": torch.__version__,
            "diffusers": diffusers.__version__, "cases": cases, "lms_coefficients": lms_coefficients()}
    Path(args.out).write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    print(f"{len(cases)} cases -> {args.out}")


if __name__ == "__main__":
    main()
