//! Antialiased shapes (ellipses, capsules) blended onto an f32 RGB canvas.

use crate::data::BBox;

/// Pixel coverage from an approximate signed distance (pixels; negative inside): a one-pixel
/// antialiased edge.
#[inline]
pub(super) fn coverage(d: f32) -> f32 {
    (0.5 - d).clamp(0.0, 1.0)
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Ellipse {
    cx: f32,
    cy: f32,
    rx: f32,
    ry: f32,
    cos: f32,
    sin: f32,
}

impl Ellipse {
    pub(super) fn new(cx: f32, cy: f32, rx: f32, ry: f32, angle: f32) -> Self {
        Ellipse {
            cx,
            cy,
            rx: rx.max(0.3),
            ry: ry.max(0.3),
            cos: angle.cos(),
            sin: angle.sin(),
        }
    }

    /// `(u, v)` in the ellipse's normalised frame (the ellipse is `u² + v² ≤ 1`).
    #[inline]
    pub(super) fn local(&self, x: f32, y: f32) -> (f32, f32) {
        let (dx, dy) = (x - self.cx, y - self.cy);
        (
            (dx * self.cos + dy * self.sin) / self.rx,
            (-dx * self.sin + dy * self.cos) / self.ry,
        )
    }

    /// Approximate signed distance in pixels: `(f − 1) / |∇f|` with `f = u² + v²`.
    #[inline]
    pub(super) fn dist(&self, x: f32, y: f32) -> f32 {
        let (u, v) = self.local(x, y);
        let f = u * u + v * v;
        let gx = u / self.rx;
        let gy = v / self.ry;
        let g = 2.0 * (gx * gx + gy * gy).sqrt();
        if g < 1e-6 {
            -self.rx.min(self.ry)
        } else {
            (f - 1.0) / g
        }
    }

    pub(super) fn bounds(&self) -> [f32; 4] {
        let ex = ((self.rx * self.cos).powi(2) + (self.ry * self.sin).powi(2)).sqrt();
        let ey = ((self.rx * self.sin).powi(2) + (self.ry * self.cos).powi(2)).sqrt();
        [self.cx - ex, self.cy - ey, self.cx + ex, self.cy + ey]
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Capsule {
    x0: f32,
    y0: f32,
    x1: f32,
    y1: f32,
    r: f32,
}

impl Capsule {
    pub(super) fn new(x0: f32, y0: f32, x1: f32, y1: f32, r: f32) -> Self {
        Capsule {
            x0,
            y0,
            x1,
            y1,
            r: r.max(0.35),
        }
    }

    pub(super) fn between(p: [f32; 2], q: [f32; 2], r: f32) -> Self {
        Capsule::new(p[0], p[1], q[0], q[1], r)
    }

    #[inline]
    pub(super) fn dist(&self, x: f32, y: f32) -> f32 {
        let (dx, dy) = (self.x1 - self.x0, self.y1 - self.y0);
        let (px, py) = (x - self.x0, y - self.y0);
        let l2 = dx * dx + dy * dy;
        let t = if l2 > 0.0 {
            ((px * dx + py * dy) / l2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        ((px - t * dx).powi(2) + (py - t * dy).powi(2)).sqrt() - self.r
    }

    pub(super) fn bounds(&self) -> [f32; 4] {
        [
            self.x0.min(self.x1) - self.r,
            self.y0.min(self.y1) - self.r,
            self.x0.max(self.x1) + self.r,
            self.y0.max(self.y1) + self.r,
        ]
    }
}

/// Pixel extents of what was drawn of the object.
#[derive(Debug, Clone, Copy)]
pub(super) struct Extents {
    x0: i32,
    y0: i32,
    x1: i32,
    y1: i32,
}

impl Extents {
    pub(super) fn empty() -> Self {
        Extents {
            x0: i32::MAX,
            y0: i32::MAX,
            x1: i32::MIN,
            y1: i32::MIN,
        }
    }

    pub(super) fn bbox(&self) -> Option<BBox> {
        (self.x0 <= self.x1).then(|| {
            BBox::new(
                self.x0 as f32,
                self.y0 as f32,
                (self.x1 - self.x0 + 1) as f32,
                (self.y1 - self.y0 + 1) as f32,
            )
        })
    }
}

pub(super) struct Canvas {
    pub(super) size: usize,
    pub(super) rgb: Vec<f32>,
}

impl Canvas {
    /// Blends `f(x, y) = (coverage, colour)` over the pixels of `bounds`, pixel centres at
    /// `+0.5`; records the touched pixels in `track`.
    pub(super) fn draw(
        &mut self,
        bounds: [f32; 4],
        mut track: Option<&mut Extents>,
        mut f: impl FnMut(f32, f32) -> (f32, [f32; 3]),
    ) {
        let s = self.size as f32;
        let x0 = (bounds[0] - 1.0).floor().clamp(0.0, s) as usize;
        let y0 = (bounds[1] - 1.0).floor().clamp(0.0, s) as usize;
        let x1 = (bounds[2] + 1.0).ceil().clamp(0.0, s) as usize;
        let y1 = (bounds[3] + 1.0).ceil().clamp(0.0, s) as usize;
        for y in y0..y1 {
            let row = y * self.size;
            for x in x0..x1 {
                let (c, col) = f(x as f32 + 0.5, y as f32 + 0.5);
                if c <= 0.0 {
                    continue;
                }
                let p = &mut self.rgb[(row + x) * 3..(row + x) * 3 + 3];
                for k in 0..3 {
                    p[k] += c * (col[k] - p[k]);
                }
                if let Some(t) = track.as_deref_mut() {
                    t.x0 = t.x0.min(x as i32);
                    t.y0 = t.y0.min(y as i32);
                    t.x1 = t.x1.max(x as i32);
                    t.y1 = t.y1.max(y as i32);
                }
            }
        }
    }
}
