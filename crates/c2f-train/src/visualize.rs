//! Pictures of what the model attends (the paper's Figure 6), from [`ImageInference`]s:
//!
//! - one PNG per image: a header with the image's name, its true class and the top-3 averaged
//!   predictions (the coarse ones for a model without a fine pass); a grid of panels, each
//!   `panel × panel` with its title above: the image (the test transform's crop) with the true
//!   box (green) and the predicted box (red), the up-sampled mean map as a heat map, then every
//!   attention map as a heat-map overlay on the image; and a legend (the colour bar from 0 to
//!   each map's own maximum, the two box colours);
//! - one contact sheet: the first panel of every image, with its true class and whether the
//!   averaged prediction and the box (IoU > 0.5) are right.
//!
//! Heat maps use the 'jet' colour map (blue → cyan → yellow → red), each map scaled by its own
//! maximum; maps are resized to the panel bilinearly ([`crate::interpolate`]). Text is the public
//! domain 8×8 bitmap font of `font8x8`, drawn at twice its size. PNGs are written atomically.

use std::path::{Path, PathBuf};

use c2f_inception::weights::write_atomically;
use c2f_kernels::{Error, Result};
use image::imageops::{self, FilterType};
use image::{ImageEncoder, Rgb, RgbImage};
use imageproc::drawing::{draw_filled_rect_mut, draw_hollow_rect_mut};
use imageproc::rect::Rect;

use crate::data::transform::{center_crop_params, resized_shorter};
use crate::data::{BBox, Transform};
use crate::interpolate::{resize, Interpolation};
use crate::localize::{to_input, ImageInference};

#[derive(Debug, Clone, PartialEq)]
pub struct VisualizeConfig {
    /// Side of one panel in pixels.
    pub panel: u32,
    /// Panels per row of an image's grid.
    pub columns: u32,
    /// Opacity of a heat map over the image.
    pub alpha: f32,
    /// Panels per row of the contact sheet.
    pub sheet_columns: u32,
}

impl Default for VisualizeConfig {
    fn default() -> Self {
        VisualizeConfig {
            panel: 224,
            columns: 5,
            alpha: 0.5,
            sheet_columns: 6,
        }
    }
}

const TRUE_COLOUR: Rgb<u8> = Rgb([40, 220, 40]);
const PRED_COLOUR: Rgb<u8> = Rgb([235, 30, 30]);
const BACKGROUND: Rgb<u8> = Rgb([255, 255, 255]);
const INK: Rgb<u8> = Rgb([0, 0, 0]);
/// Glyph scale of the header and legend: 8×8 glyphs drawn 16×16; panel titles and captions
/// are drawn 8×8, so that they fit small panels.
const SCALE: u32 = 2;
const LINE: u32 = 8 * SCALE + 4;
const TITLE: u32 = 8 + 4;
const MARGIN: u32 = 6;
/// The narrowest figure, so that the header and the legend fit.
const MIN_WIDTH: u32 = 640;

/// The 'jet' colour of `t` in `[0, 1]` (clamped).
pub fn jet(t: f32) -> Rgb<u8> {
    let t = t.clamp(0.0, 1.0);
    let ramp = |c: f32| ((1.5 - (4.0 * t - c).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    Rgb([ramp(3.0), ramp(2.0), ramp(1.0)])
}

/// Draws `text` with its top-left corner at `(x, y)`, glyphs `8·scale` pixels square, only the
/// characters that fit whole in `max_width` pixels (and clipped to the image); characters
/// outside ASCII print as `?`.
pub fn draw_text(
    img: &mut RgbImage,
    (x, y): (u32, u32),
    text: &str,
    colour: Rgb<u8>,
    scale: u32,
    max_width: u32,
) {
    let fits = (max_width / (8 * scale)) as usize;
    for (i, ch) in text.chars().take(fits).enumerate() {
        let code = if ch.is_ascii() {
            ch as usize
        } else {
            '?' as usize
        };
        let glyph = font8x8::legacy::BASIC_LEGACY[code];
        let gx = x + i as u32 * 8 * scale;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits >> col & 1 == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let (px, py) = (gx + col * scale + dx, y + row as u32 * scale + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, colour);
                        }
                    }
                }
            }
        }
    }
}

