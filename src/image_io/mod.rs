//! Image file ⇄ tensor: decode, choose the output size, centre-crop, Pillow-exact Lanczos resize, [-1,1] tensor;
//! and back from the VAE's output to 8-bit RGB.
//!
//! The resize reproduces `PIL.Image.resize(size, LANCZOS)` bit for bit (docs/spec-flux1-img2img.md §2): separable, horizontal pass
//! first into a uint8 intermediate, 22-bit fixed-point coefficients, a dimension that keeps its size is not
//! filtered. That is what diffusers' `VaeImageProcessor` runs, so inputs match to the last bit.

pub mod canny;
pub mod mask;
pub mod outpaint;

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use image::RgbImage;
use std::path::Path;

/// What an image file is to the edit, for messages ("mask m.png: …", not "input image m.png: …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Input,
    Mask,
    Reference,
    Control,
    Redux,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Input => "input image",
            Role::Mask => "mask",
            Role::Reference => "reference image",
            Role::Redux => "Redux image",
            Role::Control => "control image",
        })
    }
}

/// A reader for a regular image file. Pipes, devices and sockets are refused: reading one can block forever or
/// never end (`/dev/zero`), and standard input has its own spelling (`-`).
fn open(path: &Path, role: Role) -> Result<image::ImageReader<std::io::BufReader<std::fs::File>>> {
    let err = |msg: &str| Error::image_as(role, path, msg);
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(err("no such file")),
        Err(e) => return Err(Error::image_from_as(role, path, "cannot read", e)),
    };
    if meta.is_dir() {
        return Err(err("is a folder, not an image file"));
    }
    if !meta.is_file() {
        return Err(err("is not a regular file (a pipe, device or socket); save the image to a file, or pipe it to -"));
    }
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::image_from_as(role, path, "cannot read", e))?
        .with_guessed_format()
        .map_err(|e| Error::image_from_as(role, path, "cannot read", e))?;
    if reader.format().is_none() {
        return Err(err("not an image (unrecognised format; use PNG, JPEG, WebP, BMP, TIFF or GIF)"));
    }
    Ok(reader)
}

/// Width and height as the picture is shown — after its EXIF orientation, as Pillow's `exif_transpose` that
/// diffusers' `load_image` applies — from the header, without decoding the pixels (dry runs, batch planning).
pub fn dimensions(path: &Path) -> Result<(u32, u32)> {
    dimensions_as(path, Role::Input)
}

pub fn dimensions_as(path: &Path, role: Role) -> Result<(u32, u32)> {
    let header = |e| Error::image_from_as(role, path, "cannot read the header", e);
    let mut decoder = open(path, role)?.into_decoder().map_err(header)?;
    let (w, h) = image::ImageDecoder::dimensions(&decoder);
    let turned = matches!(
        image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms),
        image::metadata::Orientation::Rotate90
            | image::metadata::Orientation::Rotate270
            | image::metadata::Orientation::Rotate90FlipH
            | image::metadata::Orientation::Rotate270FlipH
    );
    Ok(if turned { (h, w) } else { (w, h) })
}

/// Decodes an input image to 8-bit RGB (alpha dropped, grey expanded), upright by its EXIF orientation.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_rgb_as(path, Role::Input)
}

pub fn load_rgb_as(path: &Path, role: Role) -> Result<RgbImage> {
    Ok(load_upright(path, role)?.to_rgb8())
}

/// The decoded picture, turned and flipped as its EXIF orientation says (every mode reads images through this).
pub fn load_upright(path: &Path, role: Role) -> Result<image::DynamicImage> {
    let decode = |e| Error::image_from_as(role, path, "cannot decode", e);
    let mut decoder = open(path, role)?.into_decoder().map_err(decode)?;
    let orientation =
        image::ImageDecoder::orientation(&mut decoder).unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(decode)?;
    img.apply_orientation(orientation);
    Ok(img)
}

/// Whether a decodable file is damaged in a way the decoder fills in silently: a JPEG whose last scan never
/// reaches its end-of-image marker (cut short in transfer; the missing rows decode as grey). None: looks whole.
pub fn damage(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return None;
    }
    // Inside entropy-coded data every 0xFF byte is followed by 0x00 or a restart marker, so FF DA (start of scan)
    // and FF D9 (end of image) are real markers; an EXIF thumbnail's own pair ends before the main scan starts.
    let last = |m: u8| bytes.windows(2).rposition(|w| w == [0xFF, m]);
    match (last(0xDA), last(0xD9)) {
        (Some(sos), Some(eoi)) if eoi > sos => None,
        _ => Some(
            "the JPEG is cut short (its last scan has no end-of-image marker); the missing part decodes as \
                   flat grey"
                .into(),
        ),
    }
}

