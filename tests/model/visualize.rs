//! The pictures: valid PNGs of the expected sizes, with the boxes and heat maps drawn, from a
//! tiny model on the synthetic set.

use c2f_inception::cpu::CpuBackend;
use c2f_train::data::synthetic::class_name;
use c2f_train::localize::{infer_images, LocalizeConfig};
use c2f_train::visualize::{
    draw_text, figure_size, jet, sheet_size, write_pictures, VisualizeConfig,
};
use image::{Rgb, RgbImage};

use crate::common::tiny::{synthetic, tiny_model};

#[test]
fn jet_runs_blue_to_red() {
    assert_eq!(jet(0.0), Rgb([0, 0, 128]));
    assert_eq!(jet(0.5), Rgb([128, 255, 128]));
    assert_eq!(jet(1.0), Rgb([128, 0, 0]));
    assert_eq!(jet(-3.0), jet(0.0));
}

#[test]
fn text_draws_glyph_pixels() {
    let mut img = RgbImage::from_pixel(40, 20, Rgb([255, 255, 255]));
    draw_text(&mut img, (0, 0), "T", Rgb([0, 0, 0]), 2, 40);
    // 'T' of the 8×8 font, drawn 2×: a full top bar, a stem in the middle, blank corners below.
    let ink = |x: u32, y: u32| img.get_pixel(x, y).0 == [0, 0, 0];
    assert!(ink(0, 0) && ink(10, 0) && ink(6, 10));
    assert!(!ink(0, 10) && !ink(20, 0));
    // Drawing past the edge is clipped, not a panic.
    draw_text(&mut img, (30, 15), "long text", Rgb([0, 0, 0]), 2, 1000);
    // Only whole characters within max_width: "ab" in 20 pixels at scale 1 draws 'a' and 'b',
    // at scale 2 only 'a' (16 pixels), nothing of 'b' at x ≥ 16.
    let mut img = RgbImage::from_pixel(40, 20, Rgb([255, 255, 255]));
    draw_text(&mut img, (0, 0), "ab", Rgb([0, 0, 0]), 2, 20);
    assert!((16..40).all(|x| (0..16).all(|y| img.get_pixel(x, y).0 != [0, 0, 0])));
    assert!(img.pixels().any(|p| p.0 == [0, 0, 0]));
}

#[test]
fn writes_pngs_of_the_expected_size() {
    let mut cpu = CpuBackend::<f32>::new();
    let mut model = tiny_model(&mut cpu);
    let set = synthetic(3);
    let results = infer_images(
        &mut cpu,
        &mut model,
        &set,
        &[0, 1, 2],
        &LocalizeConfig::default(),
    )
    .unwrap();
    let cfg = VisualizeConfig {
        panel: 96,
        columns: 3,
        ..VisualizeConfig::default()
    };
    let names: Vec<String> = (0..3).map(|c| class_name(c).to_string()).collect();
    let dir = std::env::temp_dir().join(format!("c2f-visualize-{}", std::process::id()));
    let paths = write_pictures(&dir, &results, 75, model.map_side(), &names, &cfg).unwrap();
    assert_eq!(paths.len(), 4);
    let figure = figure_size(2, &cfg);
    // 2 maps + 2 panels in 3 columns of 96: narrower than the minimum 640.
    assert_eq!(figure.0, 640);
    let wide = VisualizeConfig {
        panel: 224,
        ..cfg.clone()
    };
    assert_eq!(figure_size(2, &wide).0, 3 * (224 + 6) + 6);
    for (i, path) in paths.iter().enumerate() {
        let img = image::open(path).unwrap().to_rgb8();
        let want = if i < 3 { figure } else { sheet_size(3, &cfg) };
        assert_eq!(img.dimensions(), want, "{}", path.display());
        let has = |c: [u8; 3]| img.pixels().any(|p| p.0 == c);
        assert!(has([40, 220, 40]), "{}: no true box drawn", path.display());
        assert!(
            has([235, 30, 30]),
            "{}: no predicted box drawn",
            path.display()
        );
        assert!(has([0, 0, 0]), "{}: no text", path.display());
    }
    // The up-sampled mask panel (second in the first row, below the 3-line header and its
    // title) is drawn at full opacity: every pixel is a jet colour.
    let fig = image::open(&paths[0]).unwrap().to_rgb8();
    let jets: Vec<[u8; 3]> = (0..=4096).map(|i| jet(i as f32 / 4096.0).0).collect();
    let (x0, y0) = (6 + 96 + 6, 3 * 20 + 6 + 12);
    for y in y0..y0 + 96 {
        for x in x0..x0 + 96 {
            let p = fig.get_pixel(x, y).0;
            let near = jets
                .iter()
                .any(|j| (0..3).all(|k| (j[k] as i32 - p[k] as i32).abs() <= 1));
            assert!(near, "mask pixel ({x}, {y}) {p:?} is not a jet colour");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
