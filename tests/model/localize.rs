//! Localization: box extraction on constructed maps, the box filter, IoU arithmetic, the
//! coordinate mapping through the test transform, the metrics, and an end-to-end run of a tiny
//! model on the synthetic set (and the refusal of a dataset without boxes), and the same run on
//! the CUDA backend against the CPU's (skipped without a GPU).

use std::sync::Arc;

use c2f_inception::cpu::CpuBackend;
use c2f_inception::cuda::testing::cuda_or_skip;
use c2f_kernels::testing::{rel_error, SplitMix64};
use c2f_train::data::loader::{ImageSource, Item};
use c2f_train::data::synthetic::SyntheticSet;
use c2f_train::data::{BBox, Transform};
use c2f_train::localize::{
    box_filter, centered_baseline, extract_box, localize, metrics, to_input, to_original, BoxRule,
    ImageInference, LocalizeConfig, Region,
};
use c2f_train::train::COARSE_FINE;
use image::RgbImage;

use crate::common::tiny::{synthetic, tiny_model};

/// A `h × w` map with value `v` on the given inclusive rectangles `(x0, y0, x1, y1)`.
fn map_with(h: usize, w: usize, rects: &[(usize, usize, usize, usize, f32)]) -> Vec<f32> {
    let mut m = vec![0.0; h * w];
    for &(x0, y0, x1, y1, v) in rects {
        for y in y0..=y1 {
            for x in x0..=x1 {
                m[y * w + x] = v;
            }
        }
    }
    m
}

#[test]
fn one_blob() {
    let m = map_with(20, 30, &[(4, 6, 10, 9, 1.0)]);
    for region in [Region::LargestComponent, Region::AllAbove] {
        let b = extract_box(&m, (20, 30), 0.1, region).unwrap();
        assert_eq!(b, BBox::new(4.0, 6.0, 7.0, 4.0), "{region:?}");
    }
}

#[test]
fn two_blobs_largest_or_all() {
    // A 3×3 blob (the brightest) and a 5×4 one: the largest region is the bigger, not the
    // brighter; WS-DAN's tight box spans both.
    let m = map_with(20, 30, &[(1, 1, 3, 3, 2.0), (20, 10, 24, 13, 0.5)]);
    let largest = extract_box(&m, (20, 30), 0.1, Region::LargestComponent).unwrap();
    assert_eq!(largest, BBox::new(20.0, 10.0, 5.0, 4.0));
    let all = extract_box(&m, (20, 30), 0.1, Region::AllAbove).unwrap();
    assert_eq!(all, BBox::new(1.0, 1.0, 24.0, 13.0));
    // Above 0.3 of the max (0.6) only the bright blob is left.
    let high = extract_box(&m, (20, 30), 0.3, Region::LargestComponent).unwrap();
    assert_eq!(high, BBox::new(1.0, 1.0, 3.0, 3.0));
}

#[test]
fn threshold_is_measured_from_the_maps_floor() {
    // The learnable up-sampler's output sits on its bias: a blob at 2 on a floor of 1. A tenth
    // of the max (0.2) would take every pixel; a tenth of the range above the floor (1.1) takes
    // the blob alone.
    let m: Vec<f32> = map_with(20, 30, &[(4, 6, 10, 9, 1.0)])
        .iter()
        .map(|v| v + 1.0)
        .collect();
    for region in [Region::LargestComponent, Region::AllAbove] {
        let b = extract_box(&m, (20, 30), 0.1, region).unwrap();
        assert_eq!(b, BBox::new(4.0, 6.0, 7.0, 4.0), "{region:?}");
    }
}

#[test]
fn corner_touching_pixels_are_one_region() {
    // A diagonal of single pixels (8-connected: one region of 5) beats a 2×2 square (4).
    let mut m = map_with(12, 12, &[(8, 8, 9, 9, 1.0)]);
    for i in 0..5 {
        m[i * 12 + i] = 1.0;
    }
    let b = extract_box(&m, (12, 12), 0.1, Region::LargestComponent).unwrap();
    assert_eq!(b, BBox::new(0.0, 0.0, 5.0, 5.0));
}

