//! The scene: background gradient, clutter, the beetle of a class, then lighting, colour
//! cast, sensor noise and quantisation.

use c2f_kernels::rng::splitmix64_output;
use image::RgbImage;

use super::nuisance::{Clutter, Nuisance};
use super::raster::{coverage, Canvas, Capsule, Ellipse, Extents};
use super::spots::{patterns, SpotPattern, MAX_SPOTS};
use crate::data::BBox;

/// A rendered image and, where an object was drawn, its tight box.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub image: RgbImage,
    pub bbox: Option<BBox>,
}

/// Renders `nuisance` with the beetle of class `label`, or the scene without any beetle for
/// `None` (used by tests to find the object's pixels).
///
/// # Panics
/// If `label >= max_classes()`.
pub fn render(label: Option<usize>, n: &Nuisance) -> Rendered {
    let size = n.size as usize;
    let s = size as f32;
    let mut canvas = Canvas {
        size,
        rgb: vec![0.0; size * size * 3],
    };

    // Background gradient.
    let (gc, gs) = (n.bg_angle.cos() / s, n.bg_angle.sin() / s);
    for y in 0..size {
        for x in 0..size {
            let t = ((x as f32 - s / 2.0) * gc + (y as f32 - s / 2.0) * gs + 0.5).clamp(0.0, 1.0);
            let p = &mut canvas.rgb[(y * size + x) * 3..(y * size + x) * 3 + 3];
            for (k, v) in p.iter_mut().enumerate() {
                *v = n.bg[0][k] + t * (n.bg[1][k] - n.bg[0][k]);
            }
        }
    }
    for item in &n.clutter {
        match item {
            Clutter::Ellipse { e, color, alpha } => {
                canvas.draw(e.bounds(), None, |x, y| {
                    (alpha * coverage(e.dist(x, y)), *color)
                });
            }
            Clutter::Stroke { c, color, alpha } => {
                canvas.draw(c.bounds(), None, |x, y| {
                    (alpha * coverage(c.dist(x, y)), *color)
                });
            }
        }
    }

    let bbox = label.map(|label| {
        let pattern = &patterns()[label];
        let mut ext = Extents::empty();
        draw_beetle(&mut canvas, n, pattern, &mut ext);
        ext.bbox().expect("the beetle lies inside the image")
    });

    // Lighting, colour cast and sensor noise, then quantisation.
    let mut image = RgbImage::new(n.size, n.size);
    let out: &mut [u8] = &mut image;
    for (i, (o, c)) in out
        .chunks_exact_mut(3)
        .zip(canvas.rgb.chunks_exact(3))
        .enumerate()
    {
        let h = splitmix64_output(n.noise_seed, i as u64 + 1);
        let luma = ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        let chroma = [
            (h & 0xff) as f32,
            ((h >> 8) & 0xff) as f32,
            ((h >> 16) & 0xff) as f32,
        ];
        for k in 0..3 {
            let noise = n.noise_amp * (luma + 0.3 * (chroma[k] / 127.5 - 1.0));
            o[k] = (c[k] * n.light * n.cast[k] + noise)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    Rendered { image, bbox }
}

fn draw_beetle(canvas: &mut Canvas, n: &Nuisance, pattern: &SpotPattern, ext: &mut Extents) {
    let (a, b, m) = (n.a, n.b, n.mirror);
    let d = [n.angle.cos(), n.angle.sin()]; // forward
    let nv = [-d[1] * m, d[0] * m]; // lateral (mirrored)
                                    // Body frame (u along, v across, both in pixels) to image.
    let at = |u: f32, v: f32| [n.cx + u * d[0] + v * nv[0], n.cy + u * d[1] + v * nv[1]];
    let shell = Ellipse::new(n.cx, n.cy, a, b, n.angle);
    let limb = (0.06 * b).max(0.5);

    // Legs: three a side, femur out, tibia bent.
    for side in [-1.0f32, 1.0] {
        for (k, (u_att, bend)) in [(-0.35f32, -0.25f32), (0.05, 0.0), (0.4, 0.25)]
            .iter()
            .enumerate()
        {
            let j = n.legs[k + if side > 0.0 { 3 } else { 0 }];
            let att = at(u_att * a, side * 0.5 * b);
            let knee = at(u_att * a + (bend * 0.5 + j * 0.5) * b, side * 1.2 * b);
            let foot = at(u_att * a + (bend + j) * b, side * 1.55 * b);
            for seg in [
                Capsule::between(att, knee, limb),
                Capsule::between(knee, foot, limb),
            ] {
                canvas.draw(seg.bounds(), Some(ext), |x, y| {
                    (coverage(seg.dist(x, y)), n.dark)
                });
            }
        }
    }
    // Head and antennae.
    let head = {
        let c = at(a + 0.15 * b, 0.0);
        Ellipse::new(c[0], c[1], 0.36 * b, 0.46 * b, n.angle)
    };
    for side in [-1.0f32, 1.0] {
        let base = at(a + 0.45 * b, side * 0.2 * b);
        let tip = at(a + 1.0 * b, side * 0.45 * b);
        let ant = Capsule::between(base, tip, (0.035 * b).max(0.4));
        canvas.draw(ant.bounds(), Some(ext), |x, y| {
            (coverage(ant.dist(x, y)), n.dark)
        });
    }
    canvas.draw(head.bounds(), Some(ext), |x, y| {
        (coverage(head.dist(x, y)), n.dark)
    });
    // Shell, shaded.
    let body = n.body;
    canvas.draw(shell.bounds(), Some(ext), |x, y| {
        let (u, v) = shell.local(x, y);
        let r2 = ((u - 0.2).powi(2) + (v + 0.3).powi(2)).min(1.5);
        let shade = 0.62 + 0.42 * (1.0 - r2 / 1.5);
        (
            coverage(shell.dist(x, y)),
            body.map(|c| (c * shade).min(255.0)),
        )
    });
    // Spots, clipped to the shell.
    let rs = n.spot_fraction * b * pattern.size;
    for (k, p) in pattern.spots.iter().enumerate() {
        let j = n.jitter[k % MAX_SPOTS];
        let c = at((p[0] + j[0]) * a, (p[1] + j[1]) * b);
        let spot = Ellipse::new(c[0], c[1], rs, rs, 0.0);
        canvas.draw(spot.bounds(), Some(ext), |x, y| {
            let cov = coverage(spot.dist(x, y)).min(coverage(shell.dist(x, y)));
            (cov, n.spot)
        });
    }
    // Seam from the rear to the pronotum, then the pronotum with its two pale marks.
    let seam = Capsule::between(at(-0.97 * a, 0.0), at(0.62 * a, 0.0), (0.03 * b).max(0.45));
    canvas.draw(seam.bounds(), Some(ext), |x, y| {
        let cov = coverage(seam.dist(x, y)).min(coverage(shell.dist(x, y)));
        (0.8 * cov, n.dark)
    });
    canvas.draw(shell.bounds(), Some(ext), |x, y| {
        let (u, _) = shell.local(x, y);
        let front = ((u - 0.62) * a + 0.5).clamp(0.0, 1.0);
        (front.min(coverage(shell.dist(x, y))), n.dark)
    });
    for side in [-1.0f32, 1.0] {
        let c = at(0.8 * a, side * 0.38 * b);
        let mark = Ellipse::new(c[0], c[1], 0.08 * a, 0.14 * b, n.angle);
        canvas.draw(mark.bounds(), Some(ext), |x, y| {
            let cov = coverage(mark.dist(x, y)).min(coverage(shell.dist(x, y)));
            (cov, [225.0, 222.0, 210.0])
        });
    }
}