/// The output size: given width and height as they are; one given → the other from the input's aspect ratio;
/// none → the input's size. Derived sizes are floored to `multiple` (at least `multiple`).
pub fn target_size(input: (u32, u32), width: Option<u32>, height: Option<u32>, multiple: u32) -> (u32, u32) {
    let floor = |v: f64| floor_to_multiple(v, multiple);
    let (iw, ih) = (input.0 as f64, input.1 as f64);
    match (width, height) {
        (Some(w), Some(h)) => (w, h),
        (Some(w), None) => (w, floor(w as f64 * ih / iw)),
        (None, Some(h)) => (floor(h as f64 * iw / ih), h),
        (None, None) => (floor(iw), floor(ih)),
    }
}

/// Peak signal-to-noise ratio of two 8-bit RGB images in dB (∞ when identical; 0 when the sizes differ).
pub fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    if a.dimensions() != b.dimensions() {
        return 0.0;
    }
    let n = a.as_raw().len() as f64;
    let mse = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>() / n;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// `v` rounded down to a multiple of `multiple`, at least `multiple` (sizes the latent grid can hold).
pub fn floor_to_multiple(v: f64, multiple: u32) -> u32 {
    ((v / multiple as f64).floor() as u32).max(1) * multiple
}

/// How an input with another aspect ratio than the requested size is brought to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum ResizeMode {
    /// Centre-crop to the target aspect, then resize (as the diffusers tutorials do).
    #[default]
    Crop,
    /// Keep the whole input: the output is the largest size with its aspect inside width × height.
    Fit,
    /// Keep the whole input, resized to fit inside and centred on black bars to exactly width × height.
    Pad,
    /// Resize to width × height, distorting the aspect (diffusers' behaviour when both are passed).
    Stretch,
}

crate::named_enum!(ResizeMode, "resize mode", [Crop = "crop", Fit = "fit", Pad = "pad", Stretch = "stretch"]);

/// The largest size with the aspect of `input` inside `w`×`h` (at least 1×1).
pub fn fit_inside(input: (u32, u32), w: u32, h: u32) -> (u32, u32) {
    let s = (w as f64 / input.0 as f64).min(h as f64 / input.1 as f64);
    (((input.0 as f64 * s).round() as u32).clamp(1, w), ((input.1 as f64 * s).round() as u32).clamp(1, h))
}

/// `img` resized to fit inside `width`×`height` and centred on black.
pub fn pad_to(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (iw, ih) = fit_inside(img.dimensions(), width, height);
    let inner = if (iw, ih) == img.dimensions() { img.clone() } else { resize_lanczos(img, iw, ih) };
    let mut canvas = RgbImage::new(width, height);
    image::imageops::replace(&mut canvas, &inner, ((width - iw) / 2) as i64, ((height - ih) / 2) as i64);
    canvas
}

/// The largest centred box (x, y, w, h) of a `w`×`h` image with the aspect ratio of `width`×`height`.
pub fn center_crop_box(w: u32, h: u32, width: u32, height: u32) -> (u32, u32, u32, u32) {
    let (w, h, tw, th) = (w as u64, h as u64, width as u64, height as u64);
    if w * th == h * tw {
        return (0, 0, w as u32, h as u32);
    }
    // Rounded to the nearest pixel; scripts/make_fixtures.py crops identically for the reference.
    let (x, y, cw, ch) = if w * th > h * tw {
        let cw = (2 * h * tw + th) / (2 * th);
        ((w - cw) / 2, 0, cw, h)
    } else {
        let ch = (2 * w * th + tw) / (2 * tw);
        (0, (h - ch) / 2, w, ch)
    };
    (x as u32, y as u32, cw as u32, ch as u32)
}

/// The largest centred box of `img` with the aspect ratio of `width`×`height` (the image itself if it has it).
pub fn center_crop_to_aspect(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (x, y, cw, ch) = center_crop_box(img.width(), img.height(), width, height);
    if (cw, ch) == img.dimensions() {
        return img.clone();
    }
    image::imageops::crop_imm(img, x, y, cw, ch).to_image()
}

const PRECISION_BITS: u32 = 22;

