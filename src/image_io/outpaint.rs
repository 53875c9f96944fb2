//! Outpainting geometry: takes the input's size and `--outpaint L,T,R,B` or `--outpaint-to WxH --align A`; gives
//! the grown canvas (the input on mid-grey) and the mask that repaints the new area, ramping `feather` pixels into
//! the input along every grown side so the model can carry the picture across the seam.
//!
//! The canvas is always a multiple of the model's size multiple: the right and bottom margins grow to make it
//! one, so the input is never cropped or scaled. The same definition builds the diffusers reference in
//! scripts/make_fill_fixtures.py.

use crate::error::{Error, Result};
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::fmt;
use std::str::FromStr;

/// The smallest canvas side: a narrower one leaves too few latent cells to outpaint into.
pub const MIN_SIDE: u32 = 16;
/// The largest canvas side (an image bomb guard, as for inputs).
pub const MAX_SIDE: u32 = 16384;
/// Default feather width in pixels.
pub const DEFAULT_FEATHER: u32 = 8;
/// The colour of the new area before the model paints it.
const CANVAS_GREY: u8 = 128;

/// How the canvas grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grow {
    /// Pixels added left, top, right and bottom.
    Margins([u32; 4]),
    /// A canvas of this size, the input placed by `align`.
    To { width: u32, height: u32, align: Align },
}

/// Where the input sits on an `--outpaint-to` canvas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Align {
    /// 0 = left/top, 1 = centre, 2 = right/bottom.
    pub x: u8,
    pub y: u8,
}

const ALIGN_NAMES: [(&str, (u8, u8)); 9] = [
    ("top-left", (0, 0)),
    ("top", (1, 0)),
    ("top-right", (2, 0)),
    ("left", (0, 1)),
    ("center", (1, 1)),
    ("right", (2, 1)),
    ("bottom-left", (0, 2)),
    ("bottom", (1, 2)),
    ("bottom-right", (2, 2)),
];

impl FromStr for Align {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase().replace("centre", "center");
        ALIGN_NAMES.iter().find(|(n, _)| *n == s).map(|(_, (x, y))| Align { x: *x, y: *y }).ok_or_else(|| {
            let names: Vec<&str> = ALIGN_NAMES.iter().map(|(n, _)| *n).collect();
            format!("--align {s:?} is not one of {}", names.join(", "))
        })
    }
}

impl fmt::Display for Align {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let name = ALIGN_NAMES.iter().find(|(_, xy)| *xy == (self.x, self.y)).map_or("center", |(n, _)| n);
        f.write_str(name)
    }
}

/// `--outpaint` and its options, as a request carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outpaint {
    pub grow: Grow,
    pub feather: u32,
}

/// `L,T,R,B` (or one value for every side) in pixels.
pub fn parse_margins(s: &str) -> std::result::Result<[u32; 4], String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || format!("--outpaint {s:?}: give L,T,R,B as whole pixels of 0 or more (e.g. 0,0,256,0), or one value");
    let values: Vec<u32> =
        parts.iter().map(|p| p.parse::<u32>().map_err(|_| bad())).collect::<std::result::Result<_, _>>()?;
    match values[..] {
        [all] => Ok([all; 4]),
        [l, t, r, b] => Ok([l, t, r, b]),
        _ => Err(bad()),
    }
}

/// `WxH`.
pub fn parse_size(s: &str) -> std::result::Result<(u32, u32), String> {
    let bad = || format!("--outpaint-to {s:?}: give the canvas as WIDTHxHEIGHT in pixels, e.g. 1536x1024");
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    Ok((w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?))
}

impl fmt::Display for Outpaint {
    /// The flags that give this outpaint back (the PNG record keeps them).
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.grow {
            Grow::Margins([l, t, r, b]) => write!(f, "--outpaint {l},{t},{r},{b}")?,
            Grow::To { width, height, align } => write!(f, "--outpaint-to {width}x{height} --align {align}")?,
        }
        write!(f, " --outpaint-feather {}", self.feather)
    }
}

