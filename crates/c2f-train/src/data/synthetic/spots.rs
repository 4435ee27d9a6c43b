//! The classes: one spot pattern each, in the shell's frame, the pairwise-close ones first.

use std::sync::OnceLock;

/// One class's spots, in the shell's normalised frame: `u` along the body (−1 rear, +1 front,
/// the pronotum starts at 0.62), `v` across it (−1..1); the shell is `u² + v² ≤ 1`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpotPattern {
    pub name: String,
    pub spots: Vec<[f32; 2]>,
    /// Spot radius relative to the nuisance's spot radius (dense patterns have smaller spots so
    /// that no two ever touch).
    pub size: f32,
}

/// Spot radius as a fraction of the shell's half-width, drawn per image.
pub(super) const SPOT_FRACTION: (f32, f32) = (0.14, 0.18);
/// Shell half-width over half-length, drawn per image.
pub(super) const ASPECT: (f32, f32) = (0.7, 0.85);
/// Per-spot jitter in normalised units (intra-class variation).
pub(super) const JITTER: f32 = 0.025;
/// The most spots a pattern has.
pub(super) const MAX_SPOTS: usize = 12;
/// The first classes: pairwise close patterns.
const FIRST: [&str; 10] = [
    "pairs2",
    "pairs2_c",
    "pairs3",
    "line3",
    "ring5",
    "ring6",
    "tri_fwd",
    "tri_back",
    "row3_rear",
    "ring4_c",
];

/// All spot patterns; class `c` is `patterns()[c]`.
pub fn patterns() -> &'static [SpotPattern] {
    static P: OnceLock<Vec<SpotPattern>> = OnceLock::new();
    P.get_or_init(build_patterns)
}

/// How many classes the synthetic set can have.
pub fn max_classes() -> usize {
    patterns().len()
}

/// The name of class `label` (e.g. `ring5`, `pairs2_c`).
pub fn class_name(label: usize) -> &'static str {
    &patterns()[label].name
}

fn spread(n: usize, lo: f32, hi: f32, single: f32) -> Vec<f32> {
    if n == 1 {
        vec![single]
    } else {
        (0..n)
            .map(|k| lo + (hi - lo) * k as f32 / (n - 1) as f32)
            .collect()
    }
}

