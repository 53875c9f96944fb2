#!/usr/bin/env bash
# Edit every image of a folder with one prompt, in one process (the model loads once), resumable, with one JSON
# line per image for later processing. Exit code: 0 all written, 1 some failed (the rest are written), 2 usage.
#   examples/batch.sh MODEL IN_DIR OUT_DIR "prompt" [strength]
# On a cluster, add `--shard auto` to a Slurm array job (or `--shard $I/$N` anywhere): each task takes its share.
set -u
model=$1 in=$2 out=$3 prompt=$4 strength=${5:-0.6}
flux-img2img --model "$model" --image "$in" --prompt "$prompt" --strength "$strength" --seed 42 \
  --output-dir "$out" --skip-existing --json > "$out.results.jsonl"
status=$?
# Which files failed, from the JSON lines (jq is optional; grep works as well).
grep '"status":"failed"' "$out.results.jsonl" >&2 || true
exit $status