#[test]
fn empty_and_everything_above() {
    assert_eq!(
        extract_box(&[0.0; 64], (8, 8), 0.1, Region::LargestComponent),
        None
    );
    assert_eq!(
        extract_box(&[-1.0; 64], (8, 8), 0.1, Region::AllAbove),
        None
    );
    // A flat positive map: nothing stands out from the floor.
    assert_eq!(
        extract_box(&[0.7; 64], (8, 8), 0.1, Region::LargestComponent),
        None
    );
    let mut rng = SplitMix64(4);
    let m: Vec<f32> = (0..8 * 10).map(|_| rng.uniform(0.5, 1.0) as f32).collect();
    for region in [Region::LargestComponent, Region::AllAbove] {
        let b = extract_box(&m, (8, 10), 0.1, region).unwrap();
        assert_eq!(b, BBox::new(0.0, 0.0, 10.0, 8.0), "{region:?}");
    }
}

#[test]
fn box_filter_averages_inside_the_map() {
    let (h, w) = (7, 9);
    let mut rng = SplitMix64(9);
    let m: Vec<f32> = (0..h * w).map(|_| rng.uniform(0.0, 1.0) as f32).collect();
    for k in [1, 3, 4, 5] {
        let f = box_filter(&m, (h, w), k);
        let (before, after) = ((k - 1) / 2, k / 2);
        for y in 0..h {
            for x in 0..w {
                let (mut s, mut n) = (0.0f64, 0);
                for yy in y.saturating_sub(before)..(y + after + 1).min(h) {
                    for xx in x.saturating_sub(before)..(x + after + 1).min(w) {
                        s += m[yy * w + xx] as f64;
                        n += 1;
                    }
                }
                let want = s / n as f64;
                let got = f[y * w + x] as f64;
                assert!(
                    (got - want).abs() < 1e-6,
                    "k {k} at ({y}, {x}): {got} vs {want}"
                );
            }
        }
    }
    // By hand: 3×3 at the corner of a map that is 1 at (0, 0) only: 1/4 (a 2×2 window).
    let mut one = vec![0.0; 25];
    one[0] = 1.0;
    assert_eq!(box_filter(&one, (5, 5), 3)[0], 0.25);
    assert_eq!(box_filter(&one, (5, 5), 3)[6], 1.0 / 9.0);
}

#[test]
fn iou_arithmetic() {
    let a = BBox::new(0.0, 0.0, 10.0, 10.0);
    assert_eq!(a.iou(&BBox::new(20.0, 0.0, 5.0, 5.0)), 0.0, "no overlap");
    assert_eq!(
        a.iou(&BBox::new(10.0, 0.0, 5.0, 5.0)),
        0.0,
        "touching edges"
    );
    assert_eq!(
        a.iou(&BBox::new(2.0, 2.0, 5.0, 4.0)),
        20.0 / 100.0,
        "containment"
    );
    assert_eq!(a.iou(&a), 1.0);
    // Overlap 5×10 = 50, union 100 + 100 − 50.
    assert_eq!(a.iou(&BBox::new(5.0, 0.0, 10.0, 10.0)), 50.0 / 150.0);
}

#[test]
fn coordinates_round_trip_through_resize_and_crop() {
    let t = Transform::test(128); // resize 146, crop 128
    for (w, h) in [(500u32, 375u32), (300, 480), (146, 146), (97, 211)] {
        // A box inside the centre crop survives both ways.
        let orig = BBox::new(
            0.3 * w as f32,
            0.35 * h as f32,
            0.3 * w as f32,
            0.25 * h as f32,
        );
        let inp = to_input(orig, &t, (w, h)).unwrap().unwrap();
        let back = to_original(inp, &t, (w, h)).unwrap();
        for (a, b) in [
            (back.x, orig.x),
            (back.y, orig.y),
            (back.w, orig.w),
            (back.h, orig.h),
        ] {
            assert!(
                (a - b).abs() < 1e-3 * w.max(h) as f32,
                "{w}×{h}: {back:?} vs {orig:?}"
            );
        }
        // The whole input maps to the centre crop's region of the original.
        let whole = to_original(BBox::new(0.0, 0.0, 128.0, 128.0), &t, (w, h)).unwrap();
        let short = w.min(h) as f32;
        assert!(
            (whole.w.min(whole.h) - short * 128.0 / 146.0).abs() < 1.0,
            "{whole:?}"
        );
        assert!(
            ((whole.x + whole.right()) / 2.0 - w as f32 / 2.0).abs() < 1.0,
            "{whole:?}"
        );
        // And to_input agrees with the transform's own mapping of a dataset box.
        let image = RgbImage::new(w, h);
        let via_transform = t
            .apply(&image, Some(orig), &mut SplitMix64(0))
            .unwrap()
            .bbox
            .unwrap();
        assert_eq!(via_transform, inp);
    }
    let e = to_original(
        BBox::new(0.0, 0.0, 1.0, 1.0),
        &Transform::train(128),
        (10, 10),
    );
    assert!(e.unwrap_err().to_string().contains("test transform"));
}

