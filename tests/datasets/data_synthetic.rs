//! The built-in synthetic fine-grained set: determinism, class balance, boxes, and that classes
//! differ only in the spot pattern on the object.

use c2f_train::data::synthetic::{
    class_name, max_classes, patterns, render, Split, SyntheticConfig, SyntheticSet,
};
use c2f_train::data::{BBox, ImageSource};
use image::RgbImage;

fn set(config: SyntheticConfig, len: usize) -> SyntheticSet {
    SyntheticSet::new(config, Split::Train, len).unwrap()
}

/// Pixels where two images differ by more than `tol` in some channel.
fn diff_pixels(a: &RgbImage, b: &RgbImage, tol: u8) -> Vec<(u32, u32)> {
    assert_eq!(a.dimensions(), b.dimensions());
    a.enumerate_pixels()
        .zip(b.pixels())
        .filter(|((_, _, p), q)| (0..3).any(|k| p[k].abs_diff(q[k]) > tol))
        .map(|((x, y, _), _)| (x, y))
        .collect()
}

fn inside(b: &BBox, (x, y): (u32, u32)) -> bool {
    let (x, y) = (x as f32, y as f32);
    x >= b.x && y >= b.y && x + 1.0 <= b.right() && y + 1.0 <= b.bottom()
}

fn variance(img: &RgbImage) -> f64 {
    let v: Vec<f64> = img.as_raw().iter().map(|&x| x as f64).collect();
    let mean = v.iter().sum::<f64>() / v.len() as f64;
    v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64
}

#[test]
fn same_seed_same_bytes_and_every_index_differs() {
    let cfg = SyntheticConfig {
        seed: 7,
        ..Default::default()
    };
    let a = set(cfg.clone(), 20);
    let b = set(cfg.clone(), 20);
    let mut seen: Vec<Vec<u8>> = Vec::new();
    for i in 0..20 {
        let x = a.get(i);
        let y = b.get(i);
        assert_eq!(x.image.as_raw(), y.image.as_raw(), "index {i}");
        assert_eq!((x.label, x.bbox), (y.label, y.bbox));
        assert!(variance(&x.image) > 100.0, "index {i} is nearly flat");
        assert!(!seen.contains(x.image.as_raw()), "index {i} repeats");
        seen.push(x.image.as_raw().clone());
    }
    // Another seed, and the test split, give other images.
    let other = set(
        SyntheticConfig {
            seed: 8,
            ..cfg.clone()
        },
        1,
    );
    assert_ne!(other.get(0).image.as_raw(), a.get(0).image.as_raw());
    let test = SyntheticSet::new(cfg, Split::Test, 1).unwrap();
    assert_ne!(test.get(0).image.as_raw(), a.get(0).image.as_raw());
}

#[test]
fn classes_are_balanced_and_named() {
    let s = set(
        SyntheticConfig {
            classes: 7,
            ..Default::default()
        },
        700,
    );
    let mut counts = [0usize; 7];
    for i in 0..s.len() {
        counts[ImageSource::label(&s, i)] += 1;
    }
    assert_eq!(counts, [100; 7]);
    for i in 0..14 {
        assert_eq!(s.get(i).label, i % 7);
    }
    assert_eq!(max_classes(), patterns().len());
    assert!(max_classes() >= 50);
    let names: std::collections::HashSet<_> = (0..max_classes()).map(class_name).collect();
    assert_eq!(names.len(), max_classes());
}

#[test]
fn config_is_validated() {
    for bad in [
        SyntheticConfig {
            classes: 1,
            ..Default::default()
        },
        SyntheticConfig {
            classes: max_classes() + 1,
            ..Default::default()
        },
        SyntheticConfig {
            size: 32,
            ..Default::default()
        },
        SyntheticConfig {
            object_scale: (0.6, 0.5),
            ..Default::default()
        },
    ] {
        assert!(
            SyntheticSet::new(bad.clone(), Split::Train, 1).is_err(),
            "{bad:?}"
        );
    }
    for size in [96u32, 299, 448] {
        let s = set(
            SyntheticConfig {
                size,
                classes: max_classes(),
                ..Default::default()
            },
            3,
        );
        for i in 0..3 {
            assert_eq!(s.get(i).image.dimensions(), (size, size));
        }
    }
}

