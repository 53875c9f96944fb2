#!/usr/bin/env bash
# Issue 19 on a GPU machine, in one command (NVIDIA H100/H200, driver 580 = CUDA 13, no network there):
#   (a) kernels  every fused Triton kernel against the f64 reference and candle's composition at odd sizes, in f32,
#                bf16 and f16, and the cases that must fall back to the composition (gpu_check kernels);
#   (b) parity   the tiny fixtures of tests/fixtures/cases.json (45 dB bar, f32) with --kernels composed and fused
#                on CUDA, and `smoke` in bf16 (30 dB bar against diffusers' bf16 image) with both;
#   (c) bench    fused vs composed time per kernel at FLUX.1-dev 1024² shapes (B=1, S=4608, H=24, D=128, 3072 wide);
#   (f) profile  (ncu) a fused step's GPU time by kernel at 1024² on a 2+4-block FLUX.1-dev, into profile.txt;
#   (e) modes    one tiny case of each other mode on the device: Stable Diffusion (four pipelines, a q8_0 UNet),
#                Fill, Control, Redux, a step cache, Kontext, klein (scripts/gpu_cases.py), f32 against diffusers;
#   (d) full     full-size FLUX.1-dev with random weights (make_full.py) at 1024²: ours composed, ours fused and
#                diffusers bf16: per-step time, whole-process time, peak GPU memory.
# Prints one table, exits 1 on any failure (2 when it cannot start). Keeps summary.txt (the table), summary.tsv
# (its rows as they come, for a run cut short), log.txt, kernels.json, full.json and the full-size images in $OUT
# (the device tool's folder) or /tmp/gpu-check.
#
# On the device (after scripts/gpu-prepare.sh here):  bash scripts/gpu-check.sh    with carry [".gpu"]
# Dry run here: GPU_CHECK_DRY=1 bash scripts/gpu-check.sh — the same flow on the CPU with the CPU build (cargo
#   build --release --bins --example gpu_check): --device cpu; --kernels auto in place of fused (the CPU backend
#   runs the same custom ops, their cpu_fwd), plus a check that fused is refused there; the tiny model in place of
#   the full-size one; diffusers only if DIFFUSERS_PYTHON names a python with diffusers and torch.
# env: STEPS (28) and STRENGTH (0.9) for (d); DIFFUSERS=0 skips diffusers' run in (d) (a rerun that only
#   needs ours); DEADLINE (540): seconds after the start past which a phase that
#   would not fit is skipped (reported as skip, not failure); OUT; GPU_DIR (.gpu).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1
DRY=${GPU_CHECK_DRY:-}
G=${GPU_DIR:-$ROOT/.gpu}
O=${OUT:-/tmp/gpu-check}
W=$(mktemp -d /tmp/gpu-check-work.XXXX)
mkdir -p "$O"
: > "$O/summary.tsv"
LOG=$O/log.txt
: > "$LOG"
DEADLINE=${DEADLINE:-540}
STEPS=${STEPS:-28}
STRENGTH=${STRENGTH:-0.9}
FAILED=0

say() { echo "$*" | tee -a "$LOG" >&2; }
# add PHASE ITEM VALUE VERDICT (pass | FAIL | info | skip)
add() {
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "${3//$'\n'/ \/ }" "$4" >> "$O/summary.tsv"
  [ "$4" = FAIL ] && FAILED=1
  say "[$1] $2: $3 -> $4"
}
left() { echo $((DEADLINE - SECONDS)); }
# A command's timeout: N seconds, but never past the deadline plus the margin the device call keeps (60 s), so a
# late phase is cut short rather than the whole call, and the table still prints.
budget() {
  local b=$(($(left) + 40))
  [ "$b" -lt "$1" ] || b=$1
  [ "$b" -gt 10 ] || b=10
  echo "$b"
}
now() { date +%s.%N; }
# PSNR of two PNGs through the helper binary ("inf" when identical).
psnr() { "$GC" psnr "$1" "$2" 2>>"$LOG" || echo 0; }
at_least() { awk -v v="$1" -v bar="$2" 'BEGIN { exit !(v == "inf" || v + 0 >= bar) }'; }

