//! The fused CUDA backend (`--kernels fused`): each hot operation as one candle `CustomOp` whose `cuda_fwd`
//! launches a Triton kernel compiled ahead of time (sources, interpreter tests, cubins and their manifest under
//! kernels/triton/; its README gives each kernel's contract). No operation has its launcher in this build yet:
//! [`unavailable`] refuses the selection when the edit is planned, before any weight loads, and [`not_built`] is
//! the same refusal for a library caller who gets past the plan. A launcher that lands replaces `not_built` in its
//! operation's arm in [`super`] (and [`BUILT`] turns true once every operation FLUX runs has one); the operations
//! that keep no fused kernel (the VAE's convolutions and upsampling) never come here.

use candle_core::Device;

/// Whether this build can launch the Triton kernels of every operation FLUX runs through [`super`].
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
        "--kernels fused needs the Triton kernels (kernels/triton/) launched from this binary, which this build \
         cannot do yet; use --kernels auto (candle's composed path on CUDA)"
            .into()
    })
}

/// The error of an operation whose fused kernel this build cannot launch.
pub fn not_built(op: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "--kernels fused: this build cannot launch a fused {op} kernel; use --kernels auto"
    ))
}
