//! Image decoding: PNGs of every colour type the datasets meet, JPEGs (RGB, gray, CMYK, EXIF
//! orientation), and the 40000×40000 header of a few bytes, which must stay refused.

use std::path::Path;

use crate::common::datasets::bomb_png;
use crate::harness::{fuzz, named_under};
use c2f_train::data::image_io::decode_oriented;
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

/// The fuzzed decoder's pixel cap: 4 megapixels, so that a mutated header below the cap still
/// decodes within the harness's allocation bound (16-bit RGBA: 32 MB).
const MAX_PIXELS: u64 = 1 << 22;

fn png(data: &[u8], w: u32, h: u32, color: ExtendedColorType, exif: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    if let Some(exif) = exif {
        encoder.set_exif_metadata(exif).unwrap();
    }
    encoder.write_image(data, w, h, color).unwrap();
    out
}

/// `data` with every PNG chunk's CRC made right again: a structure-aware touch on the
/// structure-unaware mutator, without which nearly every mutated PNG fails its checksum and
/// goes no deeper into the decoder.
fn with_png_crcs(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    if !out.starts_with(b"\x89PNG\r\n\x1a\n") {
        return out;
    }
    let mut at = 8;
    while at + 12 <= out.len() {
        let len = u32::from_be_bytes(out[at..at + 4].try_into().unwrap()) as usize;
        let Some(end) = (at + 8)
            .checked_add(len)
            .filter(|&end| end + 4 <= out.len())
        else {
            break;
        };
        let mut crc = flate2::Crc::new();
        crc.update(&out[at + 4..end]);
        out[end..end + 4].copy_from_slice(&crc.sum().to_be_bytes());
        at = end + 4;
    }
    out
}

/// A little-endian TIFF block holding one EXIF orientation.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"II*\0".to_vec();
    t.extend(8u32.to_le_bytes());
    t.extend(1u16.to_le_bytes());
    t.extend(0x0112u16.to_le_bytes());
    t.extend(3u16.to_le_bytes());
    t.extend(1u32.to_le_bytes());
    t.extend([orientation as u8, 0, 0, 0]);
    t.extend(0u32.to_le_bytes());
    t
}

/// A JPEG with an APP1 EXIF segment after SOI.
fn jpeg_with_exif(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let mut plain = Vec::new();
    JpegEncoder::new_with_quality(&mut plain, 90)
        .encode_image(img)
        .unwrap();
    let mut app1 = b"Exif\0\0".to_vec();
    app1.extend(exif_tiff(orientation));
    let mut out = plain[..2].to_vec();
    out.extend([0xff, 0xe1]);
    out.extend(((app1.len() + 2) as u16).to_be_bytes());
    out.extend(app1);
    out.extend(&plain[2..]);
    out
}

#[test]
fn image_decoding() {
    let rgb = RgbImage::from_fn(12, 8, |x, y| Rgb([x as u8 * 20, y as u8 * 30, 99]));
    let gray: Vec<u8> = (0..96).map(|k| k as u8 * 2).collect();
    let rgba16: Vec<u8> = (0..12 * 8 * 4)
        .flat_map(|k: u16| (k * 97).to_be_bytes())
        .collect();
    let mut gray_jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut gray_jpeg, 90)
        .encode_image(&image::GrayImage::from_raw(12, 8, gray.clone()).unwrap())
        .unwrap();
    let mut cmyk_jpeg = Vec::new();
    let cmyk: Vec<u8> = (0..12 * 8 * 4).map(|k| (k * 7) as u8).collect();
    jpeg_encoder::Encoder::new(&mut cmyk_jpeg, 90)
        .encode(&cmyk, 12, 8, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let corpus = vec![
        png(rgb.as_raw(), 12, 8, ExtendedColorType::Rgb8, None),
        png(&gray, 12, 8, ExtendedColorType::L8, None),
        png(&rgba16, 12, 8, ExtendedColorType::Rgba16, None),
        png(
            rgb.as_raw(),
            12,
            8,
            ExtendedColorType::Rgb8,
            Some(exif_tiff(6)),
        ),
        jpeg_with_exif(&rgb, 8),
        gray_jpeg,
        cmyk_jpeg,
        bomb_png(40_000, 40_000),
    ];
    fuzz("image_decoding", 100_000, &corpus, |_, data| {
        named_under(
            decode_oriented(&with_png_crcs(data), "fuzz.img", MAX_PIXELS),
            Path::new("fuzz.img"),
        )
    });
}
