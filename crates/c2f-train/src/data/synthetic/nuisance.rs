//! Everything about an image but its class, drawn from its own generator: pose, colours,
//! background clutter, lighting, noise.

use c2f_kernels::rng::SplitMix64;

use super::raster::{Capsule, Ellipse};
use super::spots::{ASPECT, JITTER, MAX_SPOTS, SPOT_FRACTION};
use super::SyntheticConfig;

#[derive(Debug, Clone)]
pub(super) enum Clutter {
    Ellipse {
        e: Ellipse,
        color: [f32; 3],
        alpha: f32,
    },
    Stroke {
        c: Capsule,
        color: [f32; 3],
        alpha: f32,
    },
}

/// Everything about an image except its class: pose, colours, background, lighting, noise.
/// Drawn by [`super::SyntheticSet::nuisance`]; rendering the same nuisance with two labels
/// gives two images that differ only on the shell.
#[derive(Debug, Clone)]
pub struct Nuisance {
    pub(super) size: u32,
    pub(super) cx: f32,
    pub(super) cy: f32,
    pub(super) angle: f32,
    pub(super) mirror: f32,
    /// Shell half-length and half-width in pixels.
    pub(super) a: f32,
    pub(super) b: f32,
    pub(super) body: [f32; 3],
    pub(super) spot: [f32; 3],
    pub(super) dark: [f32; 3],
    pub(super) spot_fraction: f32,
    pub(super) jitter: [[f32; 2]; MAX_SPOTS],
    pub(super) legs: [f32; 6],
    pub(super) bg: [[f32; 3]; 2],
    pub(super) bg_angle: f32,
    pub(super) clutter: Vec<Clutter>,
    pub(super) light: f32,
    pub(super) cast: [f32; 3],
    pub(super) noise_amp: f32,
    pub(super) noise_seed: u64,
}

/// Shell colours shared by all classes.
const BODY_PALETTE: [[f32; 3]; 6] = [
    [205.0, 35.0, 30.0],
    [235.0, 125.0, 25.0],
    [225.0, 190.0, 45.0],
    [150.0, 25.0, 25.0],
    [225.0, 95.0, 120.0],
    [170.0, 85.0, 35.0],
];
const BG_PALETTE: [[f32; 3]; 7] = [
    [60.0, 110.0, 40.0],
    [90.0, 140.0, 60.0],
    [110.0, 85.0, 55.0],
    [120.0, 120.0, 110.0],
    [100.0, 110.0, 50.0],
    [70.0, 55.0, 40.0],
    [180.0, 165.0, 130.0],
];

fn jitter_color(rng: &mut SplitMix64, base: [f32; 3], amount: f32) -> [f32; 3] {
    let mut c = base;
    for x in &mut c {
        *x = (*x + rng.uniform(-amount as f64, amount as f64) as f32).clamp(0.0, 255.0);
    }
    c
}

fn palette_color(rng: &mut SplitMix64, palette: &[[f32; 3]], amount: f32) -> [f32; 3] {
    let base = pick(rng, palette);
    jitter_color(rng, base, amount)
}

fn pick<T: Copy>(rng: &mut SplitMix64, items: &[T]) -> T {
    items[rng.below(items.len() as u64) as usize]
}

fn uni(rng: &mut SplitMix64, lo: f32, hi: f32) -> f32 {
    rng.uniform(lo as f64, hi as f64) as f32
}

/// A count scaled by the clutter level: `round(clutter · uniform(lo, hi))`.
fn count(rng: &mut SplitMix64, clutter: f32, lo: f32, hi: f32) -> usize {
    (clutter * uni(rng, lo, hi)).round() as usize
}

