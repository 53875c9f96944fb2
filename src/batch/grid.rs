//! Contact sheet of a sweep: written images → one PNG, a row per input, a column per setting (strength, seed, …),
//! each cell labelled underneath ("0.75 #42"), so the settings that worked can be read off the sheet.

use crate::error::Result;
use crate::image_io;
use crate::output;
use image::{Rgb, RgbImage};
use std::path::{Path, PathBuf};

/// Longest side of a cell's thumbnail, in pixels.
const CELL: u32 = 256;
const LABEL_H: u32 = 16;
const SCALE: u32 = 2;

/// One written image and what it is labelled with (digits, `.`, `#`, `x`, `c` and spaces are drawn).
pub struct Cell {
    pub input: PathBuf,
    pub output: PathBuf,
    pub label: String,
}

/// 3×5 glyphs, one row per u8 (low 3 bits, leftmost pixel = bit 2), for the characters labels use.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '#' => [5, 7, 5, 7, 5],
        'x' => [0, 5, 2, 5, 0],
        'c' => [0, 7, 4, 4, 7],
        _ => [0; 5],
    }
}

fn draw_text(img: &mut RgbImage, x0: u32, y0: u32, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..3u32 {
                if bits >> (2 - col) & 1 == 1 {
                    for dy in 0..SCALE {
                        for dx in 0..SCALE {
                            let (x, y) = (x0 + (i as u32 * 4 + col) * SCALE + dx, y0 + row as u32 * SCALE + dy);
                            if x < img.width() && y < img.height() {
                                img.put_pixel(x, y, Rgb([255, 255, 255]));
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Writes the sheet to `path` (atomically, like every output).
pub fn write(path: &Path, cells: &[Cell]) -> Result<(u32, u32)> {
    let mut rows: Vec<(&Path, Vec<&Cell>)> = Vec::new();
    for c in cells {
        match rows.iter_mut().find(|(p, _)| *p == c.input.as_path()) {
            Some((_, v)) => v.push(c),
            None => rows.push((c.input.as_path(), vec![c])),
        }
    }
    let cols = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0) as u32;
    let (w, h) = (cols * CELL, rows.len() as u32 * (CELL + LABEL_H));
    let mut sheet = RgbImage::from_pixel(w.max(1), h.max(1), Rgb([24, 24, 24]));
    for (r, (_, row)) in rows.iter().enumerate() {
        for (k, cell) in row.iter().enumerate() {
            let img = image_io::load_rgb(&cell.output)?;
            let (tw, th) = image_io::fit_inside(img.dimensions(), CELL, CELL);
            let thumb = image_io::resize_lanczos(&img, tw, th);
            let (x, y) = (k as u32 * CELL, r as u32 * (CELL + LABEL_H));
            image::imageops::replace(&mut sheet, &thumb, (x + (CELL - tw) / 2) as i64, (y + (CELL - th) / 2) as i64);
            draw_text(&mut sheet, x + 4, y + CELL + 3, &cell.label);
        }
    }
    let text = [("flux-img2img-grid", format!("{} images, {} rows", cells.len(), rows.len()))];
    output::write_png(path, &sheet, &text)?;
    Ok(sheet.dimensions())
}
