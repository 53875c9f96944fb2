#!/usr/bin/env bash
# What scripts/bench_cpu.sh and scripts/bench_sd_cpu.sh share (sourced, not run): `measure` times one whole process
# with GNU time into "label seconds maxrss_kb", `summarize` prints the medians of $W/results.txt, their ratios and
# the PSNR between $W/rust.png and $W/diffusers.png. Both read W (the work folder) and PY (the reference python).
measure() { # label, command...: prints "label seconds maxrss_kb"
  local label=$1; shift
  /usr/bin/time -f "%e %M" -o "$W/time.txt" "$@" >/dev/null 2>"$W/$label.err" || { cat "$W/$label.err" >&2; exit 1; }
  echo "$label $(cat "$W/time.txt")"
}
summarize() {
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
}