#[test]
fn box_is_tight_around_the_object_pixels() {
    // The scene without the beetle differs from the scene with it exactly on the object.
    for size in [96u32, 128, 256] {
        let s = set(
            SyntheticConfig {
                size,
                ..Default::default()
            },
            40,
        );
        for i in 0..40 {
            let n = s.nuisance(i);
            let with = render(Some(s.label(i)), &n);
            let without = render(None, &n);
            assert!(without.bbox.is_none());
            let b = with.bbox.unwrap();
            assert_eq!(Some(b), Some(s.get(i).bbox));
            assert!(b.x >= 0.0 && b.y >= 0.0, "{b:?}");
            assert!(
                b.right() <= size as f32 && b.bottom() <= size as f32,
                "{b:?}"
            );
            let d = diff_pixels(&with.image, &without.image, 0);
            assert!(!d.is_empty());
            for &p in &d {
                assert!(inside(&b, p), "size {size} index {i}: {p:?} outside {b:?}");
            }
            // Tight: the differing pixels reach each edge of the box (to within 2 pixels).
            let x0 = d.iter().map(|p| p.0).min().unwrap() as f32;
            let x1 = d.iter().map(|p| p.0).max().unwrap() as f32 + 1.0;
            let y0 = d.iter().map(|p| p.1).min().unwrap() as f32;
            let y1 = d.iter().map(|p| p.1).max().unwrap() as f32 + 1.0;
            assert!(
                x0 - b.x <= 2.0
                    && y0 - b.y <= 2.0
                    && b.right() - x1 <= 2.0
                    && b.bottom() - y1 <= 2.0,
                "index {i}: pixels span {x0}..{x1} × {y0}..{y1}, box {b:?}"
            );
        }
    }
}

#[test]
fn classes_differ_only_in_small_details_inside_the_box() {
    let cfg = SyntheticConfig::default();
    let s = set(cfg.clone(), 12);
    let area = (cfg.size * cfg.size) as f64;
    for i in 0..12 {
        let n = s.nuisance(i);
        let renders: Vec<_> = (0..cfg.classes).map(|c| render(Some(c), &n)).collect();
        let b = renders[0].bbox.unwrap();
        for (c, r) in renders.iter().enumerate() {
            assert_eq!(r.bbox, Some(b), "class {c} changed the box");
        }
        for a in 0..cfg.classes {
            for c in a + 1..cfg.classes {
                let d = diff_pixels(&renders[a].image, &renders[c].image, 0);
                assert!(!d.is_empty(), "classes {a} and {c} render the same");
                for &p in &d {
                    assert!(inside(&b, p), "{p:?} outside {b:?}");
                }
                // The discriminative detail is small: a few percent of the image at most, and
                // a minority of the box.
                let frac = d.len() as f64 / area;
                assert!(frac < 0.03, "classes {a}, {c}: {frac} of the image differs");
                assert!((d.len() as f64) < 0.35 * b.area() as f64);
            }
        }
    }
}

#[test]
fn colour_and_scale_are_shared_across_classes() {
    // The nuisance draws do not look at the label: the mean shell colour and the box size per
    // class are spread alike. Compare class 0 with class 1 over many samples.
    let cfg = SyntheticConfig::default();
    let s = set(cfg.clone(), 400);
    let mut stats = [(0.0f64, 0.0f64, 0usize); 2];
    for i in 0..400 {
        let l = s.label(i);
        if l > 1 {
            continue;
        }
        let smp = s.get(i);
        let b = smp.bbox;
        let c = smp
            .image
            .get_pixel((b.x + b.w / 2.0) as u32, (b.y + b.h / 2.0) as u32);
        stats[l].0 += c[0] as f64;
        stats[l].1 += b.area() as f64;
        stats[l].2 += 1;
    }
    let red = |k: usize| stats[k].0 / stats[k].2 as f64;
    let area = |k: usize| stats[k].1 / stats[k].2 as f64;
    assert!((red(0) - red(1)).abs() < 30.0, "{} vs {}", red(0), red(1));
    assert!(
        (area(0) / area(1) - 1.0).abs() < 0.25,
        "{} vs {}",
        area(0),
        area(1)
    );
}
