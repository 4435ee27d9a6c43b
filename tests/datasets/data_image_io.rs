//! Image decoding: gray and CMYK become RGB, EXIF orientation is honoured, bad files are errors
//! that name the path, an image above the pixel cap is refused from its header (alone and in a
//! dataset).

use std::path::PathBuf;

use crate::common::datasets::{bomb_png, expect_file_error, loader_skipped};
use c2f_kernels::Error;
use c2f_train::data::image_io::{
    decode_oriented, decode_rgb, load_rgb, orient_box, stored_size, DEFAULT_MAX_PIXELS,
};
use c2f_train::data::loader::FileSource;
use c2f_train::data::synthetic::{write_cub_layout, SyntheticConfig};
use c2f_train::data::{cub, BBox, ImageSource, Sample};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::metadata::Orientation;
use image::DynamicImage;
use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data_image_io_{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn png(data: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(data, w, h, color)
        .unwrap();
    out
}

fn jpeg(img: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 100)
        .encode_image(img)
        .unwrap();
    out
}

#[test]
fn rgb_png_is_exact() {
    let img = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8 * 40 + 10, y as u8 * 70 + 5, 200]));
    let bytes = png(img.as_raw(), 5, 3, ExtendedColorType::Rgb8);
    assert_eq!(decode_rgb(&bytes, "rgb.png").unwrap(), img);
}

#[test]
fn grayscale_png_becomes_rgb() {
    let gray: Vec<u8> = (0..12).map(|k| 20 * k as u8 + 3).collect();
    let bytes = png(&gray, 4, 3, ExtendedColorType::L8);
    let rgb = decode_rgb(&bytes, "gray.png").unwrap();
    assert_eq!(rgb.dimensions(), (4, 3));
    for (k, p) in rgb.pixels().enumerate() {
        assert_eq!(p.0, [gray[k]; 3]);
    }
    // Gray + alpha: the alpha is dropped.
    let la: Vec<u8> = (0..6)
        .flat_map(|k| [30 * k as u8 + 1, 255 - k as u8])
        .collect();
    let rgb = decode_rgb(&png(&la, 3, 2, ExtendedColorType::La8), "la.png").unwrap();
    for (k, p) in rgb.pixels().enumerate() {
        assert_eq!(p.0, [la[2 * k]; 3]);
    }
    // 16-bit RGBA: scaled to 8 bits, alpha dropped.
    let px: [u16; 4] = [65535, 32896, 257 * 7, 1000];
    let data: Vec<u8> = px.iter().flat_map(|v| v.to_be_bytes()).collect();
    let rgb = decode_rgb(&png(&data, 1, 1, ExtendedColorType::Rgba16), "16.png").unwrap();
    assert_eq!(rgb.get_pixel(0, 0).0, [255, 128, 7]);
}

#[test]
fn grayscale_jpeg_becomes_rgb() {
    let gray =
        image::GrayImage::from_fn(16, 16, |x, _| image::Luma([if x < 8 { 40 } else { 210 }]));
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, 100)
        .encode_image(&gray)
        .unwrap();
    let rgb = decode_rgb(&bytes, "gray.jpg").unwrap();
    assert_eq!(rgb.dimensions(), (16, 16));
    for p in rgb.pixels() {
        assert!(p[0] == p[1] && p[1] == p[2], "{p:?}");
    }
    assert!(rgb.get_pixel(2, 5)[0].abs_diff(40) <= 3);
    assert!(rgb.get_pixel(13, 5)[0].abs_diff(210) <= 3);
}

