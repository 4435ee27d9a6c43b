//! WS-DAN's augmentation ops (map choice by mass, attention boxes, crop and resize, attention
//! drop): the CPU references against hand-computed cases, against naive float64 versions written
//! here from the definition (torch's `align_corners=True` formulas, positions in f64), against
//! PyTorch's float32 ops (`tests/data/augment_golden.safetensors`, made by
//! `tools/make_augment_golden.py`), and in f32 against themselves in f64; the CUDA launchers against the CPU reference in f32 and bf16,
//! bit for bit (skipped without a GPU).

use crate::common::recorded::floats;
use crate::common::skip::or_return;
use c2f_kernels::augment::{
    attention_boxes_cpu, crop_resize_cpu, drop_mask_cpu, maps_by_mass_cpu, AugmentGpu,
    AugmentShape, MapsByMassGpu,
};
use c2f_kernels::map_select::MapShape;
use c2f_kernels::testing::{gpu_or_skip, rel_error, round_through, widen, SplitMix64};
use c2f_kernels::{Element, Error, Gpu, Real};

fn shape(
    batch: usize,
    channels: usize,
    (height, width): (usize, usize),
    (map_height, map_width): (usize, usize),
) -> AugmentShape {
    AugmentShape {
        batch,
        channels,
        height,
        width,
        map_height,
        map_width,
    }
}

// ---------------------------------------------------------------------------------------------
// Naive float64 versions, from the definition

/// Bilinear resize of one `h × w` plane to `out_h × out_w` with `align_corners=True`: output
/// `o` reads `o·(n − 1)/(N − 1)`, its floor and the next row (the last row alone at the end).
fn naive_resize(p: &[f64], (h, w): (usize, usize), (out_h, out_w): (usize, usize)) -> Vec<f64> {
    let source = |o: usize, n: usize, out: usize| {
        let src = if out > 1 {
            o as f64 * (n - 1) as f64 / (out - 1) as f64
        } else {
            0.0
        };
        let i0 = (src.floor() as usize).min(n - 1);
        (i0, (i0 + 1).min(n - 1), src - i0 as f64)
    };
    let mut y = Vec::with_capacity(out_h * out_w);
    for i in 0..out_h {
        let (r0, r1, ly) = source(i, h, out_h);
        for j in 0..out_w {
            let (c0, c1, lx) = source(j, w, out_w);
            let top = (1.0 - lx) * p[r0 * w + c0] + lx * p[r0 * w + c1];
            let bottom = (1.0 - lx) * p[r1 * w + c0] + lx * p[r1 * w + c1];
            y.push((1.0 - ly) * top + ly * bottom);
        }
    }
    y
}

/// The map normalised to [0, 1] and up-sampled to `H × W`, or `None` when max == min.
fn naive_upsampled(map: &[f64], s: &AugmentShape) -> Option<Vec<f64>> {
    let lo = map.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = map.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if hi == lo {
        return None;
    }
    let norm: Vec<f64> = map.iter().map(|v| (v - lo) / (hi - lo)).collect();
    let (map_side, side) = ((s.map_height, s.map_width), (s.height, s.width));
    Some(naive_resize(&norm, map_side, side))
}

/// Every sample's box, from the rows and columns holding a pixel at or above its threshold.
fn naive_boxes(s: &AugmentShape, padding: f64, maps: &[f64], thresholds: &[f64]) -> Vec<i32> {
    let (pad_h, pad_w) = (
        (padding * s.height as f64).floor() as i64,
        (padding * s.width as f64).floor() as i64,
    );
    let mut boxes = Vec::new();
    for (map, &theta) in maps.chunks(s.map_hw()).zip(thresholds) {
        let u = naive_upsampled(map, s);
        let hit = |i: usize, j: usize| u.as_ref().is_some_and(|u| u[i * s.width + j] >= theta);
        let rows: Vec<i64> = (0..s.height)
            .filter(|&i| (0..s.width).any(|j| hit(i, j)))
            .map(|i| i as i64)
            .collect();
        let cols: Vec<i64> = (0..s.width)
            .filter(|&j| (0..s.height).any(|i| hit(i, j)))
            .map(|j| j as i64)
            .collect();
        let (h, w) = (s.height as i64, s.width as i64);
        let b = if rows.is_empty() {
            [0, 0, h, w]
        } else {
            [
                (rows[0] - pad_h).max(0),
                (cols[0] - pad_w).max(0),
                (rows[rows.len() - 1] + 1 + pad_h).min(h),
                (cols[cols.len() - 1] + 1 + pad_w).min(w),
            ]
        };
        boxes.extend(b.map(|v| v as i32));
    }
    boxes
}

/// Each sample's box (already inside the image and non-empty) cut out and resized to `H × W`.
fn naive_crops(s: &AugmentShape, x: &[f64], boxes: &[i32]) -> Vec<f64> {
    let mut y = Vec::new();
    for (plane, b) in x
        .chunks(s.hw())
        .zip(boxes.chunks(4).flat_map(|b| vec![b; s.channels]))
    {
        let [y0, x0, y1, x1] = [b[0], b[1], b[2], b[3]].map(|v| v as usize);
        let crop: Vec<f64> = (y0..y1)
            .flat_map(|i| (x0..x1).map(move |j| plane[i * s.width + j]))
            .collect();
        y.extend(naive_resize(&crop, (y1 - y0, x1 - x0), (s.height, s.width)));
    }
    y
}

