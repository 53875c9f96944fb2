#!/usr/bin/env bash
# Side-by-side CPU benchmark, one run, same machine: flux-img2img (release) vs diffusers + torch, f32,
# mid-sized random SD 1.x pipeline (≈90M-parameter UNet), text-to-image 256x256, 12 PNDM steps, CFG 7.5, seed 42.
# Whole-process wall time and peak RSS (GNU time), REPS alternating runs each, medians reported, plus the PSNR
# between the two outputs as a sanity check that both did the same work.
#   usage: scripts/bench_sd_cpu.sh [PYTHON] [REPS]     (PYTHON needs scripts/requirements.txt installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
REPS=${2:-3}
W=${BENCH_DIR:-bench-out}
mkdir -p "$W"
[ -d "$W/bench-sd" ] || "$PY" scripts/make_sd_bench_pipeline.py "$W"
cargo build --release -q
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
PROMPT="a watercolor painting of a cat on a red sofa"
ARGS=(--model "$W/bench-sd" --prompt "$PROMPT" --steps 12
      --guidance 7.5 --seed 42 --width 256 --height 256 --rng torch-cpu --device cpu --dtype f32)
source scripts/bench_common.sh
: > "$W/results.txt"
for i in $(seq "$REPS"); do
  measure rust ./target/release/flux-img2img "${ARGS[@]}" -q --output "$W/rust.png" | tee -a "$W/results.txt"
  measure diffusers "$PY" scripts/run_diffusers_sd.py "$W/bench-sd" "$W/diffusers.png" "$PROMPT" 12 7.5 42 256 256 \
    | tee -a "$W/results.txt"
done
summarize
