//! Image decoding: JPEG and PNG through the `image` crate, always to 8-bit RGB.
//!
//! - Grayscale (and gray + alpha) is replicated to RGB; an alpha channel is dropped (as PIL's
//!   `convert("RGB")` does); 16-bit PNGs are scaled to 8 bits.
//! - CMYK and YCCK JPEGs: the `image` crate's JPEG decoder (zune-jpeg) asks for RGB output for
//!   every colour space other than RGB and gray, and zune-jpeg converts CMYK/YCCK to RGB itself,
//!   including Adobe's inverted CMYK; tested with a CMYK JPEG.
//! - EXIF orientation (JPEG APP1, PNG eXIf) is honoured: `ImageDecoder::orientation` then
//!   `DynamicImage::apply_orientation`, so the pixels come out the way a viewer shows them.
//!   [`orient_box`] moves a box annotated on the stored pixels along (the loader's
//!   [`super::loader::FileSource`] does).
//! - A missing or unreadable file is an [`Error::Io`], a corrupt one an [`Error::Data`], each
//!   naming the path; the loader reports it, skips the image and counts it. A truncated JPEG
//!   counts as corrupt (the decoder alone would fill the missing part with gray; see
//!   `jpeg_is_complete`).
//! - Decompression bombs: an image whose header declares more pixels than a cap (by default
//!   Pillow's [`DEFAULT_MAX_PIXELS`]; `--max-image-pixels` changes it) is refused before its
//!   pixel buffer is allocated, an [`Error::Data`] naming the file like any other bad image. A
//!   PNG of a few kilobytes can declare 40000×40000 pixels, 4.8 GB decoded. The decoders get
//!   the matching `image::Limits` too, for what they allocate themselves.

use std::io::Cursor;
use std::path::Path;

use c2f_kernels::{Error, Result};
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder, ImageError, ImageFormat, ImageReader, Limits, RgbImage};

use super::BBox;

/// Pillow's default `Image.MAX_IMAGE_PIXELS` (1024³ / 4 / 3: what 256 MiB hold at 3 bytes per
/// pixel), about 89.5 megapixels; the largest images of the datasets are a few megapixels.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// The most bytes a pixel of a JPEG or PNG decodes to (16-bit RGBA), for the decoders' own
/// allocation limit.
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// The `image` crate's default allocation limit, kept as the least the decoders get so that a
/// small pixel cap does not refuse a small image's ICC profile or text chunks.
const DECODER_ALLOC_FLOOR: u64 = 512 << 20;

/// A [`Error::Data`] about the image `name`.
fn image_error(name: &str, message: impl Into<String>) -> Error {
    Error::Data {
        path: name.to_string(),
        line: None,
        message: message.into(),
    }
}

/// A decoded image and how it was turned upright.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// RGB, EXIF orientation applied.
    pub image: RgbImage,
    /// The orientation that was applied (`NoTransforms` without EXIF).
    pub orientation: Orientation,
    /// `(width, height)` as stored in the file, before the orientation.
    pub stored_size: (u32, u32),
}

/// Decodes the image file at `path` to RGB, EXIF orientation applied, refusing one above
/// [`DEFAULT_MAX_PIXELS`].
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    load_oriented(path, DEFAULT_MAX_PIXELS).map(|d| d.image)
}

/// Decodes an encoded image held in memory; `name` is what errors call it. Refuses one above
/// [`DEFAULT_MAX_PIXELS`].
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode_oriented(bytes, name, DEFAULT_MAX_PIXELS).map(|d| d.image)
}

/// [`load_rgb`] with a pixel cap of `max_pixels`, also telling the orientation applied (to
/// carry boxes along, [`orient_box`]).
pub fn load_oriented(path: &Path, max_pixels: u64) -> Result<Decoded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_oriented(&bytes, &path.display().to_string(), max_pixels)
}