fn build_patterns() -> Vec<SpotPattern> {
    let mut out: Vec<SpotPattern> = Vec::new();
    let mut push = |name: String, spots: Vec<[f32; 2]>, size: Option<f32>| {
        let size = size.unwrap_or_else(|| auto_size(&spots));
        out.push(SpotPattern { name, spots, size });
    };
    let centre = |c: bool| if c { "_c" } else { "" };
    // Symmetric pairs; `_c` adds a spot on the seam (between the two rearmost rows, or in
    // front of a single pair).
    for n in 1..=4 {
        for c in [false, true] {
            let rows = match n {
                1 => vec![-0.15],
                2 => vec![-0.45, 0.12],
                _ => spread(n, -0.62, 0.3, 0.0),
            };
            let mut s: Vec<[f32; 2]> = rows.iter().flat_map(|&u| [[u, 0.45], [u, -0.45]]).collect();
            if c {
                let u = if n == 1 {
                    0.35
                } else {
                    (rows[0] + rows[1]) / 2.0
                };
                s.push([u, 0.0]);
            }
            push(format!("pairs{n}{}", centre(c)), s, None);
        }
    }
    // A line along the seam.
    for n in 1..=4 {
        let s = spread(n, -0.7, 0.36, -0.15)
            .into_iter()
            .map(|u| [u, 0.0])
            .collect();
        push(format!("line{n}"), s, None);
    }
    // A ring (the first spot points forward), optionally with a centre spot.
    let ring = |n: usize, offset: f32, c: bool| {
        let mut s: Vec<[f32; 2]> = (0..n)
            .map(|k| {
                let t = offset + std::f32::consts::TAU * k as f32 / n as f32;
                [-0.12 + 0.56 * t.cos(), 0.56 * t.sin()]
            })
            .collect();
        if c {
            s.push([-0.12, 0.0]);
        }
        s
    };
    for n in 4..=8 {
        for c in [false, true] {
            push(format!("ring{n}{}", centre(c)), ring(n, 0.0, c), None);
        }
    }
    for c in [false, true] {
        let s = ring(4, std::f32::consts::FRAC_PI_4, c);
        push(format!("square{}", centre(c)), s, None);
    }
    // A triangle pointing forward or backward, optionally with a centre spot.
    for (dir, offset) in [("fwd", 0.0f32), ("back", std::f32::consts::PI)] {
        for c in [false, true] {
            let mut s: Vec<[f32; 2]> = (0..3)
                .map(|k| {
                    let t = offset + std::f32::consts::TAU * k as f32 / 3.0;
                    [-0.12 + 0.56 * t.cos(), 0.56 * t.sin()]
                })
                .collect();
            if c {
                s.push([-0.12, 0.0]);
            }
            push(format!("tri_{dir}{}", centre(c)), s, None);
        }
    }
    // A transverse row near the front or the rear.
    for (pos, u) in [("front", 0.22f32), ("rear", -0.45)] {
        for n in 3..=4 {
            let s = spread(n, -0.6, 0.6, 0.0)
                .into_iter()
                .map(|v| [u, v])
                .collect();
            push(format!("row{n}_{pos}"), s, None);
        }
    }
    // A tight cluster of three at the rear or the front.
    push(
        "rear3".into(),
        vec![[-0.68, 0.0], [-0.36, 0.32], [-0.36, -0.32]],
        None,
    );
    push(
        "front3".into(),
        vec![[0.42, 0.0], [0.1, 0.32], [0.1, -0.32]],
        None,
    );
    // Chiral patterns (the mirror nuisance shows both hands): a diagonal, a zigzag, spots down
    // one side.
    for n in 2..=4 {
        let s = (0..n)
            .map(|k| {
                let t = k as f32 / (n - 1) as f32;
                [-0.55 + 0.85 * t, -0.42 + 0.84 * t]
            })
            .collect();
        push(format!("diag{n}"), s, None);
    }
    push(
        "zigzag4".into(),
        vec![[-0.62, 0.3], [-0.27, -0.3], [0.08, 0.3], [0.4, -0.3]],
        None,
    );
    for n in 2..=3 {
        let s = spread(n, -0.5, 0.3, 0.0)
            .into_iter()
            .map(|u| [u, 0.5])
            .collect();
        push(format!("side{n}"), s, None);
    }
    // A chevron pointing forward or backward.
    push(
        "chevron_fwd".into(),
        vec![
            [0.38, 0.0],
            [0.06, 0.3],
            [0.06, -0.3],
            [-0.26, 0.6],
            [-0.26, -0.6],
        ],
        None,
    );
    push(
        "chevron_back".into(),
        vec![
            [-0.68, 0.0],
            [-0.36, 0.3],
            [-0.36, -0.3],
            [-0.04, 0.6],
            [-0.04, -0.6],
        ],
        None,
    );
    // A T, upright or upside down.
    push(
        "tee_fwd".into(),
        vec![
            [0.3, -0.5],
            [0.3, 0.0],
            [0.3, 0.5],
            [-0.12, 0.0],
            [-0.56, 0.0],
        ],
        None,
    );
    push(
        "tee_back".into(),
        vec![
            [-0.56, -0.5],
            [-0.56, 0.0],
            [-0.56, 0.5],
            [-0.12, 0.0],
            [0.32, 0.0],
        ],
        None,
    );
    // Big spots.
    push("big1".into(), vec![[-0.12, 0.0]], Some(2.0));
    push("big2".into(), vec![[-0.15, 0.4], [-0.15, -0.4]], Some(1.6));
    push(
        "big_line2".into(),
        vec![[-0.42, 0.0], [0.16, 0.0]],
        Some(1.5),
    );
    // Pairs near the shell's edge.
    for n in 1..=3 {
        let s = spread(n, -0.4, 0.25, -0.15)
            .into_iter()
            .flat_map(|u| [[u, 0.66], [u, -0.66]])
            .collect();
        push(format!("edge{n}"), s, None);
    }

    // The pairwise-close patterns first.
    let mut ordered = Vec::with_capacity(out.len());
    for name in FIRST {
        let k = out.iter().position(|p| p.name == name).expect("known name");
        ordered.push(out.remove(k));
    }
    ordered.extend(out);
    ordered
}