#[test]
fn cmyk_jpeg_becomes_rgb() {
    // Two halves: C=0 M=255 Y=255 K=0 (red) and C=255 M=0 Y=0 K=0 (cyan); and a K-only gray.
    // jpeg-encoder writes Adobe-style inverted CMYK with an APP14 marker, as Photoshop does,
    // and in the YCCK variant too.
    let (w, h) = (32u16, 16u16);
    let mut cmyk = Vec::new();
    for _ in 0..h {
        for x in 0..w {
            cmyk.extend_from_slice(if x < 16 {
                &[0, 255, 255, 0]
            } else {
                &[255, 0, 0, 0]
            });
        }
    }
    for color in [
        jpeg_encoder::ColorType::Cmyk,
        jpeg_encoder::ColorType::CmykAsYcck,
    ] {
        let mut bytes = Vec::new();
        jpeg_encoder::Encoder::new(&mut bytes, 100)
            .encode(&cmyk, w, h, color)
            .unwrap();
        let rgb = decode_rgb(&bytes, "cmyk.jpg").unwrap();
        assert_eq!(rgb.dimensions(), (32, 16));
        let red = rgb.get_pixel(4, 8).0;
        let cyan = rgb.get_pixel(27, 8).0;
        assert!(
            red[0] > 220 && red[1] < 40 && red[2] < 40,
            "{color:?}: {red:?}"
        );
        assert!(
            cyan[0] < 40 && cyan[1] > 220 && cyan[2] > 220,
            "{color:?}: {cyan:?}"
        );
    }
    let gray: Vec<u8> = (0..64).flat_map(|_| [0, 0, 0, 128]).collect();
    let mut bytes = Vec::new();
    jpeg_encoder::Encoder::new(&mut bytes, 100)
        .encode(&gray, 8, 8, jpeg_encoder::ColorType::Cmyk)
        .unwrap();
    let p = decode_rgb(&bytes, "k.jpg").unwrap().get_pixel(3, 3).0;
    for c in p {
        assert!(c.abs_diff(127) <= 4, "{p:?}");
    }
}

/// A TIFF (big-endian) holding only the EXIF orientation tag: the payload of a PNG eXIf chunk.
fn exif_tiff(orientation: u16) -> Vec<u8> {
    let mut tiff = Vec::new();
    tiff.extend_from_slice(b"MM\0\x2a"); // big-endian TIFF
    tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 at offset 8
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // count 1
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]); // value padding
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    tiff
}

/// An EXIF APP1 segment holding only the orientation tag.
fn exif_app1(orientation: u16) -> Vec<u8> {
    let mut payload = b"Exif\0\0".to_vec();
    payload.extend_from_slice(&exif_tiff(orientation));
    let mut seg = vec![0xff, 0xe1];
    seg.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    seg.extend_from_slice(&payload);
    seg
}

/// A JPEG with the EXIF segment spliced in right after SOI.
fn jpeg_with_orientation(img: &RgbImage, orientation: u16) -> Vec<u8> {
    let plain = jpeg(img);
    assert_eq!(&plain[..2], &[0xff, 0xd8]);
    let mut out = plain[..2].to_vec();
    out.extend_from_slice(&exif_app1(orientation));
    out.extend_from_slice(&plain[2..]);
    out
}

fn is_near(p: [u8; 3], want: [u8; 3]) -> bool {
    (0..3).all(|k| p[k].abs_diff(want[k]) <= 30)
}

#[test]
fn exif_orientation_is_honoured() {
    // 32×16 stored: left half red, right half blue, and a green 8×8 block at the top-left
    // corner, so every one of the eight orientations is told apart.
    const R: [u8; 3] = [220, 20, 20];
    const B: [u8; 3] = [20, 20, 220];
    const G: [u8; 3] = [20, 200, 20];
    let stored = RgbImage::from_fn(32, 16, |x, y| {
        Rgb(if x < 8 && y < 8 {
            G
        } else if x < 16 {
            R
        } else {
            B
        })
    });
    // What the viewer shows for each orientation (EXIF semantics), from the stored image.
    let expect = |o: u16| -> RgbImage {
        use image::imageops::*;
        match o {
            1 => stored.clone(),
            2 => flip_horizontal(&stored),
            3 => rotate180(&stored),
            4 => flip_vertical(&stored),
            5 => flip_horizontal(&rotate90(&stored)),
            6 => rotate90(&stored),
            7 => flip_horizontal(&rotate270(&stored)),
            8 => rotate270(&stored),
            _ => unreachable!(),
        }
    };
    for o in 1..=8u16 {
        let got = decode_rgb(&jpeg_with_orientation(&stored, o), "exif.jpg").unwrap();
        let want = expect(o);
        assert_eq!(got.dimensions(), want.dimensions(), "orientation {o}");
        // Sample block centres (away from JPEG edge ringing).
        for (x, y) in [(3, 3), (3, 12), (12, 3), (12, 12), (28, 3), (3, 28)] {
            if x < want.width() && y < want.height() {
                let w = want.get_pixel(x, y).0;
                let g = got.get_pixel(x, y).0;
                assert!(
                    is_near(g, w),
                    "orientation {o} at ({x},{y}): {g:?}, want {w:?}"
                );
            }
        }
    }
    // Orientation 6 in a file: rotated 90° clockwise, the stored left column on top.
    let dir = scratch("exif");
    let path = dir.join("rot.jpg");
    std::fs::write(&path, jpeg_with_orientation(&stored, 6)).unwrap();
    let got = load_rgb(&path).unwrap();
    assert_eq!(got.dimensions(), (16, 32));
    assert!(is_near(got.get_pixel(12, 3).0, G));
    assert!(is_near(got.get_pixel(8, 28).0, B));
    // The header size is the stored one.
    assert_eq!(stored_size(&path).unwrap(), (32, 16));
}