fn naive_drops(s: &AugmentShape, maps: &[f64], thresholds: &[f64], x: &[f64]) -> Vec<f64> {
    let mut y = Vec::new();
    for ((map, &theta), image) in maps
        .chunks(s.map_hw())
        .zip(thresholds)
        .zip(x.chunks(s.channels * s.hw()))
    {
        let u = naive_upsampled(map, s);
        for plane in image.chunks(s.hw()) {
            for (p, &v) in plane.iter().enumerate() {
                let keep = u.as_ref().is_none_or(|u| u[p] < theta);
                y.push(if keep { v } else { 0.0 });
            }
        }
    }
    y
}

/// The first map whose share of the total sqrt-mass, summed in order, exceeds the draw.
fn naive_mass(s: &MapShape, a: &[f64], draws: &[f64]) -> Vec<i32> {
    a.chunks(s.maps * s.hw())
        .zip(draws)
        .map(|(sample, &draw)| {
            let w: Vec<f64> = sample
                .chunks(s.hw())
                .map(|m| (m.iter().sum::<f64>().max(0.0) + 1e-12).sqrt())
                .collect();
            let total: f64 = w.iter().sum();
            let mut cdf = 0.0;
            w.iter()
                .position(|&w| {
                    cdf += w;
                    cdf > draw * total
                })
                .unwrap_or(s.maps - 1) as i32
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The CPU references, with poisoned outputs

fn boxes_cpu<R: Real>(s: &AugmentShape, padding: f64, maps: &[R], thresholds: &[R]) -> Vec<i32> {
    let mut boxes = vec![-7; 4 * s.batch];
    attention_boxes_cpu(s, padding, maps, thresholds, &mut boxes).unwrap();
    boxes
}

fn crops_cpu<R: Real>(s: &AugmentShape, x: &[R], boxes: &[i32]) -> Vec<R> {
    let mut y = vec![R::nan(); s.image_len()];
    crop_resize_cpu(s, x, boxes, &mut y).unwrap();
    y
}

fn drops_cpu<R: Real>(s: &AugmentShape, maps: &[R], thresholds: &[R], x: &[R]) -> Vec<R> {
    let mut y = vec![R::nan(); s.image_len()];
    drop_mask_cpu(s, maps, thresholds, x, &mut y).unwrap();
    y
}

fn mass_cpu<R: Real>(s: &MapShape, a: &[R], draws: &[R]) -> Vec<i32> {
    let mut k = vec![-7; s.batch];
    maps_by_mass_cpu(s, a, draws, &mut k).unwrap();
    k
}

/// How far the nearest up-sampled pixel of each sample lies from its threshold (naive f64): a
/// threshold further than the f32 path's rounding from every pixel has one right box and drop.
fn margins(s: &AugmentShape, maps: &[f64], thresholds: &[f64]) -> Vec<f64> {
    maps.chunks(s.map_hw())
        .zip(thresholds)
        .map(|(map, &theta)| {
            naive_upsampled(map, s).map_or(f64::INFINITY, |u| {
                u.iter()
                    .map(|v| (v - theta).abs())
                    .fold(f64::INFINITY, f64::min)
            })
        })
        .collect()
}

/// Random maps and thresholds in `range`: each map a blob at a random place, with noise and a
/// ReLU (non-negative with zeros, as attention maps are), so that its box is smaller than the
/// image; each threshold redrawn until it lies at least 1e-4 from every up-sampled pixel of its
/// sample. Values representable in f32, so both precisions see the same inputs.
fn random_maps(s: &AugmentShape, seed: u64, range: (f64, f64)) -> (Vec<f64>, Vec<f64>) {
    let mut rng = SplitMix64(seed);
    let (h, w) = (s.map_height as f64, s.map_width as f64);
    let mut maps = Vec::with_capacity(s.map_len());
    for _ in 0..s.batch {
        let (cy, cx) = (rng.uniform(0.0, h), rng.uniform(0.0, w));
        let spread = rng.uniform(0.1, 0.25) * (h * h + w * w);
        for i in 0..s.map_height {
            for j in 0..s.map_width {
                let d = (i as f64 - cy).powi(2) + (j as f64 - cx).powi(2);
                let v = 2.0 * (-d / spread).exp() + rng.uniform(-0.4, 0.2);
                maps.push((v.max(0.0) as f32) as f64);
            }
        }
    }
    let mut thresholds = Vec::new();
    for b in 0..s.batch {
        let map = &maps[b * s.map_hw()..][..s.map_hw()];
        let one = shape(1, 1, (s.height, s.width), (s.map_height, s.map_width));
        let theta = loop {
            let theta = (rng.uniform(range.0, range.1) as f32) as f64;
            if margins(&one, map, &[theta])[0] > 1e-4 {
                break theta;
            }
        };
        thresholds.push(theta);
    }
    (maps, thresholds)
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&v| v as f32).collect()
}

/// Shapes: square and not, maps larger than a block's threads, images not a multiple of the
/// boxes' 8-row bands, a 1-pixel map side.
fn cpu_shapes() -> Vec<AugmentShape> {
    vec![
        shape(3, 3, (37, 29), (7, 5)),
        shape(2, 3, (75, 75), (17, 17)),
        shape(2, 2, (41, 90), (26, 13)),
        shape(2, 1, (19, 23), (1, 6)),
    ]
}

#[test]
fn boxes_and_drops_match_the_naive_f64_definition() {
    for (n, s) in cpu_shapes().iter().enumerate() {
        let seed = 100 + n as u64;
        let (maps, thresholds) = random_maps(s, seed, (0.2, 0.6));
        let x = SplitMix64(seed + 50).uniform_vec(s.image_len(), -1.0, 1.0);
        let x32: Vec<f64> = narrow(&x).iter().map(|&v| v as f64).collect();
        for padding in [0.0, 0.1, 0.05] {
            let want = naive_boxes(s, padding, &maps, &thresholds);
            assert_eq!(boxes_cpu(s, padding, &maps, &thresholds), want, "{s:?} f64");
            let got = boxes_cpu(s, padding, &narrow(&maps), &narrow(&thresholds));
            assert_eq!(got, want, "{s:?} f32, padding {padding}");
        }
        // Some box is smaller than the image, so the test sees the threshold.
        let tight = naive_boxes(s, 0.0, &maps, &thresholds);
        assert!(
            tight
                .chunks(4)
                .any(|b| b != [0, 0, s.height as i32, s.width as i32]),
            "{s:?}: every box is the whole image"
        );
        // Dropping keeps x or writes 0: exactly the naive result in both precisions.
        let want = naive_drops(s, &maps, &thresholds, &x32);
        assert!(want.contains(&0.0) && want.iter().any(|&v| v != 0.0));
        assert_eq!(drops_cpu(s, &maps, &thresholds, &x32), want, "{s:?} f64");
        let got = drops_cpu(s, &narrow(&maps), &narrow(&thresholds), &narrow(&x32));
        assert_eq!(widen(&got), want, "{s:?} f32");
    }
}

/// Random boxes inside the image and non-empty, so the naive crop needs no clamping.
fn random_boxes(s: &AugmentShape, seed: u64) -> Vec<i32> {
    let mut rng = SplitMix64(seed);
    let mut boxes = Vec::new();
    for _ in 0..s.batch {
        let y0 = rng.below(s.height as u64);
        let y1 = y0 + 1 + rng.below(s.height as u64 - y0);
        let x0 = rng.below(s.width as u64);
        let x1 = x0 + 1 + rng.below(s.width as u64 - x0);
        boxes.extend([y0, x0, y1, x1].map(|v| v as i32));
    }
    boxes
}

#[test]
fn crops_match_the_naive_f64_definition_and_f32_matches_f64() {
    for (n, s) in cpu_shapes().iter().enumerate() {
        let x = SplitMix64(200 + n as u64).uniform_vec(s.image_len(), -1.0, 1.0);
        let (x32, x64) = round_through::<f32>(&x);
        for boxes in [
            random_boxes(s, 300 + n as u64),
            [0, 0, s.height as i32, s.width as i32].repeat(s.batch),
        ] {
            let want = naive_crops(s, &x64, &boxes);
            // The reference's f32 positions against f64 ones: an error of about 1e-7 of a
            // position of up to ~100 pixels moves a value by ~1e-5 of the pixels' difference.
            let e = rel_error(&crops_cpu(s, &x64, &boxes), &want);
            assert!(e < 1e-5, "{s:?} {boxes:?}: f64 crop relative error {e}");
            let got = crops_cpu(s, &x32, &boxes);
            let e = rel_error(&widen(&got), &want);
            assert!(e < 1e-5, "{s:?} {boxes:?}: f32 crop relative error {e}");
            let e = rel_error(&widen(&got), &crops_cpu(s, &x64, &boxes));
            assert!(
                e < 1e-6,
                "{s:?} {boxes:?}: f32 crop vs f64 relative error {e}"
            );
        }
        // The whole image resized to itself is the image, bit for bit.
        let whole = [0, 0, s.height as i32, s.width as i32].repeat(s.batch);
        assert_eq!(crops_cpu(s, &x32, &whole), x32, "{s:?}: whole-image crop");
    }
}

/// PyTorch's float32 boxes, crops (`F.interpolate(align_corners=True)` of the slice) and drops
/// (`x * (U < θ)`): the boxes and drops exactly (the thresholds lie 1e-4 from every up-sampled
/// value), the crops within PyTorch's and our different rounding of the same f32 formulas.
#[test]
fn matches_pytorch_golden() {
    // In the binary, which the GPU check runs on a machine without the source tree.
    static BYTES: &[u8] = include_bytes!("../data/augment_golden.safetensors");
    let file = safetensors::SafeTensors::deserialize(BYTES).unwrap();
    let s = shape(4, 3, (23, 31), (6, 5));
    let ints = |name: &str| -> Vec<i32> { floats(&file, name).iter().map(|&v| v as i32).collect() };
    let (x, maps) = (floats(&file, "x"), floats(&file, "maps"));
    let (theta_crop, theta_drop) = (floats(&file, "theta_crop"), floats(&file, "theta_drop"));
    let padding = floats(&file, "padding")[0];
    let boxes = ints("boxes");
    assert!(boxes.chunks(4).all(|b| b != [0, 0, 23, 31]), "{boxes:?}");
    assert_eq!(boxes_cpu(&s, padding, &maps, &theta_crop), boxes, "f64");
    let (x32, maps32) = (narrow(&x), narrow(&maps));
    let got = boxes_cpu(&s, padding, &maps32, &narrow(&theta_crop));
    assert_eq!(got, boxes, "f32");
    for (name, boxes) in [("crops", boxes), ("given_crops", ints("given_boxes"))] {
        let want = floats(&file, name);
        let e = rel_error(&widen(&crops_cpu(&s, &x32, &boxes)), &want);
        assert!(e < 1e-6, "{name}: f32 relative error {e}");
        let e = rel_error(&crops_cpu(&s, &x, &boxes), &want);
        assert!(e < 1e-6, "{name}: f64 relative error {e}");
    }
    let want = floats(&file, "drops");
    let got = drops_cpu(&s, &maps32, &narrow(&theta_drop), &x32);
    assert_eq!(widen(&got), want);
    assert!(want.contains(&0.0));
}

#[test]
fn boxes_hand_computed() {
    // One peak in the middle of a 3×3 map, up-sampled to 5×5: positions 0, ½, 1, 1½, 2, so
    // U = t_i·t_j with t = [0, ½, 1, ½, 0], every product exact.
    let s = shape(1, 1, (5, 5), (3, 3));
    let peak = [0.0, 0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0];
    // ≥ ½: the centre cross (rows and columns 1..=3); ≥ 0.6: the centre alone; a threshold of 1
    // keeps the pixel at exactly 1; above 1 nothing, so the whole image.
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[0.5]), [1, 1, 4, 4]);
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[0.6]), [2, 2, 3, 3]);
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[1.0]), [2, 2, 3, 3]);
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[1.01]), [0, 0, 5, 5]);
    // Threshold 0: every pixel.
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[0.0]), [0, 0, 5, 5]);
    // Padding ⌊0.2·5⌋ = 1 on each side, clamped at the image.
    assert_eq!(boxes_cpu(&s, 0.2, &peak, &[0.6]), [1, 1, 4, 4]);
    assert_eq!(boxes_cpu(&s, 0.2, &peak, &[0.5]), [0, 0, 5, 5]);
    // Padding beyond the image clamps too.
    assert_eq!(boxes_cpu(&s, 7.5, &peak, &[0.6]), [0, 0, 5, 5]);

    // 5×9: columns at 0, ¼, …, 2, t_w = [0, ¼, ½, ¾, 1, ¾, ½, ¼, 0]. At ≥ ½: row 2 reaches
    // columns 2..=6, rows 1 and 3 (t = ½) only column 4. Padding 0.2: ⌊1⌋ rows, ⌊1.8⌋ columns.
    let s = shape(1, 1, (5, 9), (3, 3));
    assert_eq!(boxes_cpu(&s, 0.0, &peak, &[0.5]), [1, 2, 4, 7]);
    assert_eq!(boxes_cpu(&s, 0.2, &peak, &[0.5]), [0, 1, 5, 8]);

    // The peak in a corner: only pixel (0, 0) reaches 1, in both precisions.
    let s = shape(2, 1, (6, 4), (3, 3));
    let mut corner = [0.0; 18];
    corner[0] = 1.0;
    corner[9 + 8] = 3.0;
    let want = [0, 0, 1, 1, 5, 3, 6, 4];
    assert_eq!(boxes_cpu(&s, 0.0, &corner, &[1.0, 1.0]), want);
    assert_eq!(boxes_cpu(&s, 0.0, &narrow(&corner), &[1.0, 1.0]), want);
}

