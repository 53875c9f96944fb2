#!/usr/bin/env bash
# Prepares here (no GPU, no system CUDA) everything scripts/gpu-check.sh needs on a GPU machine, in .gpu/ (listed in
# .git/info/exclude, so it never lands in a commit but travels when a device call names it in `carry`), and
# prints the device call to make.
#   bash scripts/gpu-prepare.sh          (~12 min cold on 2 cores, ~4 min when target-cuda/ is warm)
# Makes .gpu/:
#   flux-img2img.xz, gpu_check.xz   the CLI and examples/gpu_check.rs built with --features cuda by the shared
#                                   build-cuda.sh (CUDA 13.0 from PyPI, sm_90), stripped, xz-compressed
#   make_full.py, run_diffusers.py  the shared full-size FLUX.1-dev recipe (random weights) and diffusers' timing
#   whl/                            diffusers 0.42.1 and importlib_metadata: the H200 image has torch, transformers,
#                                   huggingface_hub, safetensors, Pillow, numpy and zipp, not these (KINDS.md)
# env: BUILD_CUDA (../shared/tools/build-cuda.sh), GPU_TOOLS (../shared/tools/gpu), CARGO_TARGET_DIR (target-cuda).
# The device tool sends the checkout its session started in: run this there (or copy .gpu/ there) before the call.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BUILD=${BUILD_CUDA:-$ROOT/../shared/tools/build-cuda.sh}
TOOLS=${GPU_TOOLS:-$ROOT/../shared/tools/gpu}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target-cuda}
LIMIT=$((64 * 1024 * 1024))

EXCLUDE=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$EXCLUDE")"
grep -qxF '/.gpu/' "$EXCLUDE" 2> /dev/null || echo '/.gpu/' >> "$EXCLUDE"

bash "$BUILD" --bins --example gpu_check
rm -rf .gpu
mkdir -p .gpu/whl
for bin in flux-img2img examples/gpu_check; do
  name=$(basename "$bin")
  strip -o "/tmp/$name.stripped" "$CARGO_TARGET_DIR/release/$bin"
  xz -T2 -6 -c "/tmp/$name.stripped" > ".gpu/$name.xz"
  rm "/tmp/$name.stripped"
done
cp "$TOOLS/make_full.py" "$TOOLS/run_diffusers.py" .gpu/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl \
  diffusers==0.42.1 importlib_metadata==10.2.0

# What travels: tracked and untracked-not-ignored files, plus the carried .gpu/.
tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2> /dev/null | awk '{s += $1} END {print s + 0}')
carried=$(du -sb .gpu | cut -f1)
total=$((tree + carried))
printf 'travels: working tree %.1f MiB + .gpu %.1f MiB = %.1f MiB (limit 64 MiB)\n' \
  "$(echo "$tree / 1048576" | bc -l)" "$(echo "$carried / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "over the device tool's 64 MiB: ignore or remove large untracked files first" >&2
  exit 1
fi
ls -l .gpu .gpu/whl
cat << 'EOT'

Ready. Make ONE device call (about 6-9 minutes on an H200; it prints one table and exits 1 on any failure):
  run  command="bash scripts/gpu-check.sh"  carry=[".gpu"]  timeout_s=600
then give_back unless rerunning at once. Its files come back under files_at: summary.txt, summary.tsv, log.txt,
kernels.json, full.json, ours-composed.png, ours-fused.png, diffusers.png.
EOT