/// [`decode_rgb`] with a pixel cap of `max_pixels`, also telling the orientation applied.
pub fn decode_oriented(bytes: &[u8], name: &str, max_pixels: u64) -> Result<Decoded> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| image_error(name, format!("cannot read: {e}")))?;
    reader.limits(decoder_limits(max_pixels));
    match reader.format() {
        None => {
            return Err(image_error(
                name,
                "cannot decode image: not a JPEG or PNG file",
            ))
        }
        Some(ImageFormat::Jpeg) if !jpeg_is_complete(bytes) => {
            return Err(image_error(
                name,
                "cannot decode image: truncated JPEG (no end-of-image marker after the last scan)",
            ))
        }
        Some(_) => {}
    }
    let corrupt = |e: ImageError| match e {
        ImageError::Limits(e) => image_error(
            name,
            format!("image too large: {e} (the limit is {max_pixels} pixels, --max-image-pixels)"),
        ),
        e => image_error(name, format!("cannot decode image: {e}")),
    };
    // The header only: nothing the size of the image is allocated before the check.
    let mut decoder = reader.into_decoder().map_err(corrupt)?;
    let stored_size = decoder.dimensions();
    let (w, h) = stored_size;
    let pixels = u64::from(w) * u64::from(h);
    if pixels > max_pixels {
        return Err(image_error(
            name,
            format!(
                "image too large: {w}×{h} is {pixels} pixels, above the limit of {max_pixels} \
                 (--max-image-pixels; a decompression bomb?)"
            ),
        ));
    }
    // A malformed EXIF block is no reason to lose the image: treat it as "no rotation".
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let mut img = DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    img.apply_orientation(orientation);
    let image = match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        other => other.into_rgb8(),
    };
    Ok(Decoded {
        image,
        orientation,
        stored_size,
    })
}

/// The decoders' own limits for a cap of `max_pixels`: no side longer than the cap (zune-jpeg
/// and the PNG decoder check it on the header), and their own buffers (PNG's decompressed
/// chunks) no larger than the largest allowed image at the widest pixel format.
fn decoder_limits(max_pixels: u64) -> Limits {
    let mut limits = Limits::default();
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(
        max_pixels
            .saturating_mul(MAX_BYTES_PER_PIXEL)
            .max(DECODER_ALLOC_FLOOR),
    );
    limits
}

/// Maps a box given in stored pixels of a `w × h` image to the pixels of the image after
/// `orientation` was applied (as [`decode_rgb`] does).
///
/// Dataset boxes are in stored pixels: the annotation tools of the time, like PIL (and so
/// torchvision's loader), ignored EXIF orientation.
pub fn orient_box(b: BBox, orientation: Orientation, (w, h): (u32, u32)) -> BBox {
    let (w, h) = (w as f32, h as f32);
    match orientation {
        Orientation::NoTransforms => b,
        Orientation::FlipHorizontal => BBox::new(w - b.right(), b.y, b.w, b.h),
        Orientation::FlipVertical => BBox::new(b.x, h - b.bottom(), b.w, b.h),
        Orientation::Rotate180 => BBox::new(w - b.right(), h - b.bottom(), b.w, b.h),
        // Clockwise by 90°: (x, y) → (h − y, x).
        Orientation::Rotate90 => BBox::new(h - b.bottom(), b.x, b.h, b.w),
        // Clockwise by 270°: (x, y) → (y, w − x).
        Orientation::Rotate270 => BBox::new(b.y, w - b.right(), b.h, b.w),
        // Transpose: (x, y) → (y, x).
        Orientation::Rotate90FlipH => BBox::new(b.y, b.x, b.h, b.w),
        // Transverse: (x, y) → (h − y, w − x).
        Orientation::Rotate270FlipH => BBox::new(h - b.bottom(), w - b.right(), b.h, b.w),
    }
}

/// Whether a JPEG has an end-of-image marker (`FF D9`) after its last start-of-scan (`FF DA`).
///
/// The `image` crate's JPEG decoder (zune-jpeg, non-strict) fills a truncated file's missing
/// rows with gray instead of failing; PIL refuses such files, and so do we. Entropy-coded data
/// never holds `FF DA` or `FF D9` (an `FF` there is followed by `00` or a restart marker), so
/// the last `FF DA` starts the last scan, and an `FF D9` after it means the data is all there.
/// (An EXIF thumbnail's own markers come before the main image's scans.)
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_sos = bytes.windows(2).rposition(|w| w == [0xff, 0xda]);
    match last_sos {
        Some(k) => bytes[k..].windows(2).any(|w| w == [0xff, 0xd9]),
        None => false,
    }
}

/// The size `(width, height)` of the image at `path` as stored (before EXIF orientation), from
/// its header.
pub fn stored_size(path: &Path) -> Result<(u32, u32)> {
    ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?
        .into_dimensions()
        .map_err(|e| {
            image_error(
                &path.display().to_string(),
                format!("cannot decode image header: {e}"),
            )
        })
}