#[test]
fn flat_maps_give_the_whole_image_and_drop_nothing() {
    let s = shape(4, 3, (11, 7), (4, 3));
    let mut maps = vec![0.0; s.map_len()];
    // Sample 1 constant, sample 2 constant and negative, sample 3 a real map.
    maps[12..24].fill(0.75);
    maps[24..36].fill(-2.0);
    maps[36 + 5] = 1.0;
    let x = SplitMix64(5).uniform_vec(s.image_len(), 0.5, 1.0);
    let whole = [0, 0, 11, 7];
    for theta in [0.0, 0.5, 1.0] {
        let thresholds = [theta; 4];
        let boxes = boxes_cpu(&s, 0.1, &maps, &thresholds);
        assert_eq!(boxes[..12], whole.repeat(3), "threshold {theta}");
        let y = drops_cpu(&s, &maps, &thresholds, &x);
        let image = s.channels * s.hw();
        assert_eq!(y[..3 * image], x[..3 * image], "threshold {theta}");
        // f32 alike, and never a NaN.
        let boxes32 = boxes_cpu(&s, 0.1, &narrow(&maps), &narrow(&thresholds));
        assert_eq!(boxes32, boxes);
        let y32 = drops_cpu(&s, &narrow(&maps), &narrow(&thresholds), &narrow(&x));
        assert!(y32.iter().all(|v| v.is_finite()));
        assert_eq!(y32[..3 * image], narrow(&x[..3 * image]));
    }
    // The real map: threshold 0 keeps every pixel in the box and drops everything; a threshold
    // above 1 gives the whole image and drops nothing.
    let image = s.channels * s.hw();
    let y = drops_cpu(&s, &maps, &[0.0; 4], &x);
    assert!(y[3 * image..].iter().all(|&v| v == 0.0));
    assert_eq!(boxes_cpu(&s, 0.0, &maps, &[0.0; 4])[12..], whole);
    let y = drops_cpu(&s, &maps, &[1.5; 4], &x);
    assert_eq!(y[3 * image..], x[3 * image..]);
    assert_eq!(boxes_cpu(&s, 0.0, &maps, &[1.5; 4])[12..], whole);
    // Threshold 1 drops the pixels at the map's maximum: map row 1 falls between image rows
    // (at 0.3·i), so no up-sampled pixel reaches 1 and nothing is dropped.
    let y = drops_cpu(&s, &maps, &[1.0; 4], &x);
    assert_eq!(y[3 * image..], x[3 * image..]);
}

