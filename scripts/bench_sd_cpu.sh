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
measure() { # label, command...: prints "label seconds maxrss_kb"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/$label.err" || { cat "$W/$label.err" >&2; exit 1; }
  echo "$label $(cat "$W/time.txt")"
}
: > "$W/results.txt"
for i in $(seq "$REPS"); do
  measure rust ./target/release/flux-img2img "${ARGS[@]}" -q --output "$W/rust.png" | tee -a "$W/results.txt"
  measure diffusers "$PY" scripts/run_diffusers_sd.py "$W/bench-sd" "$W/diffusers.png" "$PROMPT" 12 7.5 42 256 256 \
    | tee -a "$W/results.txt"
done
"$PY" - "$W" <<'PYEOF'
import sys, math, statistics, numpy as np
from PIL import Image
w = sys.argv[1]
rows = [l.split() for l in open(f"{w}/results.txt")]
med = lambda k, i: statistics.median(float(r[i]) for r in rows if r[0] == k)
rt, dt = med("rust", 1), med("diffusers", 1)
rm, dm = med("rust", 2) / 1024, med("diffusers", 2) / 1024
a = np.asarray(Image.open(f"{w}/rust.png"), float); b = np.asarray(Image.open(f"{w}/diffusers.png"), float)
mse = ((a - b) ** 2).mean()
print(f"wall time  flux-img2img {rt:.2f}s  diffusers {dt:.2f}s  ratio {rt / dt:.3f}")
print(f"peak RSS   flux-img2img {rm:.0f} MiB  diffusers {dm:.0f} MiB  ratio {rm / dm:.3f}")
print(f"output PSNR between them: {'inf' if mse == 0 else f'{10 * math.log10(255 ** 2 / mse):.1f}'} dB")
PYEOF
