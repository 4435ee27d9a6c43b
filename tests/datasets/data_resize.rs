//! The training transform's crop + resize ([`crop_resize`]) against the exact resize it stands
//! for: torchvision's `resized_crop` with bilinear antialiasing (PIL's `BILINEAR`), computed
//! here in f64 and itself held to torchvision's float64 output
//! (`tests/data/resize_golden.safetensors`, made by `tools/make_resize_golden.py`).

use c2f_kernels::rng::SplitMix64;
use c2f_train::data::transform::{crop_resize, random_resized_crop_params, CropRect};
use image::RgbImage;
use safetensors::SafeTensors;

use crate::common::recorded::floats;

/// PIL's antialiased bilinear weights along one axis: for each output pixel, the first input
/// pixel and the normalised weights of the triangle filter widened by the shrink factor,
/// clamped to `[0, input)`.
fn weights(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    let support = scale.max(1.0);
    (0..output)
        .map(|o| {
            let center = (o as f64 + 0.5) * scale;
            let lo = (center - support).floor().max(0.0) as usize;
            let hi = ((center + support).ceil() as usize).min(input);
            let w: Vec<f64> = (lo..hi)
                .map(|i| (1.0 - ((i as f64 + 0.5 - center) / support).abs()).max(0.0))
                .collect();
            let sum: f64 = w.iter().sum();
            (lo, w.iter().map(|v| v / sum).collect())
        })
        .collect()
}

/// The exact resize of `c` of the `width`-wide HWC image `pixels` to `(w, h)`: `[3, h, w]`,
/// on the 0-255 scale, unrounded.
fn exact(pixels: &[u8], width: usize, c: CropRect, (w, h): (usize, usize)) -> Vec<f64> {
    let (cw, ch) = (c.w as usize, c.h as usize);
    let at = |x: usize, y: usize, k: usize| {
        pixels[((c.y as usize + y) * width + c.x as usize + x) * 3 + k] as f64
    };
    let (wx, wy) = (weights(cw, w), weights(ch, h));
    // Horizontal pass: [ch, w, 3].
    let mut rows = vec![0.0; ch * w * 3];
    for y in 0..ch {
        for (x, (lo, ws)) in wx.iter().enumerate() {
            for k in 0..3 {
                rows[(y * w + x) * 3 + k] = ws
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * at(lo + i, y, k))
                    .sum();
            }
        }
    }
    let mut out = vec![0.0; 3 * h * w];
    for (y, (lo, ws)) in wy.iter().enumerate() {
        for x in 0..w {
            for k in 0..3 {
                out[(k * h + y) * w + x] = ws
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * rows[((lo + i) * w + x) * 3 + k])
                    .sum();
            }
        }
    }
    out
}

/// The largest and the mean absolute difference between an 8-bit `[h, w, 3]` image and a
/// `[3, h, w]` reference.
fn distance(image: &RgbImage, reference: &[f64]) -> (f64, f64) {
    let (w, h) = (image.width() as usize, image.height() as usize);
    assert_eq!(reference.len(), 3 * w * h);
    let (mut max, mut sum) = (0.0f64, 0.0);
    for (i, &v) in image.as_raw().iter().enumerate() {
        let (p, k) = (i / 3, i % 3);
        let d = (v as f64 - reference[k * w * h + p]).abs();
        max = max.max(d);
        sum += d;
    }
    (max, sum / reference.len() as f64)
}

struct Case {
    name: String,
    image: Vec<u8>,
    width: usize,
    crop: CropRect,
    torch: Vec<f64>,
    out: (usize, usize),
    pil: Vec<u8>,
}

fn cases() -> Vec<Case> {
    static BYTES: &[u8] = include_bytes!("../data/resize_golden.safetensors");
    let file = SafeTensors::deserialize(BYTES).expect("tests/data/resize_golden.safetensors");
    let mut names: Vec<String> = file
        .names()
        .iter()
        .filter_map(|n| n.strip_suffix(".image").map(str::to_owned))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "golden cases: {names:?}");
    names
        .into_iter()
        .map(|name| {
            let t = |suffix: &str| file.tensor(&format!("{name}.{suffix}")).unwrap();
            let (image, torch, crop, pil) = (t("image"), t("torch"), t("crop"), t("pil"));
            let crop: Vec<i64> = crop
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect();
            Case {
                width: image.shape()[1],
                image: image.data().to_vec(),
                crop: CropRect {
                    x: crop[0] as u32,
                    y: crop[1] as u32,
                    w: crop[2] as u32,
                    h: crop[3] as u32,
                },
                out: (torch.shape()[2], torch.shape()[1]),
                torch: floats(&file, &format!("{name}.torch")),
                pil: pil.data().to_vec(),
                name,
            }
        })
        .collect()
}

