//! A counter-based generator that Python (`tools/make_golden.py`) and Rust implement identically,
//! so the golden test against PyTorch needs no committed weights: every value is a pure function
//! of the tensor's name and the element's index (splitmix64, [`c2f_kernels::rng`]).
//!
//! `u(name, i) = (mix(fnv1a(name) + (i + 1)·0x9e3779b97f4a7c15) >> 40) / 2^24`, where `mix` is
//! splitmix64's output function, and a value is `f32(lo + (hi − lo)·u)` computed in f64.

use c2f_kernels::rng::splitmix64_output;

use crate::spec::Graph;

fn fnv1a(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Fills `out` with the values of tensor `name`, uniform in `[lo, hi)`.
pub fn counter_uniform(name: &str, lo: f64, hi: f64, out: &mut [f32]) {
    let key = fnv1a(name);
    for (i, o) in out.iter_mut().enumerate() {
        let z = splitmix64_output(key, i as u64 + 1);
        let u = (z >> 40) as f64 / (1u64 << 24) as f64;
        *o = (lo + (hi - lo) * u) as f32;
    }
}

/// The range `tools/make_golden.py` draws tensor `name` of `shape` from.
pub fn golden_range(name: &str, shape: &[usize]) -> (f64, f64) {
    if name.ends_with("running_mean") || name.ends_with("bn.bias") {
        return (-0.1, 0.1);
    }
    if name.ends_with("running_var") || name.ends_with("bn.weight") {
        return (0.8, 1.2);
    }
    let fan_in: usize = if name == "fc.bias" {
        2048
    } else if name.ends_with("weight") {
        shape[1..].iter().product()
    } else {
        shape[0]
    };
    let bound = 1.0 / (fan_in as f64).sqrt();
    (-bound, bound)
}

/// Fills the graph's parameters and buffers as `tools/make_golden.py` does.
pub fn golden_init(graph: &Graph, params: &mut [f32], buffers: &mut [f32]) {
    for (table, dest) in [(&graph.params, params), (&graph.buffers, buffers)] {
        for e in table.entries() {
            let (lo, hi) = golden_range(&e.name, &e.shape);
            counter_uniform(&e.name, lo, hi, &mut dest[e.range()]);
        }
    }
}