/// The largest of the sizes 1, 0.8, 0.65, 0.5 for which no two spots of `spots` can touch, whatever the aspect,
/// spot fraction and jitter drawn.
fn auto_size(spots: &[[f32; 2]]) -> f32 {
    const GAP: f32 = 0.03; // in units of the half-length
    let mut size = 1.0f32;
    for aspect in [ASPECT.0, ASPECT.1] {
        for (i, p) in spots.iter().enumerate() {
            for q in &spots[i + 1..] {
                // Distance in units of the half-length `a` (v is scaled by b = aspect·a).
                let d = ((p[0] - q[0]).powi(2) + ((p[1] - q[1]) * aspect).powi(2)).sqrt();
                let room = d - GAP - 2.0 * std::f32::consts::SQRT_2 * JITTER;
                size = size.min(room / (2.0 * SPOT_FRACTION.1 * aspect));
            }
        }
    }
    // Quantised, so that many classes share a spot size and size alone tells little.
    [1.0, 0.8, 0.65, 0.5]
        .into_iter()
        .find(|&q| q <= size)
        .unwrap_or(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_patterns_distinct_up_to_mirror() {
        let p = patterns();
        assert_eq!(p.len(), 50);
        for (i, a) in p.iter().enumerate() {
            assert!(
                !a.spots.is_empty() && a.spots.len() <= MAX_SPOTS,
                "{}",
                a.name
            );
            for b in &p[i + 1..] {
                assert_ne!(a.name, b.name);
                if a.spots.len() != b.spots.len() || (a.size / b.size - 1.0).abs() > 0.3 {
                    continue;
                }
                let hausdorff = |mirror: f32| {
                    let one_way = |x: &SpotPattern, y: &SpotPattern, mx: f32| {
                        x.spots
                            .iter()
                            .map(|s| {
                                y.spots
                                    .iter()
                                    .map(|t| {
                                        ((s[0] - t[0]).powi(2) + (s[1] * mx - t[1]).powi(2)).sqrt()
                                    })
                                    .fold(f32::MAX, f32::min)
                            })
                            .fold(0.0, f32::max)
                    };
                    one_way(a, b, mirror).max(one_way(b, a, mirror))
                };
                let d = hausdorff(1.0).min(hausdorff(-1.0));
                assert!(d > 0.15, "{} and {} are {d} apart", a.name, b.name);
            }
        }
    }

    #[test]
    fn spots_fit_on_the_shell_and_never_touch() {
        for p in patterns() {
            assert!(p.size >= 0.5, "{}: size {}", p.name, p.size);
            for s in &p.spots {
                let r = (s[0] * s[0] + s[1] * s[1]).sqrt() + SPOT_FRACTION.1 * p.size;
                assert!(r <= 1.0, "{}: spot {s:?} reaches {r}", p.name);
                assert!(
                    s[0] + SPOT_FRACTION.1 * p.size * ASPECT.1 <= 0.62,
                    "{}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn default_classes_share_one_spot_size() {
        for p in &patterns()[..FIRST.len()] {
            assert_eq!(p.size, 1.0, "{}", p.name);
        }
    }
}