#[test]
fn drop_hand_computed() {
    // The 5×5 cross of `boxes_hand_computed`: threshold ½ drops the five pixels of the cross in
    // every channel, threshold 0.6 the centre alone.
    let s = shape(1, 2, (5, 5), (3, 3));
    let peak = [0.0, 0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0];
    let x: Vec<f64> = (1..=50).map(f64::from).collect();
    let y = drops_cpu(&s, &peak, &[0.5], &x);
    let dropped: Vec<usize> = (0..50).filter(|&i| y[i] == 0.0).collect();
    assert_eq!(dropped, [7, 11, 12, 13, 17, 32, 36, 37, 38, 42]);
    assert!((0..50)
        .filter(|i| !dropped.contains(i))
        .all(|i| y[i] == x[i]));
    let y = drops_cpu(&s, &peak, &[0.6], &x);
    let dropped: Vec<usize> = (0..50).filter(|&i| y[i] == 0.0).collect();
    assert_eq!(dropped, [12, 37]);
}

#[test]
fn crop_boxes_are_clamped_to_the_image() {
    let s = shape(1, 2, (6, 8), (2, 2));
    let x = SplitMix64(9).uniform_vec(s.image_len(), -1.0, 1.0);
    for (given, clamped) in [
        ([-5, -3, 2, 4], [0, 0, 2, 4]),
        ([3, 2, 100, 100], [3, 2, 6, 8]),
        // y1 ≤ y0 and x1 < x0: one pixel.
        ([4, 4, 4, 2], [4, 4, 5, 5]),
        ([2, 3, -1, 3], [2, 3, 3, 4]),
        // Beyond the image: its last pixel.
        ([9, 10, 12, 14], [5, 7, 6, 8]),
        ([i32::MIN, i32::MIN, i32::MAX, i32::MAX], [0, 0, 6, 8]),
    ] {
        let want = crops_cpu(&s, &x, &clamped);
        assert_eq!(crops_cpu(&s, &x, &given), want, "{given:?}");
        let e = rel_error(&want, &naive_crops(&s, &x, &clamped));
        assert!(e < 1e-5, "{given:?}: relative error {e}");
    }
}

