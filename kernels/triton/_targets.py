"""What `scripts/kernels.py build` compiles for, and how. Part of the hashed sources: changing a target, an option or
an environment knob here makes the committed artifacts stale, exactly like changing a kernel.

Not a kernel: no @triton.jit in this file.
"""

# The build refuses any other Triton: the PTX and cubins below are what this exact version generates.
TRITON_VERSION = "3.9.0"

# One compiled artifact per (kernel, variant, target). `capability` is what Triton compiles for (90 means sm_90a,
# Hopper's arch-specific target, whose cubin loads on compute capability 9.0 only). `config` names the block /
# warp / stage class a kernel's config() is asked for; `max_shared` is the opt-in limit of dynamic shared memory
# per block on that class of GPU (bytes), which the build checks every variant against.
TARGETS = [
    {"arch": "sm80", "capability": 80, "emit": "cubin", "config": "sm80", "max_shared": 166912},  # A100, A30
    {"arch": "sm86", "capability": 86, "emit": "cubin", "config": "sm86", "max_shared": 101376},  # RTX 30xx, A10, A40
    {"arch": "sm89", "capability": 89, "emit": "cubin", "config": "sm89", "max_shared": 101376},  # RTX 40xx, L4, L40
    {"arch": "sm90", "capability": 90, "emit": "cubin", "config": "sm90", "max_shared": 232448},  # H100, H200, GH200
    # PTX for sm_80, JIT-compiled by the driver on any GPU ≥ 8.0 without a cubin here (Blackwell: sm_100, sm_120…);
    # the small-shared-memory config so that it fits the 99 KiB of consumer parts.
    {"arch": "ptx", "capability": 80, "emit": "ptx", "config": "ptx", "max_shared": 101376},
]

# Triton compile options, the same for every artifact.
#  - ptx_version 80 (PTX ISA 8.0 = CUDA 12.0): the lowest ISA that has sm_90a, so the PTX fallback JITs on any
#    CUDA 12 driver (R525+), not only on drivers as new as the bundled ptxas.
#  - enable_fp_fusion: FMA contraction on (Triton 3.9's default, set explicitly because 3.10 flips it).
OPTIONS = {"ptx_version": 80, "enable_fp_fusion": True}

# Environment for the compiler process.
#  - TRITON_DISABLE_LINE_INFO: no .loc / .file debug lines, so the artifacts hold no absolute source paths and do
#    not depend on where the repository is checked out (and are smaller).
#  - Both ptxas roles point at the bundled CUDA 12.9 ptxas (Triton would use its CUDA 13 ptxas-blackwell for sm_90),
#    so every cubin is a CUDA 12 cubin that R525+ drivers load; see README.md.
ENV = {
    "TRITON_DISABLE_LINE_INFO": "1",
    "TRITON_DEFAULT_FP_FUSION": "1",
}
PTXAS = "ptxas"  # file name in triton/backends/nvidia/bin/, used for every target
