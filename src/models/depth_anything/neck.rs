//! The DPT-style neck and the depth head: reassemble (CLS dropped, 1×1 projection, resize), fusion stages
//! upsampling bilinearly with aligned corners, and the head (conv, upsample, conv, ReLU, conv, ReLU or sigmoid).

use super::*;
use crate::error::Result;
use candle_core::{Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig, VarBuilder};
/// A reassemble layer's resize: ConvTranspose2d(k = s = factor), identity, or a 3×3 conv with stride 1/factor.
pub(super) enum Resample {
    Up(ConvTranspose2d),
    Same,
    Down(Conv2d),
}

pub(super) struct Reassemble {
    pub(super) projection: Conv2d,
    pub(super) resample: Resample,
}

impl Reassemble {
    pub(super) fn new(cfg: &DepthAnythingConfig, channels: usize, factor: f64, vb: VarBuilder) -> Result<Self> {
        let projection =
            candle_nn::conv2d(cfg.reassemble_hidden_size, channels, 1, Default::default(), vb.pp("projection"))?;
        let resample = if factor > 1.0 {
            let k = factor as usize;
            let c = ConvTranspose2dConfig { stride: k, ..Default::default() };
            Resample::Up(candle_nn::conv_transpose2d(channels, channels, k, c, vb.pp("resize"))?)
        } else if factor == 1.0 {
            Resample::Same
        } else {
            let c = Conv2dConfig { stride: (1.0 / factor) as usize, padding: 1, ..Default::default() };
            Resample::Down(candle_nn::conv2d(channels, channels, 3, c, vb.pp("resize"))?)
        };
        Ok(Self { projection, resample })
    }

    /// [B, 1 + ph·pw, D] → [B, C, h, w]: the CLS token dropped (transformers' `hidden_state[:, 1:]`), the tokens
    /// laid out as the patch grid, projected and resized.
    pub(super) fn forward(&self, x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
        let (b, n, d) = x.dims3()?;
        let x = x.narrow(1, 1, n - 1)?.reshape((b, ph, pw, d))?.permute((0, 3, 1, 2))?.contiguous()?;
        let x = self.projection.forward(&x)?;
        match &self.resample {
            Resample::Up(c) => c.forward(&x),
            Resample::Same => Ok(x),
            Resample::Down(c) => c.forward(&x),
        }
    }
}

pub(super) fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> candle_core::Result<Conv2d> {
    candle_nn::conv2d(cin, cout, 3, Conv2dConfig { padding: 1, ..Default::default() }, vb)
}

/// `DepthAnythingPreActResidualLayer`: x + conv2(relu(conv1(relu(x)))).
pub(super) struct Residual {
    pub(super) conv1: Conv2d,
    pub(super) conv2: Conv2d,
}

impl Residual {
    pub(super) fn new(f: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self { conv1: conv3x3(f, f, vb.pp("convolution1"))?, conv2: conv3x3(f, f, vb.pp("convolution2"))? })
    }

    pub(super) fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.conv2.forward(&self.conv1.forward(&x.relu()?)?.relu()?)? + x
    }
}

pub(super) struct Fusion {
    pub(super) projection: Conv2d,
    pub(super) residual1: Residual,
    pub(super) residual2: Residual,
}

impl Fusion {
    pub(super) fn new(f: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            projection: candle_nn::conv2d(f, f, 1, Default::default(), vb.pp("projection"))?,
            residual1: Residual::new(f, vb.pp("residual_layer1"))?,
            residual2: Residual::new(f, vb.pp("residual_layer2"))?,
        })
    }

    /// `DepthAnythingFeatureFusionLayer.forward`: the skip feature (bilinearly resized, corners not aligned, if its
    /// shape differs) through residual 1 added, residual 2, then bilinear with aligned corners to `size` or ×2,
    /// then the 1×1 projection.
    pub(super) fn forward(
        &self,
        x: &Tensor,
        skip: Option<&Tensor>,
        size: Option<(usize, usize)>,
    ) -> candle_core::Result<Tensor> {
        let mut x = x.clone();
        if let Some(skip) = skip {
            let (_, _, h, w) = x.dims4()?;
            let skip = match skip.dims() == x.dims() {
                true => skip.clone(),
                false => resize(skip, h, w, Interp::Bilinear { align_corners: false })?,
            };
            x = (x + self.residual1.forward(&skip)?)?;
        }
        let x = self.residual2.forward(&x)?;
        let (_, _, h, w) = x.dims4()?;
        let (h, w) = size.unwrap_or((2 * h, 2 * w));
        self.projection.forward(&resize(&x, h, w, Interp::Bilinear { align_corners: true })?)
    }
}

pub(super) struct Head {
    pub(super) conv1: Conv2d,
    pub(super) conv2: Conv2d,
    pub(super) conv3: Conv2d,
    pub(super) metric: bool,
    pub(super) max_depth: f64,
    pub(super) patch: usize,
}

impl Head {
    pub(super) fn new(cfg: &DepthAnythingConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let f = cfg.fusion_hidden_size;
        Ok(Self {
            conv1: conv3x3(f, f / 2, vb.pp("conv1"))?,
            conv2: conv3x3(f / 2, cfg.head_hidden_size, vb.pp("conv2"))?,
            conv3: candle_nn::conv2d(cfg.head_hidden_size, 1, 1, Default::default(), vb.pp("conv3"))?,
            metric: cfg.depth_estimation_type == "metric",
            max_depth: cfg.max_depth.unwrap_or(1.0),
            patch: cfg.patch_size,
        })
    }

    /// [B, F, h, w] → [B, ph·patch, pw·patch].
    pub(super) fn forward(&self, x: &Tensor, ph: usize, pw: usize) -> candle_core::Result<Tensor> {
        let x = self.conv1.forward(x)?;
        let x = resize(&x, ph * self.patch, pw * self.patch, Interp::Bilinear { align_corners: true })?;
        let x = self.conv3.forward(&self.conv2.forward(&x)?.relu()?)?;
        let x = match self.metric {
            true => candle_nn::ops::sigmoid(&x)?,
            false => x.relu()?,
        };
        (x * self.max_depth)?.squeeze(1)
    }
}