#[test]
fn one_pixel_crops_repeat_the_pixel() {
    let s = shape(2, 3, (5, 7), (2, 2));
    let x = SplitMix64(13).uniform_vec(s.image_len(), -1.0, 1.0);
    // A single pixel: every output pixel of each channel is that pixel.
    let y = crops_cpu(&s, &x, &[2, 3, 3, 4, 0, 6, 1, 7]);
    for (c, plane) in y.chunks(s.hw()).enumerate() {
        let (b, ch) = (c / 3, c % 3);
        let at = if b == 0 { 2 * 7 + 3 } else { 6 };
        let pixel = x[(b * 3 + ch) * s.hw() + at];
        assert!(plane.iter().all(|&v| v == pixel), "sample {b} channel {ch}");
    }
    // One column wide: each row repeats one value, the column resized to the image's height.
    let y = crops_cpu(&s, &x, &[0, 4, 5, 5, 1, 0, 4, 1]);
    for (c, plane) in y.chunks(s.hw()).enumerate() {
        let (b, ch) = (c / 3, c % 3);
        let src = &x[(b * 3 + ch) * s.hw()..][..s.hw()];
        let (col, rows) = if b == 0 { (4, 0..5) } else { (0, 1..4) };
        let column: Vec<f64> = rows.map(|i| src[i * 7 + col]).collect();
        let want = naive_resize(&column, (column.len(), 1), (5, 1));
        for (i, row) in plane.chunks(7).enumerate() {
            assert!(
                row.iter().all(|&v| v == row[0]),
                "sample {b} row {i}: {row:?}"
            );
            // f32 positions against the naive f64 ones.
            assert!((row[0] - want[i]).abs() < 1e-6, "sample {b} row {i}");
        }
    }
}

#[test]
fn maps_by_mass_hand_computed() {
    // Sample 0: masses 1, 0 (a zero map), 4: weights 1, 1e-6, 2 of total 3.000001.
    // Sample 1: masses −5 (counts as 0) and 4: weights 1e-6 and 2.
    let s = MapShape {
        batch: 1,
        maps: 3,
        height: 1,
        width: 2,
    };
    let a = [0.25, 0.75, 0.0, 0.0, 3.0, 1.0];
    let just_below_one = 1.0 - f64::from(f32::EPSILON) / 2.0;
    for (draw, want) in [
        (0.0, 0),
        (0.2, 0),
        // 1/3.000001 = 0.33333322 starts the zero map's sliver of 3.3e-7.
        (0.3333333, 1),
        (0.3334, 2),
        (0.5, 2),
        (just_below_one, 2),
        // A draw outside [0, 1) still gives a map.
        (1.0, 2),
        (f64::NAN, 2),
    ] {
        assert_eq!(mass_cpu(&s, &a, &[draw]), [want], "f64 draw {draw}");
        let got = mass_cpu(&s, &narrow(&a), &[draw as f32]);
        assert_eq!(got, [want], "f32 draw {draw}");
        assert_eq!(naive_mass(&s, &a, &[draw]), [want], "naive draw {draw}");
    }
    let s = MapShape {
        batch: 2,
        maps: 2,
        height: 2,
        width: 1,
    };
    let a = [-2.0, -3.0, 1.5, 2.5, 0.0, 0.0, 0.0, 0.0];
    // Draw 0 takes the negative map (its weight 1e-6 exceeds 0); 1e-3 is past it. Two zero
    // maps split evenly.
    assert_eq!(mass_cpu(&s, &a, &[0.0, 0.49]), [0, 0]);
    assert_eq!(mass_cpu(&s, &a, &[1e-3, 0.51]), [1, 1]);
    assert_eq!(mass_cpu(&s, &narrow(&a), &[1e-3, 0.51]), [1, 1]);
}

