//! FLUX.2's latent numerics, as pure functions: pictures → references and sources at the sizes the klein pipelines
//! use; VAE means → patchified, batch-norm-normalised tokens with their 4-axis position ids; noise drawn directly in
//! the patchified layout; an inpainting mask on the token grid; and the way back for decoding.
//!
//! As diffusers' `Flux2KleinPipeline` / `Flux2KleinInpaintPipeline`: patchify = 2×2 space-to-channel (channel
//! c·4 + dy·2 + dx), normalise `(x − running_mean) / sqrt(running_var + eps)`, tokens in row-major order with ids
//! (t, row, col, 0), reference i at t = 10·(i+1); text ids (0, 0, 0, l).

use crate::image_io;
use crate::rng::{NoiseSource, Precision};
use candle_core::{DType, Device, Result, Tensor};
use image::{GrayImage, RgbImage};

/// The area above which klein shrinks an input first (1024²).
const MAX_AREA: u64 = 1024 * 1024;

/// `_resize_to_target_area`: an image above 1024² pixels scaled (Lanczos) to about that area, else as it is.
fn cap_area(img: RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    if (w as u64) * (h as u64) <= MAX_AREA {
        return img;
    }
    let (nw, nh) = capped_size((w, h));
    image_io::resize_lanczos(&img, nw, nh)
}

/// The size [`cap_area`] gives: `int(side · sqrt(1024² / area))` (Python's truncation).
fn capped_size((w, h): (u32, u32)) -> (u32, u32) {
    if (w as u64) * (h as u64) <= MAX_AREA {
        return (w, h);
    }
    let s = (MAX_AREA as f64 / (w as f64 * h as f64)).sqrt();
    ((w as f64 * s) as u32, (h as f64 * s) as u32)
}

/// The size an input of `size` is worked at: area-capped, each side floored to `multiple`.
pub fn working_size(size: (u32, u32), multiple: u32) -> (u32, u32) {
    let (w, h) = capped_size(size);
    (w - w % multiple, h - h % multiple)
}

/// A reference as the pipeline takes it: area-capped, then centre-cropped (no resampling) to sides floored to
/// `multiple`.
pub fn prepare_reference(img: RgbImage, multiple: u32) -> RgbImage {
    let img = cap_area(img);
    let (w, h) = working_size(img.dimensions(), multiple);
    let (left, top) = ((img.width() - w) / 2, (img.height() - h) / 2);
    image::imageops::crop_imm(&img, left, top, w, h).to_image()
}

/// The image to inpaint (or edit with `--strength`): area-capped, then resized (Lanczos, aspect not kept) to sides
/// floored to `multiple`.
pub fn prepare_source(img: RgbImage, multiple: u32) -> RgbImage {
    let img = cap_area(img);
    let (w, h) = working_size(img.dimensions(), multiple);
    if img.dimensions() == (w, h) {
        img
    } else {
        image_io::resize_lanczos(&img, w, h)
    }
}

/// The VAE's batch-norm statistics as the pipeline applies them: mean and `sqrt(var + eps)`, [1, C, 1, 1].
pub struct BnStats {
    pub mean: Tensor,
    pub std: Tensor,
}

impl BnStats {
    /// From `running_mean` / `running_var` [C] (f32): the std is computed in f32, then both cast to `dtype`.
    pub fn new(running_mean: &Tensor, running_var: &Tensor, eps: f64, dtype: DType) -> Result<Self> {
        let c = running_mean.dim(0)?;
        let std = (running_var.to_dtype(DType::F32)? + eps)?.sqrt()?;
        Ok(Self {
            mean: running_mean.to_dtype(dtype)?.reshape((1, c, 1, 1))?,
            std: std.to_dtype(dtype)?.reshape((1, c, 1, 1))?,
        })
    }

    pub fn normalise(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)
    }

    pub fn denormalise(&self, x: &Tensor) -> Result<Tensor> {
        x.broadcast_mul(&self.std)?.broadcast_add(&self.mean)
    }
}

/// `_patchify_latents`: [B, C, H, W] → [B, 4C, H/2, W/2], channel c·4 + dy·2 + dx.
pub fn patchify(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    // [B, C, H/2, 2, W/2, 2] → [B, C, 2, 2, H/2, W/2]
    x.reshape((b, c, h / 2, 2, w / 2, 2))?.permute((0, 1, 3, 5, 2, 4))?.reshape((b, c * 4, h / 2, w / 2))
}

