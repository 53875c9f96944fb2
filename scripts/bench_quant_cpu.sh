#!/usr/bin/env bash
# Memory and time of --quantize on the CPU benchmark pipeline (see bench_cpu.sh), with each output's PSNR
# against the unquantized run. One run each, same machine, same invocation otherwise.
#   usage: scripts/bench_quant_cpu.sh [PYTHON]     (PYTHON with numpy + Pillow, for the PSNR)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
W=${BENCH_DIR:-bench-out}
[ -d "$W/bench-70m" ] || "$PY" scripts/make_bench_pipeline.py "$W"
cargo build --release -q
ARGS=(--model "$W/bench-70m" --image "$W/input-256.png" --prompt "a watercolor painting of a cat on a red sofa"
      --strength 0.75 --steps 8 --guidance 3.5 --seed 42 --width 256 --height 256 --rng torch-cpu --device cpu -q)
for q in none q8_0 q6_k q4_k; do
  extra=(); [ "$q" = none ] || extra=(--quantize "$q")
  /usr/bin/time -f "%e %M" -o "$W/time.txt" ./target/release/flux-img2img "${ARGS[@]}" "${extra[@]}" -o "$W/q-$q.png" >/dev/null 2>"$W/q.err"
  read -r secs kb < "$W/time.txt"
  psnr=$("$PY" - "$W/q-none.png" "$W/q-$q.png" <<'PYEOF'
import sys, math, numpy as np
from PIL import Image
a = np.asarray(Image.open(sys.argv[1]), float); b = np.asarray(Image.open(sys.argv[2]), float)
mse = ((a - b) ** 2).mean(); print("inf" if mse == 0 else f"{10 * math.log10(255 ** 2 / mse):.1f}")
PYEOF
)
  printf "%-5s wall %6.2fs  peak RSS %5d MiB  PSNR vs none %s dB\n" "$q" "$secs" $((kb / 1024)) "$psnr"
done