#[test]
fn maps_by_mass_matches_the_naive_f64_definition() {
    let s = MapShape {
        batch: 40,
        maps: 32,
        height: 5,
        width: 4,
    };
    let mut rng = SplitMix64(21);
    let a: Vec<f64> = (0..s.maps_len())
        .map(|_| (rng.uniform(-0.5, 1.0).max(0.0) as f32) as f64)
        .collect();
    let draws: Vec<f64> = (0..s.batch)
        .map(|_| (rng.uniform(0.0, 1.0) as f32) as f64)
        .collect();
    let want = naive_mass(&s, &a, &draws);
    assert_eq!(mass_cpu(&s, &a, &draws), want);
    assert_eq!(mass_cpu(&s, &narrow(&a), &narrow(&draws)), want);
    let distinct: std::collections::HashSet<_> = want.iter().collect();
    assert!(distinct.len() > 10, "{want:?}");
}

#[test]
fn errors_name_what_is_wrong() {
    let s = shape(2, 3, (6, 5), (3, 2));
    let maps = vec![1.0f32; s.map_len()];
    let x = vec![1.0f32; s.image_len()];
    let mut y = vec![0.0f32; s.image_len()];
    let mut boxes = vec![0; 8];
    let message = |e: Error| e.to_string();
    for (field, bad) in [
        ("batch", AugmentShape { batch: 0, ..s }),
        ("channels", AugmentShape { channels: 0, ..s }),
        ("height", AugmentShape { height: 0, ..s }),
        ("width", AugmentShape { width: 0, ..s }),
        ("map_height", AugmentShape { map_height: 0, ..s }),
        ("map_width", AugmentShape { map_width: 0, ..s }),
    ] {
        let e = message(bad.validate().unwrap_err());
        assert!(e.contains(&format!("{field} 0")), "{e}");
        let e = message(crop_resize_cpu(&bad, &x, &boxes, &mut y).unwrap_err());
        assert!(e.contains(&format!("{field} 0")), "{e}");
    }
    let huge = AugmentShape {
        height: 1 << 16,
        width: 1 << 16,
        ..s
    };
    let e = message(huge.validate().unwrap_err());
    assert!(e.contains("too large for 32-bit indexing"), "{e}");
    let huge = AugmentShape {
        map_height: 1 << 16,
        map_width: 1 << 16,
        ..s
    };
    let e = message(huge.validate().unwrap_err());
    assert!(e.contains("too large for 32-bit indexing"), "{e}");

    for padding in [-0.1, f64::NAN, f64::INFINITY] {
        let e = attention_boxes_cpu(&s, padding, &maps, &[0.5; 2], &mut boxes).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        assert!(message(e).contains("attention box padding"));
    }
    let e = attention_boxes_cpu(&s, 0.1, &maps[1..], &[0.5; 2], &mut boxes).unwrap_err();
    assert!(message(e).contains("augment maps has 11 elements, expected 12"));
    let e = attention_boxes_cpu(&s, 0.1, &maps, &[0.5; 3], &mut boxes).unwrap_err();
    assert!(message(e).contains("augment thresholds has 3 elements, expected 2"));
    let e = attention_boxes_cpu(&s, 0.1, &maps, &[0.5; 2], &mut boxes[1..]).unwrap_err();
    assert!(message(e).contains("augment boxes has 7 elements, expected 8"));
    let e = crop_resize_cpu(&s, &x[1..], &boxes, &mut y).unwrap_err();
    assert!(message(e).contains("augment x has 179 elements, expected 180"));
    let e = drop_mask_cpu(&s, &maps, &[0.5; 2], &x, &mut y[1..]).unwrap_err();
    assert!(message(e).contains("augment y has 179 elements, expected 180"));

    let ms = MapShape {
        batch: 2,
        maps: 3,
        height: 2,
        width: 2,
    };
    let a = vec![1.0f32; ms.maps_len()];
    let mut k = [0; 2];
    let e = maps_by_mass_cpu(&ms, &a, &[0.5], &mut k).unwrap_err();
    assert!(message(e).contains("maps_by_mass draws has 1 elements, expected 2"));
    let e = maps_by_mass_cpu(&ms, &a[1..], &[0.5; 2], &mut k).unwrap_err();
    assert!(message(e).contains("maps_by_mass A has 23 elements, expected 24"));
    let e = maps_by_mass_cpu(&MapShape { maps: 0, ..ms }, &a, &[0.5; 2], &mut k).unwrap_err();
    assert!(matches!(e, Error::Shape(_)), "{e}");
}

// ---------------------------------------------------------------------------------------------
// GPU

/// One GPU case's inputs (rounded through `T`, so the CPU f32 reference sees what the kernels
/// see) and its CPU f32 results: boxes, their crops, drops, and map indices.
struct Case<T> {
    padding: f64,
    maps: Vec<T>,
    thresholds: Vec<T>,
    drop_thresholds: Vec<T>,
    x: Vec<T>,
    /// The boxes the crop takes: random, partly outside the image, empty or reversed.
    given_boxes: Vec<i32>,
    boxes: Vec<i32>,
    crops_of_boxes: Vec<T>,
    crops_of_given: Vec<T>,
    drops: Vec<T>,
    ms: MapShape,
    a: Vec<T>,
    draws: Vec<T>,
    indices: Vec<i32>,
}