/// `_unpatchify_latents`, the inverse of [`patchify`].
pub fn unpatchify(x: &Tensor) -> Result<Tensor> {
    let (b, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    // [B, C, 2, 2, H, W] → [B, C, H, 2, W, 2]
    x.reshape((b, c, 2, 2, h, w))?.permute((0, 1, 4, 2, 5, 3))?.reshape((b, c, h * 2, w * 2))
}

/// `_pack_latents`: [B, C, h, w] → [B, h·w, C], token i·w + j.
pub fn pack(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()
}

/// The inverse of [`pack`] for an `h`×`w` grid.
pub fn unpack(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (b, _, c) = x.dims3()?;
    x.transpose(1, 2)?.reshape((b, c, h, w))
}

/// Ids (t, row, col, 0) of an `h`×`w` token grid, [1, h·w, 4].
pub fn grid_ids(t: f32, h: usize, w: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let mut v = Vec::with_capacity(h * w * 4);
    for r in 0..h {
        for c in 0..w {
            v.extend_from_slice(&[t, r as f32, c as f32, 0.0]);
        }
    }
    Tensor::from_vec(v, (1, h * w, 4), dev)?.to_dtype(dtype)
}

/// Ids (0, 0, 0, l) of `len` text tokens, [1, len, 4].
pub fn text_ids(len: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let v: Vec<f32> = (0..len).flat_map(|l| [0.0, 0.0, 0.0, l as f32]).collect();
    Tensor::from_vec(v, (1, len, 4), dev)?.to_dtype(dtype)
}

/// The one noise draw of a klein pipeline: [1, C, h, w] in the patchified layout (C = 4 × latent channels).
pub fn noise(
    gen: &mut dyn NoiseSource,
    (c, h, w): (usize, usize, usize),
    dtype: DType,
    dev: &Device,
) -> Result<Tensor> {
    let values = gen.randn(c * h * w, Precision::of(dtype));
    Tensor::from_vec(values, (1, c, h, w), dev)?.to_dtype(dtype)
}

/// A VAE mean [1, C, H, W] → normalised patchified latents [1, 4C, H/2, W/2].
pub fn latents_of(mean: &Tensor, bn: &BnStats) -> Result<Tensor> {
    bn.normalise(&patchify(mean)?)
}

/// Conditioning images as tokens: each one's normalised latents packed, reference i at t = 10·(i+1), all
/// concatenated along the sequence; (tokens [1, M, C], ids [1, M, 4]).
pub fn reference_tokens(latents: &[Tensor]) -> Result<(Tensor, Tensor)> {
    let mut tokens = Vec::with_capacity(latents.len());
    let mut ids = Vec::with_capacity(latents.len());
    for (i, l) in latents.iter().enumerate() {
        let (_, _, h, w) = l.dims4()?;
        tokens.push(pack(l)?);
        ids.push(grid_ids(10.0 * (i + 1) as f32, h, w, l.dtype(), l.device())?);
    }
    Ok((Tensor::cat(&tokens, 1)?, Tensor::cat(&ids, 1)?))
}

/// The binary mask at the working size (255 = repaint) on the token grid: `F.interpolate(bilinear)` by a factor
/// `scale` averages the two middle pixels of each cell in each axis (values 0, ¼, ½, ¾, 1), repeated over the
/// `channels` of the latents, [1, h·w, channels].
pub fn mask_tokens(m: &GrayImage, scale: u32, channels: usize, dtype: DType, dev: &Device) -> Result<Tensor> {
    let (h, w) = (m.height() / scale, m.width() / scale);
    let (a, b) = (scale / 2 - 1, scale / 2);
    let on = |x: u32, y: u32| if m.get_pixel(x, y).0[0] >= 128 { 1f32 } else { 0.0 };
    let mut v = Vec::with_capacity((h * w) as usize);
    for i in 0..h {
        for j in 0..w {
            let (y0, y1, x0, x1) = (i * scale + a, i * scale + b, j * scale + a, j * scale + b);
            let top = 0.5 * on(x0, y0) + 0.5 * on(x1, y0);
            let bottom = 0.5 * on(x0, y1) + 0.5 * on(x1, y1);
            v.push(0.5 * top + 0.5 * bottom);
        }
    }
    let n = v.len();
    Tensor::from_vec(v, (1, n, 1), dev)?.repeat((1, 1, channels))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patchify_round_trip_and_channel_order() {
        let x = Tensor::arange(0f32, 2.0 * 4.0 * 6.0, &Device::Cpu).unwrap().reshape((1, 2, 4, 6)).unwrap();
        let p = patchify(&x).unwrap();
        assert_eq!(p.dims(), &[1, 8, 2, 3]);
        // pixel (c=1, y=3, x=4) → channel 1·4 + 1·2 + 0, position (1, 2)
        let v: Vec<Vec<Vec<f32>>> = p.squeeze(0).unwrap().to_vec3().unwrap();
        assert_eq!(v[6][1][2], (24 + 3 * 6 + 4) as f32);
        let back = unpatchify(&p).unwrap();
        assert_eq!(
            back.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn sizes_follow_the_pipeline() {
        assert_eq!(working_size((100, 70), 16), (96, 64));
        // Python's int(side · sqrt(1024² / area)) for these sizes.
        for (size, capped) in [
            ((1100, 1000), (1073, 976)),
            ((2000, 1000), (1448, 724)),
            ((4000, 3000), (1182, 886)),
            ((1025, 1024), (1024, 1023)),
            ((3000, 333), (3000, 333)), // under 1024² pixels: kept
            ((1024, 1024), (1024, 1024)),
        ] {
            assert_eq!(capped_size(size), capped, "{size:?}");
        }
        assert_eq!(working_size((2000, 1000), 16), (1440, 720));
    }

    #[test]
    fn mask_cells_average_their_middle_pixels() {
        let mut m = GrayImage::new(32, 16);
        m.put_pixel(8, 7, image::Luma([255]));
        m.put_pixel(8, 8, image::Luma([255]));
        for y in 0..16 {
            m.put_pixel(16 + 7, y, image::Luma([255]));
        }
        let t = mask_tokens(&m, 16, 1, DType::F32, &Device::Cpu).unwrap();
        assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap(), vec![0.5, 0.5]);
    }
}
