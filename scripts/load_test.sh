#!/usr/bin/env bash
# Load test of `flux-img2img serve` on loopback: N requests (default 200) from C concurrent clients (default 16)
# against tiny-schnell, through the waiting A1111 endpoint. Checks that every request got exactly one answer, that
# every 200's image equals the CLI's for the same request byte for byte, and prints p50/p99 latency and throughput.
# Usage: scripts/load_test.sh [N] [C]   (builds nothing: uses $CARGO_TARGET_DIR or target/, debug binary)
set -euo pipefail
n=${1:-200}
c=${2:-16}
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${CARGO_TARGET_DIR:-$root/target}/debug/flux-img2img
model=$root/tests/fixtures/tiny-schnell
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

"$bin" serve --port 0 --model "$model" --max-queue "$n" 2>"$work/server.log" &
pid=$!
until grep -q "listening on" "$work/server.log"; do sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/server.log")
body='{"prompt": "a boat", "width": 64, "height": 48, "seed": 11}'
(cd "$work" && "$bin" --model "$model" --prompt "a boat" --width 64 --height 48 --seed 11 -o cli.png >/dev/null 2>&1)
expected=$(base64 -w0 "$work/cli.png")

start=$(date +%s.%N)
seq "$n" | xargs -P "$c" -I{} sh -c \
  "curl -s -o '$work/r{}.json' -w '%{http_code} %{time_total}\n' -H 'Content-Type: application/json' -d '$body' '$url/sdapi/v1/txt2img' > '$work/t{}'"
end=$(date +%s.%N)

answers=$(cat "$work"/t* | wc -l)
ok=$(cat "$work"/t* | awk '$1 == 200' | wc -l)
right=0
for f in "$work"/r*.json; do
  if python3 -c "import json,sys; sys.exit(json.load(open('$f'))['images'][0] != '$expected')" 2>/dev/null; then
    right=$((right + 1))
  fi
done
cat "$work"/t* | awk '{print $2}' | sort -n > "$work/lat"
p50=$(awk -v n="$answers" 'NR == int(n * 0.50 + 0.5) {print}' "$work/lat")
p99=$(awk -v n="$answers" 'NR == int(n * 0.99 + 0.5) {print}' "$work/lat")
secs=$(echo "$end - $start" | bc)
echo "requests $n, clients $c: answers $answers, 200s $ok, images equal to the CLI's $right"
echo "latency p50 ${p50}s p99 ${p99}s; ${secs}s total, $(echo "scale=1; $ok / $secs" | bc) images/s"
[ "$answers" -eq "$n" ] && [ "$ok" -eq "$right" ]
