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
from convert_to_gguf import write_gguf
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
    cfg = json.loads((src / "text_encoder_2" / "config.json").read_text())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.T5ENCODER, cfg["num_layers"])
    tensors = []
    for name, t in sorted(load_component(src / "text_encoder_2", "model").items()):
        module, param = name.rsplit(".", 1)
        mapped = names.get_name(module)
        if mapped is None:
            if module == "encoder.embed_tokens":
                continue  # the same tensor as `shared` (tied), as the community files leave it out
            raise SystemExit(f"no llama.cpp name for {name}")
        tensors.append((f"{mapped}.{param}", t))
    # The relative attention bias stays F32, as in the community files.
    n_q = write_gguf(dst, "t5encoder", tensors, qtype, lambda name: "rel_b" not in name)
    print(f"{dst}: {n_q} matrices in {qtype.name}")


if __name__ == "__main__":
    main()
