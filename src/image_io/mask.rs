//! Inpainting masks: a file (or the input's alpha channel) → a binary mask at the working size, exactly as
//! diffusers' `mask_processor` prepares it: the same crop as the image, a Lanczos resize in the mask's own colour,
//! PIL's luma conversion, then white (≥ 128) = repaint, black = keep. Also PIL's `GaussianBlur` for `--mask-blur`.

use super::{load_rgb_as, load_upright, resize_lanczos, Role};
use crate::error::{Error, Result};
use image::{GrayImage, RgbImage};
use std::path::Path;

/// PIL's `convert("L")`: ITU-R 601 weights in 16-bit fixed point, rounded.
pub fn luma(img: &RgbImage) -> GrayImage {
    let mut out = GrayImage::new(img.width(), img.height());
    for (o, p) in out.pixels_mut().zip(img.pixels()) {
        let [r, g, b] = p.0.map(u32::from);
        o.0 = [((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8];
    }
    out
}

/// A grey image as RGB with equal channels (resizing it as RGB equals resizing it as L, and `luma` gives it back).
pub fn grey_to_rgb(img: &GrayImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let v = img.get_pixel(x, y).0[0];
        image::Rgb([v, v, v])
    })
}

/// The mask of `path`: its RGB pixels (alpha ignored), or with `alpha` the transparency of the input image
/// (transparent = repaint, as an eraser leaves it).
pub fn load(path: &Path, alpha: bool) -> Result<RgbImage> {
    if !alpha {
        return load_rgb_as(path, Role::Mask);
    }
    let img = load_upright(path, Role::Input)?;
    if !img.color().has_alpha() {
        return Err(Error::image(path, "has no alpha channel for --mask alpha; give a mask file with --mask MASK.png"));
    }
    let rgba = img.to_rgba8();
    Ok(RgbImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let v = 255 - rgba.get_pixel(x, y).0[3];
        image::Rgb([v, v, v])
    }))
}

/// White = 1 (repaint) where L ≥ 128, as `do_binarize` (v/255 ≥ 0.5) decides on 8-bit values.
pub fn binarize(l: &GrayImage) -> GrayImage {
    GrayImage::from_fn(l.width(), l.height(), |x, y| image::Luma([if l.get_pixel(x, y).0[0] >= 128 { 255 } else { 0 }]))
}

/// The mask at the working size: resized like the image (Lanczos, in RGB), to L, binarized.
pub fn prepare(mask: &RgbImage, width: u32, height: u32) -> GrayImage {
    let resized = if mask.dimensions() == (width, height) { mask.clone() } else { resize_lanczos(mask, width, height) };
    binarize(&luma(&resized))
}

/// 255 − v everywhere.
pub fn invert(img: &mut RgbImage) {
    img.pixels_mut().for_each(|p| p.0 = p.0.map(|v| 255 - v));
}

/// Whether any pixel is set (an empty mask would leave the image as it is).
pub fn any(mask: &GrayImage) -> bool {
    mask.pixels().any(|p| p.0[0] > 0)
}

/// PIL's `ImageFilter.GaussianBlur(radius)`: three box blurs per axis whose (fractional) width matches the
/// Gaussian's variance, in 8-bit fixed point, horizontal passes first.
pub fn gaussian_blur(img: &RgbImage, radius: f32) -> RgbImage {
    if radius <= 0.0 {
        return img.clone();
    }
    // Beyond a few image sizes every box is the whole line; the cap only keeps the integer arithmetic in range.
    let radius = radius.min(MAX_BLUR);
    let r = box_radius(radius, 3);
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut planes: Vec<Vec<u8>> = (0..3).map(|c| img.pixels().map(|p| p.0[c]).collect()).collect();
    for plane in planes.iter_mut() {
        for _ in 0..3 {
            for row in plane.chunks_mut(w) {
                let line = row.to_vec();
                box_line(&line, row, r);
            }
        }
        for _ in 0..3 {
            for x in 0..w {
                let col: Vec<u8> = (0..h).map(|y| plane[y * w + x]).collect();
                let mut out = vec![0u8; h];
                box_line(&col, &mut out, r);
                (0..h).for_each(|y| plane[y * w + x] = out[y]);
            }
        }
    }
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb([planes[0][i], planes[1][i], planes[2][i]])
    })
}

/// The largest blur radius computed as asked (pixels); larger ones blur as this one.
pub const MAX_BLUR: f32 = 1.0e6;

/// The fractional box radius whose `passes` box blurs have the variance of a Gaussian of `radius` (Gwosdek et
/// al., "Theoretical foundations of Gaussian convolution by extended box filtering", as PIL computes it).
fn box_radius(radius: f32, passes: u32) -> f32 {
    let sigma2 = radius * radius / passes as f32;
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0) * (l + 1.0)));
    l + a
}

