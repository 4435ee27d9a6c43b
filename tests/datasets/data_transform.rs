//! Transforms: exact centre-crop values, the flip and its box, normalisation, torchvision's crop
//! arithmetic, determinism, and boxes that follow the image content.

use c2f_kernels::rng::SplitMix64;
use c2f_train::data::transform::{
    center_crop_params, crop_box, hflip_box, random_resized_crop_params, resized_shorter, CropRect,
    TrainCrop, Transform, IMAGENET_MEAN, IMAGENET_STD,
};
use c2f_train::data::BBox;
use image::{Rgb, RgbImage};

fn norm(v: u8, c: usize) -> f32 {
    (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
}

/// A hand-made image whose every pixel is distinct: `(10x + y + 5, 200 − 7y − x, 3x·y + 1)`.
fn ramp(w: u32, h: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        Rgb([
            (10 * x + y + 5) as u8,
            (200 - 7 * y - x) as u8,
            (3 * x * y + 1) as u8,
        ])
    })
}

fn pixel(out: &[f32], s: usize, c: usize, x: usize, y: usize) -> f32 {
    out[c * s * s + y * s + x]
}

#[test]
fn normalisation_values() {
    let img = RgbImage::from_fn(2, 1, |x, _| {
        if x == 0 {
            Rgb([255, 0, 128])
        } else {
            Rgb([10, 20, 30])
        }
    });
    let t = Transform::Test { resize: 1, size: 1 };
    // A 2×1 image resized to shorter side 1 stays 2×1; the centre crop takes x = round(0.5) = 0.
    let out = t.apply(&img, None, &mut SplitMix64(0)).unwrap();
    let want = [
        (1.0 - 0.485) / 0.229,
        (0.0 - 0.456) / 0.224,
        (128.0 / 255.0 - 0.406) / 0.225,
    ];
    for (c, w) in want.iter().enumerate() {
        assert!((out.pixels[c] - w).abs() < 1e-6, "{c}: {}", out.pixels[c]);
    }
}

#[test]
fn centre_crop_takes_the_exact_middle() {
    // 6×4, shorter side already 4: no resampling; the crop is columns 1..5.
    let img = ramp(6, 4);
    let t = Transform::Test { resize: 4, size: 4 };
    let bbox = BBox::new(2.0, 1.0, 3.0, 2.0);
    let out = t.apply(&img, Some(bbox), &mut SplitMix64(1)).unwrap();
    assert!(!out.flipped);
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..4 {
                let want = norm(img.get_pixel(x as u32 + 1, y as u32)[c], c);
                assert_eq!(pixel(&out.pixels, 4, c, x, y), want, "c{c} ({x},{y})");
            }
        }
    }
    assert_eq!(out.bbox, Some(BBox::new(1.0, 1.0, 3.0, 2.0)));
    // Tall image, odd margin: 4×9 → rows round(5/2) = 2 (ties to even) .. 6.
    let img = ramp(4, 9);
    let out = t.apply(&img, None, &mut SplitMix64(1)).unwrap();
    for y in 0..4 {
        assert_eq!(
            pixel(&out.pixels, 4, 0, 1, y),
            norm(img.get_pixel(1, y as u32 + 2)[0], 0)
        );
    }
}

#[test]
fn torchvision_size_arithmetic() {
    assert_eq!(resized_shorter(500, 375, 256), (341, 256));
    assert_eq!(resized_shorter(375, 500, 256), (256, 341));
    assert_eq!(resized_shorter(300, 300, 299), (299, 299));
    // round((W − S) / 2) with ties to even: 1.5 → 2, 2.5 → 2, 0.5 → 0.
    assert_eq!(center_crop_params(7, 4, 4).x, 2);
    assert_eq!(center_crop_params(9, 4, 4).x, 2);
    assert_eq!(center_crop_params(5, 4, 4).x, 0);
    assert_eq!(
        Transform::test(448),
        Transform::Test {
            resize: 512,
            size: 448
        }
    );
}

