//! Train and test transforms, ImageNet normalisation to an f32 CHW tensor, the object's box
//! carried along.
//!
//! - Training: torchvision's `RandomResizedCrop` (scale `(0.08, 1)`, ratio `(3/4, 4/3)`, ten
//!   tries then the centre-crop fallback, the same arithmetic as torchvision's `get_params`) or
//!   resize (shorter side) + random crop; then a horizontal flip with probability 1/2.
//! - Test: resize the shorter side (torchvision's `Resize(int)`: the longer side is
//!   `int(resize · long / short)`), then a centre crop (`round((H − S) / 2)`, ties to even as in
//!   Python).
//! - Resizing ([`crop_resize`]) is PIL's `BILINEAR` (torchvision's default on PIL images):
//!   bilinear interpolation when enlarging, and when shrinking a triangle kernel widened by the
//!   scale factor (antialiasing), through `fast_image_resize`'s SIMD convolution. A resize to
//!   the same size is an exact copy.
//! - Normalisation: `(v / 255 − mean) / std` with ImageNet's mean and std, channels-first.
//! - Randomness comes from the caller's `SplitMix64`, so a transform is deterministic from the
//!   seed the loader derives per (epoch, sample).

use c2f_kernels::rng::SplitMix64;
use c2f_kernels::{Error, Result};
use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::imageops;
use image::RgbImage;

use super::BBox;

/// ImageNet channel means (RGB), on the `[0, 1]` scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB), on the `[0, 1]` scale.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How a training image is cropped before the flip.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TrainCrop {
    /// torchvision's `RandomResizedCrop(size, scale, ratio)`.
    RandomResized {
        scale: (f32, f32),
        ratio: (f32, f32),
    },
    /// Resize the shorter side to `resize` (≥ size), then a random `size × size` crop.
    ResizeRandom { resize: u32 },
}

/// A transform from a decoded RGB image to a normalised `[3, size, size]` tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transform {
    Train {
        size: u32,
        crop: TrainCrop,
        hflip: bool,
    },
    Test {
        resize: u32,
        size: u32,
    },
}

/// A crop rectangle in pixels of the image it applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropRect {
    pub x: u32,
    pub y: u32,
    pub w: u32,
    pub h: u32,
}

/// The result of [`Transform::apply`].
#[derive(Debug, Clone)]
pub struct Transformed {
    /// `[3, size, size]`, normalised.
    pub pixels: Vec<f32>,
    /// The box in output pixels, clipped to the output; `None` when there was none or the crop
    /// left none of it.
    pub bbox: Option<BBox>,
    pub flipped: bool,
}

impl Transform {
    /// The standard training transform: `RandomResizedCrop(size)` with torchvision's defaults and
    /// a random horizontal flip.
    pub fn train(size: u32) -> Self {
        Transform::Train {
            size,
            crop: TrainCrop::RandomResized {
                scale: (0.08, 1.0),
                ratio: (3.0 / 4.0, 4.0 / 3.0),
            },
            hflip: true,
        }
    }

    /// The standard test transform: shorter side to `round(size / 0.875)`, centre crop `size`.
    pub fn test(size: u32) -> Self {
        Transform::Test {
            resize: (size as f32 / 0.875).round() as u32,
            size,
        }
    }

    /// Side of the output.
    pub fn size(&self) -> u32 {
        match *self {
            Transform::Train { size, .. } | Transform::Test { size, .. } => size,
        }
    }

    /// Number of f32 values one output holds: `3 · size²`.
    pub fn output_len(&self) -> usize {
        let s = self.size() as usize;
        3 * s * s
    }

