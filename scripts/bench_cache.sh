#!/usr/bin/env bash
# Step caches on the CPU, one run, same machine: flux-img2img (release) without a cache and with each --cache,
# beside diffusers + torch with the same hook (FirstBlockCacheConfig / TaylorSeerCacheConfig), f32, the mid-sized
# random pipeline of scripts/make_bench_pipeline.py (≈70M-parameter transformer), text-to-image 256x256, 28 steps,
# guidance 3.5, seed 42, 64 prompt tokens.
# Whole-process wall time (GNU time) and the denoising time each reports, REPS alternating runs, medians; PSNR of
# each cached image against the same program's uncached one, and of ours against diffusers' with the same cache.
#   usage: scripts/bench_cache.sh [PYTHON] [REPS]     (PYTHON needs scripts/requirements.txt installed)
#   BENCH_CACHES="fbcache:0.6 taylorseer" overrides the settings measured.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-python3}
REPS=${2:-3}
W=${BENCH_DIR:-bench-out}
CACHES=(none ${BENCH_CACHES:-fbcache:0.3 fbcache:0.5 taylorseer taylorseer:2,4})
mkdir -p "$W/cache"
[ -d "$W/bench-70m" ] || "$PY" scripts/make_bench_pipeline.py "$W"
cargo build --release -q
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (apt-get install time)" >&2; exit 1; }
PROMPT="a watercolor painting of a cat on a red sofa"
ARGS=(--model "$W/bench-70m" --prompt "$PROMPT" --width 256 --height 256 --steps 28 --guidance 3.5 --seed 42
      --max-sequence-length 64 --rng torch-cpu --device cpu --dtype f32)
: > "$W/cache/results.txt"
for i in $(seq "$REPS"); do
  for c in "${CACHES[@]}"; do
    tag=${c//[:,]/_}
    flag=(); [ "$c" = none ] || flag=(--cache "$c")
    /usr/bin/time -f "%e" -o "$W/cache/time.txt" ./target/release/flux-img2img "${ARGS[@]}" "${flag[@]}" --json -q \
      --output "$W/cache/rust-$tag.png" > "$W/cache/rust-$tag.json"
    denoise=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["timings"]["denoise"])' "$W/cache/rust-$tag.json")
    echo "rust $c $(cat "$W/cache/time.txt") $denoise" | tee -a "$W/cache/results.txt"
    /usr/bin/time -f "%e" -o "$W/cache/time.txt" "$PY" scripts/run_diffusers_cache.py "$W/bench-70m" \
      "$W/cache/diffusers-$tag.png" "$PROMPT" 28 3.5 42 256 256 64 "$c" > "$W/cache/diffusers.out" 2>/dev/null
    echo "diffusers $c $(cat "$W/cache/time.txt") $(awk '/^denoise/ {print $2}' "$W/cache/diffusers.out")" \
      | tee -a "$W/cache/results.txt"
  done
done
"$PY" - "$W/cache" "${CACHES[@]}" <<'PYEOF'
import json, math, statistics, sys
import numpy as np
from PIL import Image
w, caches = sys.argv[1], sys.argv[2:]
rows = [l.split() for l in open(f"{w}/results.txt")]
med = lambda who, c, i: statistics.median(float(r[i]) for r in rows if r[0] == who and r[1] == c)
tag = lambda c: c.replace(":", "_").replace(",", "_")
img = lambda who, c: np.asarray(Image.open(f"{w}/{who}-{tag(c)}.png"), float)
def psnr(a, b):
    mse = ((a - b) ** 2).mean()
    return "inf" if mse == 0 else f"{10 * math.log10(255 ** 2 / mse):.1f}"
base_r, base_d = med("rust", "none", 2), med("diffusers", "none", 2)
print("| cache | ours: wall s | ours: denoise s | speed-up | diffusers: wall s | diffusers: denoise s | ours vs diffusers "
      "| PSNR vs uncached: ours / diffusers dB | ours vs diffusers, same cache dB | skipped |")
print("|---|---|---|---|---|---|---|---|---|---|")
for c in caches:
    rw, rd, dw, dd = med("rust", c, 2), med("rust", c, 3), med("diffusers", c, 2), med("diffusers", c, 3)
    rec = json.load(open(f"{w}/rust-{tag(c)}.json")).get("cache_skipped")
    skipped = f"{rec['skipped']}/{rec['evaluations']} {rec['unit']}" if rec else "-"
    print(f"| {c} | {rw:.2f} | {rd:.2f} | {base_r / rw:.2f}x | {dw:.2f} | {dd:.2f} | {dw / rw:.2f}x faster "
          f"| {psnr(img('rust', c), img('rust', 'none'))} / {psnr(img('diffusers', c), img('diffusers', 'none'))} "
          f"| {psnr(img('rust', c), img('diffusers', c))} | {skipped} |")
PYEOF
