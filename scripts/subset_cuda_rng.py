#!/usr/bin/env python3
"""Subsets of the torch CUDA randn vectors an H100 produced (../shared/rng-torch-cuda) for the Rust tests.

Each output file holds little-endian (u32 index, value bits) pairs: f32 values as f32, bf16 values widened to f32.
Small files are kept whole; large ones keep every 13th element, and the 1280x1280 tensor also every 3rd element
past the GPU's thread count (132*2048), where the multi-element-per-thread mapping starts.

Usage: python scripts/subset_cuda_rng.py ../shared/rng-torch-cuda tests/fixtures/rng-torch-cuda
"""
import json
import struct
import sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
index = json.loads((src / "index.json").read_text())
threads = index["sm_count"] * index["max_threads_per_sm"]
for f in index["files"]:
    raw = (src / f["file"]).read_bytes()
    if f["dtype"] == "float32":
        vals = struct.unpack(f"<{len(raw) // 4}f", raw)
    else:
        bits = struct.unpack(f"<{len(raw) // 2}H", raw)
        vals = [struct.unpack("<f", struct.pack("<I", b << 16))[0] for b in bits]
    n = len(vals)
    keep = [i for i in range(n) if n <= 4096 or i % 13 == 0 or (i >= threads and i % 3 == 0)]
    out = b"".join(struct.pack("<If", i, vals[i]) for i in keep)
    (dst / (f["file"] + ".pairs")).write_bytes(out)
    f["kept"] = len(keep)
(dst / "index.json").write_text(json.dumps(index, indent=1) + "\n")