    /// Checks the sizes and ranges; an error is an [`Error::Config`] keyed by the field's name.
    pub fn validate(&self) -> Result<()> {
        if self.size() == 0 {
            return Err(Error::config(
                "size",
                0,
                "the transform's output needs at least one pixel",
            ));
        }
        match *self {
            Transform::Train {
                size,
                crop: TrainCrop::ResizeRandom { resize },
                ..
            }
            | Transform::Test { resize, size } => {
                if resize < size {
                    return Err(Error::config(
                        "resize",
                        resize,
                        format!("the transform's resize must be at least its crop size {size}"),
                    ));
                }
            }
            Transform::Train {
                crop: TrainCrop::RandomResized { scale, ratio },
                ..
            } => {
                if !(0.0 < scale.0 && scale.0 <= scale.1 && scale.1 <= 1.0) {
                    return Err(Error::config(
                        "scale",
                        format!("{} {}", scale.0, scale.1),
                        "the random crop's area fraction LO HI must satisfy 0 < LO <= HI <= 1",
                    ));
                }
                if !(0.0 < ratio.0 && ratio.0 <= ratio.1 && ratio.1.is_finite()) {
                    return Err(Error::config(
                        "ratio",
                        format!("{} {}", ratio.0, ratio.1),
                        "the random crop's aspect ratio LO HI must satisfy 0 < LO <= HI",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies the transform; see [`Transform::apply_into`].
    pub fn apply(
        &self,
        image: &RgbImage,
        bbox: Option<BBox>,
        rng: &mut SplitMix64,
    ) -> Result<Transformed> {
        let mut pixels = vec![0.0; self.output_len()];
        let (bbox, flipped) = self.apply_into(image, bbox, rng, &mut pixels)?;
        Ok(Transformed {
            pixels,
            bbox,
            flipped,
        })
    }

    /// Writes the normalised `[3, size, size]` tensor into `out` and returns the transformed box
    /// and whether the image was flipped.
    pub fn apply_into(
        &self,
        image: &RgbImage,
        bbox: Option<BBox>,
        rng: &mut SplitMix64,
        out: &mut [f32],
    ) -> Result<(Option<BBox>, bool)> {
        self.validate()?;
        c2f_kernels::error::check_len("transform output", out.len(), self.output_len())?;
        let (w, h) = image.dimensions();
        if w == 0 || h == 0 {
            return Err(Error::Shape("transform: empty image".into()));
        }
        let s = self.size();
        let (resized, bbox, flip) = match *self {
            Transform::Train { crop, hflip, .. } => {
                let (img, bbox) = match crop {
                    TrainCrop::RandomResized { scale, ratio } => {
                        let c = random_resized_crop_params(w, h, scale, ratio, rng);
                        let img = crop_resize(image, c, (s, s))?;
                        (
                            img,
                            bbox.and_then(|b| {
                                crop_box(b, c, s as f32 / c.w as f32, s as f32 / c.h as f32, s)
                            }),
                        )
                    }
                    TrainCrop::ResizeRandom { resize } => {
                        let (rw, rh) = resized_shorter(w, h, resize);
                        let x = rng.below((rw - s + 1) as u64) as u32;
                        let y = rng.below((rh - s + 1) as u64) as u32;
                        resize_and_crop(image, bbox, (rw, rh), CropRect { x, y, w: s, h: s })?
                    }
                };
                let flip = hflip && rng.next_f64() < 0.5;
                (img, bbox, flip)
            }
            Transform::Test { resize, .. } => {
                let (rw, rh) = resized_shorter(w, h, resize);
                let c = center_crop_params(rw, rh, s);
                let (img, bbox) = resize_and_crop(image, bbox, (rw, rh), c)?;
                (img, bbox, false)
            }
        };
        normalize_into(&resized, flip, out)?;
        let bbox = if flip {
            bbox.map(|b| hflip_box(b, s as f32))
        } else {
            bbox
        };
        Ok((bbox, flip))
    }
}

/// `(width, height)` after torchvision's `Resize(target)` of a `w × h` image: the shorter side
/// becomes `target`, the longer `int(target · long / short)`.
pub fn resized_shorter(w: u32, h: u32, target: u32) -> (u32, u32) {
    let long_of = |long: u32, short: u32| (target as u64 * long as u64 / short as u64) as u32;
    if w <= h {
        (target, long_of(h, w))
    } else {
        (long_of(w, h), target)
    }
}

/// torchvision's `CenterCrop` offsets: `round((W − S) / 2)`, `round((H − S) / 2)` with Python's
/// round-half-to-even. Needs `W, H ≥ S`.
pub fn center_crop_params(w: u32, h: u32, s: u32) -> CropRect {
    let off = |d: u32| (d as f64 / 2.0).round_ties_even() as u32;
    CropRect {
        x: off(w - s),
        y: off(h - s),
        w: s,
        h: s,
    }
}

/// torchvision's `RandomResizedCrop.get_params`: up to ten tries of an area fraction uniform in
/// `scale` and a log-uniform aspect ratio in `ratio`, else the centre crop clamped to `ratio`.
pub fn random_resized_crop_params(
    w: u32,
    h: u32,
    scale: (f32, f32),
    ratio: (f32, f32),
    rng: &mut SplitMix64,
) -> CropRect {
    let area = w as f64 * h as f64;
    let (lr0, lr1) = ((ratio.0 as f64).ln(), (ratio.1 as f64).ln());
    for _ in 0..10 {
        let target = area * rng.uniform(scale.0 as f64, scale.1 as f64);
        let aspect = rng.uniform(lr0, lr1).exp();
        let cw = (target * aspect).sqrt().round() as i64;
        let ch = (target / aspect).sqrt().round() as i64;
        if 0 < cw && cw <= w as i64 && 0 < ch && ch <= h as i64 {
            let y = rng.below((h as i64 - ch + 1) as u64) as u32;
            let x = rng.below((w as i64 - cw + 1) as u64) as u32;
            return CropRect {
                x,
                y,
                w: cw as u32,
                h: ch as u32,
            };
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < ratio.0 as f64 {
        (w, ((w as f64 / ratio.0 as f64).round() as u32).clamp(1, h))
    } else if in_ratio > ratio.1 as f64 {
        (((h as f64 * ratio.1 as f64).round() as u32).clamp(1, w), h)
    } else {
        (w, h)
    };
    CropRect {
        x: (w - cw) / 2,
        y: (h - ch) / 2,
        w: cw,
        h: ch,
    }
}

/// Resizes the whole image to `(rw, rh)` then crops `c` (in resized pixels).
fn resize_and_crop(
    image: &RgbImage,
    bbox: Option<BBox>,
    (rw, rh): (u32, u32),
    c: CropRect,
) -> Result<(RgbImage, Option<BBox>)> {
    let (w, h) = image.dimensions();
    let whole = CropRect { x: 0, y: 0, w, h };
    let resized = crop_resize(image, whole, (rw, rh))?;
    let img = imageops::crop_imm(&resized, c.x, c.y, c.w, c.h).to_image();
    let (sx, sy) = (rw as f32 / w as f32, rh as f32 / h as f32);
    let bbox = bbox.and_then(|b| {
        let scaled = BBox::new(b.x * sx, b.y * sy, b.w * sx, b.h * sy);
        crop_box(scaled, c, 1.0, 1.0, c.w)
    });
    Ok((img, bbox))
}

/// The crop `c` of `image` (inside it) resized to `(w, h)`, as torchvision's `resized_crop`:
/// crop first, so the filter never reads outside the crop, then PIL's `BILINEAR` filter (a
/// triangle widened by the shrink factor, clamped and renormalised at the crop's edges), both
/// passes in f32 through `fast_image_resize`'s SIMD convolution, rounded to 8 bits once at the
/// end. Within half a grey level (and f32's rounding) of the exact resize
/// (`tests/datasets/data_resize.rs`).
pub fn crop_resize(image: &RgbImage, c: CropRect, (w, h): (u32, u32)) -> Result<RgbImage> {
    let shape = |e: &dyn std::fmt::Display| {
        Error::Shape(format!("resizing a {}x{} crop to {w}x{h}: {e}", c.w, c.h))
    };
    if c.w == 0 || c.h == 0 || c.x + c.w > image.width() || c.y + c.h > image.height() {
        return Err(shape(&"the crop is empty or leaves the image"));
    }
    if w == 0 || h == 0 {
        return Err(shape(&"the output is empty"));
    }
    // The library's crop option would keep reading the pixels around the crop (PIL's
    // `resize(box=…)`), which torchvision's crop-then-resize does not: take the crop first. In
    // f32, as the 8-bit path rounds between the passes (PIL does too), up to a grey level off.
    let row = image.width() as usize * 3;
    let (x0, x1) = (c.x as usize * 3, (c.x + c.w) as usize * 3);
    let crop: Vec<f32> = image
        .as_raw()
        .chunks_exact(row)
        .skip(c.y as usize)
        .take(c.h as usize)
        .flat_map(|r| r[x0..x1].iter().map(|&v| v as f32))
        .collect();
    let from = ImageRef::new(c.w, c.h, bytemuck::cast_slice(&crop), PixelType::F32x3)
        .map_err(|e| shape(&e))?;
    let mut out = vec![0.0f32; w as usize * h as usize * 3];
    let mut to = Image::from_slice_u8(w, h, bytemuck::cast_slice_mut(&mut out), PixelType::F32x3)
        .map_err(|e| shape(&e))?;
    let bilinear = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    Resizer::new()
        .resize(&from, &mut to, &bilinear)
        .map_err(|e| shape(&e))?;
    let bytes = out
        .iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage::from_raw(w, h, bytes).ok_or_else(|| shape(&"output buffer too short"))
}

/// Maps a box through a crop `c` followed by a scaling `(sx, sy)`, clipped to `[0, s]²`; `None`
/// when nothing of it is left.
pub fn crop_box(b: BBox, c: CropRect, sx: f32, sy: f32, s: u32) -> Option<BBox> {
    let s = s as f32;
    let x0 = ((b.x - c.x as f32) * sx).clamp(0.0, s);
    let y0 = ((b.y - c.y as f32) * sy).clamp(0.0, s);
    let x1 = ((b.right() - c.x as f32) * sx).clamp(0.0, s);
    let y1 = ((b.bottom() - c.y as f32) * sy).clamp(0.0, s);
    (x1 > x0 && y1 > y0).then(|| BBox::new(x0, y0, x1 - x0, y1 - y0))
}

/// The box after a horizontal flip of an image `width` wide.
pub fn hflip_box(b: BBox, width: f32) -> BBox {
    BBox::new(width - b.right(), b.y, b.w, b.h)
}

/// Writes `image` (`S × S`) as a normalised `[3, S, S]` tensor, mirrored left–right if `flip`.
pub fn normalize_into(image: &RgbImage, flip: bool, out: &mut [f32]) -> Result<()> {
    let (w, h) = image.dimensions();
    let (w, h) = (w as usize, h as usize);
    c2f_kernels::error::check_len("normalised image", out.len(), 3 * w * h)?;
    let lut: [[f32; 256]; 3] = std::array::from_fn(|c| {
        std::array::from_fn(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
    });
    let (r, rest) = out.split_at_mut(w * h);
    let (g, b) = rest.split_at_mut(w * h);
    let raw: &[u8] = image.as_raw();
    for y in 0..h {
        let src = &raw[y * w * 3..(y + 1) * w * 3];
        for x in 0..w {
            let sx = if flip { w - 1 - x } else { x };
            let p = &src[sx * 3..sx * 3 + 3];
            let o = y * w + x;
            r[o] = lut[0][p[0] as usize];
            g[o] = lut[1][p[1] as usize];
            b[o] = lut[2][p[2] as usize];
        }
    }
    Ok(())
}
