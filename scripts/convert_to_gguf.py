#!/usr/bin/env python3
"""Writes a BFL-named FLUX transformer (safetensors, e.g. from convert_to_bfl.py) as GGUF the way the community
files (FLUX.1-dev-Q8_0.gguf, ...) are laid out: BFL tensor names, 2-D weight matrices quantised, biases and norm
scales kept in F32, dimensions in GGML order. Uses llama.cpp's gguf-py for the format and the quantisation.

usage: python scripts/convert_to_gguf.py IN.safetensors OUT.gguf [Q8_0|Q4_0|Q5_0]
"""
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file


def write_gguf(dst, arch: str, tensors, qtype, quantize) -> int:
    """Writes (name, array) pairs as GGUF in f32, quantising to `qtype` the 2-D ones whose rows are whole blocks
    and that `quantize(name)` accepts; returns how many were quantised."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    w = gguf.GGUFWriter(dst, arch=arch)
    n_q = 0
    for name, t in tensors:
        t = t.astype(np.float32)
        if t.ndim == 2 and t.shape[1] % block == 0 and quantize(name):
            w.add_tensor(name, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
            n_q += 1
        else:
            w.add_tensor(name, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return n_q


def main():
    src, dst = sys.argv[1], sys.argv[2]
    qtype = getattr(gguf.GGMLQuantizationType, sys.argv[3] if len(sys.argv) > 3 else "Q8_0")
    tensors = sorted(load_file(src).items())
    n_q = write_gguf(dst, "flux", tensors, qtype, lambda name: name.endswith(".weight"))
    print(f"{dst}: {n_q} matrices in {qtype.name}")


if __name__ == "__main__":
    main()