/// One image's inference with one-hot probabilities, one per prediction (coarse, fine and
/// average, or coarse alone).
fn inference(label: usize, probs: &[usize], pred: BBox, truth: BBox) -> ImageInference {
    let onehot = |c: usize| (0..3).map(|i| (i == c) as u8 as f64).collect::<Vec<_>>();
    ImageInference {
        index: 0,
        name: "x".into(),
        image: Arc::new(RgbImage::new(100, 100)),
        label,
        truth: Some(truth),
        probs: probs.iter().map(|&c| onehot(c)).collect(),
        attention: Vec::new(),
        upsampled: Vec::new(),
        box_input: Some(pred),
        box_original: Some(pred),
    }
}

#[test]
fn metrics_by_hand() {
    let t = BBox::new(10.0, 10.0, 40.0, 40.0);
    let near = BBox::new(12.0, 12.0, 40.0, 40.0); // IoU 38²/(2·1600 − 38²) ≈ 0.82
    let off = BBox::new(60.0, 60.0, 30.0, 30.0); // IoU 0
    let results = [
        inference(0, &[0, 0, 0], near, t), // located, all right
        inference(1, &[1, 2, 1], near, t), // located, fine wrong
        inference(2, &[2, 2, 2], off, t),  // labels right, box wrong
        inference(0, &[1, 1, 1], off, t),  // both wrong
    ];
    let m = metrics(
        &results,
        &LocalizeConfig::default(),
        BoxRule::Map,
        COARSE_FINE,
    );
    assert_eq!(m.images, 4);
    assert_eq!(m.accuracy.coarse, 0.5);
    assert_eq!(m.accuracy.fine, Some(0.25));
    assert_eq!(m.accuracy.average, Some(0.5));
    assert_eq!(m.error.fine, Some(0.75));
    assert_eq!(m.gt_known, 0.5);
    assert_eq!(m.top1.coarse, 0.75);
    let iou = near.iou(&t) as f64;
    assert!((m.mean_iou - iou / 2.0).abs() < 1e-12);
    // The same box at every image's centre: centred 40×40 at (30, 30) vs (10, 10): IoU < 0.5.
    assert_eq!(m.centered_baseline_gt_known, 0.0);
    let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    assert_eq!(json["accuracy"]["fine"], 0.25);
    assert_eq!(json["config"]["region"], "largest_component");
    assert!(m.table().contains("GT-known"));
}

/// A model without a fine pass (coarse-only) has no fine or averaged prediction: none in the
/// metrics, `-` in the table, `null` in the JSON.
#[test]
fn metrics_of_one_prediction() {
    let t = BBox::new(10.0, 10.0, 40.0, 40.0);
    let off = BBox::new(60.0, 60.0, 30.0, 30.0);
    let results = [inference(1, &[1], t, t), inference(0, &[1], off, t)];
    let m = metrics(
        &results,
        &LocalizeConfig::default(),
        BoxRule::Map,
        COARSE_FINE,
    );
    assert_eq!(
        (m.accuracy.coarse, m.top1.coarse, m.error.coarse),
        (0.5, 0.5, 0.5)
    );
    assert_eq!(
        (m.accuracy.fine, m.accuracy.average, m.error.fine),
        (None, None, None)
    );
    let top1 = m
        .table()
        .lines()
        .find(|l| l.starts_with("top-1"))
        .unwrap()
        .to_string();
    assert_eq!(
        top1.split_whitespace().collect::<Vec<_>>(),
        ["top-1", "50.00", "%", "-", "-"]
    );
    let json: serde_json::Value = serde_json::from_str(&m.to_json()).unwrap();
    assert!(json["accuracy"]["fine"].is_null(), "{json}");
    assert_eq!(results[0].top(1), [(1, 1.0)]);
}

#[test]
fn centred_baseline_by_hand() {
    let centred = (BBox::new(30.0, 30.0, 40.0, 40.0), (100, 100));
    let corner = (BBox::new(0.0, 0.0, 40.0, 40.0), (100, 100));
    assert_eq!(centered_baseline(&[centred, corner]), 0.5);
    assert_eq!(centered_baseline(&[]), 0.0);
}

