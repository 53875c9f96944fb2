#!/usr/bin/env bash
# Edit every image of a folder with one prompt; a failing file is reported and the loop goes on.
#   examples/batch.sh MODEL_DIR IN_DIR OUT_DIR "prompt" [strength]
set -u
model=$1 in=$2 out=$3 prompt=$4 strength=${5:-0.6}
mkdir -p "$out"
failed=0
for f in "$in"/*.{png,jpg,jpeg,webp}; do
  [ -e "$f" ] || continue
  name=$(basename "${f%.*}")
  if ! flux-img2img --model "$model" --image "$f" --prompt "$prompt" --strength "$strength" --seed 42 -q \
       --output "$out/$name.png"; then
    echo "failed: $f" >&2
    failed=1
  fi
done
exit $failed