impl FromStr for Outpaint {
    type Err = String;
    /// The record's text (see Display).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let words: Vec<&str> = s.split_whitespace().collect();
        let value = |flag: &str| words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).copied();
        let feather = value("--outpaint-feather").map_or(Ok(DEFAULT_FEATHER), |v| {
            v.parse().map_err(|_| format!("--outpaint-feather {v:?} is not a whole number of pixels"))
        })?;
        let grow = match (value("--outpaint"), value("--outpaint-to")) {
            (Some(m), None) => Grow::Margins(parse_margins(m)?),
            (None, Some(size)) => {
                let (width, height) = parse_size(size)?;
                Grow::To { width, height, align: value("--align").map(str::parse).transpose()?.unwrap_or_default() }
            }
            _ => return Err(format!("{s:?} is not an outpaint record")),
        };
        Ok(Outpaint { grow, feather })
    }
}

/// Where the input lands on the canvas: (left, top) and the canvas size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub left: u32,
    pub top: u32,
    pub width: u32,
    pub height: u32,
}

impl Outpaint {
    /// The canvas for an input of `input` pixels and a model whose sizes are multiples of `multiple`; an error
    /// says which value to change.
    pub fn place(&self, input: (u32, u32), multiple: u32) -> Result<Placement> {
        let (w, h) = input;
        let round_up = |n: u64| n.div_ceil(multiple as u64) * multiple as u64;
        let (left, top, cw, ch) = match self.grow {
            Grow::Margins([l, t, r, b]) => {
                if [l, t, r, b] == [0; 4] {
                    return Err(Error::Usage(
                        "--outpaint 0,0,0,0 adds nothing: give the pixels to add on each side".into(),
                    ));
                }
                (l as u64, t as u64, round_up(w as u64 + l as u64 + r as u64), round_up(h as u64 + t as u64 + b as u64))
            }
            Grow::To { width, height, align } => {
                if width < w || height < h {
                    return Err(Error::Usage(format!(
                        "--outpaint-to {width}x{height} is smaller than the {w}x{h} input; give a canvas at least its size"
                    )));
                }
                let (cw, ch) = (round_up(width as u64), round_up(height as u64));
                ((cw - w as u64) * align.x as u64 / 2, (ch - h as u64) * align.y as u64 / 2, cw, ch)
            }
        };
        if cw.min(ch) < MIN_SIDE as u64 || cw.max(ch) > MAX_SIDE as u64 {
            return Err(Error::Usage(format!(
                "outpainting a {w}x{h} input gives a {cw}x{ch} canvas; each side must be {MIN_SIDE}..={MAX_SIDE} pixels"
            )));
        }
        Ok(Placement { left: left as u32, top: top as u32, width: cw as u32, height: ch as u32 })
    }
}

impl Outpaint {
    /// Where an input of `input` pixels sits on a canvas already made of `canvas` pixels (the same place
    /// [`Outpaint::place`] chose).
    pub fn placement_on(&self, input: (u32, u32), canvas: (u32, u32)) -> Placement {
        let (left, top) = match self.grow {
            Grow::Margins([l, t, _, _]) => (l, t),
            Grow::To { align, .. } => (
                canvas.0.saturating_sub(input.0) * align.x as u32 / 2,
                canvas.1.saturating_sub(input.1) * align.y as u32 / 2,
            ),
        };
        Placement { left, top, width: canvas.0, height: canvas.1 }
    }
}

/// The input on a mid-grey canvas.
pub fn canvas(img: &RgbImage, p: &Placement) -> RgbImage {
    let mut c = RgbImage::from_pixel(p.width, p.height, Rgb([CANVAS_GREY; 3]));
    image::imageops::replace(&mut c, img, p.left as i64, p.top as i64);
    c
}