#[test]
fn resize_then_centre_crop_scales_the_box() {
    // 8×4 → shorter side 2 gives 4×2, centre crop 2 takes x in 1..3 (resized pixels).
    let img = ramp(8, 4);
    let t = Transform::Test { resize: 2, size: 2 };
    let out = t
        .apply(
            &img,
            Some(BBox::new(2.0, 0.0, 4.0, 2.0)),
            &mut SplitMix64(0),
        )
        .unwrap();
    // Box in resized pixels: x 1..3, y 0..1; minus the crop offset 1.
    assert_eq!(out.bbox, Some(BBox::new(0.0, 0.0, 2.0, 1.0)));
    // A box entirely outside the crop disappears.
    let out = t
        .apply(
            &img,
            Some(BBox::new(0.0, 0.0, 1.0, 1.0)),
            &mut SplitMix64(0),
        )
        .unwrap();
    assert_eq!(out.bbox, None);
}

#[test]
fn flip_mirrors_pixels_and_box() {
    // Full-image crop (scale 1, ratio 1 on a square image) at the same size: only the flip acts.
    let img = ramp(8, 8);
    let t = Transform::Train {
        size: 8,
        crop: TrainCrop::RandomResized {
            scale: (1.0, 1.0),
            ratio: (1.0, 1.0),
        },
        hflip: true,
    };
    let bbox = BBox::new(1.0, 2.0, 3.0, 4.0);
    let mut flips = 0;
    for seed in 0..16 {
        let out = t.apply(&img, Some(bbox), &mut SplitMix64(seed)).unwrap();
        for y in 0..8 {
            for x in 0..8 {
                let sx = if out.flipped { 7 - x } else { x };
                assert_eq!(
                    pixel(&out.pixels, 8, 1, x, y),
                    norm(img.get_pixel(sx as u32, y as u32)[1], 1)
                );
            }
        }
        if out.flipped {
            flips += 1;
            assert_eq!(out.bbox, Some(BBox::new(4.0, 2.0, 3.0, 4.0)));
        } else {
            assert_eq!(out.bbox, Some(bbox));
        }
    }
    assert!((3..=13).contains(&flips), "{flips} flips in 16");
    assert_eq!(hflip_box(bbox, 8.0), BBox::new(4.0, 2.0, 3.0, 4.0));
}

#[test]
fn random_resized_crop_params_follow_torchvision() {
    let mut rng = SplitMix64(3);
    let (w, h) = (500u32, 375u32);
    for _ in 0..500 {
        let c = random_resized_crop_params(w, h, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut rng);
        assert!(
            c.w >= 1 && c.h >= 1 && c.x + c.w <= w && c.y + c.h <= h,
            "{c:?}"
        );
        let area = (c.w * c.h) as f64 / (w * h) as f64;
        let ratio = c.w as f64 / c.h as f64;
        let full = c.w == w && c.h == h; // the fallback for in-range ratios
        assert!(full || (0.075..=1.01).contains(&area), "{c:?}: area {area}");
        assert!(
            full || (0.7..=1.43).contains(&ratio),
            "{c:?}: ratio {ratio}"
        );
    }
    // No try can fit: centre crop clamped to the largest ratio.
    let c = random_resized_crop_params(1000, 10, (0.9, 1.0), (0.75, 4.0 / 3.0), &mut rng);
    assert_eq!(
        c,
        CropRect {
            x: 493,
            y: 0,
            w: 13,
            h: 10
        }
    );
    // Deterministic from the seed.
    let a =
        random_resized_crop_params(640, 480, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut SplitMix64(9));
    let b =
        random_resized_crop_params(640, 480, (0.08, 1.0), (0.75, 4.0 / 3.0), &mut SplitMix64(9));
    assert_eq!(a, b);
}