fn lanczos(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let x = x * std::f64::consts::PI;
            x.sin() / x
        }
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Per output index: first input index, and fixed-point weights (Pillow's `precompute_coeffs` + normalisation).
/// Pillow's bicubic kernel (a = -0.5), support 2.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// A Pillow resampling filter: its kernel and support.
#[derive(Clone, Copy)]
struct Filter {
    kernel: fn(f64) -> f64,
    support: f64,
}

const LANCZOS: Filter = Filter { kernel: lanczos, support: 3.0 };
const BICUBIC: Filter = Filter { kernel: bicubic, support: 2.0 };

fn coefficients(in_size: usize, out_size: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            // C's (int) cast truncates toward zero.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let ws: Vec<f64> = (0..xmax.saturating_sub(xmin))
                .map(|x| (filter.kernel)((x as f64 + xmin as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = ws.iter().sum();
            let fixed = ws
                .iter()
                .map(|w| {
                    let w = if total != 0.0 { w / total } else { *w };
                    let v = w * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `PIL.Image.resize((width, height), Image.LANCZOS)` for RGB images.
pub fn resize_lanczos(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_with(img, width, height, LANCZOS)
}

/// `PIL.Image.resize((width, height), Image.BICUBIC)` for RGB images (SigLIP's image processor).
pub fn resize_bicubic(img: &RgbImage, width: u32, height: u32) -> RgbImage {
    resize_with(img, width, height, BICUBIC)
}

fn resize_with(img: &RgbImage, width: u32, height: u32, filter: Filter) -> RgbImage {
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    let (ow, oh) = (width as usize, height as usize);
    let src = img.as_raw();
    let half = 1i32 << (PRECISION_BITS - 1);
    // Horizontal pass (skipped when the width does not change, as in Pillow).
    let (mid, mw) = if ow != iw {
        let coeffs = coefficients(iw, ow, filter);
        let mut out = vec![0u8; ow * ih * 3];
        for y in 0..ih {
            for (x, (xmin, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let mut acc = half;
                    for (i, w) in k.iter().enumerate() {
                        acc += src[(y * iw + xmin + i) * 3 + c] as i32 * w;
                    }
                    out[(y * ow + x) * 3 + c] = clip8(acc);
                }
            }
        }
        (out, ow)
    } else {
        (src.clone(), iw)
    };
    // Vertical pass.
    let out = if oh != ih {
        let coeffs = coefficients(ih, oh, filter);
        let mut out = vec![0u8; mw * oh * 3];
        for (y, (ymin, k)) in coeffs.iter().enumerate() {
            for x in 0..mw {
                for c in 0..3 {
                    let mut acc = half;
                    for (i, w) in k.iter().enumerate() {
                        acc += mid[((ymin + i) * mw + x) * 3 + c] as i32 * w;
                    }
                    out[(y * mw + x) * 3 + c] = clip8(acc);
                }
            }
        }
        out
    } else {
        mid
    };
    RgbImage::from_raw(width, height, out).expect("buffer size matches dimensions")
}

/// RGB image → [1,3,H,W] float32 in [-1,1]: `2·(p/255) − 1`, each op rounded in f32 as numpy does.
pub fn to_tensor(img: &RgbImage, device: &Device) -> Result<Tensor> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let raw = img.as_raw();
    let mut data = vec![0f32; 3 * h * w];
    for c in 0..3 {
        for i in 0..h * w {
            data[c * h * w + i] = 2.0 * (raw[i * 3 + c] as f32 / 255.0) - 1.0;
        }
    }
    Ok(Tensor::from_vec(data, (1, 3, h, w), device)?)
}

/// VAE output [1,3,H,W] → RGB: `(x·0.5 + 0.5).clamp(0,1)·255`, rounded half to even like `np.round`.
pub fn from_tensor(t: &Tensor) -> Result<RgbImage> {
    let (_, c, h, w) = t.dims4()?;
    let img = ((t.to_dtype(candle_core::DType::F32)? * 0.5)? + 0.5)?.clamp(0f32, 1f32)?;
    let v = img.squeeze(0)?.flatten_all()?.to_vec1::<f32>()?;
    let mut raw = vec![0u8; h * w * 3];
    for ch in 0..c.min(3) {
        for i in 0..h * w {
            raw[i * 3 + ch] = (v[ch * h * w + i] * 255.0).round_ties_even() as u8;
        }
    }
    Ok(RgbImage::from_raw(w as u32, h as u32, raw).expect("buffer size matches dimensions"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(target_size((1000, 750), None, None, 16), (992, 736));
        assert_eq!(target_size((1000, 750), Some(512), None, 16), (512, 384));
        assert_eq!(target_size((750, 1000), None, Some(512), 16), (384, 512));
        assert_eq!(target_size((10, 10), None, None, 16), (16, 16));
    }

    #[test]
    fn crop_keeps_centre_and_aspect() {
        let img = RgbImage::new(100, 60);
        let c = center_crop_to_aspect(&img, 96, 48);
        assert_eq!((c.width(), c.height()), (100, 50));
        let c = center_crop_to_aspect(&img, 48, 64);
        assert_eq!((c.width(), c.height()), (45, 60));
    }

    #[test]
    fn identity_resize_is_a_copy_and_constant_stays_constant() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 40, 200]));
        assert_eq!(resize_lanczos(&img, 7, 5), img);
        let flat = RgbImage::from_pixel(33, 17, image::Rgb([10, 128, 250]));
        let r = resize_lanczos(&flat, 16, 40);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
    }

    #[test]
    fn round_trip_pixel_values() {
        let img = RgbImage::from_fn(4, 2, |x, y| image::Rgb([x as u8 * 60, y as u8 * 200, 255 - x as u8]));
        let t = to_tensor(&img, &Device::Cpu).unwrap();
        assert_eq!(from_tensor(&t).unwrap(), img);
    }
}
