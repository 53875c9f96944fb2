#!/usr/bin/env python3
"""Writes a pipeline's T5 encoder (text_encoder_2) as GGUF the way the community T5 files are laid out
(city96's t5-v1_1-xxl-encoder-Q8_0.gguf: llama.cpp's `t5encoder` names such as enc.blk.0.attn_q.weight, matrices
quantised, norms and the relative attention bias in F32). The names come from gguf-py's own tensor map, so the
fixture is independent of the Rust table that reads it.

usage: python scripts/convert_t5_to_gguf.py PIPELINE_DIR OUT.gguf [Q8_0|Q4_0|Q5_0]
"""
import json
import sys
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file


def load_component(folder: Path, stem: str) -> dict:
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        out = {}
        for f in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            out.update(load_file(folder / f))
        return out
    return load_file(folder / f"{stem}.safetensors")


def main():
    src, dst = Path(sys.argv[1]), sys.argv[2]
    qtype = getattr(gguf.GGMLQuantizationType, sys.argv[3] if len(sys.argv) > 3 else "Q8_0")
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    cfg = json.loads((src / "text_encoder_2" / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, cfg["num_layers"])
    w = gguf.GGUFWriter(dst, arch="t5encoder")
    n_q = 0
    for name, t in sorted(load_component(src / "text_encoder_2", "model").items()):
        module, param = name.rsplit(".", 1)
        mapped = names.get_name(module)
        if mapped is None:
            if module == "encoder.embed_tokens":
                continue  # the same tensor as `shared` (tied), as the community files leave it out
            raise SystemExit(f"no llama.cpp name for {name}")
        t = t.astype(np.float32)
        full = f"{mapped}.{param}"
        if t.ndim == 2 and t.shape[1] % block == 0 and "rel_b" not in mapped:
            w.add_tensor(full, gguf.quants.quantize(t, qtype), raw_dtype=qtype)
            n_q += 1
        else:
            w.add_tensor(full, t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{dst}: {n_q} matrices in {qtype.name}")


if __name__ == "__main__":
    main()