#[test]
fn localizes_the_synthetic_set_end_to_end() {
    let mut cpu = CpuBackend::<f32>::new();
    let mut model = tiny_model(&mut cpu);
    let set = synthetic(5); // an odd count: the last batch is padded
    let cfg = LocalizeConfig::default();
    let (results, m) = localize(&mut cpu, &mut model, &set, &cfg).unwrap();
    assert_eq!(results.len(), 5);
    assert_eq!(m.images, 5);
    for r in &results {
        assert_eq!(r.upsampled.len(), 75 * 75);
        assert_eq!(
            r.attention.len(),
            2 * model.map_side().0 * model.map_side().1
        );
        assert!(
            r.attention.iter().all(|&v| v >= 0.0),
            "attention is after a ReLU"
        );
        let b = r
            .box_original
            .expect("positive up-sampler on ReLU maps: something attended");
        assert!(b.inside(80.0, 80.0, 1e-3) && b.area() > 0.0, "{b:?}");
        let p: f64 = r.probs[2].iter().sum();
        assert!((p - 1.0).abs() < 1e-9);
        assert_eq!(r.truth, Some(set.get(r.index).bbox));
    }
    assert!(m.accuracy.average.unwrap() <= m.gt_known && (0.0..=1.0).contains(&m.mean_iou));
    // Each image's result does not depend on its batch-mates (padding included).
    let one = c2f_train::localize::infer_images(&mut cpu, &mut model, &set, &[4], &cfg).unwrap();
    assert_eq!(one[0].box_input, results[4].box_input);
    assert_eq!(one[0].probs, results[4].probs);
}

/// Localization (and so the pictures, which draw the same inference) on the CUDA backend: the
/// same maps, probabilities and boxes as on the CPU backend from the same weights.
#[test]
fn gpu_localizes_like_the_cpu() {
    let Some(mut gpu) = cuda_or_skip("localize gpu_localizes_like_the_cpu") else {
        return;
    };
    let mut cpu = CpuBackend::<f32>::new();
    let (mut cpu_model, mut gpu_model) = (tiny_model(&mut cpu), tiny_model(&mut gpu));
    let set = synthetic(5);
    let cfg = LocalizeConfig::default();
    let (cpu_results, cpu_metrics) = localize(&mut cpu, &mut cpu_model, &set, &cfg).unwrap();
    let (gpu_results, gpu_metrics) = localize(&mut gpu, &mut gpu_model, &set, &cfg).unwrap();
    let widen = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
    for (c, g) in cpu_results.iter().zip(&gpu_results) {
        let i = c.index;
        for (what, e) in [
            (
                "attention",
                rel_error(&widen(&g.attention), &widen(&c.attention)),
            ),
            (
                "up-sampled map",
                rel_error(&widen(&g.upsampled), &widen(&c.upsampled)),
            ),
            (
                "probabilities",
                rel_error(&g.probs.concat(), &c.probs.concat()),
            ),
        ] {
            assert!(e < 1e-4, "image {i}: {what} relative error {e:.2e}");
        }
        let (cb, gb) = (c.box_input.unwrap(), g.box_input.unwrap());
        assert!(
            cb.iou(&gb) > 0.95,
            "image {i}: box {gb:?} on the GPU, {cb:?} on the CPU"
        );
    }
    assert_eq!(gpu_metrics.images, cpu_metrics.images);
    assert!((gpu_metrics.mean_iou - cpu_metrics.mean_iou).abs() < 0.02);
}

/// The synthetic set with its boxes taken away.
struct NoBoxes(SyntheticSet);

impl ImageSource for NoBoxes {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn label(&self, index: usize) -> usize {
        self.0.label(index)
    }
    fn name(&self, index: usize) -> String {
        ImageSource::name(&self.0, index)
    }
    fn load(&self, index: usize) -> c2f_kernels::Result<Item> {
        Ok(Item {
            bbox: None,
            ..self.0.load(index)?
        })
    }
}

#[test]
fn dataset_without_boxes_is_refused_clearly() {
    let mut cpu = CpuBackend::<f32>::new();
    let mut model = tiny_model(&mut cpu);
    let e = localize(
        &mut cpu,
        &mut model,
        &NoBoxes(synthetic(3)),
        &LocalizeConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("needs bounding boxes") && e.contains("synthetic:test:0"),
        "{e}"
    );
}