impl Nuisance {
    /// Draws every nuisance parameter from `rng`; the class plays no part.
    pub fn sample(config: &SyntheticConfig, rng: &mut SplitMix64) -> Nuisance {
        let s = config.size as f32;
        let scale = uni(rng, config.object_scale.0, config.object_scale.1);
        let aspect = uni(rng, ASPECT.0, ASPECT.1);
        // Half the overall extent; the antennae tip is at a + 1.01 b from the centre, the rest
        // of the object is nearer.
        let r = scale * s / 2.0;
        let a = (r - 1.0) / (1.0 + 1.15 * aspect);
        let b = aspect * a;
        let margin = r + 1.0;
        let cx = uni(rng, margin, s - margin);
        let cy = uni(rng, margin, s - margin);
        let angle = uni(rng, 0.0, std::f32::consts::TAU);
        let mirror = if rng.below(2) == 0 { 1.0 } else { -1.0 };
        let body = palette_color(rng, &BODY_PALETTE, 18.0);
        let spot_level = uni(rng, 10.0, 45.0);
        let spot = jitter_color(rng, [spot_level; 3], 8.0);
        let dark_level = uni(rng, 15.0, 40.0);
        let dark = jitter_color(rng, [dark_level; 3], 6.0);
        let spot_fraction = uni(rng, SPOT_FRACTION.0, SPOT_FRACTION.1);
        let mut jitter = [[0.0f32; 2]; MAX_SPOTS];
        for j in &mut jitter {
            *j = [uni(rng, -JITTER, JITTER), uni(rng, -JITTER, JITTER)];
        }
        let mut legs = [0.0f32; 6];
        for l in &mut legs {
            *l = uni(rng, -0.25, 0.25);
        }
        let bg = [
            palette_color(rng, &BG_PALETTE, 20.0),
            palette_color(rng, &BG_PALETTE, 20.0),
        ];
        let bg_angle = uni(rng, 0.0, std::f32::consts::TAU);

        let c = config.clutter;
        let spot_r = spot_fraction * b;
        let mut clutter = Vec::new();
        // Leaves: large soft ellipses in background colours.
        for _ in 0..count(rng, c, 3.0, 9.0) {
            let color = palette_color(rng, &BG_PALETTE, 25.0);
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(
                    uni(rng, -0.1 * s, 1.1 * s),
                    uni(rng, -0.1 * s, 1.1 * s),
                    uni(rng, 0.06, 0.25) * s,
                    uni(rng, 0.02, 0.09) * s,
                    uni(rng, 0.0, std::f32::consts::TAU),
                ),
                color,
                alpha: uni(rng, 0.5, 1.0),
            });
        }
        // Stems and grass: thin strokes.
        for _ in 0..count(rng, c, 2.0, 7.0) {
            let x0 = uni(rng, 0.0, s);
            let y0 = uni(rng, 0.0, s);
            let t = uni(rng, 0.0, std::f32::consts::TAU);
            let len = uni(rng, 0.15, 0.6) * s;
            let color = palette_color(rng, &BG_PALETTE, 30.0);
            let color = color.map(|x| x * 0.7);
            clutter.push(Clutter::Stroke {
                c: Capsule::new(x0, y0, x0 + len * t.cos(), y0 + len * t.sin(), {
                    uni(rng, 0.3, 1.5) * s / 128.0
                }),
                color,
                alpha: uni(rng, 0.6, 1.0),
            });
        }
        // Pebbles.
        for _ in 0..count(rng, c, 1.0, 5.0) {
            let g = uni(rng, 90.0, 200.0);
            let rx = uni(rng, 0.01, 0.04) * s;
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(
                    uni(rng, 0.0, s),
                    uni(rng, 0.0, s),
                    rx,
                    rx * uni(rng, 0.6, 1.0),
                    uni(rng, 0.0, std::f32::consts::TAU),
                ),
                color: jitter_color(rng, [g; 3], 15.0),
                alpha: 1.0,
            });
        }
        // A "berry" decoy in the shell's palette, with a few dark spots of its own.
        if uni(rng, 0.0, 1.0) < 0.35 * c.min(2.0) {
            let rx = b * uni(rng, 0.5, 1.0);
            let (x, y) = (uni(rng, 0.0, s), uni(rng, 0.0, s));
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(x, y, rx, rx * uni(rng, 0.8, 1.0), 0.0),
                color: palette_color(rng, &BODY_PALETTE, 18.0),
                alpha: 1.0,
            });
            for _ in 0..rng.below(3) {
                let t = uni(rng, 0.0, std::f32::consts::TAU);
                let d = uni(rng, 0.0, 0.5) * rx;
                let rr = spot_r * uni(rng, 0.7, 1.2);
                clutter.push(Clutter::Ellipse {
                    e: Ellipse::new(x + d * t.cos(), y + d * t.sin(), rr, rr, 0.0),
                    color: spot,
                    alpha: 1.0,
                });
            }
        }
        // Spot-like distractors: dark discs the size of the real spots.
        for _ in 0..count(rng, c, 4.0, 14.0) {
            let rr = spot_r * uni(rng, 0.7, 1.4);
            let level = uni(rng, 10.0, 60.0);
            clutter.push(Clutter::Ellipse {
                e: Ellipse::new(uni(rng, 0.0, s), uni(rng, 0.0, s), rr, rr, 0.0),
                color: jitter_color(rng, [level; 3], 8.0),
                alpha: 1.0,
            });
        }

        let light = uni(rng, 0.8, 1.15);
        let cast = [
            uni(rng, 0.93, 1.07),
            uni(rng, 0.93, 1.07),
            uni(rng, 0.93, 1.07),
        ];
        let noise_amp = uni(rng, 2.0, 9.0);
        let noise_seed = rng.next_u64();
        Nuisance {
            size: config.size,
            cx,
            cy,
            angle,
            mirror,
            a,
            b,
            body,
            spot,
            dark,
            spot_fraction,
            jitter,
            legs,
            bg,
            bg_angle,
            clutter,
            light,
            cast,
            noise_amp,
            noise_seed,
        }
    }
}
