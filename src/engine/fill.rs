//! FLUX.1 Fill's extra input, as `FluxFillPipeline.prepare_mask_latents` builds it. Takes the working-size input,
//! its binary mask and the VAE's posterior of the masked input; gives, per image token, the packed latents of the
//! masked input followed by the packed pixel mask (each token's 2×2 latent cells × f×f pixels), which the
//! transformer reads beside the noisy latents at every step.

use super::edit;
use crate::error::Result;
use crate::image_io;
use candle_core::{DType, Device, Tensor};
use image::{GrayImage, RgbImage};

/// The input in [-1, 1] with the repainted pixels zeroed (`init_image * (1 - mask)`).
pub fn masked_pixels(img: &RgbImage, mask: &GrayImage, dev: &Device) -> Result<Tensor> {
    let keep = pixel_mask(mask, dev)?.affine(-1.0, 1.0)?;
    Ok(image_io::to_tensor(img, dev)?.broadcast_mul(&keep)?)
}

/// The binary mask as [1, 1, H, W] of 0/1 (255 = repaint).
fn pixel_mask(mask: &GrayImage, dev: &Device) -> Result<Tensor> {
    let (w, h) = (mask.width() as usize, mask.height() as usize);
    let data: Vec<f32> = mask.pixels().map(|p| if p.0[0] >= 128 { 1.0 } else { 0.0 }).collect();
    Ok(Tensor::from_vec(data, (1, 1, h, w), dev)?)
}

/// The pixel mask on the packed token grid [1, (h/2)(w/2), 4f²]: each latent cell's f×f pixels become its
/// channels (row-major within the cell), then 2×2 cells pack into a token as latents do.
pub fn mask_tokens(mask: &GrayImage, f: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let m = pixel_mask(mask, dev)?;
    let (_, _, hp, wp) = m.dims4()?;
    let (h, w) = (hp / f, wp / f);
    let cells = m.reshape((1, h, f, w, f))?.permute((0, 2, 4, 1, 3))?.reshape((1, f * f, h, w))?;
    Ok(edit::pack(&cells)?.to_dtype(dtype)?)
}

/// The masked input's latents `z` (a posterior sample in latent space, the generator's next draw, as diffusers'
/// `retrieve_latents` takes it) packed, followed by the mask tokens: [1, N, 4C + 4f²].
pub fn channels(z: &Tensor, mask: &GrayImage, f: usize) -> Result<Tensor> {
    let mask = mask_tokens(mask, f, z.dtype(), z.device())?;
    Ok(Tensor::cat(&[&edit::pack(z)?, &mask], 2)?)
}