#[test]
fn missing_and_corrupt_files_name_the_path() {
    let dir = scratch("bad");
    let expect_file_error = |r: c2f_kernels::Result<RgbImage>, path: &str| match r {
        Err(Error::Data {
            path: p,
            line: None,
            message,
        }) => {
            assert_eq!(p, path);
            assert!(!message.is_empty());
        }
        other => panic!("{path}: expected a data error, got {other:?}"),
    };
    let missing = dir.join("nope.jpg");
    match load_rgb(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing.display().to_string()),
        other => panic!("expected an I/O error, got {other:?}"),
    }

    let garbage = dir.join("garbage.jpg");
    std::fs::write(&garbage, b"this is not an image at all, just text").unwrap();
    expect_file_error(load_rgb(&garbage), &garbage.display().to_string());

    // A JPEG cut inside its header.
    let img = RgbImage::from_fn(64, 64, |x, y| Rgb([x as u8 * 3, y as u8 * 3, 77]));
    let bytes = jpeg(&img);
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..100]).unwrap();
    expect_file_error(load_rgb(&cut), &cut.display().to_string());

    // A JPEG cut inside its entropy-coded data (the decoder alone would fill it with gray).
    for frac in [0.5, 0.95] {
        let cut = dir.join(format!("cut_{frac}.jpg"));
        std::fs::write(&cut, &bytes[..(bytes.len() as f64 * frac) as usize]).unwrap();
        expect_file_error(load_rgb(&cut), &cut.display().to_string());
    }
    // The whole file decodes, also with bytes after the end-of-image marker.
    let mut trailing = bytes.clone();
    trailing.extend_from_slice(&[0; 16]);
    assert_eq!(
        decode_rgb(&trailing, "t.jpg").unwrap().dimensions(),
        (64, 64)
    );

    // A PNG with its data chunk damaged.
    let mut p = png(img.as_raw(), 64, 64, ExtendedColorType::Rgb8);
    let n = p.len();
    for b in &mut p[n / 2..n - 20] {
        *b ^= 0x5a;
    }
    let bad_png = dir.join("bad.png");
    std::fs::write(&bad_png, &p).unwrap();
    expect_file_error(load_rgb(&bad_png), &bad_png.display().to_string());

    // Empty file, and in memory.
    let empty = dir.join("empty.png");
    std::fs::write(&empty, b"").unwrap();
    expect_file_error(load_rgb(&empty), &empty.display().to_string());
    expect_file_error(decode_rgb(&[0xff, 0xd8, 0xff], "mem.jpg"), "mem.jpg");
}

const ALL_ORIENTATIONS: [Orientation; 8] = [
    Orientation::NoTransforms,
    Orientation::FlipHorizontal,
    Orientation::Rotate180,
    Orientation::FlipVertical,
    Orientation::Rotate90FlipH,
    Orientation::Rotate90,
    Orientation::Rotate270FlipH,
    Orientation::Rotate270,
];

/// The extents of the bright pixels as a box.
fn bright_box(img: &RgbImage) -> BBox {
    let pts: Vec<(u32, u32)> = img
        .enumerate_pixels()
        .filter(|(_, _, p)| p[0] > 200)
        .map(|(x, y, _)| (x, y))
        .collect();
    let x0 = pts.iter().map(|p| p.0).min().unwrap();
    let x1 = pts.iter().map(|p| p.0).max().unwrap() + 1;
    let y0 = pts.iter().map(|p| p.1).min().unwrap();
    let y1 = pts.iter().map(|p| p.1).max().unwrap() + 1;
    BBox::new(x0 as f32, y0 as f32, (x1 - x0) as f32, (y1 - y0) as f32)
}

/// A 12×7 stored image, gray with a bright 5×2 block at (2, 1).
fn block_image() -> (RgbImage, BBox) {
    let b = BBox::new(2.0, 1.0, 5.0, 2.0);
    let img = RgbImage::from_fn(12, 7, |x, y| {
        if (2..7).contains(&x) && (1..3).contains(&y) {
            Rgb([250, 250, 250])
        } else {
            Rgb([40, 50, 60])
        }
    });
    (img, b)
}