#[test]
fn crop_box_clips() {
    let c = CropRect {
        x: 10,
        y: 10,
        w: 20,
        h: 20,
    };
    assert_eq!(
        crop_box(BBox::new(5.0, 15.0, 10.0, 30.0), c, 2.0, 2.0, 40),
        Some(BBox::new(0.0, 10.0, 10.0, 30.0))
    );
    assert_eq!(
        crop_box(BBox::new(0.0, 0.0, 5.0, 5.0), c, 1.0, 1.0, 20),
        None
    );
}

/// A gray image with a bright solid rectangle (the "object"); the transformed box must hold
/// every bright output pixel.
#[test]
fn box_follows_the_content_through_random_transforms() {
    let (w, h) = (120u32, 90u32);
    let obj = BBox::new(30.0, 20.0, 40.0, 30.0);
    let img = RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as f32, y as f32);
        if x >= obj.x && x < obj.right() && y >= obj.y && y < obj.bottom() {
            Rgb([250, 240, 230])
        } else {
            Rgb([60, 70, 80])
        }
    });
    let transforms = [
        Transform::train(32),
        Transform::Train {
            size: 32,
            crop: TrainCrop::ResizeRandom { resize: 40 },
            hflip: true,
        },
        Transform::test(32),
    ];
    let bright = norm(200, 0);
    for t in transforms {
        let mut seen_box = 0;
        for seed in 0..60 {
            let out = t.apply(&img, Some(obj), &mut SplitMix64(seed)).unwrap();
            assert_eq!(out.pixels.len(), 3 * 32 * 32);
            let mut any = false;
            for y in 0..32 {
                for x in 0..32 {
                    if pixel(&out.pixels, 32, 0, x, y) > bright {
                        any = true;
                        let b = out
                            .bbox
                            .unwrap_or_else(|| panic!("{t:?} seed {seed}: no box"));
                        let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                        assert!(
                            fx > b.x - 1.0
                                && fx < b.right() + 1.0
                                && fy > b.y - 1.0
                                && fy < b.bottom() + 1.0,
                            "{t:?} seed {seed}: bright ({x},{y}) outside {b:?}"
                        );
                    }
                }
            }
            if let Some(b) = out.bbox {
                seen_box += 1;
                // Where there is a box of some size, its centre is bright.
                if b.w >= 3.0 && b.h >= 3.0 {
                    let (cx, cy) = ((b.x + b.w / 2.0) as usize, (b.y + b.h / 2.0) as usize);
                    assert!(
                        pixel(&out.pixels, 32, 0, cx.min(31), cy.min(31)) > bright,
                        "{t:?} seed {seed}: box {b:?} centre is not on the object"
                    );
                }
            } else {
                assert!(!any);
            }
        }
        assert!(seen_box > 20, "{t:?}");
    }
}

#[test]
fn train_transform_is_deterministic_from_the_seed() {
    let img = ramp(23, 17);
    let t = Transform::train(16);
    let a = t.apply(&img, None, &mut SplitMix64(42)).unwrap();
    let b = t.apply(&img, None, &mut SplitMix64(42)).unwrap();
    assert_eq!(a.pixels, b.pixels);
    let differ =
        (0..20).any(|s| t.apply(&img, None, &mut SplitMix64(s)).unwrap().pixels != a.pixels);
    assert!(differ);
}

#[test]
fn invalid_transforms_are_errors() {
    let img = ramp(8, 8);
    let bad = [
        Transform::Test { resize: 3, size: 4 },
        Transform::Train {
            size: 4,
            crop: TrainCrop::RandomResized {
                scale: (0.0, 1.0),
                ratio: (0.75, 1.33),
            },
            hflip: false,
        },
        Transform::Train {
            size: 4,
            crop: TrainCrop::ResizeRandom { resize: 2 },
            hflip: false,
        },
    ];
    for t in bad {
        assert!(t.apply(&img, None, &mut SplitMix64(0)).is_err(), "{t:?}");
    }
    let t = Transform::test(4);
    assert!(t
        .apply_into(&img, None, &mut SplitMix64(0), &mut [0.0; 5])
        .is_err());
}