/// The test transform's crop of the original image, at `panel × panel`.
fn crop_panel(r: &ImageInference, input_size: u32, panel: u32) -> RgbImage {
    let Transform::Test { resize: side, size } = Transform::test(input_size) else {
        unreachable!("Transform::test builds the test transform")
    };
    let (w, h) = r.image.dimensions();
    let (rw, rh) = resized_shorter(w, h, side);
    let c = center_crop_params(rw, rh, size);
    let resized = imageops::resize(&*r.image, rw, rh, FilterType::Triangle);
    let crop = imageops::crop_imm(&resized, c.x, c.y, c.w, c.h).to_image();
    imageops::resize(&crop, panel, panel, FilterType::Triangle)
}

/// `map [h, w]` resized to `panel × panel` and scaled by its maximum to `[0, 1]` (all zeros
/// when it has no positive value).
fn normalised(map: &[f32], (h, w): (usize, usize), panel: u32) -> Vec<f32> {
    let wide: Vec<f64> = map.iter().map(|&v| v as f64).collect();
    let p = panel as usize;
    let up = resize(Interpolation::Bilinear, 1, (h, w), (p, p), &wide).expect("non-empty map");
    let max = up.iter().cloned().fold(0.0, f64::max);
    up.iter()
        .map(|&v| {
            if max > 0.0 {
                (v.max(0.0) / max) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// The heat map of `values` (`panel²`, in `[0, 1]`) over `base` with opacity `alpha` (1: the
/// heat map alone).
fn heat(base: &RgbImage, values: &[f32], alpha: f32) -> RgbImage {
    let mut out = base.clone();
    for (p, &v) in out.pixels_mut().zip(values) {
        let c = jet(v);
        for k in 0..3 {
            p.0[k] = (alpha * c.0[k] as f32 + (1.0 - alpha) * p.0[k] as f32).round() as u8;
        }
    }
    out
}

/// A box 2 pixels thick, `b` in input pixels scaled by `scale`.
fn draw_box(img: &mut RgbImage, b: BBox, scale: f32, colour: Rgb<u8>) {
    let x = (b.x * scale).round() as i32;
    let y = (b.y * scale).round() as i32;
    let w = ((b.w * scale).round() as u32).max(1);
    let h = ((b.h * scale).round() as u32).max(1);
    draw_hollow_rect_mut(img, Rect::at(x, y).of_size(w, h), colour);
    if w > 2 && h > 2 {
        draw_hollow_rect_mut(img, Rect::at(x + 1, y + 1).of_size(w - 2, h - 2), colour);
    }
}

fn class_name(names: &[String], c: usize) -> String {
    names
        .get(c)
        .cloned()
        .unwrap_or_else(|| format!("class {c}"))
}

/// The image with its true and predicted boxes, `panel × panel`.
fn boxes_panel(r: &ImageInference, input_size: u32, panel: u32) -> Result<RgbImage> {
    let mut img = crop_panel(r, input_size, panel);
    let scale = panel as f32 / input_size as f32;
    if let Some(t) = r.truth {
        let t = to_input(t, &Transform::test(input_size), r.image.dimensions())?;
        if let Some(t) = t {
            draw_box(&mut img, t, scale, TRUE_COLOUR);
        }
    }
    if let Some(p) = r.box_input {
        draw_box(&mut img, p, scale, PRED_COLOUR);
    }
    Ok(img)
}

/// Panels of one image: (title, picture).
fn panels(
    r: &ImageInference,
    input_size: u32,
    map_side: (usize, usize),
    cfg: &VisualizeConfig,
) -> Result<Vec<(String, RgbImage)>> {
    let p = cfg.panel;
    let s = input_size as usize;
    let base = crop_panel(r, input_size, p);
    let mut out = vec![
        ("image + boxes".to_string(), boxes_panel(r, input_size, p)?),
        (
            "up-sampled mask".to_string(),
            heat(&base, &normalised(&r.upsampled, (s, s), p), 1.0),
        ),
    ];
    let hw = map_side.0 * map_side.1;
    if hw == 0 || !r.attention.len().is_multiple_of(hw) {
        return Err(Error::Shape(format!(
            "visualize: {} attention values for {}×{} maps",
            r.attention.len(),
            map_side.0,
            map_side.1
        )));
    }
    for (m, map) in r.attention.chunks(hw).enumerate() {
        out.push((
            format!("map {}", m + 1),
            heat(&base, &normalised(map, map_side, p), cfg.alpha),
        ));
    }
    Ok(out)
}

/// Rows of a grid of `n` panels.
fn rows(n: u32, columns: u32) -> u32 {
    n.div_ceil(columns.max(1))
}

const HEADER_LINES: u32 = 3;
const LEGEND_HEIGHT: u32 = 2 * LINE + 3 * MARGIN;

/// The size of one image's figure with `maps` attention maps.
pub fn figure_size(maps: usize, cfg: &VisualizeConfig) -> (u32, u32) {
    let n = maps as u32 + 2;
    let cols = cfg.columns.clamp(1, n);
    let cell = cfg.panel + TITLE;
    let w = (cols * (cfg.panel + MARGIN) + MARGIN).max(MIN_WIDTH);
    let h = HEADER_LINES * LINE + MARGIN + rows(n, cols) * (cell + MARGIN) + LEGEND_HEIGHT;
    (w, h)
}

/// One image's figure (see the module's notes).
pub fn render_figure(
    r: &ImageInference,
    input_size: u32,
    map_side: (usize, usize),
    class_names: &[String],
    cfg: &VisualizeConfig,
) -> Result<RgbImage> {
    let panels = panels(r, input_size, map_side, cfg)?;
    let maps = panels.len() - 2;
    let (w, h) = figure_size(maps, cfg);
    let mut img = RgbImage::from_pixel(w, h, BACKGROUND);
    let header = |img: &mut RgbImage, line: u32, text: &str| {
        draw_text(
            img,
            (MARGIN, MARGIN + line * LINE),
            text,
            INK,
            SCALE,
            w - MARGIN,
        );
    };
    header(&mut img, 0, &r.name);
    // Coarse and fine (a model with a fine pass), then the top-3 of the average (or coarse).
    let heads = ["coarse", "fine", "average"];
    let predicted: Vec<String> = heads
        .iter()
        .zip(r.predicted())
        .take(2)
        .map(|(head, c)| format!("{head}: {}", class_name(class_names, c)))
        .collect();
    let truth = format!(
        "true: {}   IoU {:.2}   {}",
        class_name(class_names, r.label),
        r.iou(),
        predicted.join("  "),
    );
    header(&mut img, 1, &truth);
    let top: Vec<String> = r
        .top(3)
        .iter()
        .map(|&(c, p)| format!("{} {:.1}%", class_name(class_names, c), 100.0 * p))
        .collect();
    let top = format!(
        "top-3 ({}): {}",
        heads[r.probs.len().saturating_sub(1)],
        top.join("  ")
    );
    header(&mut img, 2, &top);
    let cols = cfg.columns.clamp(1, panels.len() as u32);
    let top_y = HEADER_LINES * LINE + MARGIN;
    for (i, (title, panel)) in panels.iter().enumerate() {
        let (cx, cy) = (i as u32 % cols, i as u32 / cols);
        let x = MARGIN + cx * (cfg.panel + MARGIN);
        let y = top_y + cy * (cfg.panel + TITLE + MARGIN);
        draw_text(&mut img, (x, y), title, INK, 1, cfg.panel);
        imageops::replace(&mut img, panel, x as i64, (y + TITLE) as i64);
    }
    // Legend: the colour bar, then the box colours.
    let ly = h - LEGEND_HEIGHT + MARGIN;
    draw_text(&mut img, (MARGIN, ly), "0", INK, SCALE, w);
    let bar_x = MARGIN + 2 * 8 * SCALE;
    let bar_w = (w / 2).saturating_sub(bar_x).max(16);
    for dx in 0..bar_w {
        let c = jet(dx as f32 / (bar_w - 1).max(1) as f32);
        draw_filled_rect_mut(
            &mut img,
            Rect::at((bar_x + dx) as i32, ly as i32).of_size(1, 8 * SCALE),
            c,
        );
    }
    let label_x = bar_x + bar_w + 8;
    draw_text(
        &mut img,
        (label_x, ly),
        "max of each map",
        INK,
        SCALE,
        w - label_x,
    );
    let ky = ly + LINE + MARGIN;
    for (i, (colour, label)) in [(TRUE_COLOUR, "true box"), (PRED_COLOUR, "predicted box")]
        .into_iter()
        .enumerate()
    {
        let x = MARGIN + i as u32 * 20 * 8 * SCALE;
        draw_filled_rect_mut(
            &mut img,
            Rect::at(x as i32, ky as i32).of_size(24, 8 * SCALE),
            colour,
        );
        draw_text(&mut img, (x + 32, ky), label, INK, SCALE, w - x - 32);
    }
    Ok(img)
}

/// The size of a contact sheet of `images` images.
pub fn sheet_size(images: usize, cfg: &VisualizeConfig) -> (u32, u32) {
    let n = images.max(1) as u32;
    let cols = cfg.sheet_columns.clamp(1, n);
    let w = cols * (cfg.panel + MARGIN) + MARGIN;
    let h = MARGIN + rows(n, cols) * (cfg.panel + 2 * TITLE + MARGIN);
    (w, h)
}

/// Every image's boxes panel in a grid, each captioned with its true class and what was right.
pub fn render_sheet(
    results: &[ImageInference],
    input_size: u32,
    class_names: &[String],
    cfg: &VisualizeConfig,
) -> Result<RgbImage> {
    let (w, h) = sheet_size(results.len(), cfg);
    let mut img = RgbImage::from_pixel(w, h, BACKGROUND);
    let cols = cfg.sheet_columns.clamp(1, results.len().max(1) as u32);
    for (i, r) in results.iter().enumerate() {
        let (cx, cy) = (i as u32 % cols, i as u32 / cols);
        let x = MARGIN + cx * (cfg.panel + MARGIN);
        let y = MARGIN + cy * (cfg.panel + 2 * TITLE + MARGIN);
        imageops::replace(
            &mut img,
            &boxes_panel(r, input_size, cfg.panel)?,
            x as i64,
            y as i64,
        );
        let right = r.predicted().last() == Some(&r.label);
        let located = r.iou() > 0.5;
        let caption = |img: &mut RgbImage, line: u32, text: &str| {
            draw_text(
                img,
                (x, y + cfg.panel + 2 + line * TITLE),
                text,
                INK,
                1,
                cfg.panel,
            );
        };
        caption(&mut img, 0, &class_name(class_names, r.label));
        let verdict = format!(
            "label {}  box {}",
            if right { "ok" } else { "NO" },
            if located { "ok" } else { "NO" }
        );
        caption(&mut img, 1, &verdict);
    }
    Ok(img)
}

/// Encodes `img` as PNG and writes it to `path` atomically.
pub fn write_png(path: &Path, img: &RgbImage) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            img.as_raw(),
            img.width(),
            img.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::File {
            path: path.display().to_string(),
            message: format!("cannot encode PNG: {e}"),
        })?;
    write_atomically(path, &bytes)
}

/// Writes `dir/NNNN.png` per image (its source index) and `dir/contact_sheet.png`; returns the
/// paths, the sheet last. `class_names[c]` names class `c` (`class c` where missing).
pub fn write_pictures(
    dir: &Path,
    results: &[ImageInference],
    input_size: u32,
    map_side: (usize, usize),
    class_names: &[String],
    cfg: &VisualizeConfig,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut paths = Vec::new();
    for r in results {
        let path = dir.join(format!("{:04}.png", r.index));
        write_png(
            &path,
            &render_figure(r, input_size, map_side, class_names, cfg)?,
        )?;
        paths.push(path);
    }
    let sheet = dir.join("contact_sheet.png");
    write_png(
        &sheet,
        &render_sheet(results, input_size, class_names, cfg)?,
    )?;
    paths.push(sheet);
    Ok(paths)
}