fn rgb(pixels: &[u8], width: usize) -> RgbImage {
    RgbImage::from_raw(
        width as u32,
        (pixels.len() / 3 / width) as u32,
        pixels.to_vec(),
    )
    .unwrap()
}

#[test]
fn exact_resize_is_torchvisions() {
    for case in cases() {
        let got = exact(&case.image, case.width, case.crop, case.out);
        let worst = got
            .iter()
            .zip(&case.torch)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-9,
            "{}: {worst} grey levels from torchvision",
            case.name
        );
    }
}

#[test]
fn crop_resize_matches_the_exact_resize_and_pil_on_the_golden_cases() {
    for case in cases() {
        let (w, h) = case.out;
        let got = crop_resize(
            &rgb(&case.image, case.width),
            case.crop,
            (w as u32, h as u32),
        )
        .unwrap();
        let pil_off = got
            .as_raw()
            .iter()
            .zip(&case.pil)
            .map(|(&a, &b)| a.abs_diff(b))
            .max()
            .unwrap();
        let (max, mean) = distance(&got, &case.torch);
        assert!(
            max <= ONE_ROUNDING,
            "{}: {max} grey levels from the exact resize",
            case.name
        );
        assert!(mean < 0.3, "{}: mean error {mean}", case.name);
        // PIL rounds to 8 bits between its two passes too, so it lands up to a level away.
        assert!(
            pil_off <= 1,
            "{}: {pil_off} grey levels from PIL",
            case.name
        );
    }
}

/// One rounding to 8 bits after an exact resize is at most half a grey level off; f32's
/// arithmetic in the two passes may move a value across a rounding boundary by far less.
const ONE_ROUNDING: f64 = 0.5 + 1e-3;

#[test]
fn crop_resize_is_within_half_a_grey_level_of_the_exact_resize() {
    // Noise, the worst case at a crop's edges, at CUB's typical size, through random crops as
    // the training transform draws them, shrunk to 299² and mostly enlarged to 448².
    let (width, height) = (500u32, 375u32);
    let mut rng = SplitMix64(7);
    let pixels: Vec<u8> = (0..width * height * 3)
        .map(|_| rng.below(256) as u8)
        .collect();
    let image = rgb(&pixels, width as usize);
    for size in [299u32, 448] {
        for _ in 0..4 {
            let c =
                random_resized_crop_params(width, height, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
            let reference = exact(&pixels, width as usize, c, (size as usize, size as usize));
            let got = crop_resize(&image, c, (size, size)).unwrap();
            let (max, mean) = distance(&got, &reference);
            assert!(
                max <= ONE_ROUNDING,
                "{size}², {c:?}: {max} grey levels from the exact resize"
            );
            // Rounding errors spread evenly over [0, 1/2): a mean far from 1/4 is a bias.
            assert!(
                (mean - 0.25).abs() < 0.01,
                "{size}², {c:?}: mean error {mean}"
            );
        }
    }
}

#[test]
fn crop_resize_refuses_a_crop_outside_the_image() {
    let image = RgbImage::new(10, 8);
    for c in [
        CropRect {
            x: 0,
            y: 0,
            w: 0,
            h: 4,
        },
        CropRect {
            x: 5,
            y: 0,
            w: 6,
            h: 4,
        },
        CropRect {
            x: 0,
            y: 7,
            w: 4,
            h: 2,
        },
    ] {
        let e = crop_resize(&image, c, (4, 4)).unwrap_err();
        assert!(
            e.to_string()
                .contains("the crop is empty or leaves the image"),
            "{e}"
        );
    }
    let whole = CropRect {
        x: 0,
        y: 0,
        w: 10,
        h: 8,
    };
    let e = crop_resize(&image, whole, (0, 3)).unwrap_err();
    assert!(e.to_string().contains("the output is empty"), "{e}");
}
