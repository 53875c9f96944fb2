//! Canny edges, as OpenCV's `cv2.Canny(image, low, high)` computes them on a colour image (aperture 3, L1
//! gradient) — what diffusers' FLUX Control examples and controlnet_aux's `CannyDetector` feed Canny-dev. Takes an
//! RGB picture and the hysteresis thresholds; gives white edges on black, as RGB.
//!
//! Per pixel: the 3×3 Sobel gradient of each channel (replicated borders), the channel with the largest
//! |dx| + |dy| kept; non-maximum suppression along the gradient direction quantised with OpenCV's fixed-point
//! tan 22.5° test (ties broken the same way); then hysteresis from the strong pixels (> high) through the weak
//! ones (> low) in 8-connectivity.

use image::{Rgb, RgbImage};

/// OpenCV's fixed-point shift and tan(22.5°) in it.
const SHIFT: u32 = 15;
const TG22: i64 = 13573; // (0.4142135623730950488 * (1 << 15) + 0.5) as int

/// The gradient that wins at one pixel.
#[derive(Clone, Copy, Default)]
struct Grad {
    dx: i32,
    dy: i32,
    mag: i32,
}

/// White edges on black, the size of `img`.
pub fn edges(img: &RgbImage, low: f32, high: f32) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let (mut low, mut high) = (low.floor() as i32, high.floor() as i32);
    if low > high {
        std::mem::swap(&mut low, &mut high);
    }
    let g = gradients(img);
    let mut map = suppress(&g, w, h, low, high);
    hysteresis(&mut map, w);
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let v = if map[(y as usize + 1) * (w + 2) + x as usize + 1] == EDGE { 255 } else { 0 };
        Rgb([v, v, v])
    })
}

/// Sobel gradients of every channel with replicated borders; per pixel the channel of largest L1 magnitude
/// (the first on ties).
fn gradients(img: &RgbImage) -> Vec<Grad> {
    let (w, h) = (img.width() as i64, img.height() as i64);
    let px = |x: i64, y: i64, c: usize| img.get_pixel(x.clamp(0, w - 1) as u32, y.clamp(0, h - 1) as u32).0[c] as i32;
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let mut best = Grad { mag: -1, ..Grad::default() };
            for c in 0..3 {
                let dx = px(x + 1, y - 1, c) - px(x - 1, y - 1, c)
                    + 2 * (px(x + 1, y, c) - px(x - 1, y, c))
                    + px(x + 1, y + 1, c)
                    - px(x - 1, y + 1, c);
                let dy = px(x - 1, y + 1, c) - px(x - 1, y - 1, c)
                    + 2 * (px(x, y + 1, c) - px(x, y - 1, c))
                    + px(x + 1, y + 1, c)
                    - px(x + 1, y - 1, c);
                let mag = dx.abs() + dy.abs();
                if mag > best.mag {
                    best = Grad { dx, dy, mag };
                }
            }
            out.push(best);
        }
    }
    out
}

/// Map values (OpenCV's): a weak pixel that may join an edge, one that never will, and an edge.
const WEAK: u8 = 0;
const NONE: u8 = 1;
const EDGE: u8 = 2;

/// Non-maximum suppression and the first threshold pass, on a map with a one-pixel border of NONE.
fn suppress(g: &[Grad], w: usize, h: usize, low: i32, high: i32) -> Vec<u8> {
    let mut map = vec![NONE; (w + 2) * (h + 2)];
    // Magnitudes outside the picture are 0, as OpenCV's zero-padded row buffers make them.
    let mag = |x: i64, y: i64| {
        if x < 0 || y < 0 || x >= w as i64 || y >= h as i64 {
            0
        } else {
            g[y as usize * w + x as usize].mag
        }
    };
    for y in 0..h as i64 {
        for x in 0..w as i64 {
            let Grad { dx, dy, mag: m } = g[y as usize * w + x as usize];
            if m <= low {
                continue;
            }
            let ax = dx.unsigned_abs() as i64;
            let ay = (dy.unsigned_abs() as i64) << SHIFT;
            let tg22x = ax * TG22;
            let is_max = if ay < tg22x {
                m > mag(x - 1, y) && m >= mag(x + 1, y)
            } else if ay > tg22x + (ax << (SHIFT + 1)) {
                m > mag(x, y - 1) && m >= mag(x, y + 1)
            } else {
                let s = if (dx ^ dy) < 0 { -1 } else { 1 };
                m > mag(x - s, y - 1) && m > mag(x + s, y + 1)
            };
            if is_max {
                map[(y as usize + 1) * (w + 2) + x as usize + 1] = if m > high { EDGE } else { WEAK };
            }
        }
    }
    map
}

/// Grows edges from every strong pixel through 8-connected weak ones.
fn hysteresis(map: &mut [u8], w: usize) {
    let stride = w + 2;
    let mut stack: Vec<usize> = (0..map.len()).filter(|&i| map[i] == EDGE).collect();
    while let Some(i) = stack.pop() {
        for n in [i - stride - 1, i - stride, i - stride + 1, i - 1, i + 1, i + stride - 1, i + stride, i + stride + 1]
        {
            if map[n] == WEAK {
                map[n] = EDGE;
                stack.push(n);
            }
        }
    }
}