/// One box blur of radius `r` (integer part full weight, the fractional rest on the two far pixels) along a line,
/// edges extended; 24-bit fixed-point weights, rounded.
fn box_line(src: &[u8], out: &mut [u8], r: f32) {
    let n = src.len() as i64;
    let ri = r as i64;
    let whole = ((1u64 << 24) as f32 / (r * 2.0 + 1.0)) as u64;
    let frac = ((1u64 << 24) - (ri as u64 * 2 + 1) * whole) / 2;
    let at = |i: i64| src[i.clamp(0, n - 1) as usize] as u64;
    // Window sum of the pixels -ri-1 .. ri-1, edges repeated; counted rather than walked, so a radius far beyond
    // the line costs no more than one inside it.
    let inside: u64 = src[..(ri.min(n)) as usize].iter().map(|&v| v as u64).sum();
    let mut acc = (ri as u64 + 1) * at(0) + inside + (ri - n).max(0) as u64 * at(n - 1);
    for x in 0..n {
        acc = acc + at(x + ri) - at(x - ri - 1);
        let bulk = acc * whole + (at(x - ri - 1) + at(x + ri + 1)) * frac;
        out[x as usize] = ((bulk + (1 << 23)) >> 24) as u8;
    }
}

/// A box (x1, y1, x2, y2), ends exclusive.
pub type Region = (u32, u32, u32, u32);

/// diffusers' `get_crop_region`: the bounding box of the mask's non-zero pixels grown by `pad`, then widened or
/// heightened to about the aspect `width/height`, kept inside the image. None when the mask is empty.
pub fn crop_region(mask: &GrayImage, width: u32, height: u32, pad: u32) -> Option<Region> {
    let (w, h) = (mask.width() as i64, mask.height() as i64);
    let set = |x: u32, y: u32| mask.get_pixel(x, y).0[0] != 0;
    let cols: Vec<i64> = (0..w).filter(|&x| (0..h).any(|y| set(x as u32, y as u32))).collect();
    let rows: Vec<i64> = (0..h).filter(|&y| (0..w).any(|x| set(x as u32, y as u32))).collect();
    let (&cx0, &cx1, &cy0, &cy1) = (cols.first()?, cols.last()?, rows.first()?, rows.last()?);
    let pad = pad as i64;
    let (mut x1, mut y1) = ((cx0 - pad).max(0), (cy0 - pad).max(0));
    let (mut x2, mut y2) = ((cx1 + 1 + pad).min(w), (cy1 + 1 + pad).min(h));
    let (rc, rp) = ((x2 - x1) as f64 / (y2 - y1) as f64, width as f64 / height as f64);
    if rc > rp {
        let d = ((x2 - x1) as f64 / rp - (y2 - y1) as f64) as i64;
        grow(&mut y1, &mut y2, d, h);
    } else {
        let d = ((y2 - y1) as f64 * rp - (x2 - x1) as f64) as i64;
        grow(&mut x1, &mut x2, d, w);
    }
    Some((x1 as u32, y1 as u32, x2 as u32, y2 as u32))
}

/// Grows [a, b) by `d` (half before, half after), shifted back inside [0, size).
fn grow(a: &mut i64, b: &mut i64, d: i64, size: i64) {
    *a -= d / 2;
    *b += d - d / 2;
    if *b >= size {
        let over = *b - size;
        (*a, *b) = (*a - over, *b - over);
    }
    if *a < 0 {
        (*b, *a) = (*b - *a, 0);
    }
    *b = (*b).min(size);
}

/// `img` cropped to `r`.
pub fn crop(img: &RgbImage, r: Region) -> RgbImage {
    image::imageops::crop_imm(img, r.0, r.1, r.2 - r.0, r.3 - r.1).to_image()
}