fn stored<T: Element>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&v| T::from_f32(v)).collect()
}

fn seen<T: Element>(v: &[T]) -> Vec<f32> {
    v.iter().map(|v| v.to_f32()).collect()
}

/// The shapes of the GPU cases: maps of more pixels than a block's threads, a band of fewer
/// than 8 rows at the bottom, a 1-pixel map row, non-square images, a flat map (all zero, and
/// constant) in the batch, and thresholds 0 and 1.
fn gpu_case<T: Element>(s: AugmentShape, seed: u64) -> Case<T> {
    let (maps64, thresholds64) = random_maps(&s, seed, (0.3, 0.7));
    let (maps, maps32) = round_through::<T>(&maps64);
    let mut maps32 = narrow(&maps32);
    let mut maps = maps;
    // Sample 1 all zero, sample 2 constant; the thresholds of the last two samples 0 and 1.
    let hw = s.map_hw();
    maps32[hw..2 * hw].fill(0.0);
    maps32[2 * hw..3 * hw].fill(0.5);
    maps[hw..3 * hw].copy_from_slice(&stored::<T>(&maps32[hw..3 * hw]));
    let mut thresholds32 = narrow(&thresholds64);
    thresholds32[s.batch - 2] = 0.0;
    thresholds32[s.batch - 1] = 1.0;
    let thresholds = stored::<T>(&thresholds32);
    let thresholds32 = seen(&thresholds);
    let mut rng = SplitMix64(seed + 1);
    let drop_thresholds = stored::<T>(
        &(0..s.batch)
            .map(|_| rng.uniform(0.2, 0.5) as f32)
            .collect::<Vec<_>>(),
    );
    let drop32 = seen(&drop_thresholds);
    let x = stored::<T>(&narrow(&SplitMix64(seed + 2).uniform_vec(
        s.image_len(),
        -1.0,
        1.0,
    )));
    let x32 = seen(&x);
    let padding = 0.1;
    let boxes = boxes_cpu(&s, padding, &maps32, &thresholds32);
    let (h, w) = (s.height as i64, s.width as i64);
    let given_boxes: Vec<i32> = (0..4 * s.batch)
        .map(|i| {
            let side = if i % 2 == 0 { h } else { w };
            rng.uniform(-0.3 * side as f64, 1.3 * side as f64) as i32
        })
        .collect();
    // The map choice: 64 samples of 32 maps of masses spread over 0 to ~60 (some zero, some
    // negative), so that the square root's weighting decides many draws; the first draws 0 and
    // just below 1.
    let ms = MapShape {
        batch: 64,
        maps: 32,
        height: s.map_height,
        width: s.map_width,
    };
    let mut mass_rng = SplitMix64(seed + 3);
    let a32: Vec<f32> = (0..ms.batch * ms.maps)
        .flat_map(|_| {
            let scale = mass_rng.uniform(-0.2, 3.0).max(0.0);
            let offset = if mass_rng.below(8) == 0 { -1.5 } else { 0.0 };
            mass_rng
                .uniform_vec(ms.hw(), 0.0, 1.0)
                .into_iter()
                .map(move |v| (v * scale + offset) as f32)
        })
        .collect();
    let a = stored::<T>(&a32);
    let mut draws32: Vec<f32> = (0..ms.batch)
        .map(|_| rng.uniform(0.0, 1.0) as f32)
        .collect();
    draws32[0] = 0.0;
    draws32[1] = 1.0 - f32::EPSILON / 2.0;
    let draws = stored::<T>(&draws32);
    let a32 = seen(&a);
    let round = |v: Vec<f32>| stored::<T>(&v);
    Case {
        crops_of_boxes: round(crops_cpu(&s, &x32, &boxes)),
        crops_of_given: round(crops_cpu(&s, &x32, &given_boxes)),
        drops: round(drops_cpu(&s, &maps32, &drop32, &x32)),
        indices: mass_cpu(&ms, &a32, &seen(&draws)),
        padding,
        maps,
        thresholds,
        drop_thresholds,
        x,
        given_boxes,
        boxes,
        ms,
        a,
        draws,
    }
}

fn gpu_shapes() -> Vec<AugmentShape> {
    vec![
        shape(5, 3, (37, 29), (7, 5)),
        shape(4, 3, (75, 61), (26, 26)),
        shape(4, 2, (21, 40), (1, 9)),
    ]
}

#[test]
fn gpu_case_references_are_not_trivial() {
    for (n, s) in gpu_shapes().into_iter().enumerate() {
        let case = gpu_case::<f32>(s, 400 + n as u64);
        let whole = [0, 0, s.height as i32, s.width as i32];
        let b = &case.boxes;
        assert!(
            b.chunks(4).any(|b| b != whole),
            "{s:?}: no box smaller than the image"
        );
        assert_eq!(b[4..12], whole.repeat(2), "{s:?}: flat maps");
        assert!(case.drops.contains(&0.0), "{s:?}: nothing dropped");
        assert!(
            case.drops.iter().any(|&v| v != 0.0),
            "{s:?}: everything dropped"
        );
        assert!(case.crops_of_given.iter().all(|v| v.is_finite()));
        let distinct: std::collections::HashSet<_> = case.indices.iter().collect();
        assert!(distinct.len() > 16, "{s:?}: {:?}", case.indices);
        // The square root matters: weighting by the masses themselves picks other maps.
        let linear: Vec<i32> = case
            .a
            .chunks(case.ms.maps * case.ms.hw())
            .zip(&case.draws)
            .map(|(a, &draw)| {
                let w: Vec<f64> = a
                    .chunks(case.ms.hw())
                    .map(|m| m.iter().map(|&v| v as f64).sum::<f64>().max(0.0))
                    .collect();
                let target = draw as f64 * w.iter().sum::<f64>();
                let mut cdf = 0.0;
                w.iter()
                    .position(|&w| {
                        cdf += w;
                        cdf > target
                    })
                    .unwrap_or(31) as i32
            })
            .collect();
        let differ = linear
            .iter()
            .zip(&case.indices)
            .filter(|(a, b)| a != b)
            .count();
        assert!(
            differ > 8,
            "{s:?}: only {differ} draws depend on the square root"
        );
    }
}