/// White over the new area; inside the input, `1 - d/feather` (rounded to 0..=255), where d is the distance from
/// the pixel centre to the nearest grown edge; 0 beyond the feather and along sides that did not grow.
pub fn mask(input: (u32, u32), p: &Placement, feather: u32) -> GrayImage {
    let (w, h) = (input.0 as f64, input.1 as f64);
    let (l, t) = (p.left as f64, p.top as f64);
    let grown = [p.left > 0, p.top > 0, p.left + input.0 < p.width, p.top + input.1 < p.height];
    GrayImage::from_fn(p.width, p.height, |x, y| {
        let (x, y) = (x as f64, y as f64);
        if x < l || y < t || x >= l + w || y >= t + h {
            return Luma([255]);
        }
        let d = [x - l + 0.5, y - t + 0.5, l + w - x - 0.5, t + h - y - 0.5]
            .iter()
            .zip(grown)
            .filter(|(_, g)| *g)
            .map(|(d, _)| *d)
            .fold(f64::INFINITY, f64::min);
        let m = if feather == 0 { 0.0 } else { (1.0 - d / feather as f64).clamp(0.0, 1.0) };
        Luma([(m * 255.0).round_ties_even() as u8])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins_round_the_canvas_up_on_the_right_and_bottom() {
        let o = Outpaint { grow: Grow::Margins([16, 0, 16, 8]), feather: 8 };
        let p = o.place((48, 64), 16).unwrap();
        assert_eq!(p, Placement { left: 16, top: 0, width: 80, height: 80 });
    }

    #[test]
    fn outpaint_to_aligns_the_input() {
        let o =
            Outpaint { grow: Grow::To { width: 100, height: 64, align: "bottom-right".parse().unwrap() }, feather: 0 };
        let p = o.place((48, 64), 16).unwrap();
        assert_eq!(p, Placement { left: 64, top: 0, width: 112, height: 64 });
        let c = Outpaint { grow: Grow::To { width: 96, height: 96, align: Align { x: 1, y: 1 } }, feather: 0 };
        assert_eq!(c.place((48, 64), 16).unwrap(), Placement { left: 24, top: 16, width: 96, height: 96 });
    }

    #[test]
    fn bad_geometry_is_refused() {
        let zero = Outpaint { grow: Grow::Margins([0; 4]), feather: 8 };
        assert!(zero.place((64, 64), 16).is_err());
        let small = Outpaint { grow: Grow::To { width: 32, height: 32, align: Align::default() }, feather: 8 };
        assert!(small.place((64, 64), 16).is_err());
        assert!(parse_margins("-4,0,0,0").is_err());
        assert!(parse_margins("1,2,3").is_err());
        assert_eq!(parse_margins("32").unwrap(), [32; 4]);
        assert!("middle".parse::<Align>().is_err());
    }

    #[test]
    fn the_mask_ramps_only_into_grown_sides() {
        let p = Placement { left: 16, top: 0, width: 80, height: 80 };
        let m = mask((48, 64), &p, 8);
        assert_eq!(m.get_pixel(0, 0).0[0], 255, "new area");
        assert_eq!(m.get_pixel(16, 30).0[0], 239, "first input column: 1 - 0.5/8");
        assert_eq!(m.get_pixel(24, 30).0[0], 0, "beyond the feather");
        assert_eq!(m.get_pixel(40, 0).0[0], 0, "the top did not grow");
        assert_eq!(m.get_pixel(40, 63).0[0], 239, "the bottom grew by rounding");
        assert!(mask((48, 64), &p, 0).pixels().filter(|l| l.0[0] != 0).count() == (80 * 80 - 48 * 64));
    }

    #[test]
    fn records_read_back() {
        for o in [
            Outpaint { grow: Grow::Margins([1, 2, 3, 4]), feather: 5 },
            Outpaint { grow: Grow::To { width: 640, height: 480, align: "top-right".parse().unwrap() }, feather: 0 },
        ] {
            assert_eq!(o.to_string().parse::<Outpaint>().unwrap(), o);
        }
    }
}
