#!/usr/bin/env bash
# Fuzz the readers of untrusted input (tests/fuzz: GGUF and safetensors headers, configs, manifests, PNG records,
# masks) for about SECS seconds: the proptest targets are run again and again with fresh random seeds and
# FUZZ_CASES cases each, each pass under a time limit so a hang fails too.
#   usage: bash scripts/fuzz.sh [SECS=60] [CASES_PER_PASS=500]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
cases=${2:-500}
cargo test --locked --release --test fuzz --no-run -q 2>/dev/null || cargo test --locked --release --test fuzz --no-run
end=$((SECONDS + secs))
passes=0
while [ $SECONDS -lt $end ]; do
  left=$((end - SECONDS + 60))
  FUZZ_CASES=$cases timeout "$left" cargo test --locked --release -q --test fuzz 2>&1 | grep -vE '^(running|$)' || {
    echo "fuzz: a pass failed or hung (see above)" >&2
    exit 1
  }
  passes=$((passes + 1))
done
echo "fuzz: $passes passes of $cases cases per target, no failure"