fn bits<T: Element>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

fn gpu_case_matches_cpu<T: Element>(gpu: &Gpu, s: AugmentShape, seed: u64) {
    let case = gpu_case::<T>(s, seed);
    let name = format!("augment {} {s:?}", T::SUFFIX);
    let mut op = AugmentGpu::<T>::new(gpu, s).unwrap();
    assert_eq!(*op.shape(), s);
    let up = |v: &[T]| gpu.upload(v).unwrap();
    let (maps, thresholds, drop_thresholds, x) = (
        up(&case.maps),
        up(&case.thresholds),
        up(&case.drop_thresholds),
        up(&case.x),
    );
    let given = gpu.upload(&case.given_boxes).unwrap();
    // Twice: the second run reuses the scratch the first wrote.
    for run in 0..2 {
        let mut boxes = gpu.upload(&vec![-7i32; 4 * s.batch]).unwrap();
        op.attention_boxes(case.padding, &maps, &thresholds, &mut boxes)
            .unwrap();
        assert_eq!(
            gpu.download(&boxes).unwrap(),
            case.boxes,
            "{name} run {run}: boxes"
        );
        let mut y = gpu.alloc_poisoned::<T>(s.image_len()).unwrap();
        op.crop_resize(&x, &boxes, &mut y).unwrap();
        let got = gpu.download(&y).unwrap();
        assert_eq!(
            bits(&got),
            bits(&case.crops_of_boxes),
            "{name} run {run}: crops"
        );
        op.crop_resize(&x, &given, &mut y).unwrap();
        let got = gpu.download(&y).unwrap();
        assert_eq!(
            bits(&got),
            bits(&case.crops_of_given),
            "{name} run {run}: crops of given boxes"
        );
        let mut y = gpu.alloc_poisoned::<T>(s.image_len()).unwrap();
        op.drop_mask(&maps, &drop_thresholds, &x, &mut y).unwrap();
        let got = gpu.download(&y).unwrap();
        assert_eq!(bits(&got), bits(&case.drops), "{name} run {run}: drops");
    }
    let mut mass = MapsByMassGpu::<T>::new(gpu, case.ms).unwrap();
    assert_eq!(*mass.shape(), case.ms);
    let (a, draws) = (up(&case.a), up(&case.draws));
    let mut k = gpu.upload(&vec![-7i32; case.ms.batch]).unwrap();
    mass.pick(&a, &draws, &mut k).unwrap();
    assert_eq!(
        gpu.download(&k).unwrap(),
        case.indices,
        "{name}: map indices"
    );
}

#[test]
fn gpu_f32_matches_cpu_bit_for_bit() {
    let gpu = or_return!(gpu_or_skip("augment gpu_f32_matches_cpu_bit_for_bit"));
    for (n, s) in gpu_shapes().into_iter().enumerate() {
        gpu_case_matches_cpu::<f32>(&gpu, s, 400 + n as u64);
    }
}

#[test]
fn gpu_bf16_matches_cpu_bit_for_bit() {
    let gpu = or_return!(gpu_or_skip("augment gpu_bf16_matches_cpu_bit_for_bit"));
    for (n, s) in gpu_shapes().into_iter().enumerate() {
        gpu_case_matches_cpu::<half::bf16>(&gpu, s, 500 + n as u64);
    }
}

#[test]
fn gpu_errors_name_what_is_wrong() {
    let gpu = or_return!(gpu_or_skip("augment gpu_errors_name_what_is_wrong"));
    let s = shape(2, 3, (6, 5), (3, 2));
    let e = AugmentGpu::<f32>::new(&gpu, AugmentShape { map_width: 0, ..s })
        .err()
        .unwrap();
    assert!(e.to_string().contains("map_width 0"), "{e}");
    let mut op = AugmentGpu::<f32>::new(&gpu, s).unwrap();
    let maps = gpu.alloc_zeros::<f32>(s.map_len()).unwrap();
    let thresholds = gpu.alloc_zeros::<f32>(s.batch).unwrap();
    let mut boxes = gpu.alloc_zeros::<i32>(4 * s.batch).unwrap();
    let e = op
        .attention_boxes(-1.0, &maps, &thresholds, &mut boxes)
        .unwrap_err();
    assert!(e.to_string().contains("attention box padding"), "{e}");
    let x = gpu.alloc_zeros::<f32>(s.image_len() - 1).unwrap();
    let mut y = gpu.alloc_zeros::<f32>(s.image_len()).unwrap();
    let e = op.crop_resize(&x, &boxes, &mut y).unwrap_err();
    assert!(
        e.to_string()
            .contains("augment x has 179 elements, expected 180"),
        "{e}"
    );
}