/// diffusers' "fill" resize: the image scaled to fit `width`×`height` (Lanczos), centred on black, the uncovered
/// bands filled by stretching its edge rows (or columns): PIL's bicubic on an empty box gives each band row
/// 1.125·edge − 0.125·next.
pub fn resize_and_fill(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (cw, ch) = (img.width() as u64, img.height() as u64);
    let wider = (width as f64 / height as f64) < cw as f64 / ch as f64;
    let (sw, sh) =
        if wider { (width, (ch * width as u64 / cw) as u32) } else { ((cw * height as u64 / ch) as u32, height) };
    // A sliver of a box (a one-pixel-high region on a wide image) still scales to at least one row or column.
    let (sw, sh) = (sw.max(1), sh.max(1));
    let inner = resize_lanczos(img, sw, sh);
    let mut out = RgbImage::new(width, height);
    let (ox, oy) = (width / 2 - sw / 2, height / 2 - sh / 2);
    image::imageops::replace(&mut out, &inner, ox as i64, oy as i64);
    let edge = |a: &image::Rgb<u8>, b: &image::Rgb<u8>| {
        image::Rgb([0, 1, 2].map(|c| (1.125 * a.0[c] as f64 - 0.125 * b.0[c] as f64).round().clamp(0.0, 255.0) as u8))
    };
    if wider && oy > 0 {
        for x in 0..width {
            let (top, bottom) = (edge(inner.get_pixel(x, 0), inner.get_pixel(x, 1.min(sh - 1))), {
                let (a, b) = (inner.get_pixel(x, sh - 1), inner.get_pixel(x, sh.saturating_sub(2)));
                edge(a, b)
            });
            (0..oy).for_each(|y| out.put_pixel(x, y, top));
            (oy + sh..height).for_each(|y| out.put_pixel(x, y, bottom));
        }
    } else if !wider && ox > 0 {
        for y in 0..height {
            let left = edge(inner.get_pixel(0, y), inner.get_pixel(1.min(sw - 1), y));
            let right = edge(inner.get_pixel(sw - 1, y), inner.get_pixel(sw.saturating_sub(2), y));
            (0..ox).for_each(|x| out.put_pixel(x, y, left));
            (ox + sw..width).for_each(|x| out.put_pixel(x, y, right));
        }
    }
    out
}

/// diffusers' "crop" resize: `img` scaled to cover `width`×`height` (Lanczos) and centred, the excess cut off.
pub fn resize_and_crop(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = (img.width() as u64, img.height() as u64);
    let (sw, sh) = if (width as f64 / height as f64) > iw as f64 / ih as f64 {
        (width, (ih * width as u64 / iw) as u32)
    } else {
        ((iw * height as u64 / ih) as u32, height)
    };
    let inner = resize_lanczos(img, sw.max(1), sh.max(1));
    let mut out = RgbImage::new(width, height);
    image::imageops::replace(&mut out, &inner, width as i64 / 2 - sw as i64 / 2, height as i64 / 2 - sh as i64 / 2);
    out
}

/// `generated` placed over `original` where `mask` is set: `gen·m + orig·(1 − m)` with m = L/255, rounded
/// (diffusers' `apply_overlay`; exact where the mask is 0 or 255).
pub fn overlay(original: &RgbImage, generated: &RgbImage, mask: &GrayImage) -> RgbImage {
    RgbImage::from_fn(original.width(), original.height(), |x, y| {
        let m = mask.get_pixel(x, y).0[0] as u32;
        let (o, g) = (original.get_pixel(x, y).0, generated.get_pixel(x, y).0);
        image::Rgb([0, 1, 2].map(|c| ((g[c] as u32 * m + o[c] as u32 * (255 - m) + 127) / 255) as u8))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luma_matches_pil_weights() {
        let img = RgbImage::from_fn(3, 1, |x, _| match x {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([12, 200, 99]),
        });
        let l: Vec<u8> = luma(&img).into_raw();
        // PIL: Image.new("RGB",…).convert("L") gives 76, 150 and 132 for these.
        assert_eq!(l, vec![76, 150, 132]);
        assert_eq!(luma(&grey_to_rgb(&GrayImage::from_raw(2, 1, vec![7, 200]).unwrap())).into_raw(), vec![7, 200]);
    }

    #[test]
    fn binarize_at_128() {
        let l = GrayImage::from_raw(3, 1, vec![127, 128, 255]).unwrap();
        assert_eq!(binarize(&l).into_raw(), vec![0, 255, 255]);
    }

    #[test]
    fn blur_keeps_flat_images_and_spreads_a_point() {
        let flat = RgbImage::from_pixel(9, 7, image::Rgb([100, 100, 100]));
        assert_eq!(gaussian_blur(&flat, 2.0), flat);
        let mut dot = RgbImage::new(9, 9);
        dot.put_pixel(4, 4, image::Rgb([255, 255, 255]));
        let b = gaussian_blur(&dot, 1.5);
        assert!(
            b.get_pixel(4, 4).0[0] < 255
                && b.get_pixel(5, 4).0[0] > 0
                && b.get_pixel(4, 4).0[0] >= b.get_pixel(5, 5).0[0]
        );
    }

    /// Against Pillow 13's `ImageFilter.GaussianBlur` on the committed blob mask (scripts/make_fixtures.py).
    #[test]
    fn gaussian_blur_matches_pil() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/masks");
        let src = super::super::load_rgb(&dir.join("blob-rgb-100x60.png")).unwrap();
        for r in [2.0f32, 5.0] {
            let want = super::super::load_rgb(&dir.join(format!("blob-rgb-blur{r}.png"))).unwrap();
            let got = gaussian_blur(&src, r);
            let diff = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
            assert_eq!(diff, 0, "radius {r}: {diff} of {} values differ from PIL", got.as_raw().len());
        }
    }
}
