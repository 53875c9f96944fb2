#!/usr/bin/env bash
# Side-by-side CPU benchmark, one run, same machine: flux-img2img (release) vs diffusers + torch, f32,
# mid-sized random pipeline (≈70M-parameter transformer), 256x256, 8 steps, strength 0.75, seed 42.
# Whole-process wall time and peak RSS (GNU time), REPS alternating runs each, medians reported, plus the PSNR
# between the two outputs as a sanity check that both did the same work.
#   usage: scripts/bench_cpu.sh [PYTHON] [REPS]     (PYTHON needs scripts/requirements.txt installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
REPS=${2:-3}
W=${BENCH_DIR:-bench-out}
mkdir -p "$W"
[ -d "$W/bench-70m" ] || "$PY" scripts/make_bench_pipeline.py "$W"
cargo build --release -q
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
PROMPT="a watercolor painting of a cat on a red sofa"
ARGS=(--model "$W/bench-70m" --image "$W/input-256.png" --prompt "$PROMPT" --strength 0.75 --steps 8
      --guidance 3.5 --seed 42 --width 256 --height 256 --rng torch-cpu --device cpu --dtype f32)
source scripts/bench_common.sh
: > "$W/results.txt"
for i in $(seq "$REPS"); do
  measure rust ./target/release/flux-img2img "${ARGS[@]}" -q --output "$W/rust.png" | tee -a "$W/results.txt"
  measure diffusers "$PY" scripts/run_diffusers.py "$W/bench-70m" "$W/input-256.png" "$W/diffusers.png" "$PROMPT" \
    0.75 8 3.5 42 256 256 | tee -a "$W/results.txt"
done
summarize