setup() {
  if [ -n "$DRY" ]; then
    DEV=cpu KF=auto SMOKE_DT=f32
    local t=${CARGO_TARGET_DIR:-$ROOT/target}/release
    FI=${FI:-$t/flux-img2img} GC=${GC:-$t/examples/gpu_check}
    [ -x "$FI" ] && [ -x "$GC" ] || { say "dry run: build first: cargo build --release --bins --example gpu_check"; exit 2; }
    say "dry run on the CPU: $FI"
    return
  fi
  DEV=cuda KF=fused SMOKE_DT=bf16
  [ -f "$G/flux-img2img.xz" ] && [ -f "$G/gpu_check.xz" ] || { say "missing $G: run scripts/gpu-prepare.sh here first"; exit 2; }
  mkdir -p /tmp/gpu-bin
  xz -dc "$G/flux-img2img.xz" > /tmp/gpu-bin/flux-img2img && xz -dc "$G/gpu_check.xz" > /tmp/gpu-bin/gpu_check || exit 2
  chmod +x /tmp/gpu-bin/*
  FI=/tmp/gpu-bin/flux-img2img GC=/tmp/gpu-bin/gpu_check
  if ls "$G"/whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/whl/*.whl >> "$LOG" 2>&1
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # cuBLAS / cuRAND / cudart 13 from the image's Python wheels; the driver brings libcuda.so.1.
  local lib
  lib=$(python3 -c 'import nvidia,os;print(os.path.join(list(nvidia.__path__)[0],"cu13","lib"))' 2>/dev/null)
  export LD_LIBRARY_PATH=${lib}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # candle's own kernels ship as PTX the driver compiles on first load: cache it for the later processes.
  export CUDA_CACHE_PATH=/tmp/cuda-cache CUDA_CACHE_MAXSIZE=1073741824
  add setup gpu "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)" info
}

# (a) and (c): the helper's rows and benchmark, from its JSON.
phase_kernels() {
  local bench=full rc
  [ -n "$DRY" ] && bench=small
  rm -f "$O/kernels.json"
  timeout 300 "$GC" kernels --device "$DEV" --bench "$bench" --json "$O/kernels.json" > "$W/kernels.txt" 2>&1
  rc=$?
  cat "$W/kernels.txt" >> "$LOG"
  if [ ! -s "$O/kernels.json" ]; then
    add kernels "gpu_check kernels" "exit $rc: $(tail -1 "$W/kernels.txt")" FAIL
    return
  fi
  python3 - "$O/kernels.json" > "$W/kernels.tsv" << 'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
e = lambda v: "-" if v is None else f"{v:.1e}"
bad = [c for c in r["checks"] if not c["passed"]]
for c in bad:
    print(f"kernels\t{c['op']} {c['dtype']} {c['case']}\tfused {e(c['fused_err'])}, composed {e(c['composed_err'])}, bound {c['bound']:.1e}: {c['note']}\tFAIL")
fused = sum(1 for c in r["checks"] if c["note"] == "fused")
print(f"kernels\t{len(r['checks'])} cases (f32, bf16, f16)\t{fused} launched fused, {len(bad)} failed\t{'FAIL' if bad else 'pass'}")
for b in r["bench"]:
    f = b["fused_ms"]
    v = f"fused {f:.3f} ms, composed {b['composed_ms']:.3f} ms ({b['composed_ms'] / f:.2f}x)" if f else f"composed {b['composed_ms']:.3f} ms; {b['note']}"
    print(f"bench\t{b['op']} {b['shape']}\t{v}\t{'info' if f else 'FAIL'}")
EOF
  while IFS=$'\t' read -r p i v d; do add "$p" "$i" "$v" "$d"; done < "$W/kernels.tsv"
  [ "$rc" -eq 0 ] || add kernels "gpu_check kernels" "exit $rc" FAIL
}

# One fixture case through the CLI with --kernels $1; $2.. the case's fields.
parity_case() {
  local k=$1 name=$2 model=$3 image=$4 prompt=$5 w=$6 h=$7 strength=$8 steps=$9 seed=${10} msl=${11} guidance=${12} expected=${13}
  local out=$W/parity-$name-$k.png rc db note
  local args=(--model "$model" --image "$image" --prompt "$prompt" --width "$w" --height "$h" --strength "$strength"
    --steps "$steps" --seed "$seed" --max-sequence-length "$msl" --rng torch-cpu --device "$DEV" --dtype f32
    --kernels "$k" -o "$out")
  [ -n "$guidance" ] && args+=(--guidance "$guidance")
  timeout 180 "$FI" "${args[@]}" > /dev/null 2> "$W/err"
  rc=$?
  cat "$W/err" >> "$LOG"
  if [ "$rc" -ne 0 ]; then
    add parity "$name --kernels $k" "exit $rc: $(grep -m1 error "$W/err")" FAIL
    return
  fi
  db=$(psnr "$out" "$expected")
  note=$(grep -o 'fused kernels:.*' "$W/err")
  if ! at_least "$db" 45; then
    add parity "$name --kernels $k" "$db dB < 45" FAIL
  elif [ "$k" = fused ] && ! grep -q ' launched' <<< "$note"; then
    add parity "$name --kernels $k" "$db dB but no kernel launched: $note" FAIL
  elif [ "$k" = fused ] && grep -qE 'cannot launch|not loaded|layout the kernel' <<< "$note"; then
    # Fallbacks by design (tiny-schnell's head dim 8, widths not a multiple of 16) pass; a kernel that would not
    # load or launch, or a layout the dispatcher should have made contiguous, does not.
    add parity "$name --kernels $k" "$db dB; unexpected fallbacks: ${note#fused kernels: }" FAIL
  else
    add parity "$name --kernels $k" "$db dB${note:+; ${note#fused kernels: }}" pass
  fi
}

# (b): every fixture case with both selections, then smoke with both, then (dry run) the CPU's refusal.
phase_parity() {
  local fx=$ROOT/tests/fixtures k
  python3 - "$fx" > "$W/cases.tsv" << 'EOF'
import json, sys
f = sys.argv[1]
for c in json.load(open(f + "/cases.json"))["cases"]:
    g = "" if c.get("guidance") is None else str(c["guidance"])
    print("\x1f".join([c["name"], f"{f}/{c['model']}", f"{f}/images/{c['image']}", c["prompt"], str(c["width"]),
                     str(c["height"]), str(c["strength"]), str(c["steps"]), str(c["seed"]),
                     str(c["max_sequence_length"]), g, f"{f}/{c['expected']}"]))
EOF
  # Fields split on \x1f, not tabs: read collapses runs of whitespace separators, and guidance may be empty.
  while IFS=$'\x1f' read -r name model image prompt w h strength steps seed msl guidance expected; do
    for k in composed "$KF"; do
      parity_case "$k" "$name" "$model" "$image" "$prompt" "$w" "$h" "$strength" "$steps" "$seed" "$msl" "$guidance" "$expected" < /dev/null
    done
  done < "$W/cases.tsv"
  for k in composed "$KF"; do
    timeout 180 "$FI" smoke --device "$DEV" --dtype "$SMOKE_DT" --kernels "$k" --json > "$W/smoke.json" 2>> "$LOG"
    local v
    v=$(python3 - "$W/smoke.json" 2> /dev/null << 'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
verdict = "pass" if r["passed"] else "FAIL"
db = "inf" if r["psnr_db"] is None else f"{r['psnr_db']:.1f}"  # identical images: serde writes inf as null
print(f"{db} dB (bar {r['threshold_db']}), runs {r['first_run_s']:.1f} s / {r['second_run_s']:.1f} s\t{verdict}")
EOF
    )
    [ -n "$v" ] || v="no report (see log)	FAIL"
    add parity "smoke --dtype $SMOKE_DT --kernels $k" "${v%%$'\t'*}" "${v##*$'\t'}"
  done
  if [ -n "$DRY" ]; then
    local msg rc
    msg=$("$FI" --model "$fx/tiny-dev" --image "$fx/images/$(ls "$fx/images" | head -1)" --prompt x --device cpu \
      --kernels fused --dry-run 2>&1 > /dev/null)
    rc=$?
    if [ "$rc" -eq 2 ] && [ "$(wc -l <<< "$msg")" -eq 1 ]; then
      add parity "--kernels fused on the CPU" "exit 2: $msg" pass
    else
      add parity "--kernels fused on the CPU" "exit $rc: $msg" FAIL
    fi
  fi
}

# (e): one case of each other mode on the device (f32, --kernels auto), against its diffusers reference at 45 dB
# (60 for DDIM, as on the CPU): Stable Diffusion (SD 1.x, SD 2.x v-prediction with DDIM, SDXL img2img, the
# 9-channel inpainting UNet, a q8_0 UNet), a q8_0 FLUX.1 transformer and T5, FLUX Fill outpainting, Control with Canny, Redux, a step
# cache, Kontext, klein reference editing and a klein LoRA, two ControlNets at once, an XLabs ControlNet, a
# Control LoRA and --control-from depth (Depth Anything on the device). The flags come from scripts/gpu_cases.py, which follows
# the Rust tests' case_args.
phase_modes() {
  local fx=$ROOT/tests/fixtures name exp rest args out rc db bar
  python3 "$ROOT/scripts/gpu_cases.py" "$fx" sd:sd15-t2i-default sd:sd2-t2i-vpred-ddim sd:sdxl-i2i-dpm \
    sd:sd15-inpaint-9ch sd:sdxl-t2i-euler fill:fill-outpaint control:control-img2img-canny redux:redux-img2img-two \
    cache:cache-dev-fb-a modes:kontext-dev klein:klein-ref klein:klein-lora-peft modes:t2i-dev \
    controlnet:controlnet-multi controlnet:controlnet-xlabs-img2img control-lora:control-lora-img2img \
    control-depth:depth-control-img2img > "$W/modes.tsv" 2>> "$LOG" || {
    add modes "gpu_cases.py" "failed (see log)" FAIL
    return
  }
  while IFS=$'\x1f' read -r name exp rest; do
    [ "$(left)" -lt 15 ] && { add modes "$name" "not enough time left ($(left) s)" skip; continue; }
    IFS=$'\x1f' read -r -a args <<< "$rest"
    bar=45
    [[ $name == *ddim* ]] && bar=60
    # Quantized on the device, the bar ~4 dB under the CPU's figure at q8_0: 48.2 dB (the SDXL UNet) and 34.0 dB
    # (tiny-dev's transformer and T5, whose narrow rows lose more than real ones).
    case $name in
      sd:sdxl-t2i-euler) args+=(--quantize q8_0); bar=44; name="$name --quantize q8_0" ;;
      modes:t2i-dev) args+=(--quantize q8_0); bar=30; name="$name --quantize q8_0" ;;
      control-lora:*) args+=(--lora "$fx/loras/control-lora-bfl.safetensors") ;;
      control-depth:*) args+=(--control-from depth --depth-model "$fx/tiny-depth-anything") ;;
    esac
    out=$W/mode-${name//[^A-Za-z0-9]/_}.png
    timeout "$(budget 120)" "$FI" "${args[@]}" --device "$DEV" --dtype f32 -o "$out" > /dev/null 2> "$W/err" < /dev/null
    rc=$?
    cat "$W/err" >> "$LOG"
    if [ "$rc" -ne 0 ]; then
      add modes "$name" "exit $rc: $(grep -m1 error "$W/err")" FAIL
      continue
    fi
    db=$(psnr "$out" "$exp")
    if at_least "$db" "$bar"; then add modes "$name" "$db dB (bar $bar)" pass; else add modes "$name" "$db dB < $bar" FAIL; fi
  done < "$W/modes.tsv"
}

# (f): where a fused step's GPU time goes, by kernel, under Nsight Compute (when `ncu` is there and can read the
# counters): FLUX.1-dev's shapes at 1024² with 2 double and 4 single blocks (the full model's 1:2), 1 and 3 steps;
# the difference is two steps' kernels, so text encoding and the VAE drop out. profile.txt lists the kernels by time
# per step and sums them by kind (cuBLAS GEMMs, our Triton kernels, candle's own kernels).
phase_profile() {
  local ncu m=/tmp/prof-model n
  TOOLS=${TOOLS:-${GPU_TOOLS:-$G}}
  [ -f "$TOOLS/make_full.py" ] || TOOLS=$ROOT/../shared/tools/gpu
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda/bin/ncu 2> /dev/null | head -1)
  [ -n "$ncu" ] || { add profile "ncu" "not installed" skip; return; }
  [ -n "$DRY" ] && { add profile "ncu" "dry run" skip; return; }
  timeout "$(budget 90)" python3 "$TOOLS/make_full.py" $m "$ROOT/tests/fixtures/tiny-dev" --layers 2 4 --t5-layers 1 \
    >> "$LOG" 2>&1 || { add profile "make_full.py --layers 2 4" "failed (see log)" FAIL; return; }
  for n in 1 3; do
    timeout "$(budget 150)" "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
      "$FI" --model $m --prompt "a fox" --width 1024 --height 1024 --steps $n --guidance 3.5 --seed 1 --device cuda \
      --dtype bf16 -o "$W/prof-$n.png" > "$W/ncu-$n.csv" 2>> "$LOG" || {
      add profile "ncu, $n step(s)" "exit $? (see log)" FAIL
      return
    }
  done
  cp "$W/ncu-1.csv" "$W/ncu-3.csv" "$O/" 2> /dev/null
  python3 - "$W/ncu-1.csv" "$W/ncu-3.csv" > "$O/profile.txt" 2>> "$LOG" << 'EOF2' || { add profile "parse" "failed (see log)" FAIL; return; }
import csv, collections, sys
def load(path):
    rows = [r for r in csv.reader(l for l in open(path) if l.startswith('"'))]
    head = rows[0]
    name, val = head.index("Kernel Name"), head.index("gpu__time_duration.sum")
    unit = rows[1][val] if len(rows) > 1 and not rows[1][val].replace(".", "").replace(",", "").isdigit() else ""
    scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit, 1e-3)
    t, c = collections.Counter(), collections.Counter()
    for r in rows[1:]:
        try:
            v = float(r[val].replace(",", ""))
        except ValueError:
            continue
        t[r[name][:90]] += v * scale
        c[r[name][:90]] += 1
    return t, c
(t1, c1), (t3, c3) = load(sys.argv[1]), load(sys.argv[2])
step = {k: (t3[k] - t1.get(k, 0)) / 2 for k in t3}
calls = {k: (c3[k] - c1.get(k, 0)) / 2 for k in c3}
step = {k: v for k, v in step.items() if calls[k] > 0}
total = sum(step.values())
kind = lambda k: ("gemm" if any(s in k.lower() for s in ("gemm", "cutlass", "xmma", "cublas", "sm90", "sm80"))
                  else "ours" if any(s in k for s in ("attention", "layer_norm_modulate", "gated_residual", "qk_norm_rope",
                                                     "heads_first", "gelu", "swiglu", "group_norm"))
                  else "candle")
by = collections.Counter()
for k, v in step.items():
    by[kind(k)] += v
print(f"per step (2 double + 4 single blocks, 1024², bf16, fused): {total:.0f} us of kernels")
print("by kind: " + ", ".join(f"{k} {v:.0f} us ({100 * v / total:.1f} %)" for k, v in by.most_common()))
for k, v in sorted(step.items(), key=lambda kv: -kv[1])[:40]:
    print(f"{v:10.1f} us {100 * v / total:5.1f} % {calls[k]:6.0f} calls  {k}")
EOF2
  add profile "kernel time per step by kind" "$(sed -n 2p "$O/profile.txt")" info
  add profile "top kernels" "$(sed -n 3,7p "$O/profile.txt" | awk '{$1=$1};1' | tr '\n' ';')" info
}

# Samples nvidia-smi's memory.used every 100 ms into $1 until stop_mem.
start_mem() {
  MP=
  [ -z "$DRY" ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$1" 2>/dev/null &
  MP=$!
}
stop_mem() {
  [ -n "${MP:-}" ] && kill "$MP" 2> /dev/null && wait "$MP" 2> /dev/null
  [ -s "$1" ] && sort -n "$1" | tail -1 || echo "-"
}

# A row of (d), kept in order with the rows its helpers compute; added to the table at the end of the phase.
row() { printf 'full\t%s\t%s\t%s\n' "$1" "${2//$'\n'/ \/ }" "$3" >> "$W/full.tsv"; }

# One full-size run of ours with --kernels $1: rows for time per step, whole process and memory.
full_ours() {
  local k=$1 t0 t1 rc peak
  start_mem "$W/mem-$k"
  t0=$(now)
  timeout "$(budget 300)" "$FI" --model "$M" --image "$IN" --prompt "$PROMPT" --strength "$STRENGTH" --steps "$STEPS" \
    --guidance 3.5 --seed 100 --rng torch-cpu --width "$SIZE" --height "$SIZE" --device "$DEV" --dtype "$DT" \
    --kernels "$k" --json -o "$W/ours-$k.png" > "$W/ours-$k.json" 2> "$W/ours-$k.err"
  rc=$?
  t1=$(now)
  peak=$(stop_mem "$W/mem-$k")
  cat "$W/ours-$k.err" >> "$LOG"
  if [ "$rc" -ne 0 ]; then
    row "ours --kernels $k" "exit $rc: $(grep -m1 error "$W/ours-$k.err")" FAIL
    return
  fi
  python3 - "$W/ours-$k.json" "$W/ours-$k.err" "$t0" "$t1" "$peak" "$k" >> "$W/full.tsv" << 'EOF'
import json, re, sys
r = json.loads(open(sys.argv[1]).read().splitlines()[-1])
err, t0, t1, smi, k = open(sys.argv[2]).read(), float(sys.argv[3]), float(sys.argv[4]), sys.argv[5], sys.argv[6]
t, n = r["timings"], r["steps_run"]
steps = [(int(a), float(b)) for a, _, b in re.findall(r"denoise: step (\d+)/(\d+) \(([\d.]+)s/step\)", err)]
steady = (steps[-1][0] * steps[-1][1] - steps[0][1]) / (steps[-1][0] - 1) if len(steps) > 1 else t["denoise"] / n
gpu = r.get("peak_gpu_mib")
print(f"full\tours --kernels {k}: per step\t{steady:.3f} s after the first ({t['denoise'] / n:.3f} s with it, {n} steps)\tinfo")
print(f"full\tours --kernels {k}: whole process\t{t1 - t0:.1f} s (load {t['load_transformer']:.1f} s, text {t['text_encoding']:.1f} s, decode {t['vae_decode']:.1f} s)\tinfo")
print(f"full\tours --kernels {k}: peak GPU memory\tnvidia-smi {smi} MiB, stage samples {gpu if gpu is None else round(gpu)} MiB, host RSS {r['peak_rss_mib']:.0f} MiB\tinfo")
st = r.get("gpu_mib_by_stage")
if st:
    print(f"full\tours --kernels {k}: GPU memory by stage\t" + ", ".join(f"{s} {v:.0f}" for s, v in st.items()) + " MiB\tinfo")
m = re.search(r"fused kernels: .*", err)
if m:
    print(f"full\tours --kernels {k}: kernels\t{m.group(0)[15:]}\t{'info' if ' launched' in m.group(0) and not ' 0 launched' in m.group(0) else 'FAIL'}")
EOF
  cp "$W/ours-$k.png" "$O/ours-$k.png" 2> /dev/null
}

full_diffusers() {
  local py=${DIFFUSERS_PYTHON:-python3} t0 t1 peak
  if [ -n "$DRY" ] && [ -z "${DIFFUSERS_PYTHON:-}" ]; then
    row diffusers "dry run without DIFFUSERS_PYTHON" skip
    return
  fi
  start_mem "$W/mem-diff"
  t0=$(now)
  timeout "$(budget 300)" "$py" "$TOOLS/run_diffusers.py" "$M" "$IN" "$W/diffusers.png" "$PROMPT" "$STRENGTH" "$STEPS" 3.5 100 \
    "$SIZE" "$SIZE" > "$W/diffusers.out" 2>> "$LOG"
  t1=$(now)
  peak=$(stop_mem "$W/mem-diff")
  python3 - "$W/diffusers.out" "$t0" "$t1" "$peak" >> "$W/full.tsv" << 'EOF' || row diffusers "no result (see log)" FAIL
import json, sys
r = json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])
t0, t1, smi = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"full\tdiffusers bf16: per step\t{r['step_median_s']:.3f} s median ({r['steps']} steps)\tinfo")
print(f"full\tdiffusers bf16: whole process\t{t1 - t0:.1f} s (import {r['import_s']} s, load {r['load_s']} s, run {r['run_s']} s)\tinfo")
print(f"full\tdiffusers bf16: peak GPU memory\tnvidia-smi {smi} MiB, torch max allocated {r['peak_alloc_gib'] * 1024:.0f} MiB\tinfo")
EOF
  cp "$W/diffusers.png" "$O/diffusers.png" 2> /dev/null
}

# (d): the model (made on the GPU, or the tiny one in a dry run), the input, both of ours, diffusers.
phase_full() {
  TOOLS=${GPU_TOOLS:-$G}
  [ -f "$TOOLS/make_full.py" ] || TOOLS=$ROOT/../shared/tools/gpu
  PROMPT="a photograph of a red fox standing in fresh snow, golden hour light, highly detailed fur, 85mm lens"
  : > "$W/full.tsv"
  if [ -n "$DRY" ]; then
    M=$ROOT/tests/fixtures/tiny-dev SIZE=64 DT=f32 IN=$ROOT/tests/fixtures/images/$(ls "$ROOT/tests/fixtures/images" | head -1)
  else
    M=/tmp/full SIZE=1024 DT=bf16 IN=$W/in.png
    if [ ! -f $M/transformer/config.json ]; then
      timeout "$(budget 300)" python3 "$TOOLS/make_full.py" $M "$ROOT/tests/fixtures/tiny-dev" >> "$LOG" 2>&1 || {
        add full "make_full.py" "failed (see log)" FAIL
        return
      }
    fi
    python3 -c "
import numpy as np; from PIL import Image; y,x=np.mgrid[0:$SIZE,0:$SIZE]
Image.fromarray(np.stack([x*255//$SIZE,y*255//$SIZE,((x//64+y//64)%2)*200],-1).astype(np.uint8)).save('$IN')" || return
  fi
  for k in composed "$KF"; do
    if [ "$(left)" -lt 150 ]; then
      row "ours --kernels $k" "not enough time left ($(left) s)" skip
      continue
    fi
    full_ours "$k"
  done
  if [ "${DIFFUSERS:-1}" = 0 ]; then
    row diffusers "not run (DIFFUSERS=0)" skip
  elif [ "$(left)" -lt 120 ]; then
    row diffusers "not enough time left ($(left) s)" skip
  else
    full_diffusers
  fi
  if [ -f "$W/ours-composed.png" ] && [ -f "$W/ours-$KF.png" ] && [ "$KF" != composed ]; then
    row "ours $KF vs composed image" "$(psnr "$W/ours-composed.png" "$W/ours-$KF.png") dB (random weights: informative)" info
  fi
  if [ -f "$W/ours-composed.png" ] && [ -f "$W/diffusers.png" ]; then
    row "ours composed vs diffusers image" "$(psnr "$W/ours-composed.png" "$W/diffusers.png") dB (informative)" info
  fi
  while IFS=$'\t' read -r p i v d; do add "$p" "$i" "$v" "$d"; done < "$W/full.tsv"
  python3 -c "
import json, sys
rows = [l.rstrip('\n').split('\t') for l in open('$W/full.tsv')]
json.dump([dict(zip(['phase', 'item', 'value', 'verdict'], r)) for r in rows], open('$O/full.json', 'w'), indent=1)"
}

setup
phase_kernels
phase_parity
if [ "$(left)" -lt 200 ]; then
  add full "full-size benchmark" "not enough time left ($(left) s)" skip
else
  phase_full
fi
phase_modes
if [ "$(left)" -lt 60 ]; then
  add profile "ncu" "not enough time left ($(left) s)" skip
else
  phase_profile
fi

{
  printf '\n%-8s %-52s %-7s %s\n' phase item result value
  while IFS=$'\t' read -r p i v d; do printf '%-8s %-52s %-7s %s\n' "$p" "$i" "$d" "$v"; done < "$O/summary.tsv"
  printf '\ngpu-check: %s in %d s%s\n' "$([ $FAILED -eq 0 ] && echo 'all passed' || echo 'FAILURES')" "$SECONDS" \
    "${DRY:+ (dry run on the CPU)}"
} | tee "$O/summary.txt"
rm -rf "$W"
exit $FAILED