#[test]
fn boxes_turn_with_the_orientation() {
    let (stored, b) = block_image();
    assert_eq!(bright_box(&stored), b);
    for o in ALL_ORIENTATIONS {
        let mut img = DynamicImage::ImageRgb8(stored.clone());
        img.apply_orientation(o);
        assert_eq!(
            orient_box(b, o, (12, 7)),
            bright_box(&img.into_rgb8()),
            "{o:?}"
        );
    }
}

#[test]
fn png_exif_orientation_reaches_the_file_source_box() {
    let dir = scratch("png_exif");
    let (stored, b) = block_image();
    for (k, exif) in (1..=8u16).enumerate() {
        let mut bytes = Vec::new();
        let mut enc = PngEncoder::new(&mut bytes);
        enc.set_exif_metadata(exif_tiff(exif)).unwrap();
        enc.write_image(stored.as_raw(), 12, 7, ExtendedColorType::Rgb8)
            .unwrap();
        let d = decode_oriented(&bytes, "o.png", DEFAULT_MAX_PIXELS).unwrap();
        assert_eq!(d.orientation, Orientation::from_exif(exif as u8).unwrap());
        assert_eq!(d.stored_size, (12, 7));
        let path = dir.join(format!("o{exif}.png"));
        std::fs::write(&path, &bytes).unwrap();
        let src = FileSource::new(vec![Sample {
            id: k as u64 + 1,
            path,
            label: 0,
            bbox: Some(b),
            is_train: true,
            crop_bottom: 0,
        }]);
        let item = src.load(0).unwrap();
        assert_eq!(item.bbox, Some(bright_box(&item.image)), "EXIF {exif}");
        if exif >= 5 {
            assert_eq!(item.image.dimensions(), (7, 12));
        }
    }
}

#[test]
fn an_image_above_the_pixel_cap_is_refused_from_its_header() {
    // 40000×40000 is 1.6 gigapixels, 4.8 GB as RGB, in 90-odd bytes.
    let bomb = bomb_png(40_000, 40_000);
    assert!(bomb.len() < 100, "{}", bomb.len());
    expect_file_error(
        decode_rgb(&bomb, "bomb.png"),
        std::path::Path::new("bomb.png"),
        &[
            "image too large",
            "40000×40000 is 1600000000 pixels",
            "limit of 89478485",
        ],
    );
    // The cap is exact: a 5×3 image is 15 pixels.
    let img = RgbImage::from_fn(5, 3, |x, y| Rgb([x as u8, y as u8, 9]));
    let bytes = png(img.as_raw(), 5, 3, ExtendedColorType::Rgb8);
    assert_eq!(decode_oriented(&bytes, "a.png", 15).unwrap().image, img);
    expect_file_error(
        decode_oriented(&bytes, "a.png", 14),
        std::path::Path::new("a.png"),
        &["5×3 is 15 pixels, above the limit of 14"],
    );
    // A side longer than the cap: the decoder's own limit refuses it, in the same words.
    expect_file_error(
        decode_oriented(&jpeg(&img), "a.jpg", 4),
        std::path::Path::new("a.jpg"),
        &["image too large", "the limit is 4 pixels"],
    );
}

#[test]
fn a_bomb_in_a_dataset_is_skipped_and_named() {
    let dir = scratch("bomb_dataset");
    let cfg = SyntheticConfig {
        classes: 2,
        size: 64,
        ..Default::default()
    };
    write_cub_layout(&dir, &cfg, 4, 0).unwrap();
    let ds = cub::open(&dir).unwrap();
    let train = ds.train();
    // The second training image becomes the bomb (its `.jpg` name does not matter: the format is
    // guessed from the bytes).
    std::fs::write(&train[1].path, bomb_png(40_000, 40_000)).unwrap();
    let skipped = loader_skipped(train.clone());
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    let skipped = &skipped[0];
    assert_eq!(skipped.index, 1);
    assert_eq!(skipped.name, train[1].path.display().to_string());
    assert!(
        skipped.message.contains("40000×40000 is 1600000000 pixels"),
        "{}",
        skipped.message
    );
    // A lower cap (the flag's) refuses the 64×64 images too.
    let capped = FileSource::new(train.clone()).with_max_pixels(4000);
    expect_file_error(
        capped.load(0),
        &train[0].path,
        &["64×64 is 4096 pixels, above the limit of 4000"],
    );
}
