//! The fused CUDA backend (`--kernels fused`): each hot operation as one candle `CustomOp` whose `cuda_fwd`
//! launches a Triton kernel compiled ahead of time (sources and interpreter tests under kernels/triton/; the cubins
//! and their manifest are committed with them). This build carries no compiled kernel yet: [`unavailable`] refuses
//! the selection when the edit is planned, before any weight loads, and [`not_built`] is the same refusal for a
//! library caller who gets past the plan. A kernel that lands replaces `not_built` in its operation's arm in
//! [`super`]; operations that keep no fused kernel (the VAE's convolutions and upsampling) never come here.

use candle_core::Device;

/// Whether this build carries the compiled Triton kernels.
pub const BUILT: bool = false;

/// Why `--kernels fused` cannot run on `device`: a one-line message naming the fix, or None when it can.
pub fn unavailable(device: &Device) -> Option<String> {
    if !device.is_cuda() {
        return Some(
            "--kernels fused needs a CUDA device; on the CPU use --kernels auto (its own f32 kernels) or composed"
                .into(),
        );
    }
    (!BUILT).then(|| {
        "--kernels fused needs the compiled Triton kernels (kernels/triton/), which this build does not carry; \
         use --kernels auto (candle's composed path on CUDA)"
            .into()
    })
}

/// The error of an operation whose fused kernel this build lacks.
pub fn not_built(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("--kernels fused: this build has no fused {op} kernel; use --kernels auto"))
}
